"""Generation: the samplers, one table, each counting its network evaluations (NFE).

Every sampler maps a starting sequence z [B, *S] (the prior, or a partly masked input) to
samples with no mask, and returns with them the number of network evaluations each
example's chain needed, nfe [B]. Only masked positions change, so tokens given in z stay
fixed: that is conditional completion (prefix, suffix, infilling). Examples may have any
shape [*S] (sequences, or images [H, W, C]); class-conditional models take labels and
classifier-free guidance (two evaluations per call).

The reverse step of the paper maps z_t to z_s for s < t given μθ(z_t, t) and the model's
chance u(v) = P(a masked token becomes v | it is v under μθ) between t and s (MD4:
(α_s − α_t)/(1 − α_t) for every v). The samplers (`SAMPLERS`):

  ancestral      T steps of the paper's reverse step q(z_s | z_t, x = μθ): exact for the
                 model discretised to T steps. The last step (s = 0) takes α_0 as 1 and draws every mask
                 left from μθ (the schedule's α(0) = 1 − ε would leave each mask with chance
                 ε/(1 − α_t), for a reconstruction that the ELBO makes uniform).
  topp           ancestral with μθ cut to its top-p nucleus (Holtzman et al., 2020).
  mean           the two-stage step of the paper's App. G: x̂ ~ μθ, revealed w.p. u(x̂).
  first_hitting  one token per network call at the time it is revealed (Zheng et al., 2024,
                 arXiv:2409.02908): the exact continuous-time reverse process.
  confidence     MaskGIT / LLaDA parallel decoding: T steps, each revealing the masked
                 positions whose drawn tokens are the most likely: a heuristic, not the
                 model's distribution.
  remdm          ReMDM-cap remasking (Wang et al., 2025, arXiv:2503.00307): T steps
                 that also remask revealed tokens w.p. σ_t = min(η, (1 − α_s)/α_t) while
                 keeping the forward marginals of q.

Options that apply to several samplers (config.sampling, defaults in md4/configs/base.py):
temperature and top-k on μθ; categorical draws with float64-or-finer Gumbel noise
(`float64_draws`, see `gumbel`); caching (`cache`: skip the network when no token changed
since its last call; exact for a network that ignores t); semi-autoregressive block
decoding (`block_size`, see `generate`), which also makes sequences longer than the
training length. For an autoregressive model (md4.models.ar) 'ancestral' and 'topp' draw
left to right, one network call per position to fill.
"""

import dataclasses
import functools
from typing import Callable

from absl import logging
import jax
import jax.numpy as jnp

from md4.configs import base

# ------------------------------------------------------------------ categorical draws

_MANTISSA_BITS = 23


def _uniform_from_bits(mantissa_bits, zeros_1, zeros_2):
  """Y ~ U(0, 1/2) with float32's relative resolution at every scale down to 2^-66.

  Y = 2^-(k+2)·(1 + (m + ½)/2^23): k ∈ [0, 64] the leading zeros of the 64 bits
  (zeros_1, zeros_2), so P(k) = 2^-(k+1), and m the 23 low bits of mantissa_bits; within
  each dyadic interval [2^-(k+2), 2^-(k+1)) the 2^23 cells are equally likely, so Y is
  uniform (to the cell's width) however small it is. uint32 inputs of one shape.
  """
  k = jax.lax.clz(zeros_1) + jnp.where(zeros_1 == 0, jax.lax.clz(zeros_2), 0)
  m = (mantissa_bits & ((1 << _MANTISSA_BITS) - 1)).astype(jnp.float32)
  return jnp.ldexp(1.0 + (m + 0.5) / 2.0**_MANTISSA_BITS, -(k.astype(jnp.int32) + 2))


