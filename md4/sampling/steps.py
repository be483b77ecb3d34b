"""Reverse steps z_t -> z_s (s < t), one table: each `step(rng, z, log_mu, ctx) -> z_s`.

The paper's reverse step draws z_s given z_t and μθ(z_t, t) with the model's chance
u(v) = P(a masked token becomes v | it is v under μθ) between t and s (MD4:
(α_s − α_t)/(1 − α_t) for every v). Only masked positions of `ctx.todo` change, except
in ReMDM, which may also remask revealed ones. Shapes: z [B, *S], log_mu [B, *S, V]
(normalised).
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from md4.sampling import draws
from md4.sampling import net as net_lib


class StepContext(NamedTuple):
  """What a reverse step needs besides z and log μθ."""
  mask_id: int
  unmask_prob: Any = None  # u, broadcastable to log_mu; 1 at the last step
  alpha_s: Any = None  # scalar α(s), α(t) of a model with one schedule (ReMDM)
  alpha_t: Any = None
  topp: float = 1.0  # nucleus mass of 'topp'
  remdm_eta: float = 0.0  # η of 'remdm'
  todo: Any = True  # [B, *S] bool, or True: positions that may change
  fine: bool = False  # float64-fine Gumbel noise (md4.sampling.draws)


def reveal(rng, z, log_mu, unmask_prob, mask_id, todo, fine):
  """A masked position of `todo` becomes v w.p. μ(v)·u(v), stays masked otherwise.

  fine: whether a position is revealed is drawn first, w.p. Σ_v μ(v)·u(v) (u itself when
  one u serves every v), then its token from μ·u normalised (`draws.categorical`'s exact
  draw), so no categorical over V + 1 options is built. Not fine: one float32 Gumbel-max
  over the V tokens and 'stay masked' (the earlier draw, kept bit for bit).
  z [B, *S]; log_mu [B, *S, V] (normalised); unmask_prob u broadcastable to log_mu.
  """
  u = unmask_prob
  log_mu = jnp.broadcast_to(log_mu, z.shape + log_mu.shape[-1:])
  draw = (_reveal_first if fine else _reveal_gumbel)(rng, log_mu, u)  # [B, *S]
  return jnp.where((z == mask_id) & todo & (draw < log_mu.shape[-1]), draw, z)


def _reveal_first(rng, log_mu, u):
  """Token drawn from μ·u where a Bernoulli of mass Σ μ·u reveals, V elsewhere."""
  rng_reveal, rng_token = jax.random.split(rng)
  if u.shape[-1] == 1:  # one u for every v: P(reveal) = u, the token ~ μ
    p_reveal, log_tokens = jnp.broadcast_to(u[..., 0], log_mu.shape[:-1]), log_mu
  else:
    log_tokens = log_mu + jnp.log(u)  # [B, *S, V]
    p_reveal = jnp.sum(jnp.exp(log_tokens), axis=-1)
  revealed = draws.bernoulli(rng_reveal, p_reveal, log_mu.shape[:-1], True)
  token = draws.categorical(rng_token, log_tokens, True)
  return jnp.where(revealed, token, log_mu.shape[-1])


def _reveal_gumbel(rng, log_mu, u):
  """One float32 Gumbel-max over [log μ + log u, log P(stay)]: the token, or V to stay."""
  log_tokens = log_mu + jnp.log(u)  # [B, *S, V]
  if u.shape[-1] == 1:  # one u for every v: P(stay masked) = 1 − u
    log_stay = jnp.broadcast_to(jnp.log1p(-u), log_mu.shape[:-1] + (1,))
  else:
    stay = 1.0 - jnp.sum(jnp.exp(log_tokens), axis=-1, keepdims=True)
    log_stay = jnp.log(jnp.clip(stay, 0.0, 1.0))
  return draws.categorical(rng, jnp.concatenate([log_tokens, log_stay], axis=-1), False)


def ancestral_step(rng, z, log_mu, ctx: StepContext):
  """The paper's reverse step q(z_s | z_t, x = μθ(z_t, t))."""
  return reveal(rng, z, log_mu, ctx.unmask_prob, ctx.mask_id, ctx.todo, ctx.fine)


def topp_step(rng, z, log_mu, ctx: StepContext):
  """Ancestral step with μθ restricted to its top-p nucleus (Holtzman et al., 2020)."""
  log_mu = jnp.log(net_lib.nucleus(jnp.exp(log_mu), ctx.topp))
  return reveal(rng, z, log_mu, ctx.unmask_prob, ctx.mask_id, ctx.todo, ctx.fine)


def mean_step(rng, z, log_mu, ctx: StepContext):
  """Two-stage step (paper, App. G): draw x̂ ~ μθ, then reveal it w.p. u(x̂)."""
  rng_x, rng_reveal = jax.random.split(rng)
  x_hat = draws.categorical(rng_x, log_mu, ctx.fine)  # [B, *S]
  u = jnp.broadcast_to(ctx.unmask_prob, log_mu.shape)
  u_x = jnp.take_along_axis(u, x_hat[..., None], axis=-1)[..., 0]
  revealed = draws.bernoulli(rng_reveal, u_x, u_x.shape, ctx.fine)
  return jnp.where((z == ctx.mask_id) & ctx.todo & revealed, x_hat, z)


def remdm_step(rng, z, log_mu, ctx: StepContext):
  """The ReMDM reverse step (Wang et al., 2025, arXiv:2503.00307) with ReMDM-cap's σ_t.

  With σ_t = min(η, σ_max), σ_max = (1 − α_s)/α_t, a revealed token of `todo` is remasked
  w.p. σ_t and a masked one becomes x ~ μθ w.p. (α_s − (1 − σ_t)·α_t)/(1 − α_t), so that
  q(z_s | x) keeps the forward marginal α_s. σ = 0 (η = 0, or α_s = 1) is the ancestral
  step. Needs scalar ctx.alpha_s and ctx.alpha_t (one schedule for every token).
  """
  alpha_s, alpha_t = ctx.alpha_s, ctx.alpha_t
  sigma = jnp.minimum(ctx.remdm_eta, (1.0 - alpha_s) / alpha_t)
  p_reveal = jnp.clip((alpha_s - (1.0 - sigma) * alpha_t) / (1.0 - alpha_t), 0.0, 1.0)
  z_s = reveal(rng, z, log_mu, jnp.full((1,) * log_mu.ndim, p_reveal), ctx.mask_id,
               ctx.todo, ctx.fine)
  remask = ctx.todo & (z != ctx.mask_id) & draws.bernoulli(
      jax.random.fold_in(rng, 1), sigma, z.shape, ctx.fine)
  return jnp.where(remask, ctx.mask_id, z_s)


# Reverse step name -> (rng, z [B, *S], log μθ [B, *S, V], StepContext) -> z_s [B, *S].
STEPS: dict[str, Callable] = {
    'ancestral': ancestral_step,
    'topp': topp_step,
    'mean': mean_step,
    'remdm': remdm_step,
}
# Steps that need one masking schedule for every token (ctx.alpha_s, ctx.alpha_t).
SCALAR_SCHEDULE_STEPS = ('remdm',)
