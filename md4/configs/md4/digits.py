"""MD4 on scikit-learn's 8×8 digits with a small UNet: the offline image default.

Run:  python md4/main.py --config=md4/configs/md4/digits.py --workdir=expt/digits
Hardware: 2 CPU cores (no accelerator needed). Data: `load_digits` from scikit-learn
(1,797 images, 17 grey levels, so 17 token ids per pixel), no download; the last 300 images
are held out. A uniform guess costs log2(17) = 4.09 bits per dimension; see the README for
the time this takes and what it reaches. `--config.data.class_conditional=True` trains a
class-conditional model whose sample grid has one row per digit.
"""

from md4.configs import base


def get_config():
  config = base.get_config()
  config.data.dataset = 'digits'
  config.data.data_shape = (8, 8, 1)

  config.network = base.unet_network('unet')
  config.network.feature_dim = 64
  config.network.n_layers = 4
  config.network.dropout_rate = 0.1

  config.opt.learning_rate = 2e-3
  config.opt.warmup_steps = 100
  config.opt.ema_rate = 0.999

  config.sampling.timesteps = 64
  config.sampling.num_samples = 100

  config.batch_size = 64
  config.eval_batch_size = 300
  config.num_train_steps = 1500
  config.log_every_steps = 100
  config.eval_every_steps = 500
  config.sample_every_steps = 1500
  config.checkpoint_every_steps = 500
  return config
