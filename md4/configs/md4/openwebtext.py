"""MD4-S on OpenWebText: the original release's model and recipe.

Prepare:  python prepare_openwebtext_data.py --data_dir=~/md4_data   (GPT-2 tokens, once;
          holds out the original's split, 2% of the shuffled 1024-token rows)
Run:      python md4/main.py --config=md4/configs/md4/openwebtext.py --workdir=expt/owt
Model: the original's MD4-S, 165,857,344 parameters: 12 layers, 12 heads x 64, GLU,
adaLN-zero, depth-scaled MLP init, dropout 0.02, linear schedule, continuous time, length
1024 (GPT-2 BPE, 50,257 tokens). Recipe: AdamW at 3e-4 (2,000 warm-up steps, cosine),
b2 0.999, weight decay 0.03 on every parameter, EMA 0.9999 from the first step, batch 512,
1M steps, float32; samples take 1,000 reverse steps.
Hardware: batch 512 x 1024 tokens is sized for a TPU v5 / H100 pod slice of 8-16 chips;
use --config.num_microbatches (or --config.network.remat_policy=full) to fit fewer, and
--sharded with config.mesh_shape to shard the model. `--config.network.dtype=bfloat16`
is the fast option on accelerators (not the original's). 1M steps take days to weeks.
Expected: the paper reports perplexity <= 22.13 on the OpenWebText eval split after 1M
steps (2^valid_loss, the loss being bits per token). Not run at scale here.
"""

from md4.configs import base


def get_config():
  config = base.get_config()
  config.data.dataset = 'openwebtext'
  config.data.data_shape = (1024,)

  config.model.noise_schedule = 'linear'
  config.model.cont_time = True

  config.network.n_layers = 12
  config.network.num_heads = 12
  config.network.feature_dim = 64
  config.network.mlp_type = 'glu'
  config.network.cond_type = 'adaln_zero'
  config.network.depth_scaled_init = True
  config.network.dropout_rate = 0.02
  config.network.dtype = 'float32'

  config.opt.optimizer = 'adamw'
  config.opt.learning_rate = 3e-4
  config.opt.warmup_steps = 2000
  config.opt.lr_schedule = 'cosine'
  config.opt.b2 = 0.999
  config.opt.weight_decay = 0.03
  config.opt.weight_decay_mask = 'all'
  config.opt.grad_clip = 0.0
  config.opt.ema_rate = 0.9999
  config.opt.ema_warmup = False

  config.sampling.sampler = 'ancestral'
  config.sampling.sampling_grid = 'cosine'
  config.sampling.timesteps = 1000

  config.batch_size = 512
  config.eval_batch_size = 512
  config.num_train_steps = 1_000_000
  config.log_every_steps = 500
  config.eval_every_steps = 10_000
  config.checkpoint_every_steps = 5_000
  return config
