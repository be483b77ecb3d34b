"""Tiny hand-made networks for exact tests of the diffusion math."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


class Oracle(nn.Module):
  """Always predicts the fixed distribution `probs` over V at every position."""
  probs: tuple[float, ...]

  @nn.compact
  def __call__(self, z, t, train=False):
    logits = jnp.log(jnp.asarray(self.probs, jnp.float32))
    return jnp.broadcast_to(logits, z.shape + logits.shape)


class ToyNet(nn.Module):
  """A small network whose prediction depends on every input token and on t."""
  vocab_size: int

  @nn.compact
  def __call__(self, z, t, train=False):
    emb = nn.Embed(self.vocab_size + 1, 8,
                   embedding_init=nn.initializers.normal(1.0))(z)  # [B, L, 8]
    h = emb + emb.mean(axis=1, keepdims=True) + 3.0 * t[:, None, None]
    return nn.Dense(self.vocab_size, kernel_init=nn.initializers.normal(1.0))(
        jnp.tanh(h))


def init(model, x, seed=0):
  return model.init({'params': jax.random.key(seed), 'sample': jax.random.key(1)},
                    x)['params']


def random_params(module, *args, seed=0, **kwargs):
  """Random parameters of module.init(*args, **kwargs), fan-in scaled, drawn on the host.

  Unlike init, nothing is compiled, and no layer is left at a zero initialisation.
  """
  shapes = jax.eval_shape(lambda: module.init(
      {'params': jax.random.key(0), 'sample': jax.random.key(0)}, *args, **kwargs))
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda s: jnp.asarray(rng.normal(0, 1 / np.sqrt(np.prod(s.shape[:-1])), s.shape),
                            s.dtype),
      nn.unbox(shapes['params']))