def gumbel_from_bits(bits, fine):
  """Standard Gumbel noise −log(−log U) from random uint32 bits [3, *shape] (fine) or [1, ...].

  float32 noise (fine=False) is the usual construction, U = j·2^-23 for 23 random bits j
  (jax.random.gumbel's): U < 1 − 2^-23, so the noise never exceeds 15.9 and a token whose
  log-probability is more than about 16 below the winner's can never be drawn; the tail
  of the categorical is under-sampled and the effective temperature lowered (Zheng et al.,
  2024, arXiv:2409.02908). fine=True builds the exponential E = −log U from a
  uniform Y resolved to float32's relative precision down to 2^-66 (`_uniform_from_bits`):
  one bit picks U = Y (E large) or U = 1 − Y (E = −log1p(−Y), small), so both tails of the
  noise are resolved beyond what a float64 uniform (2^-53) gives; the noise reaches 45.
  """
  if not fine:
    u = (bits[0] >> (32 - _MANTISSA_BITS)).astype(jnp.float32) / 2.0**_MANTISSA_BITS
    return -jnp.log(-jnp.log(jnp.maximum(u, jnp.finfo(jnp.float32).tiny)))
  y = _uniform_from_bits(bits[0], bits[1], bits[2])
  upper = (bits[0] >> 31) == 1
  e = jnp.where(upper, -jnp.log1p(-y), -jnp.log(y))
  return -jnp.log(e)


def gumbel(rng, shape, fine):
  """Standard Gumbel noise [*shape] in float32; see `gumbel_from_bits`."""
  bits = jax.random.bits(rng, (3 if fine else 1,) + tuple(shape), jnp.uint32)
  return gumbel_from_bits(bits, fine)


def categorical(rng, logits, fine):
  """One draw per row of unnormalised log-probabilities [..., K] (−inf: never) -> [...].

  Gumbel-max: argmax_k (logits_k + g_k). fine: noise as fine as float64's (`gumbel`).
  """
  return jnp.argmax(logits + gumbel(rng, logits.shape, fine), axis=-1)


# ------------------------------------------------------------------ filters of μθ


def nucleus(probs, topp):
  """Top-p filtering (Holtzman et al., 2020): keep the smallest most-likely set of mass ≥ p."""
  sorted_probs = jnp.sort(probs, axis=-1)[..., ::-1]
  mass_before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
  # The smallest kept probability: the last one whose preceding mass is still below p.
  n_keep = jnp.sum(mass_before < topp, axis=-1, keepdims=True)
  threshold = jnp.take_along_axis(sorted_probs, n_keep - 1, axis=-1)
  kept = jnp.where(probs >= threshold, probs, 0.0)
  return kept / jnp.sum(kept, axis=-1, keepdims=True)


def filtered_log_probs(logits, temperature=1.0, topk=0):
  """log μ̃ ∝ logits / temperature over the top-k tokens (topk 0: all), −inf elsewhere."""
  logits = logits / temperature
  if topk:
    kth = jax.lax.top_k(logits, topk)[0][..., -1:]
    logits = jnp.where(logits >= kth, logits, -jnp.inf)
  return jax.nn.log_softmax(logits, axis=-1)


# ------------------------------------------------------------------ reverse steps


def _reveal(rng, z, log_mu, unmask_prob, mask_id, todo, fine):
  """A masked position of `todo` becomes v w.p. μ(v)·u(v), stays masked otherwise.

  z [B, *S]; log_mu [B, *S, V] (normalised); unmask_prob u broadcastable to log_mu.
  """
  u = unmask_prob
  log_mu = jnp.broadcast_to(log_mu, z.shape + log_mu.shape[-1:])
  log_tokens = log_mu + jnp.log(u)  # [B, *S, V]
  if u.shape[-1] == 1:  # one u for every v: P(stay masked) = 1 − u
    log_stay = jnp.broadcast_to(jnp.log1p(-u), log_mu.shape[:-1] + (1,))
  else:
    stay = 1.0 - jnp.sum(jnp.exp(log_tokens), axis=-1, keepdims=True)
    log_stay = jnp.log(jnp.clip(stay, 0.0, 1.0))
  draw = categorical(rng, jnp.concatenate([log_tokens, log_stay], axis=-1), fine)
  return jnp.where((z == mask_id) & todo & (draw < log_mu.shape[-1]), draw, z)


def ancestral_step(rng, z, log_mu, unmask_prob, mask_id, topp, *, todo=True, fine=False):
  """The paper's reverse step q(z_s | z_t, x = μθ(z_t, t))."""
  del topp
  return _reveal(rng, z, log_mu, unmask_prob, mask_id, todo, fine)


