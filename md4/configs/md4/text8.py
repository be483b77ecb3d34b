"""MD4 on text8: the original release's model and recipe.

Run:  python md4/main.py --config=md4/configs/md4/text8.py --workdir=expt/text8
Data: text8.zip (http://mattmahoney.net/dc/text8.zip) in ~/md4_data or ~/md4_data/text8
(or --config.data.data_dir=DIR). As the original, training windows of 256 characters start
at every character of the first 90M (reshuffled each epoch); valid and test are the
non-overlapping windows of the next 5M and the last 5M.
Model: the original's, 88,734,272 parameters: 12 layers, 12 heads x 64, GLU, adaLN-zero,
depth-scaled MLP init, dropout 0.05, characters embedded in 64 dimensions and projected to
768, linear schedule, continuous time. Recipe: AdamW at 5e-4 (2,000 warm-up steps, cosine),
b2 0.999, weight decay 0.03 on every parameter, EMA 0.9999 from the first step, batch 512
x 256 characters, 1M steps, float32; samples take 1,000 reverse steps.
Hardware: sized for 8 accelerators (TPU v4/v5 or A100/H100); use
--config.num_microbatches to fit fewer, and --sharded with config.mesh_shape to shard the
model. `--config.network.dtype=bfloat16` is the fast option on accelerators (not the
original's); on CPUs with AMX, `--config.network.matmul_dtype=bfloat16`. 1M steps take
several days.
Expected: the paper reports <= 1.37 bits per character on the text8 test split. Not run at
scale here.
"""

from md4.configs.md4 import openwebtext


def get_config():
  config = openwebtext.get_config()
  config.data.dataset = 'text8'
  config.data.data_shape = (256,)
  config.data.train_window_stride = 1  # windows at every offset, as the original
  config.network.embed_dim = 64
  config.network.dropout_rate = 0.05
  config.opt.learning_rate = 5e-4
  config.eval_every_steps = 5_000
  return config
