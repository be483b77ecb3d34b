"""MD4 on CIFAR-10 pixels with a 28.7M-parameter UNet: the paper's image recipe.

Run:  python md4/main.py --config=md4/configs/md4/cifar10.py --workdir=expt/cifar10
Data: TFDS `cifar10`, prepared once with network access by
`tfds build cifar10 --data_dir=~/md4_data` (or --config.data.data_dir=DIR); training reads
it with download=False. Each image is 32×32×3 tokens of 256 values.
Hardware: sized for 8 accelerators (TPU v4/v5 or A100/H100; batch 256); use
--config.num_microbatches to fit fewer. 2M steps take several days.
Expected: the paper reports <= 2.75 bits per dimension on the CIFAR-10 test split.
From the paper's appendix: a UNet of about 28M parameters (this one, DDPM-style with three
levels, has 28.7M; tests/test_unet.py prints it), batch 256, 2M steps, dropout 0.1, and
256 sampling steps on the cosine grid. Learning rate and warm-up are this repo's choices.
`--config.data.class_conditional=True` trains a class-conditional model (samples: one
row per class; `--config.sampling.guidance_scale` for classifier-free guidance).
"""

from md4.configs import base


def get_config():
  config = base.get_config()
  config.data.dataset = 'cifar10'
  config.data.data_shape = (32, 32, 3)

  config.network = base.unet_network()
  config.network.feature_dim = 128
  config.network.ch_mult = (1, 2, 2)  # 32x32, 16x16, 8x8
  config.network.num_res_blocks = 2
  config.network.attn_resolutions = (16,)
  config.network.dropout_rate = 0.1

  config.opt.learning_rate = 2e-4
  config.opt.warmup_steps = 5000

  config.sampling.sampling_grid = 'cosine'
  config.sampling.timesteps = 256
  config.sampling.num_samples = 64

  config.batch_size = 256
  config.eval_batch_size = 500  # 20 batches cover the 10,000 test images
  config.num_train_steps = 2_000_000
  return config