def topp_step(rng, z, log_mu, unmask_prob, mask_id, topp, *, todo=True, fine=False):
  """Ancestral step with μθ restricted to its top-p nucleus."""
  log_mu = jnp.log(nucleus(jnp.exp(log_mu), topp))
  return _reveal(rng, z, log_mu, unmask_prob, mask_id, todo, fine)


def mean_step(rng, z, log_mu, unmask_prob, mask_id, topp, *, todo=True, fine=False):
  """Two-stage step (paper, App. G): draw x̂ ~ μθ, then reveal it w.p. u(x̂)."""
  del topp
  rng_x, rng_reveal = jax.random.split(rng)
  x_hat = categorical(rng_x, log_mu, fine)  # [B, *S]
  u = jnp.broadcast_to(unmask_prob, log_mu.shape)
  u_x = jnp.take_along_axis(u, x_hat[..., None], axis=-1)[..., 0]
  reveal = jax.random.bernoulli(rng_reveal, u_x)
  return jnp.where((z == mask_id) & todo & reveal, x_hat, z)


# Reverse steps z_t -> z_s: (rng, z, log μθ, u, mask_id, topp, *, todo, fine) -> z_s.
STEPS: dict[str, Callable] = {
    'ancestral': ancestral_step,
    'topp': topp_step,
    'mean': mean_step,
}

# u ∈ [0, 1] (fraction of the way from data to noise) -> t.
GRIDS: dict[str, Callable] = {
    'uniform': lambda u: u,
    'cosine': lambda u: jnp.cos(0.5 * jnp.pi * (1.0 - u)),
}


# ------------------------------------------------------------------ the model as seen


def guided_logits(model, variables, z, t, label, guidance_scale):
  """Logits of μθ(z_t, t), with labels [B] conditioned on and guided when w > 0.

  Classifier-free guidance (Ho & Salimans, 2022, eq. 6, on log-probabilities):
    log μ̃ = (1 + w)·log μθ(· | z_t, c) − w·log μθ(· | z_t, ∅) + const,
  ∅ the null class; w = 0 is plain conditional sampling. [B, *S] -> [B, *S, V].
  """
  logits = model.apply(variables, z, t, label=label, method=model.predict_logits)
  if guidance_scale == 0:
    return logits
  if label is None:
    raise ValueError(f'sampling.guidance_scale = {guidance_scale} needs a class-'
                     'conditional model and labels; set it to 0 or use labelled data')
  uncond = model.apply(variables, z, t, method=model.predict_logits)
  return ((1.0 + guidance_scale) * jax.nn.log_softmax(logits)
          - guidance_scale * jax.nn.log_softmax(uncond))


@dataclasses.dataclass(frozen=True)
class Options:
  """config.sampling, checked (see md4/configs/base.py for each key)."""
  sampler: str
  sampling_grid: str
  timesteps: int
  topp: float
  topk: int
  temperature: float
  guidance_scale: float
  float64_draws: bool
  cache: bool
  block_size: int
  confidence_noise: float
  remdm_eta: float


class _Net:
  """The model as the samplers see it: log μθ after the filters, u, α, the mask id."""

  def __init__(self, model, params, label, options, topp=1.0):
    self.model, self.label, self.options, self.topp = model, label, options, topp
    self.variables = {'params': params}
    self.mask_id = model.mask_id
    self.fine = options.float64_draws

  def log_mu(self, z, t):
    """Filtered log μθ(z, t): [B, *S] -> [B, *S, V]; t [B]. topp < 1: its nucleus."""
    logits = guided_logits(self.model, self.variables, z, t, self.label,
                           self.options.guidance_scale)
    log_mu = filtered_log_probs(logits, self.options.temperature, self.options.topk)
    if self.topp < 1.0:
      log_mu = jnp.log(nucleus(jnp.exp(log_mu), self.topp))
    return log_mu

  def unmask_prob(self, s, t, last):
    """u between t and s, broadcastable to [B, *S, V]; 1 at the last step (s = 0 is data)."""
    u = self.model.apply(self.variables, s, t, method=self.model.unmask_prob)
    return jnp.where(last, 1.0, u)

  @property
  def schedule(self):
    return self.model.schedule


