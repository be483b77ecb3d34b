"""Model FLOPs of one training example, counted from the parameters: 6·N·positions.

Each weight of a dense layer or convolution costs 2 FLOPs (a multiply and an add) at every
position it is applied to in the forward pass, and twice that in the backward pass (the
gradients of its input and of itself): 6 per weight and position in all. Positions are a
sequence's tokens for the transformer, a image's pixels for the UNet's and U-ViT's
convolutions, and its 2×2 patches for the U-ViT's DiT. Attention adds, per query and layer,
2·2·T·D forward (QKᵀ and PV over T keys of width D), also three times for training.
Embedding lookups, norms, biases and the per-example time and label layers are left out, as
elementwise work is: the count is the model FLOPs of MFU, not what XLA executes (its own
count, from cost analysis, is printed beside). GenMD4 runs the network on two masks per
example, so its count is doubled.
"""

import math

import jax

PER_EXAMPLE = ('cond', 'adaln', 'final_adaln', 'time_mlp_in', 'time_mlp_out')
LOOKUPS = ('embedding', 'pos_embed')
PATCH = 2  # the U-ViT's DiT patch side


def _names(path):
  return [str(getattr(k, 'key', getattr(k, 'name', k))) for k in path]


def per_example(params, config) -> float:
  """Training FLOPs (forward and backward) of one example of `config`'s data."""
  shape = tuple(config.data.data_shape)
  net = config.network
  if net.type == 'transformer':
    positions = {'': shape[0]}
  else:
    pixels = shape[0] * shape[1]
    positions = {'': pixels, 'dit': pixels // PATCH**2}
  weights = 0.0
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    names = _names(path)
    if leaf.ndim < 2 or names[-1] in LOOKUPS or set(names) & set(PER_EXAMPLE):
      continue
    weights += leaf.size * positions['dit' if 'dit' in names else '']
  flops = 6 * weights + 3 * _attention_forward(config, positions)
  return flops * (2 if config.model_type == 'genmd4' else 1)


def _attention_forward(config, positions) -> float:
  """Forward FLOPs of attention scores and values of one example: 2·2·T²·D per layer."""
  net = config.network
  if net.type == 'transformer':
    t, d, layers = positions[''], net.num_heads * net.feature_dim, net.n_layers
  elif net.type == 'unet':  # one attention layer in the middle, over every pixel
    t, d, layers = positions[''], net.feature_dim, 1
  else:  # the U-ViT's DiT blocks over patches
    t, d, layers = positions['dit'], net.dit_hidden_size, net.n_dit_layers
  return 4 * math.prod((t, t, d)) * layers
