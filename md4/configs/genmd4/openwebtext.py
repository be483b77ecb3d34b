"""GenMD4 (learned per-token masking schedules) on OpenWebText: the paper's recipe.

Prepare:  python prepare_openwebtext_data.py --data_dir=~/md4_data   (GPT-2 tokens, once)
Run:      python md4/main.py --config=md4/configs/genmd4/openwebtext.py --workdir=expt/genmd4_owt
Everything but the model is MD4-S (md4/configs/md4/openwebtext.py): 12 layers, 12 heads x 64,
length 1024, batch 512, 1M steps. Each step runs the network on two masks per example (the
RLOO gradient), so twice MD4-S's network work.
Hardware: a TPU v5 / H100 pod slice of 16+ chips; --config.num_microbatches to fit fewer.
Expected: the paper reports perplexity <= 21.80 on the OpenWebText eval split for GenMD4,
against <= 22.13 for MD4-S. Not run here.
"""

from md4.configs.genmd4 import as_genmd4
from md4.configs.md4 import openwebtext


def get_config():
  return as_genmd4(openwebtext.get_config())