def _count_per_example(mask):
  """[B, *S] bool -> [B] int32 counts."""
  return jnp.sum(mask.reshape(mask.shape[0], -1), axis=1).astype(jnp.int32)


def _changed(a, b):
  """[B] bool: whether example b differs between a and b [B, *S]."""
  return jnp.any((a != b).reshape(a.shape[0], -1), axis=1)


def _time_grid(options, i):
  """(t, s, last) of step i of T: t = grid((T − i)/T), s = grid((T − i − 1)/T)."""
  steps = options.timesteps
  grid = GRIDS[options.sampling_grid]
  return (grid((steps - i) / steps), grid((steps - i - 1) / steps), i == steps - 1)


# ------------------------------------------------------------------ samplers


def _step_loop(step_fn, net, rng, z, todo, options):
  """T reverse steps from t = 1 to 0; with options.cache, a step whose z no example changed
  since the network's last call reuses that call's μθ (exact iff the network ignores t).

  Returns (z, nfe [B]); an example's count is the calls its own chain needed.
  """
  batch = z.shape[0]

  def body(i, carry):
    t, s, last = _time_grid(options, i)
    t_b = jnp.full((batch,), t)
    if options.cache:  # carry: z, nfe, the z of the last call and its log μθ
      z, nfe, called_z, called = carry
      changed = _changed(z, called_z)
      log_mu = jax.lax.cond(jnp.any(changed), lambda: net.log_mu(z, t_b), lambda: called)
      nfe, extra = nfe + changed, (z, log_mu)
    else:
      z, nfe = carry
      log_mu, nfe, extra = net.log_mu(z, t_b), nfe + 1, ()
    u = net.unmask_prob(jnp.full((batch,), s), t_b, last)
    z = step_fn(jax.random.fold_in(rng, i), z, log_mu, u, todo=todo, last=last, s=s, t=t)
    return (z, nfe) + extra

  init = (z, jnp.zeros((batch,), jnp.int32))
  if options.cache:
    log_mu_shape = jax.eval_shape(net.log_mu, z, jnp.zeros((batch,))).shape
    init += (jnp.full_like(z, -1), jnp.zeros(log_mu_shape, jnp.float32))
  return jax.lax.fori_loop(0, options.timesteps, body, init)[:2]


def _reverse_step_sampler(name):
  """A sampler that runs STEPS[name] over the time grid."""
  step = STEPS[name]

  def sampler(net, rng, z, todo, options):
    def step_fn(rng, z, log_mu, u, *, todo, last, s, t):
      del last, s, t
      return step(rng, z, log_mu, u, net.mask_id, options.topp, todo=todo, fine=net.fine)
    return _step_loop(step_fn, net, rng, z, todo, options)

  sampler.__doc__ = f'T reverse steps of `{step.__name__}`.'
  return sampler


def remdm_step(rng, z, log_mu, alpha_s, alpha_t, eta, mask_id, *, todo=True, fine=False):
  """The ReMDM reverse step (Wang et al., 2025, arXiv:2503.00307) with ReMDM-cap's σ_t.

  With σ_t = min(η, σ_max), σ_max = (1 − α_s)/α_t, a revealed token of `todo` is remasked
  w.p. σ_t and a masked one becomes x ~ μθ w.p. (α_s − (1 − σ_t)·α_t)/(1 − α_t), so that
  q(z_s | x) keeps the forward marginal α_s. σ = 0 (η = 0, or α_s = 1) is the ancestral
  step. Scalars alpha_s, alpha_t.
  """
  sigma = jnp.minimum(eta, (1.0 - alpha_s) / alpha_t)
  reveal = jnp.clip((alpha_s - (1.0 - sigma) * alpha_t) / (1.0 - alpha_t), 0.0, 1.0)
  z_s = _reveal(rng, z, log_mu, jnp.full((1,) * log_mu.ndim, reveal), mask_id,
                todo, fine)
  remask = todo & (z != mask_id) & jax.random.bernoulli(
      jax.random.fold_in(rng, 1), sigma, z.shape)
  return jnp.where(remask, mask_id, z_s)


