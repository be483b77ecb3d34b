"""GenMD4: masked diffusion with a state-dependent masking schedule (Shi et al., 2024).

Each token value v has its own schedule, a polynomial with a learned power w_v > 0, in the
paper's and the original release's form:

    α_t(v) = 1 − (1 − ε)·t^{w_v},      α′_t(v) = −(1 − ε)·w_v·t^{w_v − 1},

so α_0(v) = 1 exactly and the ELBO weight α′/(1 − α) is −w_v/t. Time is drawn from
[t1, 1]; on [0, t1] the reconstruction term takes over, with the original's posterior
decoder. w = softplus(w_raw), with `w_raw` [V] a parameter of this module beside the
network's, learned with the ELBO.

Notation as in md4.py: x the data, m = V the mask id, z_t the noised sequence, μθ(z_t, t)
the network's prediction of x. Loss terms are per example, in bits per token.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from md4 import schedules
from md4.models import md4

EPS = schedules.EPS


def alpha(t, w):
  """α_t = 1 − (1 − ε)·t^w, elementwise with broadcasting."""
  return 1.0 - mask_prob(t, w)


def mask_prob(t, w):
  """1 − α_t = (1 − ε)·t^w, without the cancellation of 1 − α_t when α_t ≈ 1."""
  return (1.0 - EPS) * t**w


def dalpha(t, w):
  """α′_t = −(1 − ε)·w·t^{w − 1} (t > 0)."""
  return -(1.0 - EPS) * w * t**(w - 1.0)


def elbo_weight(t, w):
  """α′_t/(1 − α_t) = −w/t (t > 0), the weight of the continuous-time ELBO."""
  return -w / t


def inverse_softplus(y):
  """softplus⁻¹(y) = log(eᵞ − 1), for y > 0."""
  return y + jnp.log(-jnp.expm1(-y))


def _pick(table, x):
  """table [..., V] broadcast against x [B, *S]: the entry of each token, [B, *S]."""
  table = jnp.broadcast_to(table, x.shape + table.shape[-1:])
  return jnp.take_along_axis(table, x[..., None], axis=-1)[..., 0]


class GenMD4(nn.Module):
  """State-dependent masked diffusion around a backbone `network(z_t, t, train) -> logits`.

  Same interface as MD4 (`__call__`, `predict_logits`, `unmask_prob`, `sample_prior`,
  `mask_id`), so md4/train.py and every sampler in md4/sampling.py run it unchanged.
  """
  network: nn.Module
  vocab_size: int  # V; the mask id is V
  data_shape: tuple[int, ...]
  power_init: float = 1.0  # initial w_v for every v (1: a linear schedule)
  t1: float = 1e-3  # t ~ U(t1, 1); below t1 the reconstruction term takes over
  antithetic_time_sampling: bool = True

  def __post_init__(self):
    if not self.power_init > 0:
      raise ValueError(f'model.power_init must be > 0, got {self.power_init}')
    if not 0 < self.t1 < 1:
      raise ValueError(f'model.t1 must be in (0, 1), got {self.t1}')
    super().__post_init__()

  def setup(self):
    # Every method (loss, sampling steps, prior) reads this one parameter.
    self.w_raw = self.param(
        'w_raw', lambda _, shape: jnp.full(shape, inverse_softplus(self.power_init)),
        (self.vocab_size,))

  @property
  def mask_id(self) -> int:
    return self.vocab_size

  def powers(self):
    """w = softplus(w_raw) > 0, [V]."""
    return jax.nn.softplus(self.w_raw)

  def _per_value(self, t):
    """t [B] (or a scalar) -> [B, 1, ..., 1, 1], to broadcast against per-value [..., V]."""
    return jnp.reshape(jnp.asarray(t, jnp.float32), (-1,) + (1,) * (len(self.data_shape) + 1))

  def alpha(self, t):
    """α_t(v) for every v: [B, 1, ..., 1, V]."""
    return alpha(self._per_value(t), self.powers())

  def mask_prob(self, t):
    """1 − α_t(v) for every v: [B, 1, ..., 1, V]."""
    return mask_prob(self._per_value(t), self.powers())

  def dalpha(self, t):
    """α′_t(v) for every v: [B, 1, ..., 1, V]."""
    return dalpha(self._per_value(t), self.powers())

  def sample_times(self, batch_size):
    """t ~ U(t1, 1) per example [B]: t = t1 + (1 − t1)·u with MD4's (antithetic) u."""
    u = md4.uniform_times(self.make_rng('sample'), batch_size,
                          self.antithetic_time_sampling)
    return self.t1 + (1.0 - self.t1) * u

  def forward_sample(self, x, t):
    """z_t ~ q(z_t | x): token n is kept with probability α_t(x_n), else the mask id."""
    alpha_t_x = _pick(self.alpha(t), x)  # [B, *S]
    keep = jax.random.bernoulli(self.make_rng('sample'), alpha_t_x)
    return jnp.where(keep, x, self.mask_id)

  def log_q(self, x, t, z_t):
    """log q(z_t | x) = Σ_n [z_t^n = m]·log(1 − α_t(x_n)) + [z_t^n = x_n]·log α_t(x_n), [B]."""
    log_alpha_t_x = jnp.log(_pick(self.alpha(t), x))  # [B, *S]
    log_mask_t_x = jnp.log(_pick(self.mask_prob(t), x))
    log_q_n = jnp.where(z_t == self.mask_id, log_mask_t_x, log_alpha_t_x)
    return jnp.sum(log_q_n, axis=tuple(range(1, x.ndim)))

  def predict_logits(self, z, t, train=False, label=None):
    """Logits of μθ(z_t, t[, label]) over the V tokens: [B, *S] -> [B, *S, V]."""
    return md4.call_network(self.network, z, t, label, train)

  def unmask_prob(self, s, t):
    """u(v) = (α_s(v) − α_t(v))/(1 − α_t(v)) for s < t, [B, 1, ..., 1, V].

    With μθ it gives the reverse step q(z_s | z_t = m, x ~ μθ):
      z_s = v w.p. μθ(v)·u(v);  z_s = m w.p. Σ_v μθ(v)·(1 − α_s(v))/(1 − α_t(v)) = 1 − Σ_v μθ(v)·u(v).
    """
    mask_s, mask_t = self.mask_prob(s), self.mask_prob(t)
    return (mask_t - mask_s) / mask_t  # α_s − α_t = (1 − α_t) − (1 − α_s)

  def diffusion_loss(self, x, t, z_t, logits):
    """The continuous-time ELBO integrand at t per example [B], in nats (GenMD4's ELBO):

      Σ_{n: z_t^n = m} Σ_v α′_t(v)/(1 − α_t(v)) · [x_n(v)·(1 + x_nᵀ log μθ) − μθ(v)].

    Written, using Σ_v μθ(v) = 1, as weight(x_n)·log μθ(x_n) + Σ_v (weight(x_n) − weight(v))·μθ(v)
    with weight = α′/(1 − α) = −w/t: the first part is MD4's integrand, the second is 0 when
    all w are equal.
    """
    log_mu = jax.nn.log_softmax(logits, axis=-1)  # [B, *S, V]
    weight = elbo_weight(self._per_value(t), self.powers())  # [B, 1, ..., 1, V], ≤ 0
    weight_x = _pick(weight, x)  # [B, *S]
    log_mu_x = jnp.take_along_axis(log_mu, x[..., None], axis=-1)[..., 0]  # [B, *S]
    spread = jnp.sum((weight_x[..., None] - weight) * jnp.exp(log_mu), axis=-1)  # [B, *S]
    per_token = weight_x * log_mu_x + spread
    is_masked = z_t == self.mask_id
    return jnp.sum(jnp.where(is_masked, per_token, 0.0), axis=tuple(range(1, x.ndim)))

  def recon_loss(self, x):
    """−E_q(z_t1|x) log p(x | z_t1) per example [B], in nats.

    The original's posterior decoder: an unmasked token is copied, and a masked one is
    decoded as v with probability ∝ t1^{w_v}, the chance that v is masked by t1 (Bayes'
    rule under a uniform prior over v). So each token n costs
      (1 − α_t1(x_n))·(log Σ_v t1^{w_v} − w_{x_n}·log t1).
    """
    w = self.powers()  # [V]
    log_t1 = math.log(self.t1)
    w_x = _pick(w, x)  # [B, *S]
    nll_masked = jax.nn.logsumexp(w * log_t1) - w_x * log_t1  # [B, *S]
    per_token = mask_prob(self.t1, w_x) * nll_masked
    return jnp.sum(per_token, axis=tuple(range(1, x.ndim)))

  def prior_loss(self):
    """KL(q(z_1 | x) ‖ p(z_1)) per example, in nats: 0.

    The prior is the fully masked sequence. q(z_1 | x) keeps token n with probability
    α_1(x_n) = ε, which the original release counts as negligible and reports as 0, as MD4
    does (md4.MD4.prior_loss).
    """
    return 0.0

  def loss_terms(self, x, t, train=False, label=None) -> dict[str, Any]:
    """Negative-ELBO terms at given times t [B], per example in bits per token: each [B].

    Draws two masks z⁽¹⁾, z⁽²⁾ ~ q(z_t | x) per example and runs the network once on the 2B
    rows; `objective` turns them into the terms.
    """
    x2, t2 = jnp.concatenate([x, x]), jnp.concatenate([t, t])  # [2B, *S], [2B]
    z_t = self.forward_sample(x2, t2)
    label2 = None if label is None else jnp.concatenate([label, label])  # [2B]
    logits = self.predict_logits(z_t, t2, train=train, label=label2)
    return self.objective(x, t, z_t, logits)

  def objective(self, x, t, z_t, logits) -> dict[str, Any]:
    """The terms of x [B, *S] at t [B] from two masks z_t [2B, *S] (z⁽¹⁾ then z⁽²⁾, each B
    rows) and the network's logits on them [2B, *S, V].

    z⁽¹⁾ and z⁽²⁾ give l₁, l₂, each the one-sample estimate integrand + recon + prior. As in
    the original release, t is uniform on [t1, 1] and the integrand is not multiplied by the
    length 1 − t1 of that interval: the diffusion term estimates
    ∫_{t1}^1 (integrand) dt / (1 − t1), an upper bound 1/(1 − t1) (0.1% at t1 = 1e-3) above
    the ELBO's, which the paper's numbers include. The objective
      loss = ½(l₁ + l₂) + ½·sg(l₁ − l₂)·(Δ − sg(Δ)),   Δ = log q(z⁽¹⁾|x) − log q(z⁽²⁾|x),
    equals loss_nelbo = ½(l₁ + l₂) in value (the added term is exactly 0), and its gradient in
    w is the pathwise one plus the leave-one-out REINFORCE estimate ½(l₁ − l₂)·∇_w Δ of the
    gradient through z_t's distribution, which the pathwise one misses.
    """
    batch_size = x.shape[0]
    x2, t2 = jnp.concatenate([x, x]), jnp.concatenate([t, t])  # [2B, *S], [2B]
    to_bits = 1.0 / (math.prod(self.data_shape) * math.log(2.0))
    diff = self.diffusion_loss(x2, t2, z_t, logits) * to_bits  # [2B]
    recon = self.recon_loss(x) * to_bits  # [B]
    prior = self.prior_loss() * to_bits
    diff1, diff2 = jnp.split(diff, 2)
    l1, l2 = diff1 + recon + prior, diff2 + recon + prior
    log_q1, log_q2 = jnp.split(self.log_q(x2, t2, z_t), 2)
    delta = log_q1 - log_q2  # [B]
    nelbo = 0.5 * (l1 + l2)
    rloo = 0.5 * jax.lax.stop_gradient(l1 - l2) * (delta - jax.lax.stop_gradient(delta))
    w = self.powers()
    per_example = lambda v: jnp.full((batch_size,), v)
    return {
        'loss': nelbo + rloo,
        'loss_nelbo': nelbo,
        'loss_diff': 0.5 * (diff1 + diff2),
        'loss_recon': recon,
        'loss_prior': per_example(prior),
        'w_min': per_example(jnp.min(w)),
        'w_mean': per_example(jnp.mean(w)),
        'w_max': per_example(jnp.max(w)),
    }

  def __call__(self, x, train=False, label=None) -> dict[str, Any]:
    """`loss_terms` at t ~ U(t1, 1). Uses the 'sample' rng stream, and 'dropout' when training."""
    return self.loss_terms(x, self.sample_times(x.shape[0]), train=train, label=label)

  def sample_prior(self, rng, batch_size):
    """z_1 ~ p(z_1): every token masked. [B, *S]."""
    del rng
    return jnp.full((batch_size,) + tuple(self.data_shape), self.mask_id, jnp.int32)
