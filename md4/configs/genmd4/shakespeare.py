"""GenMD4 (learned per-character masking schedules) on Shakespeare characters, 2 CPU cores.

Run:  python md4/main.py --config=md4/configs/genmd4/shakespeare.py --workdir=expt/genmd4_shakespeare
Hardware: 2 CPU cores (no accelerator needed). Everything but the model is the MD4
Shakespeare config (md4/configs/md4/shakespeare.py); each step runs the network on two
masks per example, so it costs about twice an MD4 step: about 8 steps per second on 2 cores
with AMX (mimalloc), so its 6,500 steps take about 14 minutes;
`--config.num_train_steps=3250` fits the default's 10 minutes. On a CPU without AMX it
inherits float32 products and 3,000 steps: about 250 ms a step against the MD4 step's 120
on a 2-core AMD EPYC, so about 13 minutes; `--config.num_train_steps=1500` there. Its
AdamW rate of 1e-2, from the MD4 config: valid bits after 600 steps (AVX2) 3.012, against
3.064 at 3e-3.
"""

from md4.configs.genmd4 import as_genmd4
from md4.configs.md4 import shakespeare


def get_config():
  return as_genmd4(shakespeare.get_config())
