"""Generation: reverse steps (ancestral, top-p, two-stage mean) and the jitted loop.

A sampler step maps z_t to z_s for s < t given the network's logits at (z_t, t) and the
model's chance u(v) = P(a masked token becomes v | it is v under μθ) between t and s
(MD4: (α_s − α_t)/(1 − α_t) for every v). Only masked positions change, so tokens given in
the starting sequence stay fixed: that is conditional completion. Examples may have any
shape [*S] (sequences, or images [H, W, C]); class-conditional models take labels and
classifier-free guidance.
"""

import functools
from typing import Callable

import jax
import jax.numpy as jnp


def _reveal(rng, z, probs, unmask_prob, mask_id):
  """One reverse step: a masked position becomes v w.p. μ(v)·u(v), stays masked otherwise.

  z [B, *S]; probs [B, *S, V]; unmask_prob broadcastable to probs.
  """
  p_tokens = probs * unmask_prob  # [B, *S, V]
  p_mask = jnp.clip(1.0 - jnp.sum(p_tokens, axis=-1, keepdims=True), 0.0, 1.0)
  draw = jax.random.categorical(
      rng, jnp.log(jnp.concatenate([p_tokens, p_mask], axis=-1)))
  return jnp.where(z == mask_id, draw, z)  # draw == V keeps the mask


def ancestral_step(rng, z, logits, unmask_prob, mask_id, topp):
  """The paper's reverse step q(z_s | z_t, x = μθ(z_t, t))."""
  del topp
  return _reveal(rng, z, jax.nn.softmax(logits, axis=-1), unmask_prob, mask_id)


def nucleus(probs, topp):
  """Top-p filtering (Holtzman et al., 2020): keep the smallest most-likely set of mass ≥ p."""
  sorted_probs = jnp.sort(probs, axis=-1)[..., ::-1]
  mass_before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
  # The smallest kept probability: the last one whose preceding mass is still below p.
  n_keep = jnp.sum(mass_before < topp, axis=-1, keepdims=True)
  threshold = jnp.take_along_axis(sorted_probs, n_keep - 1, axis=-1)
  kept = jnp.where(probs >= threshold, probs, 0.0)
  return kept / jnp.sum(kept, axis=-1, keepdims=True)


def topp_step(rng, z, logits, unmask_prob, mask_id, topp):
  """Ancestral step with μθ restricted to its top-p nucleus."""
  probs = nucleus(jax.nn.softmax(logits, axis=-1), topp)
  return _reveal(rng, z, probs, unmask_prob, mask_id)


def mean_step(rng, z, logits, unmask_prob, mask_id, topp):
  """Two-stage step (paper, App. G): draw x̂ ~ μθ, then reveal it w.p. u(x̂)."""
  del topp
  rng_x, rng_reveal = jax.random.split(rng)
  x_hat = jax.random.categorical(rng_x, logits)  # [B, *S]
  u = jnp.broadcast_to(unmask_prob, logits.shape)
  u_x = jnp.take_along_axis(u, x_hat[..., None], axis=-1)[..., 0]
  reveal = jax.random.bernoulli(rng_reveal, u_x)
  return jnp.where((z == mask_id) & reveal, x_hat, z)


SAMPLERS: dict[str, Callable] = {
    'ancestral': ancestral_step,
    'topp': topp_step,
    'mean': mean_step,
}

# u ∈ [0, 1] (fraction of the way from data to noise) -> t.
GRIDS: dict[str, Callable] = {
    'uniform': lambda u: u,
    'cosine': lambda u: jnp.cos(0.5 * jnp.pi * (1.0 - u)),
}


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


def _lookup(table, name, what):
  if name not in table:
    raise ValueError(f'unknown {what} {name!r}; choose from {sorted(table)}')
  return table[name]


def generate(model, params, rng, z, label=None, *, sampler='ancestral', timesteps=1000,
             sampling_grid='uniform', topp=0.9, guidance_scale=0.0):
  """Runs `timesteps` reverse steps from z (t = 1) to t = 0, then fills any mask left.

  Args:
    model: an unbound MD4-style module (predict_logits, unmask_prob, mask_id).
    params: its parameters (the EMA ones for evaluation).
    rng: key; step i uses fold_in(rng, i).
    z: [B, *S] starting tokens: a prior draw, or a partly masked input to complete.
    label: [B] classes for a class-conditional model, or None.
    guidance_scale: w of classifier-free guidance (see `guided_logits`); 0 turns it off.
  Returns:
    [B, *S] token ids with no mask.
  """
  step_fn = _lookup(SAMPLERS, sampler, 'sampler')
  grid = _lookup(GRIDS, sampling_grid, 'sampling grid')
  variables = {'params': params}
  batch = z.shape[0]

  def times(i):
    u = (timesteps - i) / timesteps
    return jnp.full((batch,), grid(u)), jnp.full((batch,), grid(u - 1.0 / timesteps))

  def body(i, z):
    t, s = times(i)
    logits = guided_logits(model, variables, z, t, label, guidance_scale)
    u = model.apply(variables, s, t, method=model.unmask_prob)
    return step_fn(jax.random.fold_in(rng, i), z, logits, u, model.mask_id, topp)

  z = jax.lax.fori_loop(0, timesteps, body, z)
  # Final decode at t = 0: any mask still left becomes μθ's most likely token.
  logits = guided_logits(model, variables, z, jnp.zeros((batch,)), label, guidance_scale)
  return jnp.where(z == model.mask_id, jnp.argmax(logits, axis=-1), z)


def make_generate_fn(model, sampling_config):
  """generate() bound to the config's sampler, grid, steps, top-p and guidance; checks them."""
  _lookup(SAMPLERS, sampling_config.sampler, 'sampler')
  _lookup(GRIDS, sampling_config.sampling_grid, 'sampling grid')
  if not 0.0 < sampling_config.topp <= 1.0:
    raise ValueError(f'sampling.topp must be in (0, 1], got {sampling_config.topp}')
  if sampling_config.timesteps < 1:
    raise ValueError(
        f'sampling.timesteps must be >= 1, got {sampling_config.timesteps}')
  if sampling_config.guidance_scale < 0:
    raise ValueError(
        f'sampling.guidance_scale must be >= 0, got {sampling_config.guidance_scale}')
  return functools.partial(
      generate, model,
      sampler=sampling_config.sampler,
      timesteps=sampling_config.timesteps,
      sampling_grid=sampling_config.sampling_grid,
      topp=sampling_config.topp,
      guidance_scale=sampling_config.guidance_scale)
