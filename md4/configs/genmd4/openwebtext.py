"""GenMD4 (learned per-token masking schedules) on OpenWebText: the original's recipe.

Prepare:  python prepare_openwebtext_data.py --data_dir=~/md4_data   (GPT-2 tokens, once)
Run:      python md4/main.py --config=md4/configs/genmd4/openwebtext.py --workdir=expt/genmd4_owt
Everything but the model is MD4-S (md4/configs/md4/openwebtext.py): 12 layers, 12 heads x 64,
dropout 0.02, length 1024, batch 512, AdamW at 3e-4 with weight decay 0.03 on every
parameter (the schedule powers too), 1M steps. As the original's config, the vocabulary has
50,259 ids, two more than GPT-2's (they never occur in the data): 165,910,675 parameters.
Each step runs the network on two masks per example (the RLOO gradient), so twice MD4-S's
network work.
Hardware: a TPU v5 / H100 pod slice of 16+ chips; --config.num_microbatches to fit fewer.
Expected: the paper reports perplexity <= 21.80 on the OpenWebText eval split for GenMD4,
against <= 22.13 for MD4-S. Not run at scale here.
"""

from md4.configs.genmd4 import as_genmd4
from md4.configs.md4 import openwebtext


def get_config():
  config = as_genmd4(openwebtext.get_config())
  config.data.vocab_size = 50_259
  return config
