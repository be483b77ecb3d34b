"""Categorical and Bernoulli draws: exact ones (fine) at a cost per position, not per token,
and the usual float32 Gumbel-max.

float32 Gumbel noise built from 23 random bits never exceeds 15.9, so a token whose
log-probability is more than about 16 below the winner's can never be drawn: the tail of
the categorical is under-sampled and the effective temperature lowered (Zheng et al., 2024,
arXiv:2409.02908). `fine` noise resolves both tails beyond a float64 uniform.

A fine categorical draw over K tokens is made in two levels (`two_level_categorical`): a
block of about √K tokens by Gumbel-max over the blocks' log-masses, then a token of that
block by Gumbel-max over its logits, both with fine noise. That draws token k of block j
with probability (M_j / Σ M)·(p_k / M_j) = p_k / Σ p, using 2√K noise variables instead of
K: with GPT-2's 50,257 ids, 453 instead of 50,257 per position and step.
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


def bernoulli(rng, p, shape, fine):
  """[*shape] bool, True w.p. p (broadcastable to shape).

  fine: U = Y or 1 − Y by one random bit, Y ~ U(0, 1/2) of `uniform_from_bits`, and
  U < p tested as Y < p or Y > 1 − p, so P(True) = p to float32's relative precision of
  min(p, 1 − p), down to p = 2^-66 (a float32 uniform resolves p only to 2^-23: a reveal
  chance of 10^-6 would be drawn 7% too often). Not fine: jax.random.bernoulli.
  """
  if not fine:
    return jax.random.bernoulli(rng, p, shape)
  bits = jax.random.bits(rng, (3,) + tuple(shape), jnp.uint32)
  y = uniform_from_bits(bits[0], bits[1], bits[2])
  upper = (bits[0] >> 31) == 1
  return jnp.where(upper, y > 1.0 - p, y < p)


def block_size(num_tokens):
  """Tokens per block of the two-level draw: the power of 2 at or above √K (at least 2)."""
  return max(2, 1 << (max(num_tokens - 1, 1).bit_length() + 1) // 2)


def blocks(logits):
  """[..., K] -> [..., K/b rounded up, b] (b = `block_size(K)`), padded with −inf."""
  k = logits.shape[-1]
  size = block_size(k)
  count = -(-k // size)
  padded = jnp.pad(logits, [(0, 0)] * (logits.ndim - 1) + [(0, count * size - k)],
                   constant_values=-jnp.inf)
  return padded.reshape(logits.shape[:-1] + (count, size))


def block_log_masses(blocked):
  """log Σ exp(logits) of each block [..., n, b] -> [..., n], in float32.

  The logits are shifted by the floor c of the row's maximum, exponentiated and summed
  pairwise (b is a power of 2). For log-probabilities (c ≤ 0) the shift is exact for
  every token below c, so each mass has a relative error of at most about
  (log2 b + 2)·2^-24, 6e-7 for b = 256, however small it is. A token more than 87 nats
  below c underflows to 0 in its block's mass (float32's range); Gumbel-max never draws
  one either (its noise reaches 45).
  """
  top = jnp.floor(jnp.max(blocked, axis=(-2, -1), keepdims=True))
  top = jnp.where(jnp.isfinite(top), top, 0.0)  # a row of −inf: masses 0, no NaN
  mass = jnp.exp(blocked - top)  # [..., n, b]
  while mass.shape[-1] > 1:
    mass = mass.reshape(mass.shape[:-1] + (-1, 2)).sum(axis=-1)
  return jnp.log(mass[..., 0]) + top[..., 0]


def two_level_categorical(rng, logits):
  """One draw per row of logits [..., K] -> [...]: a block by fine Gumbel-max over the
  blocks' log-masses, then a token of it by fine Gumbel-max over its logits.

  P(token k of block j) = (M̃_j / Σ M̃)·(p_k / M_j): exact but for the float32 masses M̃
  (`block_log_masses`: relative error ≤ 6e-7 with GPT-2's vocabulary) and the rounding
  of float32 logits and noise. That rounding is the Gumbel-max's over every token too:
  a logit or log-mass d nats below the best, and the noise of about d that lifts it, are
  float32 numbers with absolute error up to 2^-24·d, so either draw gives a token d nats
  below the best with a relative error of order 2^-24·d (1e-6 at 16 nats) plus, here,
  the masses' 6e-7; both resolve the same tail, since each level draws an option up to 45
  nats below its best (probabilities down to 1e-19), beyond what any run can count.
  """
  rng_block, rng_token = jax.random.split(rng)
  blocked = blocks(logits)  # [..., n, b]
  masses = block_log_masses(blocked)  # [..., n]
  block = jnp.argmax(masses + gumbel(rng_block, masses.shape, True), axis=-1)  # [...]
  row = jnp.take_along_axis(blocked, block[..., None, None], axis=-2)[..., 0, :]  # [..., b]
  token = jnp.argmax(row + gumbel(rng_token, row.shape, True), axis=-1)
  return block * blocked.shape[-1] + token


def categorical(rng, logits, fine):
  """One draw per row of unnormalised log-probabilities [..., K] (−inf: never) -> [...].

  fine: the exact draw of `two_level_categorical`, its noise as fine as float64's; its
  cost per row is one pass over the K logits plus 2√K noise variables. Not fine:
  Gumbel-max with float32 noise on every token, argmax_k (logits_k + g_k), which misses
  the tail beyond 16 nats (see the module's docstring).
  """
  if fine:
    return two_level_categorical(rng, logits)
  return jnp.argmax(logits + gumbel(rng, logits.shape, False), axis=-1)
