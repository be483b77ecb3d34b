"""An autoregressive baseline: the same transformer with a causal mask, trained by the same loop.

x [B, L] is modelled left to right, p(x) = Π_i p(x_i | x_<i). The network reads the sequence
shifted right by one, [BOS, x_0, ..., x_{L−2}], with BOS = V (the id the diffusion models use
for the mask, whose embedding the network already has), so that its causal output at
position i is the logits of x_i given x_<i. Its per-example loss is the exact negative
log-likelihood in bits per token: held out, it is the autoregressive row that masked
diffusion papers compare against, and it is the judge of md4.evaluate's generative
perplexity.

For the samplers (md4.sampling) it has the diffusion models' interface where that makes
sense: `mask_id` marks the positions still to fill, `sample_prior` is the all-masked
sequence, and `predict_logits(z)` gives each position's next-token logits from the tokens
to its left.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from md4.models import md4


class AR(nn.Module):
  """Autoregressive model around a causal backbone `network(z, t, train) -> logits`."""
  network: nn.Module
  vocab_size: int  # V; the id V starts every sequence (BOS) and marks unfilled positions
  data_shape: tuple[int, ...]

  autoregressive = True  # md4.models.Denoiser: md4.sampling fills positions left to right

  def __post_init__(self):
    if getattr(self.network, 'causal', None) is not True:
      raise ValueError("model_type 'ar' needs a causal transformer; set "
                       "network.type='transformer' and network.causal=True")
    if getattr(self.network, 'canon_width', 0):
      raise ValueError("model_type 'ar' cannot use the centred Canon layers, which show each"
                       ' position the tokens after it; set network.canon_width=0')
    if len(self.data_shape) != 1:
      raise ValueError(f"model_type 'ar' models sequences (data_shape (L,)), got"
                       f' {self.data_shape}')
    super().__post_init__()

  @property
  def mask_id(self) -> int:
    return self.vocab_size

  def predict_logits(self, z, t=None, train=False, label=None):
    """Logits of x_i given z_<i at every position i: [B, L] -> [B, L, V].

    t is ignored (the network is called at t = 0).
    """
    del t
    bos = jnp.full((z.shape[0], 1), self.vocab_size, z.dtype)
    inputs = jnp.concatenate([bos, z[:, :-1]], axis=1)  # [B, L]
    return md4.call_network(self.network, inputs, jnp.zeros((z.shape[0],)), label, train)

  def log_probs(self, x, train=False, label=None):
    """log p(x_i | x_<i) per token, in nats: [B, L]."""
    logits = self.predict_logits(x, train=train, label=label)
    log_p = jax.nn.log_softmax(logits, axis=-1)
    return jnp.take_along_axis(log_p, x[..., None], axis=-1)[..., 0]

  def __call__(self, x, train=False, label=None) -> dict[str, Any]:
    """−log p(x) / L per example, in bits per token: {'loss': [B]}."""
    log_p_x = self.log_probs(x, train=train, label=label)  # [B, L]
    return {'loss': -jnp.sum(log_p_x, axis=1) / (x.shape[1] * math.log(2.0))}

  def sample_prior(self, rng, batch_size):
    """The starting point of generation: every position still to fill, [B, L]."""
    del rng
    return jnp.full((batch_size,) + tuple(self.data_shape), self.mask_id, jnp.int32)
