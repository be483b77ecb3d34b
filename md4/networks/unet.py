"""A UNet backbone for images (DDPM-style: Ho et al., 2020), time- and class-conditioned.

Each of the C channel values of a pixel is a token id in [0, V] (V is the mask id). The ids
are embedded per channel and concatenated, [B, H, W, C·E], and a UNet maps them to logits
[B, H, W, C, V]: residual blocks (GroupNorm, SiLU, 3×3 conv, dropout), self-attention at the
chosen resolutions, `len(ch_mult) − 1` halvings on the way down and doublings on the way
up, and skip connections between the two paths. The diffusion time t (sinusoidal embedding
and an MLP) plus, for class-conditional data, a label embedding form the conditioning
vector that scales and shifts the normalised features of every residual block. The label
embedding has K + 1 rows: row K is the null class, used for unconditional predictions
(label None) and, with probability `label_dropout` while training, in place of the true
label, so that one network gives both terms of classifier-free guidance.

Parameters carry logical axis names like the transformer's ('vocab', 'embed', 'mlp',
'cond'; None for the spatial kernel dimensions) so a mesh can shard them by rules.

Shapes: B batch, H×W pixels, C channels, E per-channel embedding width, D channels of a
UNet level, V vocabulary, K classes.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from md4.networks import transformer


def conv(features, kernel=3, stride=1, zero=False, name=None):
  """Conv with a logical-axis-named kernel [k, k, D_in, D_out] and bias [D_out]."""
  init = nn.initializers.zeros if zero else nn.initializers.lecun_normal()
  return nn.Conv(
      features, (kernel, kernel), strides=(stride, stride), padding='SAME',
      kernel_init=nn.with_logical_partitioning(init, (None, None, 'embed', 'mlp')),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('mlp',)),
      name=name)


def dense(features, axes, zero=False, name=None):
  init = nn.initializers.zeros if zero else nn.initializers.lecun_normal()
  return nn.Dense(
      features, kernel_init=nn.with_logical_partitioning(init, axes),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[-1:]),
      name=name)


def group_norm(channels, name=None):
  return nn.GroupNorm(
      num_groups=math.gcd(32, channels),
      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ('embed',)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('embed',)),
      name=name)


class ResBlock(nn.Module):
  """x + conv(drop(act(norm(h)·(1 + scale) + shift))), h = conv(act(norm(x))), with
  (scale, shift) = W·act(cond) (scale-shift norm, Nichol & Dhariwal 2021) and a 1×1 conv
  on the skip when the width changes; the last conv starts at zero, so the block starts
  as the identity. The conditioning enters after the norm, which would remove a plain
  per-channel shift added before it."""
  features: int
  dropout_rate: float

  @nn.compact
  def __call__(self, x, cond, train):  # x [B, H, W, D_in], cond [B, C] -> [B, H, W, D]
    h = conv(self.features, name='conv1')(nn.silu(group_norm(x.shape[-1], 'norm1')(x)))
    scale, shift = jnp.split(
        dense(2 * self.features, ('cond', 'mlp'), name='cond')(nn.silu(cond))[:, None, None],
        2, axis=-1)  # each [B, 1, 1, D]
    h = nn.silu(group_norm(self.features, 'norm2')(h) * (1.0 + scale) + shift)
    h = nn.Dropout(self.dropout_rate)(h, deterministic=not train)
    h = conv(self.features, zero=True, name='conv2')(h)
    if x.shape[-1] != self.features:
      x = conv(self.features, kernel=1, name='skip')(x)
    return x + h


class AttnBlock(nn.Module):
  """x + W_o·Attn(norm(x)) over the H·W positions, multi-head; W_o starts at zero."""
  num_heads: int

  @nn.compact
  def __call__(self, x):  # [B, H, W, D]
    b, h, w, d = x.shape
    if d % self.num_heads:
      raise ValueError(f'attention width {d} is not divisible by num_heads '
                       f'{self.num_heads}; change feature_dim, ch_mult or num_heads')
    k = d // self.num_heads
    y = group_norm(d, 'norm')(x).reshape(b, h * w, d)
    q, kk, v = jnp.split(dense(3 * d, ('embed', 'heads'), name='qkv')(y), 3, axis=-1)
    y = jax.nn.dot_product_attention(*(a.reshape(b, h * w, self.num_heads, k)
                                       for a in (q, kk, v)))  # [B, HW, heads, K]
    y = dense(d, ('heads', 'embed'), zero=True, name='out')(y.reshape(b, h * w, d))
    return x + y.reshape(b, h, w, d)


class UNet(nn.Module):
  """(z_t [B, H, W, C] ids, t [B], label [B] or None) -> logits [B, H, W, C, V]."""
  vocab_size: int  # V; inputs also take the mask id V
  feature_dim: int = 128  # D of the first level
  ch_mult: tuple[int, ...] = (1, 2, 2)  # level i has feature_dim·ch_mult[i] channels
  num_res_blocks: int = 2  # residual blocks per level on the way down (one more up)
  attn_resolutions: tuple[int, ...] = (16,)  # image sides (H) with self-attention
  num_heads: int = 1  # attention heads in the UNet's attention blocks
  embed_dim: int = 32  # E, embedding width of one channel value
  dropout_rate: float = 0.1
  num_classes: int = 0  # K; 0: no label input
  label_dropout: float = 0.1  # training: chance a label is replaced by the null class K

  def __post_init__(self):
    if not self.ch_mult:
      raise ValueError('network.ch_mult must list at least one level')
    if not 0.0 <= self.label_dropout <= 1.0:
      raise ValueError(f'network.label_dropout must be in [0, 1], got {self.label_dropout}')
    super().__post_init__()

  def conditioning(self, t, label, train):
    """Time embedding (sinusoids of 1000·t, MLP) plus the label's embedding: [B, 4·D]."""
    c = 4 * self.feature_dim
    cond = transformer.timestep_embedding(1000.0 * t, self.feature_dim)  # [B, D]
    cond = dense(c, (None, 'cond'), name='time_mlp_in')(cond)
    cond = dense(c, (None, 'cond'), name='time_mlp_out')(nn.silu(cond))
    if self.num_classes == 0:
      if label is not None:
        raise ValueError('the network got labels but has num_classes = 0')
      return cond
    null = jnp.full(t.shape, self.num_classes, jnp.int32)  # [B]
    label = null if label is None else label
    if train and self.label_dropout > 0:
      drop = jax.random.bernoulli(self.make_rng('dropout'), self.label_dropout, t.shape)
      label = jnp.where(drop, null, label)
    return cond + nn.Embed(
        self.num_classes + 1, c,
        embedding_init=nn.with_logical_partitioning(nn.initializers.normal(1.0),
                                                    (None, 'cond')),
        name='label_embed')(label)

  def middle(self, h, cond, train):
    """The lowest resolution: ResBlock, attention, ResBlock."""
    d = h.shape[-1]
    h = ResBlock(d, self.dropout_rate, name='mid_res1')(h, cond, train)
    h = AttnBlock(self.num_heads, name='mid_attn')(h)
    return ResBlock(d, self.dropout_rate, name='mid_res2')(h, cond, train)

  @nn.compact
  def __call__(self, z, t, label=None, train=False):
    b, height, width, c = z.shape
    if height % 2**(len(self.ch_mult) - 1) or width % 2**(len(self.ch_mult) - 1):
      raise ValueError(f'{height}x{width} images cannot be halved {len(self.ch_mult) - 1}'
                       f' times; use fewer network.ch_mult levels')
    cond = self.conditioning(t, label, train)  # [B, 4D]
    x = nn.Embed(
        self.vocab_size + 1, self.embed_dim,
        embedding_init=nn.with_logical_partitioning(nn.initializers.normal(1.0),
                                                    ('vocab', 'embed')),
        name='embed')(z)  # [B, H, W, C, E]
    h = conv(self.feature_dim, name='conv_in')(
        x.reshape(b, height, width, c * self.embed_dim))  # [B, H, W, D]

    def attend(h, name):
      if h.shape[1] in self.attn_resolutions:
        h = AttnBlock(self.num_heads, name=name)(h)
      return h

    skips = [h]
    for level, mult in enumerate(self.ch_mult):
      for i in range(self.num_res_blocks):
        h = ResBlock(self.feature_dim * mult, self.dropout_rate,
                     name=f'down_{level}_res_{i}')(h, cond, train)
        h = attend(h, f'down_{level}_attn_{i}')
        skips.append(h)
      if level < len(self.ch_mult) - 1:
        h = conv(h.shape[-1], stride=2, name=f'down_{level}_halve')(h)
        skips.append(h)

    h = self.middle(h, cond, train)

    for level, mult in reversed(list(enumerate(self.ch_mult))):
      for i in range(self.num_res_blocks + 1):
        h = ResBlock(self.feature_dim * mult, self.dropout_rate,
                     name=f'up_{level}_res_{i}')(
                         jnp.concatenate([h, skips.pop()], axis=-1), cond, train)
        h = attend(h, f'up_{level}_attn_{i}')
      if level > 0:
        h = jax.image.resize(h, (b, 2 * h.shape[1], 2 * h.shape[2], h.shape[3]),
                             'nearest')
        h = conv(h.shape[-1], name=f'up_{level}_double')(h)

    h = nn.silu(group_norm(h.shape[-1], 'norm_out')(h))
    logits = conv(c * self.vocab_size, zero=True, name='conv_out')(h)
    return logits.reshape(b, height, width, c, self.vocab_size).astype(jnp.float32)
