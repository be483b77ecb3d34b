"""MD4: masked diffusion with a scalar masking schedule (Shi et al., 2024).

Notation follows the paper: x the data (token ids in [0, V)), m = V the mask id, z_t the
noised sequence, α(t) the schedule, μθ(z_t, t) the network's prediction of x.

The model returns per-example loss terms, in bits per token; the trainer reduces them.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from md4 import schedules


def call_network(network, z, t, label, train):
  """Logits of μθ(z_t, t[, label]); a backbone without labels is called without one."""
  if label is None:
    return network(z, t, train=train)
  return network(z, t, label=label, train=train)


ELBO_ESTIMATORS = ('time', 'mask_count')


def uniform_times(rng, batch_size, antithetic):
  """u ~ U(0, 1) per example [B]; antithetic: u_i = (u + i/B) mod 1 (Kingma et al., 2021)."""
  if antithetic:
    u = jax.random.uniform(rng, ())
    return jnp.mod(u + jnp.arange(batch_size) / batch_size, 1.0)
  return jax.random.uniform(rng, (batch_size,))


class MD4(nn.Module):
  """Masked diffusion model around a backbone `network(z_t, t, train) -> logits`."""
  network: nn.Module
  vocab_size: int  # V; the mask id is V
  data_shape: tuple[int, ...]
  noise_schedule: str = 'linear'  # a name in md4.schedules
  cont_time: bool = True  # continuous-time ELBO or the T-step one
  timesteps: int = 1000  # T of the discrete-time ELBO, when cont_time is False
  antithetic_time_sampling: bool = True
  # Monte-Carlo estimator of the continuous-time ELBO (both unbiased for the same value):
  # 'time' draws t and masks each token independently (the paper's); 'mask_count' draws the
  # number of masked tokens, which removes the 1/t variance at small t (see `mask_count_sample`).
  elbo_estimator: str = 'time'
  # Training only: the uniform draw u behind t (or behind the mask count) is raised to this
  # power, u ↦ u^p. p < 1 trains on more heavily masked examples (p = 0.7: 59% of tokens
  # masked on average instead of 50%) with the ELBO's weights unchanged, so the training loss
  # is the ELBO's integrand reweighted by (1/p)·u^((1−p)/p), no longer the ELBO itself. Eval
  # always draws u uniformly: the reported loss stays the negative ELBO.
  train_time_power: float = 1.0
  # Padded data (set from the dataset): the padding id, never masked and never counted in
  # the ELBO, and P(length = L) for L = 0..S, from which `sample_prior` draws the length.
  pad_id: int | None = None
  length_probs: tuple[float, ...] | None = None

  def __post_init__(self):
    schedules.MaskingSchedule(self.noise_schedule)  # raises on an unknown name
    if self.timesteps < 1:
      raise ValueError(f'model.timesteps must be >= 1, got {self.timesteps}')
    if not self.train_time_power > 0:
      raise ValueError(f'model.train_time_power must be > 0 (1: the ELBO), got'
                       f' {self.train_time_power}')
    if self.elbo_estimator not in ELBO_ESTIMATORS:
      raise ValueError(f'unknown model.elbo_estimator {self.elbo_estimator!r}; choose from'
                       f' {list(ELBO_ESTIMATORS)}')
    if self.elbo_estimator == 'mask_count' and not self.cont_time:
      raise ValueError("model.elbo_estimator 'mask_count' estimates the continuous-time"
                       " ELBO; set model.cont_time=True or use 'time'")
    if self.pad_id is not None and not (
        0 <= self.pad_id < self.vocab_size and len(self.data_shape) == 1
        and self.length_probs is not None
        and len(self.length_probs) == self.data_shape[0] + 1):
      raise ValueError(f'pad_id {self.pad_id} needs sequences (data_shape (L,), got'
                       f' {self.data_shape}), an id in [0, {self.vocab_size}) and L + 1'
                       ' length_probs')
    super().__post_init__()

  @property
  def schedule(self) -> schedules.MaskingSchedule:
    return schedules.MaskingSchedule(self.noise_schedule)

  @property
  def mask_id(self) -> int:
    return self.vocab_size

  def sample_times(self, batch_size, train=False):
    """t ~ U(0, 1) per example [B]; in training t = u^p with p = `train_time_power`."""
    u = uniform_times(self.make_rng('sample'), batch_size, self.antithetic_time_sampling)
    return u**self.train_time_power if train and self.train_time_power != 1.0 else u

  def is_padding(self, x):
    """[B, *S] bool: positions that hold the padding id (none without padding)."""
    return jnp.zeros(x.shape, bool) if self.pad_id is None else x == self.pad_id

  def num_tokens(self, x):
    """[B]: the tokens of each example that count in the ELBO, all but padding, at least 1."""
    return jnp.maximum(jnp.sum(~self.is_padding(x), axis=tuple(range(1, x.ndim))), 1)

  def forward_sample(self, x, t):
    """z_t ~ q(z_t | x): keep each token with probability α(t), else the mask id.

    Padding is always kept, so the ELBO is that of the real tokens given where padding is.
    """
    alpha_t = self.schedule.alpha(t).reshape((-1,) + (1,) * (x.ndim - 1))
    keep = jax.random.bernoulli(self.make_rng('sample'), alpha_t, x.shape)
    return jnp.where(keep | self.is_padding(x), x, self.mask_id)

  def mask_count_sample(self, x, train=False):
    """(t, z_t, weight) for the mask-count estimator of the continuous-time ELBO.

    With s = 1 − α(t) the masking rate, ds = −α′(t) dt, so for an example of n tokens
    (padding excluded) the diffusion term is

      ∫₀¹ α′/(1 − α) E[Σ_masked log μθ] dt = −∫_ε^{1−ε} (1/s) E[Σ_masked log μθ] ds.

    Split by the number m of masked tokens, P(m | s) = C(n, m) s^m (1 − s)^(n−m), given m the
    masked set is uniform, and (1/s)·C(n, m) s^m (1 − s)^(n−m) = (1/m)·Beta(s; m, n − m + 1).
    Hence the term equals

      −n · E_{m ~ U{1..n}} E_{s ~ Beta(m, n−m+1)}
             [1{ε ≤ s ≤ 1 − ε} · (1/m) Σ_masked log μθ(z, t(s))]

    with exactly m tokens masked, uniformly, and t(s) = α⁻¹(1 − s): the same ELBO, whose
    estimate no longer multiplies the few masked tokens of a small t by 1/t. m is stratified
    over the batch like t (antithetic_time_sampling). weight [B] is −n/m, or 0 when s falls
    outside [ε, 1 − ε], so that weight · Σ_masked log μθ estimates the term. With train,
    m comes from u^p (p = train_time_power) instead of u, and the same weight.
    """
    b = x.shape[0]
    pad = self.is_padding(x).reshape(b, -1)  # [B, N]
    n = self.num_tokens(x).astype(jnp.float32)  # [B]
    # U{1..n}; in training m = ⌊u^p·n⌋ + 1 with p = train_time_power.
    m = jnp.minimum(jnp.floor(self.sample_times(b, train) * n) + 1.0, n)
    rng_s, rng_where = jax.random.split(self.make_rng('sample'))
    s = jax.random.beta(rng_s, m, n - m + 1.0)  # masking rate given m
    eps = self.schedule.eps
    weight = jnp.where((s >= eps) & (s <= 1.0 - eps), -n / m, 0.0)
    t = self.schedule.time_of_alpha(jnp.clip(1.0 - s, eps, 1.0 - eps))
    # The m real positions with the smallest uniform scores are masked.
    scores = jnp.where(pad, jnp.inf, jax.random.uniform(rng_where, pad.shape))
    rank = jnp.argsort(jnp.argsort(scores, axis=1), axis=1)
    masked = (rank < m[:, None]) & ~pad
    z_t = jnp.where(masked.reshape(x.shape), self.mask_id, x)
    return t, z_t, weight

  def predict_logits(self, z, t, train=False, label=None):
    """Logits of μθ(z_t, t) over the V tokens: [B, *S] -> [B, *S, V].

    label [B] conditions on a class; None is the unconditional (null-class) prediction.
    """
    return call_network(self.network, z, t, label, train)

  def unmask_prob(self, s, t):
    """(α_s − α_t)/(1 − α_t): chance that a masked token is revealed between t and s < t.

    Together with μθ it gives the paper's reverse step:
      q(z_s = v | z_t = m, μθ) = μθ(v)·(α_s − α_t)/(1 − α_t),  q(z_s = m | z_t = m) = the rest.
    Returned as [B, 1, ..., 1] to broadcast against [B, *S, V].
    """
    alpha_s, alpha_t = self.schedule.alpha(s), self.schedule.alpha(t)
    return ((alpha_s - alpha_t) / (1.0 - alpha_t)).reshape(
        (-1,) + (1,) * (len(self.data_shape) + 1))

  def recon_loss(self, n):
    """−E_q(z_0|x) log p(x | z_0) per example, in nats, for n tokens (scalar or [B]).

    p(x | z_0) copies unmasked tokens and is uniform over V at masked ones, so the term is
    exactly n·(1 − α(0))·log V.
    """
    return n * (1.0 - self.schedule.alpha(0.0)) * math.log(self.vocab_size)

  def prior_loss(self, n):
    """KL(q(z_1 | x) ‖ p(z_1)) per example, in nats, for n tokens (scalar or [B]): 0.

    The prior p(z_1) is the fully masked sequence, where the samplers start. With the
    paper's α(1) = 0 the term is exactly 0; with the ε-shifted schedules here q(z_1 | x)
    still keeps each token with probability α(1) = ε, which the original release counts as
    negligible and reports as 0. So do we, so that the bound is the one the paper reports.
    """
    return jnp.zeros_like(jnp.asarray(n, jnp.float32))

  def diffusion_loss(self, x, t, z_t, logits, weight=None):
    """Per-example diffusion term in nats, continuous or T-step; `weight` [B] replaces the
    continuous-time weight α′/(1 − α) (the mask-count estimator's)."""
    log_p = jax.nn.log_softmax(logits, axis=-1)
    log_p_x = jnp.take_along_axis(log_p, x[..., None], axis=-1)[..., 0]  # [B, *S]
    is_masked = z_t == self.mask_id
    axes = tuple(range(1, x.ndim))
    masked_log_p = jnp.sum(jnp.where(is_masked, log_p_x, 0.0), axis=axes)  # [B]
    if weight is not None:
      return weight * masked_log_p
    if self.cont_time:
      # ∫₀¹ α′_t/(1 − α_t) · Σ_{n: z_t^n = m} x_nᵀ log μθ(z_t, t)_n dt, one t per example.
      return self.schedule.weight(t) * masked_log_p
    # T · (α_s − α_t)/(1 − α_t) · (cross-entropy on masked tokens), with t = i/T, s = t − 1/T.
    s = t - 1.0 / self.timesteps
    alpha_s, alpha_t = self.schedule.alpha(s), self.schedule.alpha(t)
    return -self.timesteps * (alpha_s - alpha_t) / (1.0 - alpha_t) * masked_log_p

  def __call__(self, x, train=False, label=None) -> dict[str, Any]:
    """Negative ELBO terms per example, in bits per token (padding excluded; per dimension
    for images, whose tokens are the H·W·C channel values): each [B].

    label [B] (class-conditional data) goes to the network. Uses the 'sample' rng stream
    for t and z_t, and 'dropout' when training.
    """
    batch_size = x.shape[0]
    weight = None
    if self.elbo_estimator == 'mask_count':
      t, z_t, weight = self.mask_count_sample(x, train)
    else:
      t = self.sample_times(batch_size, train)
      if not self.cont_time:
        t = (jnp.floor(t * self.timesteps) + 1) / self.timesteps  # i/T, i ∈ {1..T}
      z_t = self.forward_sample(x, t)
    logits = self.predict_logits(z_t, t, train=train, label=label)
    n = self.num_tokens(x)  # [B]
    to_bits = 1.0 / (n * math.log(2.0))  # [B]: each example in bits per (real) token
    loss_diff = self.diffusion_loss(x, t, z_t, logits, weight) * to_bits
    loss_recon = self.recon_loss(n) * to_bits
    loss_prior = self.prior_loss(n) * to_bits
    return {
        'loss': loss_diff + loss_recon + loss_prior,
        'loss_diff': loss_diff,
        'loss_recon': loss_recon,
        'loss_prior': loss_prior,
    }

  def sample_prior(self, rng, batch_size):
    """z_1 ~ p(z_1): every token masked. [B, *S].

    With padding, a length L ~ length_probs is drawn per example and positions ≥ L are
    padding, which the samplers never change: samples are drawn from p(x | L).
    """
    shape = (batch_size,) + tuple(self.data_shape)
    z = jnp.full(shape, self.mask_id, jnp.int32)
    if self.pad_id is not None:
      lengths = jax.random.categorical(rng, jnp.log(jnp.asarray(self.length_probs)),
                                       shape=(batch_size, 1))  # [B, 1]
      z = jnp.where(jnp.arange(shape[1]) >= lengths, self.pad_id, z)
    return z
