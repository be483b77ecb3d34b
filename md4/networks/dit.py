"""DiT (Peebles & Xie, 2023): the transformer in the middle of md4/networks/uvit.py.

A feature map [B, H, W, C] is cut into p×p patches, each embedded by a linear map (a p×p
conv of stride p) in M dimensions, plus a learned position embedding that starts as 2-D
sine-cosine sinusoids (MAE's, He et al. 2022). `depth` blocks with adaLN-zero conditioning
follow, then a conditioned LayerNorm and a zero-initialised linear map back to the p·p·C
values of each patch, which are put back in place.

Block (DiT's adaLN-Zero block, Peebles & Xie 2023, Sec. 3.2): with
(β₁, γ₁, α₁, β₂, γ₂, α₂) = W·swish(c) + b (zero-initialised: every block starts as the
identity),
  x ← x + α₁·Attn(LN(x)·(1 + γ₁) + β₁),   x ← x + α₂·MLP(LN(x)·(1 + γ₂) + β₂),
LN without a learned scale or bias, multi-head attention with biased q, k, v and an unbiased
output, and an MLP of width MLP_RATIO·M = 4M with GELU (tanh approximation). Dropout, at
one rate: on the attention probabilities, on the attention output (one mask per example and
feature, shared by the positions), after the GELU and after the MLP.

Shapes: B batch, H×W feature map, C its channels, p patch side, T = HW/p² tokens,
M hidden width, D_c conditioning width.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from md4.networks import unet

MLP_RATIO = 4  # MLP width / M


def sincos_2d(dim, rows, cols):
  """MAE's 2-D position embedding [rows·cols, dim], row-major over the grid: the first
  dim/2 features encode the column, the last dim/2 the row, each as
  [sin(x·ω), cos(x·ω)] with ω_i = 10000^(−i/(dim/4)), i < dim/4."""
  omega = 1.0 / 10_000.0**(np.arange(dim // 4) / (dim / 4))  # [dim/4]

  def one_axis(x):  # [N] -> [N, dim/2]
    args = np.outer(x, omega)
    return np.concatenate([np.sin(args), np.cos(args)], axis=1)

  row, col = np.divmod(np.arange(rows * cols), cols)
  return np.concatenate([one_axis(col), one_axis(row)], axis=1).astype(np.float32)


def modulate(x, shift, scale):  # x [B, T, M]; shift, scale [B, 1, M]
  return x * (1.0 + scale) + shift


def layer_norm(name):
  """LayerNorm without a learned scale or bias (the conditioning supplies them)."""
  return nn.LayerNorm(use_bias=False, use_scale=False, name=name)


class Attention(nn.Module):
  """W_o·Attn(W_q·x + b_q, W_k·x + b_k, W_v·x + b_v) over the T tokens (Vaswani et al.,
  2017, eq. 1), with dropout on the probabilities and on the output."""
  num_heads: int
  dropout_rate: float

  @nn.compact
  def __call__(self, x, train):  # [B, T, M]
    b, t, m = x.shape
    k = m // self.num_heads
    q, kk, v = (unet.dense(m, ('embed', 'heads'), name=n)(x).reshape(b, t, self.num_heads, k)
                for n in ('query', 'key', 'value'))
    scores = jnp.einsum('bthk,bshk->bhts', q, kk) / math.sqrt(k)  # [B, heads, T, T]
    probs = nn.Dropout(self.dropout_rate)(jax.nn.softmax(scores), deterministic=not train)
    y = jnp.einsum('bhts,bshk->bthk', probs, v).reshape(b, t, m)
    y = unet.dense(m, ('heads', 'embed'), use_bias=False, name='out')(y)
    return nn.Dropout(self.dropout_rate, broadcast_dims=(1,))(y, deterministic=not train)


class Mlp(nn.Module):
  """dropout(W₂·dropout(GELU(W₁·x + b₁)) + b₂), hidden width MLP_RATIO·M."""
  dropout_rate: float

  @nn.compact
  def __call__(self, x, train):  # [B, T, M]
    m = x.shape[-1]
    h = nn.gelu(unet.dense(MLP_RATIO * m, ('embed', 'mlp'), name='fc1')(x))
    h = nn.Dropout(self.dropout_rate)(h, deterministic=not train)
    h = unet.dense(m, ('mlp', 'embed'), name='fc2')(h)
    return nn.Dropout(self.dropout_rate)(h, deterministic=not train)


class DiTBlock(nn.Module):
  """One adaLN-zero block (see the module docstring)."""
  num_heads: int
  dropout_rate: float

  @nn.compact
  def __call__(self, x, cond, train):  # x [B, T, M], cond [B, D_c]
    m = x.shape[-1]
    mod = unet.dense(6 * m, ('cond', 'mlp'), zero=True, name='adaln')(nn.swish(cond))
    shift1, scale1, gate1, shift2, scale2, gate2 = jnp.split(mod[:, None], 6, axis=-1)
    x = x + gate1 * Attention(self.num_heads, self.dropout_rate, name='attn')(
        modulate(layer_norm('norm1')(x), shift1, scale1), train)
    return x + gate2 * Mlp(self.dropout_rate, name='mlp')(
        modulate(layer_norm('norm2')(x), shift2, scale2), train)


class DiT(nn.Module):
  """Feature map [B, H, W, C] and conditioning [B, D_c] -> [B, H, W, C]."""
  hidden_size: int  # M
  depth: int  # blocks
  num_heads: int
  patch_size: int  # p
  dropout_rate: float

  @nn.compact
  def __call__(self, x, cond, train):
    b, height, width, c = x.shape
    p, m = self.patch_size, self.hidden_size
    if height % p or width % p:
      raise ValueError(f'a {height}x{width} feature map cannot be cut into {p}x{p} patches')
    if m % self.num_heads or m % 4:
      raise ValueError(f'network.dit_hidden_size {m} must be divisible by 4 and by '
                       f'network.dit_num_heads {self.num_heads}')
    rows, cols = height // p, width // p
    x = unet.conv(m, kernel=p, stride=p, padding='VALID', name='patch_embed')(x)
    pos = self.param('pos_embed', nn.with_logical_partitioning(
        lambda key, shape: jnp.asarray(sincos_2d(shape[1], rows, cols)), (None, 'embed')),
                     (rows * cols, m))
    x = x.reshape(b, rows * cols, m) + pos  # [B, T, M]
    for i in range(self.depth):
      x = DiTBlock(self.num_heads, self.dropout_rate, name=f'block_{i}')(x, cond, train)
    mod = unet.dense(2 * m, ('cond', 'mlp'), zero=True, name='final_adaln')(nn.swish(cond))
    shift, scale = jnp.split(mod[:, None], 2, axis=-1)
    x = modulate(layer_norm('final_norm')(x), shift, scale)
    x = unet.dense(p * p * c, ('embed', 'mlp'), zero=True, name='final_linear')(x)
    x = x.reshape(b, rows, cols, p, p, c).transpose(0, 1, 3, 2, 4, 5)  # [B, rows, p, cols, p, C]
    return x.reshape(b, height, width, c)
