"""The paper's CIFAR-10 network: VDM's UNet (Kingma et al., 2021), at one resolution.

Each of the C channel values of a pixel is a token id in [0, V] (V is the mask id),
embedded in D dimensions; the C embeddings of a pixel are concatenated, [B, H, W, C·D], and
a 3×3 conv maps them to D channels. `n_layers` residual blocks follow, all at full
resolution with D channels (no downsampling), then the middle (residual block,
self-attention over the H·W positions, residual block), then `n_layers + 1` residual blocks,
each on the concatenation of the running features with the matching output of the way down
(the first conv's included). A GroupNorm, swish and a zero-initialised 3×3 conv give the C·V
logits of every pixel. With the CIFAR-10 config's D = 128 and 32 layers this has 28,427,520
parameters, as the original release's network (tests/test_image_networks.py checks every
shape against it).

Conditioning (`Conditioning`, shared with md4/networks/uvit.py): c = W₂·swish(W₁·e + b₁) + b₂,
c [B, D], where e is the sinusoidal embedding of 1000·t, concatenated for class-conditional
data with a D-wide embedding of the label. The label embedding has K + 1 rows: row K is the
null class, used for unconditional predictions (label None) and, with probability
`label_dropout` while training, in place of the true label, so that one network gives both
terms of classifier-free guidance. Each residual block adds W·c (zero-initialised, no bias)
to its features after its first conv: a per-channel bias, as in VDM.

Parameters carry logical axis names ('vocab', 'embed', 'mlp', 'heads', 'cond'; None for the
spatial kernel dimensions) so a mesh can shard them by rules.

Shapes: B batch, H×W pixels, C channels, D feature_dim, V vocabulary, K classes.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from md4.networks import embeddings


def num_groups(channels):
  """GroupNorm groups: 32 (flax's default, the original's) for 128 channels or more;
  narrower layers get fewer groups of at least 4 channels (a divisor of `channels`), since
  with one channel per group a norm cancels any per-channel bias added before it, such as
  the UNet blocks' conditioning."""
  return math.gcd(32, max(1, channels // 4))


def conv(features, kernel=3, stride=1, padding='SAME', zero=False, name=None):
  """Conv with a logical-axis-named kernel [k, k, D_in, D_out] (LeCun normal, or zeros) and
  a zero bias [D_out]."""
  init = nn.initializers.zeros if zero else nn.initializers.lecun_normal()
  return nn.Conv(
      features, (kernel, kernel), strides=(stride, stride), padding=padding,
      kernel_init=nn.with_logical_partitioning(init, (None, None, 'embed', 'mlp')),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('mlp',)),
      name=name)


def dense(features, axes, zero=False, use_bias=True, name=None):
  """Dense with a logical-axis-named kernel [D_in, features] (LeCun normal, or zeros)."""
  init = nn.initializers.zeros if zero else nn.initializers.lecun_normal()
  return nn.Dense(
      features, use_bias=use_bias, kernel_init=nn.with_logical_partitioning(init, axes),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[-1:]),
      name=name)


def embed(num_embeddings, features, axes, name=None):
  """Embedding table [num_embeddings, features], flax's default init (std 1/√features)."""
  return nn.Embed(
      num_embeddings, features,
      embedding_init=nn.with_logical_partitioning(nn.linear.default_embed_init, axes),
      name=name)


def group_norm(channels, name=None):
  """GroupNorm with a learned scale and bias [channels]."""
  return nn.GroupNorm(
      num_groups=num_groups(channels),
      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ('embed',)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('embed',)),
      name=name)


class Conditioning(nn.Module):
  """c = W₂·swish(W₁·[e(1000·t), l] + b₁) + b₂ [B, dim], l the label's embedding (only
  with num_classes > 0; the null class K where label is None or dropped in training)."""
  dim: int  # D: width of e, of l and of c; W₁ has 4·D outputs
  num_classes: int  # K; 0: no label input
  label_dropout: float  # training: chance a label is replaced by the null class K

  @nn.compact
  def __call__(self, t, label, train):  # t [B], label [B] or None -> [B, D]
    e = embeddings.timestep_embedding(1000.0 * t, self.dim)  # [B, D]
    if self.num_classes == 0:
      if label is not None:
        raise ValueError('the network got labels but has num_classes = 0')
    else:
      null = jnp.full(t.shape, self.num_classes, jnp.int32)  # [B]
      label = null if label is None else label
      if train and self.label_dropout > 0:
        drop = jax.random.bernoulli(self.make_rng('dropout'), self.label_dropout, t.shape)
        label = jnp.where(drop, null, label)
      label_embed = embed(self.num_classes + 1, self.dim, (None, 'cond'), 'label_embed')
      e = jnp.concatenate([e, label_embed(label)], axis=-1)  # [B, 2D]
    c = nn.swish(dense(4 * self.dim, (None, 'cond'), name='mlp_in')(e))  # [B, 4D]
    return dense(self.dim, (None, 'cond'), name='mlp_out')(c)


def check_label_dropout(label_dropout):
  if not 0.0 <= label_dropout <= 1.0:
    raise ValueError(f'network.label_dropout must be in [0, 1], got {label_dropout}')


