"""Optimizer, learning-rate schedule and EMA of the parameters."""

import jax
import jax.numpy as jnp
import optax

LR_SCHEDULES = ('cosine', 'linear', 'constant')
OPTIMIZERS = ('adamw', 'muon')
ADAM_B1 = 0.9
MUON_BETA = 0.95  # Muon's (Nesterov) momentum
# Which axes of a transformer block's kernel Muon orthogonalises, by the kernel's module name:
# (reduction axes, output axes); the remaining axes index separate matrices (q/k/v, gate/up,
# and the layer axis of scanned blocks).
MUON_AXES = {
    'qkv': (0, (2, 3)),  # [D, 3, H, K]: three D x HK matrices
    'attn_out': (0, 1),  # [HK, D]
    'mlp_in': (0, 2),  # [D, 2, F]: two D x F matrices
    'mlp_out': (0, 1),  # [F, D]
}


def learning_rate_schedule(opt_config, num_train_steps, lr=None):
  """Linear warm-up from 0 to `lr` (default `learning_rate`), then, by `opt.lr_schedule`,
  cosine or linear decay to 0 at the last step, or constant."""
  if opt_config.lr_schedule not in LR_SCHEDULES:
    raise ValueError(f'unknown opt.lr_schedule {opt_config.lr_schedule!r}; '
                     f'choose from {sorted(LR_SCHEDULES)}')
  lr = opt_config.learning_rate if lr is None else lr
  warmup = opt_config.warmup_steps
  if opt_config.lr_schedule == 'cosine':
    return optax.warmup_cosine_decay_schedule(
        0.0, lr, warmup, decay_steps=max(num_train_steps, warmup + 1))
  after = (optax.linear_schedule(lr, 0.0, max(num_train_steps - warmup, 1))
           if opt_config.lr_schedule == 'linear' else optax.constant_schedule(lr))
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), after], [warmup])


def _decay_mask(params):
  """Weight decay on matrices (kernels, embeddings), not on norm scales."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def _muon_dimension_numbers(params):
  """MuonDimensionNumbers for the transformer blocks' kernels (see MUON_AXES), None elsewhere."""
  def spec(path, x):
    names = [getattr(k, 'key', None) for k in path]
    if len(names) < 2 or names[-1] != 'kernel' or names[-2] not in MUON_AXES:
      return None
    reduction, output = MUON_AXES[names[-2]]
    shift = x.ndim - (max(jax.tree.leaves(output)) + 1)  # 1: a leading layer axis (scanned)
    if shift not in (0, 1):  # a same-named kernel of another shape (the UNet's qkv): AdamW
      return None
    moved = lambda a: tuple(i + shift for i in a) if isinstance(a, tuple) else a + shift
    return optax.contrib.MuonDimensionNumbers(moved(reduction), moved(output))
  return jax.tree_util.tree_map_with_path(spec, params)


def _muon_labels(params):
  return jax.tree.map(
      lambda spec: 'adamw' if spec is None else 'muon', _muon_dimension_numbers(params),
      is_leaf=lambda x: x is None or isinstance(x, optax.contrib.MuonDimensionNumbers))


def make_optimizer(opt_config, num_train_steps):
  """The optimizer of `opt.optimizer`, with optional global-norm clipping (grad_clip > 0).

  'adamw': AdamW(b1 = 0.9, b2 from config) on every parameter.
  'muon': Muon (Jordan et al., 2024: Nesterov momentum 0.95, its update orthogonalised by
  Newton-Schulz iterations) at `muon_learning_rate` on the transformer blocks' matrices, and
  AdamW with Nesterov momentum (as in optax's Muon) at `learning_rate` on the rest
  (embeddings, output layer, norms, time conditioning): on the Shakespeare default that
  momentum is worth 0.045 bits after 1000 steps. Both follow the same warm-up and decay.
  """
  if opt_config.optimizer not in OPTIMIZERS:
    raise ValueError(f'unknown opt.optimizer {opt_config.optimizer!r}; '
                     f'choose from {sorted(OPTIMIZERS)}')
  use_muon = opt_config.optimizer == 'muon'
  opt = optax.adamw(learning_rate_schedule(opt_config, num_train_steps), b1=ADAM_B1,
                    b2=opt_config.b2, weight_decay=opt_config.weight_decay, mask=_decay_mask,
                    nesterov=use_muon)
  if use_muon:
    muon = optax.contrib.muon(
        learning_rate_schedule(opt_config, num_train_steps, opt_config.muon_learning_rate),
        beta=MUON_BETA, weight_decay=opt_config.weight_decay,
        muon_weight_dimension_numbers=_muon_dimension_numbers)
    opt = optax.partition({'muon': muon, 'adamw': opt}, _muon_labels)
  if opt_config.grad_clip > 0:
    return optax.chain(optax.clip_by_global_norm(opt_config.grad_clip), opt)
  return opt


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