def remdm(net, rng, z, todo, options):
  """T ReMDM-cap steps (`remdm_step`, η = options.remdm_eta); the last one (α_s = 1) reveals
  every mask left and remasks none. Tokens given in z are never remasked. Needs one
  schedule α for every token (MD4).
  """
  schedule = net.schedule

  def step_fn(rng, z, log_mu, u, *, todo, last, s, t):
    del u
    alpha_s = jnp.where(last, 1.0, schedule.alpha(s))
    return remdm_step(rng, z, log_mu, alpha_s, schedule.alpha(t), options.remdm_eta,
                      net.mask_id, todo=todo, fine=net.fine)

  return _step_loop(step_fn, net, rng, z, todo, options)


def first_hitting(net, rng, z, todo, options):
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
  schedule = net.schedule
  batch = z.shape[0]
  eps = 1.0 - schedule.alpha(0.0)  # 1 − α(0)

  def remaining(z):
    return todo & (z == net.mask_id)

  def body(carry):
    z, t, nfe, i = carry
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
    token = categorical(rng_token, row, net.fine)
    flat = z.reshape(batch, -1)
    old = jnp.take_along_axis(flat, where[:, None], axis=1)[:, 0]
    flat = flat.at[jnp.arange(batch), where].set(jnp.where(active, token, old))
    return (flat.reshape(z.shape), jnp.where(active, r, t), nfe + active,
            i + 1)

  init = (z, jnp.ones((batch,)), jnp.zeros((batch,), jnp.int32), 0)
  z, _, nfe, _ = jax.lax.while_loop(lambda c: jnp.any(remaining(c[0])), body, init)
  return z, nfe


def confidence(net, rng, z, todo, options):
  """Confidence-based parallel decoding (MaskGIT: Chang et al., 2022; LLaDA's low-confidence
  remasking: Nie et al., 2025).

  Step i of T draws x̂ ~ μθ at every masked position and reveals the k_i whose x̂ is most
  likely (log μθ(x̂), plus confidence_noise·(1 − (i+1)/T)·Gumbel as MaskGIT's annealed
  choice temperature); the rest stay masked. k_i follows the time grid: after step i a
  fraction s_i = grid((T − i − 1)/T) of the example's M masks is left, ⌊M·s_i⌋ (MaskGIT's
  cosine schedule with the cosine grid, LLaDA's equal counts with the uniform one).
  A heuristic: not the model's distribution.
  """
  batch = z.shape[0]
  masks_at_start = _count_per_example(todo & (z == net.mask_id))  # [B]

  def body(i, carry):
    z, nfe = carry
    t, s, last = _time_grid(options, i)
    rng_x, rng_noise = jax.random.split(jax.random.fold_in(rng, i))
    left = todo & (z == net.mask_id)
    log_mu = net.log_mu(z, jnp.full((batch,), t))
    x_hat = categorical(rng_x, log_mu, net.fine)
    score = jnp.take_along_axis(log_mu, x_hat[..., None], axis=-1)[..., 0]
    if options.confidence_noise:
      score += (options.confidence_noise * (1.0 - (i + 1) / options.timesteps)
                * gumbel(rng_noise, score.shape, False))
    score = jnp.where(left, score, -jnp.inf).reshape(batch, -1)
    keep = jnp.where(last, 0, jnp.floor(masks_at_start * s)).astype(jnp.int32)
    k = _count_per_example(left) - keep  # [B]
    rank = jnp.argsort(jnp.argsort(-score, axis=1), axis=1).reshape(z.shape)
    reveal = left & (rank < k.reshape((-1,) + (1,) * (z.ndim - 1)))
    return jnp.where(reveal, x_hat, z), nfe + jnp.any(left.reshape(batch, -1), axis=1)

  return jax.lax.fori_loop(0, options.timesteps, body,
                           (z, jnp.zeros((batch,), jnp.int32)))