def embed_pixels(z, vocab_size, dim):
  """Ids [B, H, W, C] in [0, V] -> [B, H, W, D]: each channel value embedded in D dims, the
  C embeddings of a pixel concatenated, then a 3×3 conv."""
  b, height, width, c = z.shape
  x = embed(vocab_size + 1, dim, ('vocab', 'embed'), 'embed')(z)  # [B, H, W, C, D]
  return conv(dim, name='conv_in')(x.reshape(b, height, width, c * dim))


def pixel_logits(h, channels, vocab_size):
  """Features [B, H, W, D] -> float32 logits [B, H, W, C, V] by a zero-initialised 3×3 conv,
  so that training starts from the uniform prediction."""
  b, height, width, _ = h.shape
  logits = conv(channels * vocab_size, zero=True, name='conv_out')(h)  # [B, H, W, C·V]
  return logits.reshape(b, height, width, channels, vocab_size).astype(jnp.float32)


class ResBlock(nn.Module):
  """VDM's residual block: h = conv₁(swish(GN(x))) + W·c, then
  x + conv₂(dropout(swish(GN(h)))), with conv₂ and W zero-initialised (the block starts as
  the identity) and a dense layer on the skip when the width changes."""
  features: int
  dropout_rate: float

  @nn.compact
  def __call__(self, x, cond, train):  # x [B, H, W, D_in], cond [B, D_c] -> [B, H, W, D]
    h = conv(self.features, name='conv1')(nn.swish(group_norm(x.shape[-1], 'norm1')(x)))
    h = h + dense(self.features, ('cond', 'mlp'), zero=True, use_bias=False,
                  name='cond')(cond)[:, None, None]
    h = nn.swish(group_norm(self.features, 'norm2')(h))
    h = nn.Dropout(self.dropout_rate)(h, deterministic=not train)
    h = conv(self.features, zero=True, name='conv2')(h)
    if x.shape[-1] != self.features:
      x = dense(self.features, ('embed', 'mlp'), name='skip')(x)
    return x + h


class SelfAttention(nn.Module):
  """x + W_o·Attn(W_q·n, W_k·n, W_v·n) with n = GN(x), over the H·W positions: multi-head
  dot-product attention (Vaswani et al., 2017, eq. 1) with biased projections, kernels
  [D, heads, D/heads] and [heads, D/heads, D] (flax's MultiHeadDotProductAttention)."""
  num_heads: int

  @nn.compact
  def __call__(self, x):  # [B, H, W, D]
    b, height, width, d = x.shape
    if d % self.num_heads:
      raise ValueError(f'attention width {d} is not divisible by {self.num_heads} heads')
    k = d // self.num_heads
    n = group_norm(d, 'norm')(x).reshape(b, height * width, d)

    def project(name):  # [B, HW, D] -> [B, HW, heads, K]
      kernel = self.param(name, nn.with_logical_partitioning(
          nn.initializers.lecun_normal(in_axis=0, out_axis=(1, 2)), ('embed', 'heads', None)),
                          (d, self.num_heads, k))
      bias = self.param(f'{name}_bias', nn.with_logical_partitioning(
          nn.initializers.zeros, ('heads', None)), (self.num_heads, k))
      return jnp.einsum('bld,dhk->blhk', n, kernel) + bias

    y = jax.nn.dot_product_attention(project('query'), project('key'), project('value'))
    kernel = self.param('out', nn.with_logical_partitioning(
        nn.initializers.lecun_normal(in_axis=(0, 1), out_axis=2), ('heads', None, 'embed')),
                        (self.num_heads, k, d))
    bias = self.param('out_bias', nn.with_logical_partitioning(
        nn.initializers.zeros, ('embed',)), (d,))
    y = jnp.einsum('blhk,hkd->bld', y, kernel) + bias  # [B, HW, D]
    return x + y.reshape(b, height, width, d)


class UNet(nn.Module):
  """(z_t [B, H, W, C] ids, t [B], label [B] or None) -> logits [B, H, W, C, V]."""
  vocab_size: int  # V; inputs also take the mask id V
  feature_dim: int = 128  # D: channels of every block, per-channel embedding, conditioning
  n_layers: int = 32  # residual blocks on the way down (n_layers + 1 on the way up)
  dropout_rate: float = 0.1  # in every residual block
  num_classes: int = 0  # K; 0: no label input
  label_dropout: float = 0.1  # training: chance a label is replaced by the null class K

  def __post_init__(self):
    check_label_dropout(self.label_dropout)
    super().__post_init__()

  @nn.compact
  def __call__(self, z, t, label=None, train=False):
    d = self.feature_dim
    cond = Conditioning(d, self.num_classes, self.label_dropout, name='cond')(
        t, label, train)  # [B, D]
    h = embed_pixels(z, self.vocab_size, d)  # [B, H, W, D]
    skips = [h]
    for i in range(self.n_layers):
      h = ResBlock(d, self.dropout_rate, name=f'down_{i}')(h, cond, train)
      skips.append(h)
    h = ResBlock(d, self.dropout_rate, name='mid_1')(h, cond, train)
    h = SelfAttention(num_heads=1, name='mid_attn')(h)
    h = ResBlock(d, self.dropout_rate, name='mid_2')(h, cond, train)
    for i in range(self.n_layers + 1):
      h = ResBlock(d, self.dropout_rate, name=f'up_{i}')(
          jnp.concatenate([h, skips.pop()], axis=-1), cond, train)
    h = nn.swish(group_norm(d, 'norm_out')(h))
    return pixel_logits(h, z.shape[-1], self.vocab_size)
