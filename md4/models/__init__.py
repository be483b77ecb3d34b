"""Models: a table from `config.model_type` to the module class, and what they share.

Every model maps a batch to per-example loss terms ({'loss': [B], ...}, bits per token);
the trainer and the evaluator reduce them. Every model also offers the samplers
(md4.sampling) the interface of `Denoiser`.
"""

from typing import Any, ClassVar, Protocol

import flax.linen as nn
import jax

from md4.models.ar import AR
from md4.models.genmd4 import GenMD4
from md4.models.md4 import MD4
from md4 import networks

MODELS = {
    'md4': MD4,
    'genmd4': GenMD4,
    'ar': AR,  # the autoregressive baseline (network.causal=True)
}


class Denoiser(Protocol):
  """What a model offers to the samplers.

  Diffusion models (MD4, GenMD4) predict x from z_t at any time; MD4 also has one
  masking `schedule` for every token, which some samplers need. An autoregressive model
  (`autoregressive` True) predicts each position from the ones before it, and its samplers
  fill masked positions left to right.
  """
  vocab_size: int  # V; the mask id is V
  data_shape: tuple[int, ...]
  network: nn.Module
  autoregressive: ClassVar[bool]

  @property
  def mask_id(self) -> int: ...

  def predict_logits(self, z, t, train=False, label=None) -> jax.Array:
    """Logits of x given z_t: [B, *S] ids, t [B] -> [B, *S, V]."""

  def unmask_prob(self, s, t) -> jax.Array:
    """P(a masked token is revealed between t and s < t), broadcastable to [B, *S, V]."""

  def sample_prior(self, rng, batch_size) -> jax.Array:
    """The starting point of generation, [B, *S]."""


def build(config, info) -> nn.Module:
  """The model named by config.model_type around the configured backbone, for the data
  described by `info` (an md4.data.DatasetInfo)."""
  if config.model_type not in MODELS:
    raise ValueError(f'unknown model_type {config.model_type!r}; '
                     f'choose from {sorted(MODELS)}')
  network = networks.build_network(config.network, info.vocab_size, info.num_classes)
  padding = {}
  if info.pad_id is not None:
    if config.model_type != 'md4':
      raise ValueError(f'dataset {config.data.dataset!r} pads its examples, which only'
                       " model_type 'md4' handles")
    padding = dict(pad_id=info.pad_id, length_probs=info.length_probs)
  return MODELS[config.model_type](
      network=network, vocab_size=info.vocab_size, data_shape=info.data_shape,
      **padding, **config.model)


def loss_terms(model, params, batch, rng, train: bool) -> dict[str, Any]:
  """The model's per-example loss terms of a batch, each [B].

  batch: [B, *S] ids, or {'x': [B, *S], 'label': [B]} for class-conditional data. rng
  feeds the 'sample' stream (t, masks) and, in training, the 'dropout' one.
  """
  rng_sample, rng_dropout = jax.random.split(rng)
  x, label = (batch['x'], batch['label']) if isinstance(batch, dict) else (batch, None)
  return model.apply({'params': params}, x, train=train, label=label,
                     rngs={'sample': rng_sample, 'dropout': rng_dropout})
