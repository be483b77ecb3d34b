"""MD4-M on OpenWebText: MD4-S's recipe at 24 layers, 16 heads, cosine schedule.

Prepare:  python prepare_openwebtext_data.py --data_dir=~/md4_data   (GPT-2 tokens, once)
Run:      python md4/main.py --config=md4/configs/md4/openwebtext_medium.py \
              --workdir=expt/owt_medium --sharded
Model: the original's medium setting (its OpenWebText config's commented-out sweep),
416,240,960 parameters: 24 layers, 16 heads x 64 (width 1024, MLP 2752), cosine masking
schedule, no dropout, samples on a uniform time grid; everything else as MD4-S
(md4/configs/md4/openwebtext.py).
Hardware: about 3x MD4-S's compute per step; sized for a TPU v5 / H100 pod slice of 16+
chips; --sharded shards parameters and optimizer state.
Expected: the paper reports perplexity <= 16.64 on the OpenWebText eval split for MD4-M.
Not run at scale here.
"""

from md4.configs.md4 import openwebtext


def get_config():
  config = openwebtext.get_config()
  config.model.noise_schedule = 'cosine'
  config.network.n_layers = 24
  config.network.num_heads = 16
  config.network.feature_dim = 64
  config.network.dropout_rate = 0.0
  config.sampling.sampling_grid = 'uniform'
  return config