def autoregressive(net, rng, z, todo, options):
  """Left to right for an autoregressive model: position i ~ μ(· | z_<i) if it is to fill.

  A position given in z costs no network call. NFE = the number of positions to fill.
  """
  del options
  batch, length = z.shape

  def body(i, carry):
    z, nfe = carry
    need = todo[:, i] & (z[:, i] == net.mask_id)  # [B]
    row = jax.lax.cond(
        jnp.any(need), lambda: net.log_mu(z, jnp.zeros((batch,)))[:, i],
        lambda: jnp.zeros((batch, net.model.vocab_size)))
    token = categorical(jax.random.fold_in(rng, i), row, net.fine)
    return z.at[:, i].set(jnp.where(need, token, z[:, i])), nfe + need

  return jax.lax.fori_loop(0, length, body, (z, jnp.zeros((batch,), jnp.int32)))


# Sampler name -> (net, rng, z [B, *S], todo [B, *S] bool, options) -> (z, nfe [B]).
SAMPLERS: dict[str, Callable] = {
    'ancestral': _reverse_step_sampler('ancestral'),
    'topp': _reverse_step_sampler('topp'),
    'mean': _reverse_step_sampler('mean'),
    'first_hitting': first_hitting,
    'confidence': confidence,
    'remdm': remdm,
}
# Samplers of an autoregressive model: left to right, with the nucleus for 'topp'.
AR_SAMPLERS = ('ancestral', 'topp')
# Samplers that need one masking schedule for every token (model.schedule).
SCALAR_SCHEDULE_SAMPLERS = ('first_hitting', 'remdm')


