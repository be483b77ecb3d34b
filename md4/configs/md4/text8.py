"""MD4 on text8: the paper's model and recipe.

Run:  python md4/main.py --config=md4/configs/md4/text8.py --workdir=expt/text8
Data: text8.zip (http://mattmahoney.net/dc/text8.zip) in ~/md4_data or ~/md4_data/text8
(or --config.data.data_dir=DIR).
Hardware: sized for 8 accelerators (TPU v4/v5 or A100/H100; batch 512 x 256 characters);
use --config.num_microbatches to fit fewer, and --sharded with config.mesh_shape to shard
the model. Computes in bfloat16; on CPUs use --config.network.dtype=float32, with
--config.network.matmul_dtype=bfloat16 where the CPU has AMX (twice as fast there).
1M steps take several days.
Expected: the paper reports <= 1.37 bits per character on the text8 test split.
"""

from md4.configs import base


def get_config():
  config = base.get_config()
  config.data.dataset = 'text8'
  config.data.data_shape = (256,)
  config.data.train_window_stride = 1

  config.model.noise_schedule = 'linear'
  config.model.cont_time = True

  config.network.n_layers = 12
  config.network.num_heads = 12
  config.network.feature_dim = 64
  config.network.mlp_type = 'glu'
  config.network.cond_type = 'adaln_zero'
  config.network.depth_scaled_init = True
  config.network.dropout_rate = 0.05
  config.network.dtype = 'bfloat16'

  config.opt.learning_rate = 3e-4
  config.opt.warmup_steps = 2000
  config.opt.lr_schedule = 'cosine'
  config.opt.weight_decay = 0.03
  config.opt.ema_rate = 0.9999

  config.batch_size = 512
  config.num_train_steps = 1_000_000
  return config
