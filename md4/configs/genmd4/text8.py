"""GenMD4 (learned per-character masking schedules) on text8: the original's recipe.

Run:  python md4/main.py --config=md4/configs/genmd4/text8.py --workdir=expt/genmd4_text8
Data: text8.zip (http://mattmahoney.net/dc/text8.zip) in ~/md4_data or ~/md4_data/text8
(or --config.data.data_dir=DIR).
Everything but the model and the learning rate is MD4's text8 recipe
(md4/configs/md4/text8.py); AdamW at 3e-4, as the original's GenMD4 text8 config.
Hardware: sized for 8 accelerators (TPU v4/v5 or A100/H100; batch 512 x 256 characters,
two masks per example, so twice MD4's network work per step); use
--config.num_microbatches to fit fewer. 1M steps take several days.
Expected: the paper reports <= 1.34 bits per character on the text8 test split for GenMD4,
against <= 1.37 for MD4 (md4/configs/md4/text8.py). Not run at scale here.
"""

from md4.configs.genmd4 import as_genmd4
from md4.configs.md4 import text8


def get_config():
  config = as_genmd4(text8.get_config())
  config.opt.learning_rate = 3e-4
  return config
