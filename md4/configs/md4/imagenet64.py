"""MD4 on 64×64 ImageNet pixels with the paper's U-ViT and recipe (the original release's).

Run:  python md4/main.py --config=md4/configs/md4/imagenet64.py --workdir=expt/imagenet64
The paper's best likelihood comes from other depths, 24 residual blocks and 12 DiT blocks
(198,279,680 parameters, the size the paper's appendix gives):
      python md4/main.py --config=md4/configs/md4/imagenet64.py:paper_best --workdir=...
(the same as --config.network.n_layers=24 --config.network.n_dit_layers=12).
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

Network (md4.networks.uvit.UViT, 204,595,712 parameters with the default depths, as the
original's; shapes checked in tests/test_image_networks.py): 8 residual blocks of 256
channels at 64×64, a DiT on 2×2 patches (1,024 tokens) of 20 blocks of width 768 with 12
heads and GELU MLPs of width 3,072, 9 residual blocks back; each pixel channel embedded in
256 dimensions; dropout 0.1 everywhere. The recipe, value for value the original config's:
linear masking schedule, continuous-time ELBO; AdamW with b1 0.9, b2 0.99, weight decay
0.01 and no gradient clipping, peak learning rate 2e-4 after a linear warm-up of 100 steps,
cosine decay to 0 at step 2M; batch 512; EMA of the parameters at 0.9999 for eval and
samples; 256 sampling steps on the cosine grid. Weight decay applies to every parameter and
the EMA has no warm-up, as the original's optax.adamw and EMA.
"""

from md4.configs import base

# Residual blocks before the DiT (one more after it) and DiT blocks, by config string.
DEPTHS = {
    'default': (8, 20),  # the original config's default
    'paper_best': (24, 12),  # what its comment names the paper's best likelihood
}


def get_config(depths='default'):
  if depths not in DEPTHS:
    raise ValueError(f'unknown depths {depths!r}; choose from {sorted(DEPTHS)}')
  config = base.get_config()
  config.data.dataset = 'imagenet64'
  config.data.data_shape = (64, 64, 3)

  config.model.noise_schedule = 'linear'
  config.model.cont_time = True

  config.network = base.unet_network('uvit')
  config.network.feature_dim = 256
  config.network.n_layers, config.network.n_dit_layers = DEPTHS[depths]
  config.network.dit_hidden_size = 768
  config.network.dit_num_heads = 12
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

  config.batch_size = 512
  config.eval_batch_size = 500  # 100 batches cover the 50,000 validation images
  config.num_train_steps = 2_000_000
  return config
