"""MD4 on scikit-learn's 8×8 digits with a shrunken CIFAR-10 UNet: the offline image default.

Run:  python md4/main.py --config=md4/configs/md4/digits.py --workdir=expt/digits
Hardware: 2 CPU cores (no accelerator needed). Data: `load_digits` from scikit-learn
(1,797 images, 17 grey levels, so 17 token ids per pixel), no download; the last 300 images
are held out. A uniform guess costs log2(17) = 4.09 bits per dimension; see the README for
the time this takes and what it reaches (1,500 steps: 1.73 bits per dimension).
`--config.data.class_conditional=True` trains a class-conditional model whose sample grid
has one row per digit.
Network: md4/configs/md4/cifar10.py's UNet with 32 channels instead of 128 and 4 residual
blocks down (5 up) instead of 32, 300,369 parameters; dropout 0.1 as there. For a run of
1,500 steps: AdamW at a peak rate of 2e-3 after 100 warm-up steps, b2 0.999, no weight
decay, and an EMA at 0.999.
"""

from md4.configs import base


def get_config():
  config = base.get_config()
  config.data.dataset = 'digits'
  config.data.data_shape = (8, 8, 1)

  config.network = base.unet_network('unet')
  config.network.feature_dim = 32
  config.network.n_layers = 4
  config.network.dropout_rate = 0.1

  config.opt.learning_rate = 2e-3
  config.opt.warmup_steps = 100
  config.opt.b2 = 0.999
  config.opt.weight_decay = 0.0
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
