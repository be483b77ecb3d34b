"""GenMD4 (learned per-character masking schedules) on Shakespeare characters, 2 CPU cores.

Run:  python md4/main.py --config=md4/configs/genmd4/shakespeare.py \
          --workdir=expt/genmd4_shakespeare   (`shakespeare.py:amx` on CPUs with AMX units)
Hardware: 2 CPU cores (no accelerator needed). Everything but the model is the MD4
Shakespeare config (md4/configs/md4/shakespeare.py), its `amx` variant included; each step
runs the network on two masks per example, so it costs about twice an MD4 step: the 3,000
steps take about 13 minutes on a 2-core AVX2 CPU (`--config.num_train_steps=1500` fits the
default's 10 minutes), the `amx` variant's 6,500 about 14 minutes with AMX (3,250 fit).
Its AdamW rate of 1e-2 is the MD4 config's, also the better one here
(docs/experiments.md).
"""

from md4.configs.genmd4 import as_genmd4
from md4.configs.md4 import shakespeare


def get_config(variant='default'):
  return as_genmd4(shakespeare.get_config(variant))
