"""MD4-S trained on FineWeb-Edu, evaluated on the OpenWebText eval split.

Prepare:  python prepare_openwebtext_data.py --dataset=fineweb_edu --data_dir=~/md4_data
          python prepare_openwebtext_data.py --data_dir=~/md4_data   (the eval split)
The first streams all of FineWeb-Edu, as the original (about 1.3T tokens: bound it with
--max_documents, or take the 10B-token sample with --hf_config=sample-10BT), each document
cut to its first 1023 tokens before <|endoftext|>.
Run:      python md4/main.py --config=md4/configs/md4/fineweb_edu.py --workdir=expt/fwe
Model and recipe: MD4-S (md4/configs/md4/openwebtext.py), as the original's FineWeb-Edu
config; only the training data differ.
Hardware: as MD4-S. Expected: the paper reports no FineWeb-Edu number; compare valid_loss
with MD4-S's (perplexity 2^valid_loss; MD4-S reaches <= 22.13). Not run at scale here.
"""

from md4.configs.md4 import openwebtext


def get_config():
  config = openwebtext.get_config()
  config.data.dataset = 'fineweb_edu'
  return config
