"""The model as the samplers see it: filtered log μθ, the unmasking chance u, the mask id.

μθ(z_t, t) is the network's prediction of x. Before a sampler draws from it, it may be
guided (classifier-free guidance), tempered, cut to its top-k tokens or to its top-p
nucleus; `Net.log_mu` applies those filters in that order.
"""

import jax
import jax.numpy as jnp


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


class Net:
  """A model (md4.models.Denoiser) and its parameters as the samplers see them.

  topp < 1 cuts μθ to its nucleus in `log_mu` (the autoregressive 'topp' sampler; the
  diffusion 'topp' step cuts it itself).
  """

  def __init__(self, model, params, label, options, topp=1.0):
    self.model, self.label, self.options, self.topp = model, label, options, topp
    self.variables = {'params': params}
    self.mask_id = model.mask_id
    self.fine = options.float64_draws

  def log_mu(self, z, t):
    """Filtered log μθ(z, t): [B, *S] -> [B, *S, V]; t [B]."""
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

  def time_of_masks(self, z):
    """t [B] at which the forward process leaves as many masks as z [B, *S] holds: the t
    with 1 − α(t) = m/N for m of N positions masked (one schedule for every token), else
    m/N (the linear schedule's). For samplers that reveal by count, not by time."""
    flat = z.reshape(z.shape[0], -1)
    masked = jnp.mean(flat == self.mask_id, axis=1)  # [B]
    schedule = getattr(self.model, 'schedule', None)
    return masked if schedule is None else schedule.time_of_alpha(1.0 - masked)

  @property
  def schedule(self):
    """The model's one masking schedule for every token (MD4 only)."""
    return self.model.schedule
