"""Optimizer, learning-rate schedule and EMA of the parameters."""

import jax
import jax.numpy as jnp
import optax

LR_SCHEDULES = ('cosine', 'constant')
ADAM_B1 = 0.9


def learning_rate_schedule(opt_config, num_train_steps):
  """Linear warm-up from 0 to `learning_rate`, then cosine decay to 0 at the last step, or constant."""
  if opt_config.lr_schedule not in LR_SCHEDULES:
    raise ValueError(f'unknown opt.lr_schedule {opt_config.lr_schedule!r}; '
                     f'choose from {sorted(LR_SCHEDULES)}')
  lr, warmup = opt_config.learning_rate, opt_config.warmup_steps
  if opt_config.lr_schedule == 'cosine':
    return optax.warmup_cosine_decay_schedule(
        0.0, lr, warmup, decay_steps=max(num_train_steps, warmup + 1))
  return optax.join_schedules(
      [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)],
      [warmup])


def _decay_mask(params):
  """Weight decay on matrices (kernels, embeddings), not on norm scales."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(opt_config, num_train_steps):
  """AdamW(b1 = 0.9, b2 from config) with optional global-norm clipping (grad_clip > 0)."""
  lr = learning_rate_schedule(opt_config, num_train_steps)
  adamw = optax.adamw(lr, b1=ADAM_B1, b2=opt_config.b2,
                      weight_decay=opt_config.weight_decay, mask=_decay_mask)
  if opt_config.grad_clip > 0:
    return optax.chain(optax.clip_by_global_norm(opt_config.grad_clip), adamw)
  return adamw


def ema_decay(step, ema_rate):
  """Decay at `step` (0-based): min(ema_rate, (1 + step)/(10 + step)).

  The warm-up makes the EMA an average over roughly the last tenth of a short run instead of
  staying at the initial weights: after 1000 steps at ema_rate 0.9999 a plain EMA still
  holds 90% of its start.
  """
  step = jnp.asarray(step, jnp.float32)
  return jnp.minimum(ema_rate, (1.0 + step) / (10.0 + step))


def ema_update(ema_params, params, decay):
  """ema ← decay·ema + (1 − decay)·params."""
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema_params, params)
