"""Categorical draws by Gumbel-max, with noise as fine as float64's where asked.

float32 Gumbel noise built from 23 random bits never exceeds 15.9, so a token whose
log-probability is more than about 16 below the winner's can never be drawn: the tail of
the categorical is under-sampled and the effective temperature lowered (Zheng et al., 2024,
arXiv:2409.02908). `fine` noise resolves both tails beyond a float64 uniform.
"""

import jax
import jax.numpy as jnp

MANTISSA_BITS = 23


def uniform_from_bits(mantissa_bits, zeros_1, zeros_2):
  """Y ~ U(0, 1/2) with float32's relative resolution at every scale down to 2^-66.

  Y = 2^-(k+2)·(1 + (m + ½)/2^23): k ∈ [0, 64] the leading zeros of the 64 bits
  (zeros_1, zeros_2), so P(k) = 2^-(k+1), and m the 23 low bits of mantissa_bits; within
  each dyadic interval [2^-(k+2), 2^-(k+1)) the 2^23 cells are equally likely, so Y is
  uniform (to the cell's width) however small it is. uint32 inputs of one shape.
  """
  k = jax.lax.clz(zeros_1) + jnp.where(zeros_1 == 0, jax.lax.clz(zeros_2), 0)
  m = (mantissa_bits & ((1 << MANTISSA_BITS) - 1)).astype(jnp.float32)
  return jnp.ldexp(1.0 + (m + 0.5) / 2.0**MANTISSA_BITS, -(k.astype(jnp.int32) + 2))


def gumbel_from_bits(bits, fine):
  """Standard Gumbel noise −log(−log U) from random uint32 bits [3, *shape] (fine) or [1, ...].

  fine=False is the usual construction, U = j·2^-23 for 23 random bits j (jax.random.gumbel's):
  the noise never exceeds 15.9. fine=True builds the exponential E = −log U from a uniform Y
  resolved to float32's relative precision down to 2^-66 (`uniform_from_bits`): one bit
  picks U = Y (E large) or U = 1 − Y (E = −log1p(−Y), small), so both tails of the noise are
  resolved beyond what a float64 uniform (2^-53) gives; the noise reaches 45.
  """
  if not fine:
    u = (bits[0] >> (32 - MANTISSA_BITS)).astype(jnp.float32) / 2.0**MANTISSA_BITS
    return -jnp.log(-jnp.log(jnp.maximum(u, jnp.finfo(jnp.float32).tiny)))
  y = uniform_from_bits(bits[0], bits[1], bits[2])
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
