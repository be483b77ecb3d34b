"""MD4 on 64×64 ImageNet pixels with a 201M-parameter U-ViT: the paper's recipe.

Run:  python md4/main.py --config=md4/configs/md4/imagenet64.py --workdir=expt/imagenet64
Data: TFDS `downsampled_imagenet/64x64` (van den Oord et al.'s, the likelihood benchmark),
prepared once with network access by
`tfds build downsampled_imagenet/64x64 --data_dir=~/md4_data` (or --config.data.data_dir);
training reads it with download=False. Every host holds the 1.28M training images in memory
as uint8 (15.7 GB). With --config.data.class_conditional=True the data is TFDS
`imagenet_resized/64x64` instead (Chrabaszcz et al.'s, with labels; build it the same way)
and the model is class-conditional with classifier-free guidance at sampling time
(--config.sampling.guidance_scale).
Hardware: sized for 16-32 accelerators (TPU v4/v5 or A100/H100; batch 512); use
--config.num_microbatches to fit fewer, --sharded to shard the parameters. 2M steps take
weeks.
Expected: the paper reports <= 3.40 bits per dimension on the validation split.
From the paper's appendix: a U-ViT of about 198M parameters (this one has 201.0M;
tests/test_unet.py prints it), batch 512, 2M steps. The level layout, learning rate and
warm-up are this repo's choices.
"""

from md4.configs import base


def get_config():
  config = base.get_config()
  config.data.dataset = 'imagenet64'
  config.data.data_shape = (64, 64, 3)

  config.network = base.unet_network('uvit')
  config.network.feature_dim = 128
  config.network.ch_mult = (1, 2, 2)  # 64x64, 32x32, 16x16: 256 transformer positions
  config.network.num_res_blocks = 2
  config.network.n_dit_layers = 11
  config.network.dit_hidden_size = 1024
  config.network.dit_num_heads = 16
  config.network.dropout_rate = 0.0

  config.opt.learning_rate = 2e-4
  config.opt.warmup_steps = 5000

  config.sampling.sampling_grid = 'cosine'
  config.sampling.timesteps = 256
  config.sampling.num_samples = 64

  config.batch_size = 512
  config.eval_batch_size = 500  # 100 batches cover the 50,000 validation images
  config.num_train_steps = 2_000_000
  return config
