"""The samplers, one table: each turns a start z [B, *S] into a `Chain`, a loop of steps.

A chain's state is a dict holding at least 'z' (the current sequence) and 'nfe' [B] (the
network evaluations each example's chain has needed so far); `step` advances it by at
most one network call, until `done`. md4.sampling.Sampler runs a chain in one compiled
loop, or a few steps at a time so that the caller can stop between them.

Only masked positions of `todo` (the masks of the starting z) change, so tokens given in z
stay fixed: that is conditional completion (prefix, suffix, infilling).
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from md4.sampling import draws
from md4.sampling import steps as steps_lib

# u ∈ [0, 1] (fraction of the way from data to noise) -> t.
GRIDS: dict[str, Callable] = {
    'uniform': lambda u: u,
    'cosine': lambda u: jnp.cos(0.5 * jnp.pi * (1.0 - u)),
}


class Chain(NamedTuple):
  """A sampler as a loop over a state dict with 'z' [B, *S] and 'nfe' [B]."""
  init: Callable[[], dict]
  step: Callable[[dict], dict]
  done: Callable[[dict], jax.Array]  # bool scalar


def time_grid(options, i):
  """(t, s, last) of step i of T: t = grid((T − i)/T), s = grid((T − i − 1)/T)."""
  steps = options.timesteps
  grid = GRIDS[options.sampling_grid]
  return (grid((steps - i) / steps), grid((steps - i - 1) / steps), i == steps - 1)


def count_per_example(mask):
  """[B, *S] bool -> [B] int32 counts."""
  return jnp.sum(mask.reshape(mask.shape[0], -1), axis=1).astype(jnp.int32)


def changed(a, b):
  """[B] bool: whether example b differs between a and b [B, *S]."""
  return jnp.any((a != b).reshape(a.shape[0], -1), axis=1)


def _fixed_steps(options):
  return lambda state: state['i'] >= options.timesteps


def _start(z, **extra):
  return {'i': jnp.int32(0), 'z': z, 'nfe': jnp.zeros((z.shape[0],), jnp.int32), **extra}


def reverse_steps(name):
  """A sampler of T reverse steps `md4.sampling.steps.STEPS[name]` over the time grid.

  With options.cache, a step whose z no example changed since the network's last call
  reuses that call's μθ (exact iff the network ignores t); an example's NFE counts only
  the calls its own chain needed.
  """
  step_fn = steps_lib.STEPS[name]
  scalar_schedule = name in steps_lib.SCALAR_SCHEDULE_STEPS

  def sampler(net, rng, z, todo, options) -> Chain:
    batch = z.shape[0]

    def context(s, t, last):
      u = net.unmask_prob(jnp.full((batch,), s), jnp.full((batch,), t), last)
      alpha_s = alpha_t = None
      if scalar_schedule:  # the last step (s = 0) reaches the data: α_s = 1
        alpha_s = jnp.where(last, 1.0, net.schedule.alpha(s))
        alpha_t = net.schedule.alpha(t)
      return steps_lib.StepContext(net.mask_id, u, alpha_s, alpha_t, options.topp,
                                   options.remdm_eta, todo, net.fine)

    def init():
      if not options.cache:
        return _start(z)
      log_mu = jax.eval_shape(net.log_mu, z, jnp.zeros((batch,)))
      return _start(z, called_z=jnp.full_like(z, -1),
                    called=jnp.zeros(log_mu.shape, jnp.float32))

    def step(state):
      i, z_t = state['i'], state['z']
      t, s, last = time_grid(options, i)
      t_b = jnp.full((batch,), t)
      state = dict(state)
      if options.cache:  # the last call's z and log μθ
        new = changed(z_t, state['called_z'])
        log_mu = jax.lax.cond(jnp.any(new), lambda: net.log_mu(z_t, t_b),
                              lambda: state['called'])
        state.update(nfe=state['nfe'] + new, called_z=z_t, called=log_mu)
      else:
        log_mu = net.log_mu(z_t, t_b)
        state['nfe'] = state['nfe'] + 1
      z_s = step_fn(jax.random.fold_in(rng, i), z_t, log_mu, context(s, t, last))
      return {**state, 'i': i + 1, 'z': z_s}

    return Chain(init, step, _fixed_steps(options))

  sampler.__doc__ = f'T reverse steps of `{step_fn.__name__}`.'
  return sampler


def first_hitting(net, rng, z, todo, options) -> Chain:
  """One token per network call, at the time it is revealed (Zheng et al., 2024).

  With m masked positions at time t, each unmasks at an independent time of CDF
  (1 − α(r))/(1 − α(t)) on [0, t], so the next one is revealed at r with
  1 − α(r) = (1 − α(t))·v^(1/m), v ~ U(0, 1); it is a uniformly chosen masked position,
  and its token is drawn from μθ(z, r). This simulates the continuous-time reverse process
  (the T → ∞ limit of 'ancestral') exactly, for any network; for a network that ignores t
  it is exactly the model's any-order distribution. When r would fall below t(1 − ε), the
  rest are revealed one per call at t = 0. NFE = the number of masks to fill. Needs one
  schedule α for every token (MD4).
  """
  del options
  schedule = net.schedule
  batch = z.shape[0]
  eps = 1.0 - schedule.alpha(0.0)  # 1 − α(0)
  remaining = lambda z: todo & (z == net.mask_id)

  def step(state):
    i, z, t = state['i'], state['z'], state['t']
    rng_time, rng_where, rng_token = jax.random.split(jax.random.fold_in(rng, i), 3)
    left = remaining(z).reshape(batch, -1)  # [B, N]
    m = jnp.sum(left, axis=1)
    active = m > 0
    v = jax.random.uniform(rng_time, (batch,), minval=jnp.finfo(jnp.float32).tiny)
    masked_rate = (1.0 - schedule.alpha(t)) * v**(1.0 / jnp.maximum(m, 1))
    r = jnp.where(masked_rate > eps, schedule.time_of_alpha(1.0 - masked_rate), 0.0)
    log_mu = net.log_mu(z, r).reshape(batch, left.shape[1], -1)  # [B, N, V]
    where = jnp.argmax(jnp.where(left, jax.random.uniform(rng_where, left.shape), -1.0), 1)
    row = jnp.take_along_axis(log_mu, where[:, None, None], axis=1)[:, 0]  # [B, V]
    token = draws.categorical(rng_token, row, net.fine)
    flat = z.reshape(batch, -1)
    old = jnp.take_along_axis(flat, where[:, None], axis=1)[:, 0]
    flat = flat.at[jnp.arange(batch), where].set(jnp.where(active, token, old))
    return {'i': i + 1, 'z': flat.reshape(z.shape), 't': jnp.where(active, r, t),
            'nfe': state['nfe'] + active}

  return Chain(lambda: _start(z, t=jnp.ones((batch,))), step,
               lambda state: ~jnp.any(remaining(state['z'])))


# How parallel decoding ranks a masked position, higher first: (log μθ [B, *S, V], the token
# x̂ [B, *S] drawn there from μθ) -> a log-probability [B, *S].
CONFIDENCES: dict[str, Callable] = {
    # log max_v μθ(v): how sure the network is of the position, whatever was drawn there.
    'max': lambda log_mu, x_hat: jnp.max(log_mu, axis=-1),
    # log μθ(x̂) (LLaDA's, MaskGIT's): favours positions whose draw came out likely, which
    # biases the revealed tokens towards frequent ones (see `confidence`).
    'drawn': lambda log_mu, x_hat: jnp.take_along_axis(log_mu, x_hat[..., None],
                                                       axis=-1)[..., 0],
}


def rank_within(score, left, rng):
  """Rank [B, *S] of each `left` position by score within its example (0: the highest),
  ties in random order; positions not left rank after all left ones."""
  batch = score.shape[0]
  score = jnp.where(left, score, -jnp.inf).reshape(batch, -1)
  tie = jax.random.uniform(rng, score.shape)
  order = jnp.lexsort((tie, -score), axis=1)  # [B, N]: positions, best first
  return jnp.argsort(order, axis=1).reshape(left.shape)


def decoding_call(net, rng, z, options):
  """One network call of parallel decoding: (x̂ [B, *S] drawn from μθ, its confidence
  [B, *S] by options.confidence_score) with μθ at the time of z's masks (`Net.time_of_masks`),
  so that the network sees the noise level its input has, as in training."""
  log_mu = net.log_mu(z, net.time_of_masks(z))
  x_hat = draws.categorical(rng, log_mu, net.fine)
  return x_hat, CONFIDENCES[options.confidence_score](log_mu, x_hat)


def confidence(net, rng, z, todo, options) -> Chain:
  """Confidence-based parallel decoding (MaskGIT: Chang et al., 2022; LLaDA's low-confidence
  remasking: Nie et al., 2025).

  Step i of T draws x̂ ~ μθ at every masked position and reveals the k_i most confident
  (`CONFIDENCES[options.confidence_score]`, plus confidence_noise·(1 − (i+1)/T)·Gumbel as
  MaskGIT's annealed choice temperature; ties at random); the rest stay masked. k_i follows
  the time grid: after step i a fraction s_i = grid((T − i − 1)/T) of the example's M masks
  is left, ⌊M·s_i⌋ (MaskGIT's cosine schedule with the cosine grid, LLaDA's equal counts
  with the uniform one).

  Ranking by the drawn token's probability ('drawn', LLaDA's and MaskGIT's with sampling)
  makes which positions are revealed depend on what was drawn there: likely tokens (spaces)
  are revealed first, the context fills with them and the network predicts more, and
  unconditional text collapses into repetitions. Ranked by the position's certainty
  ('max'), each revealed token is an unbiased draw from μθ at its position; revealing
  several at once is still a heuristic, not the model's distribution.
  """
  batch = z.shape[0]
  masks_at_start = count_per_example(todo & (z == net.mask_id))  # [B]

  def step(state):
    i, z = state['i'], state['z']
    _, s, last = time_grid(options, i)
    rng_x, rng_noise, rng_tie = jax.random.split(jax.random.fold_in(rng, i), 3)
    left = todo & (z == net.mask_id)
    x_hat, score = decoding_call(net, rng_x, z, options)
    if options.confidence_noise:
      score += (options.confidence_noise * (1.0 - (i + 1) / options.timesteps)
                * draws.gumbel(rng_noise, score.shape, False))
    keep = jnp.where(last, 0, jnp.floor(masks_at_start * s)).astype(jnp.int32)
    k = count_per_example(left) - keep  # [B]
    rank = rank_within(score, left, rng_tie)
    revealed = left & (rank < k.reshape((-1,) + (1,) * (z.ndim - 1)))
    return {'i': i + 1, 'z': jnp.where(revealed, x_hat, z),
            'nfe': state['nfe'] + jnp.any(left.reshape(batch, -1), axis=1)}

  return Chain(lambda: _start(z), step, _fixed_steps(options))


def threshold(net, rng, z, todo, options) -> Chain:
  """Threshold parallel decoding (Fast-dLLM: Wu et al., 2025, arXiv:2505.22618, Sec. 3.3).

  Each network call draws x̂ ~ μθ at every masked position and reveals every one whose
  confidence (`CONFIDENCES[options.confidence_score]`, as a probability) reaches
  τ = options.threshold, and always the most confident one (ties at random), so a call
  reveals at least one token and an example with m masks needs at most m calls; the
  chain ends when no mask is left. NFE is data-dependent: few calls where the network
  is sure of many positions at once. Positions whose confidence passes τ are nearly
  determined, so drawing them together costs little against drawing them one by one
  (Fast-dLLM's Theorem 1); a heuristic nonetheless.
  """
  batch = z.shape[0]
  remaining = lambda z: todo & (z == net.mask_id)
  log_tau = jnp.log(options.threshold)

  def step(state):
    i, z = state['i'], state['z']
    rng_x, rng_tie = jax.random.split(jax.random.fold_in(rng, i))
    left = remaining(z)
    x_hat, score = decoding_call(net, rng_x, z, options)
    revealed = left & ((score >= log_tau) | (rank_within(score, left, rng_tie) == 0))
    return {'i': i + 1, 'z': jnp.where(revealed, x_hat, z),
            'nfe': state['nfe'] + jnp.any(left.reshape(batch, -1), axis=1)}

  return Chain(lambda: _start(z), step, lambda state: ~jnp.any(remaining(state['z'])))


def autoregressive(net, rng, z, todo, options) -> Chain:
  """Left to right for an autoregressive model: position i ~ μ(· | z_<i) if it is to fill.

  A position given in z costs no network call. NFE = the number of positions to fill.
  """
  del options
  batch, length = z.shape

  def step(state):
    i, z = state['i'], state['z']
    need = todo[:, i] & (z[:, i] == net.mask_id)  # [B]
    row = jax.lax.cond(
        jnp.any(need), lambda: net.log_mu(z, jnp.zeros((batch,)))[:, i],
        lambda: jnp.zeros((batch, net.model.vocab_size)))
    token = draws.categorical(jax.random.fold_in(rng, i), row, net.fine)
    return {'i': i + 1, 'z': z.at[:, i].set(jnp.where(need, token, z[:, i])),
            'nfe': state['nfe'] + need}

  return Chain(lambda: _start(z), step, lambda state: state['i'] >= length)


def blockwise(sampler, net, rng, z, todo, options, window) -> Chain:
  """Semi-autoregressive decoding: blocks of options.block_size positions, left to right.

  Block j fills positions [j·b, (j+1)·b) with `sampler` (key fold_in(rng, j)), the network
  seeing a window of `window` positions (the training length) that ends at the block, or
  the first `window` positions while the block lies in them (later positions stay masked
  then). So sequences longer than the window are made a block at a time, each block
  conditioned on the window − b tokens before it. An approximation for any network: the
  model defines no such distribution, and a time-conditioned network sees, at t = 1, a
  window that is not all masked. Each step of this chain is one step of the current
  block's sampler, or the move to the next block once that one is done.
  """
  batch, length = z.shape
  block = options.block_size
  width = min(window, length)
  num_blocks = -(-length // block)

  def block_chain(j, z_start):
    """Block j's sampler, from its window z_start [B, width] as the block began."""
    lo, hi = j * block, jnp.minimum((j + 1) * block, length)
    start = jnp.clip(hi - width, 0, length - width)
    pos = start + jnp.arange(width)
    todo_w = jax.lax.dynamic_slice(todo, (0, start), (batch, width)) & (
        pos >= lo) & (pos < hi)
    return start, sampler(net, jax.random.fold_in(rng, j), z_start, todo_w, options)

  def enter(j, z):
    """The state of block j's sampler at its start, within the whole sequence z."""
    start, _ = block_chain(j, z[:, :width])
    z_start = jax.lax.dynamic_slice(z, (0, start), (batch, width))
    return {'j': j, 'z': z, 'z_start': z_start,
            'inner': block_chain(j, z_start)[1].init()}

  def init():
    return {**enter(jnp.int32(0), z), 'nfe': jnp.zeros((batch,), jnp.int32)}

  def step(state):
    start, chain = block_chain(state['j'], state['z_start'])

    def advance():
      return {**state, 'inner': chain.step(state['inner'])}

    def next_block():
      inner = state['inner']
      z = jax.lax.dynamic_update_slice(state['z'], inner['z'], (0, start))
      return {**enter(state['j'] + 1, z), 'nfe': state['nfe'] + inner['nfe']}

    return jax.lax.cond(chain.done(state['inner']), next_block, advance)

  return Chain(init, step, lambda state: state['j'] >= num_blocks)


# Sampler name -> (net, rng, z [B, *S], todo [B, *S] bool, options) -> Chain.
SAMPLERS: dict[str, Callable[..., Chain]] = {
    **{name: reverse_steps(name) for name in steps_lib.STEPS},
    'first_hitting': first_hitting,
    'confidence': confidence,
    'threshold': threshold,
}
# Samplers made of the reverse steps of md4.sampling.steps.STEPS (the ones that can cache).
STEP_SAMPLERS = tuple(steps_lib.STEPS)
# Samplers of an autoregressive model: left to right, with the nucleus for 'topp'.
AR_SAMPLERS = ('ancestral', 'topp')
# Samplers that need one masking schedule for every token (model.schedule).
SCALAR_SCHEDULE_SAMPLERS = ('first_hitting',) + steps_lib.SCALAR_SCHEDULE_STEPS
