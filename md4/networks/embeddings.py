"""Sinusoidal time embedding shared by the networks (transformer, UNet, U-ViT).

One definition, so that every backbone conditions on t as the original release does and
an image network need not import the transformer to get it.
"""

import math

import jax.numpy as jnp


def timestep_embedding(t, dim, max_period=10_000.0):
  """Transformer sinusoids of t (DDPM's, Ho et al. 2020, in VDM's layout), [B] -> [B, dim]:
  the original release's time embedding, also its image networks'.

  With h = ⌊dim/2⌋ frequencies f_i = max_period^(−i/(h − 1)), i = 0..h−1, the embedding is
  [sin(t·f), cos(t·f)], and a zero column for odd dim; the networks pass 1000·t.
  """
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half) / (half - 1))  # [h]
  args = t.astype(jnp.float32)[:, None] * freqs[None]  # [B, h]
  emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)  # [B, 2h]
  return jnp.pad(emb, ((0, 0), (0, dim % 2)))  # [B, dim]
