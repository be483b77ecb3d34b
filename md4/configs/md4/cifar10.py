"""MD4 on CIFAR-10 pixels with the paper's network and recipe (the original release's).

Run:  python md4/main.py --config=md4/configs/md4/cifar10.py --workdir=expt/cifar10
Data: TFDS `cifar10`, prepared once with network access by
`tfds build cifar10 --data_dir=~/md4_data` (or --config.data.data_dir=DIR); training reads
it with download=False. Each image is 32×32×3 tokens of 256 values.
Hardware: sized for 8 accelerators (TPU v4/v5 or A100/H100; batch 256); use
--config.num_microbatches to fit fewer. 2M steps take several days.
Expected: the paper reports <= 2.75 bits per dimension on the CIFAR-10 test split.

Network (md4.networks.unet.UNet, 28,427,520 parameters as the original's; the shapes are
checked against it in tests/test_image_networks.py): VDM's UNet, every block at 32×32 with
128 channels, 32 residual blocks down, 33 up, one attention layer in the middle, each pixel
channel embedded in 128 dimensions, dropout 0.1. The recipe, value for value the original
config's: linear masking schedule, continuous-time ELBO; AdamW with b1 0.9, b2 0.99, weight
decay 0.01 and no gradient clipping, peak learning rate 2e-4 after a linear warm-up of 100
steps, cosine decay to 0 at step 2M; batch 256; EMA of the parameters at 0.9999 for eval
and samples; 256 sampling steps on the cosine grid. Weight decay applies to every parameter
and the EMA has no warm-up, as the original's optax.adamw and EMA.
`--config.data.class_conditional=True` trains a class-conditional model (a label
embedding joins the time embedding; samples: one row per class;
`--config.sampling.guidance_scale` for classifier-free guidance).
"""

from md4.configs import base


def get_config():
  config = base.get_config()
  config.data.dataset = 'cifar10'
  config.data.data_shape = (32, 32, 3)

  config.model.noise_schedule = 'linear'
  config.model.cont_time = True

  config.network = base.unet_network('unet')
  config.network.feature_dim = 128
  config.network.n_layers = 32
  config.network.dropout_rate = 0.1

  config.opt.optimizer = 'adamw'
  config.opt.learning_rate = 2e-4
  config.opt.lr_schedule = 'cosine'
  config.opt.warmup_steps = 100
  config.opt.b2 = 0.99
  config.opt.weight_decay = 0.01
  config.opt.weight_decay_mask = 'all'
  config.opt.grad_clip = 0.0
  config.opt.ema_rate = 0.9999
  config.opt.ema_warmup = False

  config.sampling.sampler = 'ancestral'
  config.sampling.sampling_grid = 'cosine'
  config.sampling.timesteps = 256
  config.sampling.num_samples = 64

  config.batch_size = 256
  config.eval_batch_size = 500  # 20 batches cover the 10,000 test images
  config.num_train_steps = 2_000_000
  return config