def _blockwise(sampler, net, rng, z, todo, options, window):
  """Semi-autoregressive decoding: blocks of options.block_size positions, left to right.

  Block j fills positions [j·b, (j+1)·b) with `sampler`, the network seeing a window of
  `window` positions (the training length) that ends at the block, or the first `window`
  positions while the block lies in them (later positions stay masked then). So sequences
  longer than the window are made a block at a time, each block conditioned on the
  window − b tokens before it. An approximation for any network: the model defines no
  such distribution, and a time-conditioned network sees, at t = 1, a window that is
  not all masked.
  """
  batch, length = z.shape
  block = options.block_size
  width = min(window, length)
  num_blocks = -(-length // block)

  def body(j, carry):
    z, nfe = carry
    lo, hi = j * block, jnp.minimum((j + 1) * block, length)
    start = jnp.clip(hi - width, 0, length - width)
    z_w = jax.lax.dynamic_slice(z, (0, start), (batch, width))
    pos = start + jnp.arange(width)
    todo_w = jax.lax.dynamic_slice(todo, (0, start), (batch, width)) & (
        pos >= lo) & (pos < hi)
    z_w, n = sampler(net, jax.random.fold_in(rng, j), z_w, todo_w, options)
    return jax.lax.dynamic_update_slice(z, z_w, (0, start)), nfe + n

  return jax.lax.fori_loop(0, num_blocks, body, (z, jnp.zeros((batch,), jnp.int32)))


def _lookup(table, name, what):
  if name not in table:
    raise ValueError(f'unknown {what} {name!r}; choose from {sorted(table)}')
  return table[name]


def options_from_config(sampling_config) -> Options:
  """config.sampling over base.py's defaults, checked: raises ValueError naming the key."""
  merged = base.get_config().sampling
  for key, value in sampling_config.items():
    if key not in merged:
      raise ValueError(f'unknown key sampling.{key}; choose from {sorted(merged)}')
    merged[key] = value
  fields = {f.name for f in dataclasses.fields(Options)}
  o = Options(**{k: v for k, v in merged.items() if k in fields})
  _lookup(SAMPLERS, o.sampler, 'sampler')
  _lookup(GRIDS, o.sampling_grid, 'sampling grid')
  checks = (
      (0.0 < o.topp <= 1.0, f'sampling.topp must be in (0, 1], got {o.topp}'),
      (o.timesteps >= 1, f'sampling.timesteps must be >= 1, got {o.timesteps}'),
      (o.guidance_scale >= 0,
       f'sampling.guidance_scale must be >= 0, got {o.guidance_scale}'),
      (o.temperature > 0, f'sampling.temperature must be > 0, got {o.temperature}'),
      (o.topk >= 0, f'sampling.topk must be >= 0 (0: every token), got {o.topk}'),
      (o.block_size >= 0, f'sampling.block_size must be >= 0 (0: no blocks), got'
       f' {o.block_size}'),
      (o.confidence_noise >= 0,
       f'sampling.confidence_noise must be >= 0, got {o.confidence_noise}'),
      (0.0 <= o.remdm_eta <= 1.0, f'sampling.remdm_eta must be in [0, 1], got'
       f' {o.remdm_eta}'),
      (not o.cache or o.sampler in STEPS or o.sampler == 'remdm',
       f'sampling.cache skips network calls between reverse steps that change nothing;'
       f' sampler {o.sampler!r} changes the sequence at every call: set cache=False'),
  )
  for ok, message in checks:
    if not ok:
      raise ValueError(message)
  return o


def check_model(model, options: Options):
  """Raises ValueError when `options` cannot sample `model`; warns where they approximate."""
  name = options.sampler
  if getattr(model, 'autoregressive', False):
    if name not in AR_SAMPLERS or options.block_size or options.cache:
      raise ValueError(f'an autoregressive model samples left to right with sampler one of'
                       f' {list(AR_SAMPLERS)}, without block_size or cache; got {name!r}')
    return
  if name in SCALAR_SCHEDULE_SAMPLERS and not hasattr(model, 'schedule'):
    raise ValueError(f'sampler {name!r} needs one masking schedule for every token'
                     f" (model_type 'md4'); {type(model).__name__} has per-token schedules")
  if options.block_size and len(model.data_shape) != 1:
    raise ValueError(f'sampling.block_size decodes sequences block by block; data of shape'
                     f' {model.data_shape} (images) has no order to follow: set it to 0')
  if options.block_size > model.data_shape[0]:
    raise ValueError(f'sampling.block_size {options.block_size} exceeds the training length'
                     f' {model.data_shape[0]}, the widest window the network sees')
  if options.cache and getattr(model.network, 'time_features', None) != 'none':
    logging.warning(
        'sampling.cache reuses μθ(z, t′) from an earlier time t′ when no token changed: '
        "exact only for a network that ignores t (network.time_features='none'); this "
        'network conditions on t, so cached steps approximate.')


def generate(model, params, rng, z, label=None, *, options: Options):
  """Samples from z (t = 1, or a partly masked input) with options.sampler.

  Args:
    model: an unbound MD4-style module (predict_logits, unmask_prob, mask_id), or an
      autoregressive one (md4.models.ar).
    params: its parameters (the EMA ones for evaluation).
    rng: key.
    z: [B, *S] starting tokens: a prior draw, or a partly masked input to complete. With
      block decoding, sequences may be longer than the training length.
    label: [B] classes for a class-conditional model, or None.
    options: see `options_from_config`.
  Returns:
    ([B, *S] token ids with no mask, nfe [B]): the network evaluations each example's chain
    needed (two per call with guidance).
  """
  todo = z == model.mask_id
  if getattr(model, 'autoregressive', False):
    topp = options.topp if options.sampler == 'topp' else 1.0
    z, nfe = autoregressive(_Net(model, params, label, options, topp), rng, z, todo,
                            options)
    return z, nfe * (2 if options.guidance_scale else 1)
  net = _Net(model, params, label, options)
  if options.block_size:
    z, nfe = _blockwise(SAMPLERS[options.sampler], net, rng, z, todo, options,
                        model.data_shape[0])
  else:
    z, nfe = SAMPLERS[options.sampler](net, rng, z, todo, options)
  return z, nfe * (2 if options.guidance_scale else 1)


def make_sampler(model, sampling_config):
  """(params, rng, z, label=None) -> (samples, nfe [B]) for config.sampling; checks it."""
  options = options_from_config(sampling_config)
  check_model(model, options)
  return functools.partial(generate, model, options=options)


def make_generate_fn(model, sampling_config):
  """(params, rng, z, label=None) -> samples [B, *S] for config.sampling; checks it."""
  sample = make_sampler(model, sampling_config)
  return lambda *args, **kwargs: sample(*args, **kwargs)[0]

