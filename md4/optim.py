"""Optimizer, learning-rate schedule and EMA of the parameters."""

import collections
import itertools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

LR_SCHEDULES = ('cosine', 'linear', 'constant')
OPTIMIZERS = ('adamw', 'muon')
ADAM_B1 = 0.9
MUON_BETA = 0.95  # Muon's (Nesterov) momentum
NS_COEFFS = (3.4445, -4.7750, 2.0315)  # Newton-Schulz quintic (a, b, c), Jordan et al.'s
NS_STEPS = 5
NS_EPS = 1e-8
# Operands of the Newton-Schulz products (accumulated in float32), opt.muon_dtype.
MUON_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
# The transformer blocks' matrices that Muon orthogonalises: (module, parameter) names of
# md4.networks.transformer, each [fan_in, fan_out] (with a leading layer axis when scanned).
MUON_MATRICES = {('attention', name) for name in ('wq', 'wk', 'wv', 'wo')} | {
    ('feed_forward', name) for name in ('w1', 'w2', 'w3')}
# Which parameters weight decay applies to (opt.weight_decay_mask): matrices only (kernels and
# embeddings, not norm scales, biases or GenMD4's schedule powers), or every parameter, as
# the original release's optax.adamw does.
DECAY_MASKS = {
    'matrices': lambda params: jax.tree.map(lambda p: p.ndim > 1, params),
    'all': None,
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


def muon_axes(path, x):
  """(batch, reduction, output) axes of a block matrix in MUON_MATRICES, or None (AdamW)."""
  names = tuple(getattr(k, 'key', None) for k in path[-2:])
  if names not in MUON_MATRICES or x.ndim not in (2, 3):
    return None
  return tuple(range(x.ndim - 2)), (x.ndim - 2,), (x.ndim - 1,)


def muon_labels(params):
  """'muon' for each block matrix Muon orthogonalises (`muon_axes`), 'adamw' elsewhere."""
  return jax.tree_util.tree_map_with_path(
      lambda path, x: 'adamw' if muon_axes(path, x) is None else 'muon', params)


def newton_schulz(x, dtype=jnp.float32, steps=NS_STEPS):
  """Muon's orthogonalisation of a stack of wide matrices x [G, m, n], m ≤ n.

  X₀ = X/(‖X‖_F + ε), then `steps` times X ← aX + (bA + cA²)X with A = XXᵀ and
  (a, b, c) = NS_COEFFS (Jordan et al., 2024): the same iteration as optax.contrib's, with
  `dtype` operands accumulated in float32. Written over a leading axis of size 1 like
  md4.networks.matmul's products, so that XLA's CPU backend runs 16-bit operands on its AMX
  kernels.
  """
  a, b, c = NS_COEFFS
  dot = lambda spec, u, v: jnp.einsum(spec, u.astype(dtype)[None], v.astype(dtype)[None],
                                      preferred_element_type=jnp.float32)[0]
  x = x / (jnp.sqrt(jnp.sum(jnp.square(x), axis=(1, 2), keepdims=True)) + NS_EPS)
  for _ in range(steps):
    gram = dot('kgmn,kgpn->kgmp', x, x)
    poly = b * gram + c * dot('kgmp,kgpq->kgmq', gram, gram)
    x = a * x + dot('kgmp,kgpn->kgmn', poly, x)
  return x


def orthogonalise(updates, dtype=jnp.float32):
  """Each block kernel's matrices (MUON_MATRICES) orthogonalised, scaled by
  √max(1, fan_out/fan_in) for width transfer as optax.contrib.muon does; leaves labelled
  AdamW are returned as is.

  Within a block, matrices of one shape (transposed to the wide orientation first) are
  stacked into one Newton-Schulz batch: q, k, v and the attention output; W1, W3 and W2.
  A few larger products instead of many small ones, while each block's batch can still
  start as soon as its gradients are ready, during the backward pass of the blocks below
  it: faster on a CPU than one batch across blocks or one per kernel (docs/experiments.md).
  """
  paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(updates)
  groups = collections.defaultdict(list)  # (block, m, n) -> [(leaf index, [G, m, n])]
  layouts = {}
  for i, (path, u) in enumerate(paths_leaves):
    axes = muon_axes(path, u)
    if axes is None:
      continue
    batch, reduction, output = axes
    shape = lambda ax: tuple(u.shape[a] for a in ax)
    fan_in, fan_out = math.prod(shape(reduction)), math.prod(shape(output))
    order = batch + reduction + output
    m = u.transpose(order).reshape(-1, fan_in, fan_out)
    tall = fan_in > fan_out
    if tall:
      m = m.transpose(0, 2, 1)
    layouts[i] = (order, shape(order), tall, math.sqrt(max(1.0, fan_out / fan_in)))
    groups[(jax.tree_util.keystr(path[:-2]),) + m.shape[1:]].append((i, m))  # by block
  out = [u for _, u in paths_leaves]
  for members in groups.values():
    stacked = newton_schulz(jnp.concatenate([m for _, m in members]), dtype)
    offsets = [0] + list(itertools.accumulate(m.shape[0] for _, m in members))
    for (i, _), lo, hi in zip(members, offsets[:-1], offsets[1:]):
      order, shape, tall, scale = layouts[i]
      o = stacked[lo:hi]
      if tall:
        o = o.transpose(0, 2, 1)
      o = o.reshape(shape).transpose(tuple(order.index(a) for a in range(len(order))))
      out[i] = o * scale
  return jax.tree_util.tree_unflatten(treedef, out)


class MuonState(NamedTuple):
  count: jax.Array  # steps taken, int32
  mu: Any  # momentum, float32


def scale_by_muon(beta=MUON_BETA, dtype=jnp.float32):
  """Muon's direction (Jordan et al., 2024): Nesterov momentum with optax's bias
  corrections, û = β·μ̂ₜ₊₁ + (1 − β)·ĝₜ, then `orthogonalise`d."""

  def init_fn(params):
    return MuonState(jnp.zeros([], jnp.int32), jax.tree.map(jnp.zeros_like, params))

  def update_fn(updates, state, params=None):
    del params
    count = optax.safe_increment(state.count)
    mu = jax.tree.map(lambda m, g: beta * m + (1.0 - beta) * g, state.mu, updates)
    correction = lambda n: 1.0 - beta**n.astype(jnp.float32)
    mu_hat = jax.tree.map(
        lambda m, g: (beta * m / correction(optax.safe_increment(count))
                      + (1.0 - beta) * g / correction(count)), mu, updates)
    return orthogonalise(mu_hat, dtype), MuonState(count, mu)

  return optax.GradientTransformation(init_fn, update_fn)


def make_optimizer(opt_config, num_train_steps):
  """The optimizer of `opt.optimizer`, with optional global-norm clipping (grad_clip > 0).

  'adamw': AdamW(b1 = 0.9, b2 from config) on every parameter, decaying the weights that
  `opt.weight_decay_mask` names.
  'muon': Muon (Jordan et al., 2024: Nesterov momentum 0.95, its update orthogonalised by
  Newton-Schulz iterations) at `muon_learning_rate` on the transformer blocks' matrices, and
  AdamW with Nesterov momentum (as in optax's Muon) at `learning_rate` on the rest
  (embeddings, output layer, norms, time conditioning), a momentum that lowers the
  Shakespeare default's bits (docs/experiments.md). Both follow the same warm-up and decay.
  """
  if opt_config.optimizer not in OPTIMIZERS:
    raise ValueError(f'unknown opt.optimizer {opt_config.optimizer!r}; '
                     f'choose from {sorted(OPTIMIZERS)}')
  if opt_config.weight_decay_mask not in DECAY_MASKS:
    raise ValueError(f'unknown opt.weight_decay_mask {opt_config.weight_decay_mask!r}; '
                     f'choose from {sorted(DECAY_MASKS)}')
  use_muon = opt_config.optimizer == 'muon'
  opt = optax.adamw(learning_rate_schedule(opt_config, num_train_steps), b1=ADAM_B1,
                    b2=opt_config.b2, weight_decay=opt_config.weight_decay,
                    mask=DECAY_MASKS[opt_config.weight_decay_mask], nesterov=use_muon)
  if use_muon:
    if opt_config.muon_dtype not in MUON_DTYPES:
      raise ValueError(f'unknown opt.muon_dtype {opt_config.muon_dtype!r}; '
                       f'choose from {sorted(MUON_DTYPES)}')
    muon = optax.chain(
        scale_by_muon(MUON_BETA, MUON_DTYPES[opt_config.muon_dtype]),
        optax.add_decayed_weights(opt_config.weight_decay),
        optax.scale_by_learning_rate(learning_rate_schedule(
            opt_config, num_train_steps, opt_config.muon_learning_rate)))
    opt = optax.partition({'muon': muon, 'adamw': opt}, muon_labels)
  if opt_config.grad_clip > 0:
    return optax.chain(optax.clip_by_global_norm(opt_config.grad_clip), opt)
  return opt


def ema_decay(step, ema_rate, warmup=True):
  """Decay at `step` (0-based): ema_rate, or with `warmup` min(ema_rate, (1 + step)/(10 + step)).

  The warm-up makes the EMA an average over roughly the last tenth of a short run instead of
  staying at the initial weights: after 1000 steps at ema_rate 0.9999 a plain EMA still
  holds 90% of its start. The original release's EMA has no warm-up (opt.ema_warmup=False);
  after its 1M steps the two differ by a weight of e⁻¹⁰⁰ on the initial parameters.
  """
  if not warmup:
    return jnp.asarray(ema_rate, jnp.float32)
  step = jnp.asarray(step, jnp.float32)
  return jnp.minimum(ema_rate, (1.0 + step) / (10.0 + step))


def ema_update(ema_params, params, decay):
  """ema ← decay·ema + (1 − decay)·params."""
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema_params, params)
