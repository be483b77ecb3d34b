"""The one transformer backbone: the original MD4 release's network, time-conditioned.

Block for block, the network of the MD4 release (a LLaMA-2-style transformer, after
karpathy/llama2.c, with DiT's adaLN conditioning), bidirectional:

  h = Embed(z)                                   [B, L, D]; dropout (or a narrow Embed
                                                 and a Dense to D: `embed_dim`)
  c = Dense(act(Dense(sinusoids(1000·t))))       [B, K] time embedding (`time_embedding`)
  for each block:
    (shift, scale, gate) × 2 = Dense(σ(c))       σ: the MLP's activation (adaLN)
    h = h + gate₁·Attn(LN(h)·(1 + scale₁) + shift₁)
    h = h + gate₂·MLP(LN(h)·(1 + scale₂) + shift₂)
  logits = Dense(LN(h)·(1 + scale) + shift)      [B, L, V], zero-initialised

LN is LayerNorm without scale or bias (ε = 1e-5); without time conditioning
(`time_features='none'`) the norms are RMSNorms with a learned scale and there is no adaLN.
Attention has separate q, k, v and output projections, interleaved rotary embeddings and
dropout on its probabilities; the MLP is gated, act(x·W1)·(x·W3)·W2. Dropout on the outputs
of attention and MLP is channel-wise (one mask per example and channel, shared by every
position). Initialisation as the original: LeCun-normal projections, FFN weights of variance
2/(n_layers·fan_in) with `depth_scaled_init`, the embedding N(0, 1/D), adaLN and the output
layer at zero for adaLN-zero.

Beyond the original, off by default: QK-norm, Canon layers, GPT-2's initialisation
(`init_std`), a causal mask (the autoregressive baseline), 16-bit products
(`matmul_dtype`), rematerialisation, scanned layers. Every block is set by one shared
`BlockConfig`. The time sinusoids come from md4.networks.embeddings, and the dense layers'
products (operands in `matmul_dtype`, accumulated in float32) from md4.networks.matmul.
Parameters carry logical axis names ('vocab', 'embed', 'heads', 'mlp', 'cond') so that a mesh
can shard them by rules without a second copy of this file.

Shapes: B batch, L length, D = num_heads·feature_dim width, H heads, K = feature_dim,
F MLP width, V vocabulary, E narrow embedding width.
"""

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from md4.networks import embeddings
from md4.networks import matmul

MLP_ACTIVATIONS = {
    'glu': jax.nn.sigmoid,  # GLU (Dauphin et al.): σ(xW)·xV
    'geglu': jax.nn.gelu,
    'swiglu': jax.nn.silu,
}
COND_TYPES = ('adaln', 'adaln_zero')
TIME_FEATURES = ('t', 'none')
MLP_MULTIPLE = 32  # F = ⌊8D/3⌋ rounded up to a multiple of this, unless mlp_dim is set
NORM_EPS = 1e-5
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
# Attention kernel: 'xla' and 'cudnn' are jax.nn.dot_product_attention's implementations,
# 'einsum' is `einsum_attention`. 'auto' picks cuDNN's fused kernel on GPUs in 16-bit
# compute, 'einsum' on CPUs (where it is the faster one), else 'xla'. Attention dropout in
# training always runs `einsum_attention`, the one that has it.
ATTENTION_IMPLS = ('auto', 'xla', 'cudnn', 'einsum')
# Where a block may have a Canon layer (`Canon`; Allen-Zhu's A, B, C, D): on the normed
# input of attention, on q, k and v, on the normed input of the MLP, on its W1 and W3 units.
CANON_POSITIONS = ('attn_in', 'qkv', 'mlp_in', 'mlp_hidden')
# What a rematerialised block keeps from its forward pass for the backward pass.
REMAT_POLICIES = {
    'none': None,  # no remat: keep every activation
    'full': jax.checkpoint_policies.nothing_saveable,  # keep only the block's input
    'dots': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep matmul outputs
}

lecun_normal = nn.initializers.lecun_normal()  # variance 1/fan_in, truncated normal


def _init(init_std, original):
  """N(0, init_std²) where init_std > 0 (GPT-2's initialisation), else `original`."""
  return nn.initializers.normal(init_std) if init_std else original


def mlp_width(d, mlp_dim=0):
  """F: `mlp_dim`, or the original's ⌊2·4D/3⌋ rounded up to a multiple of 32 (2048 at
  D = 768, 2752 at D = 1024)."""
  return mlp_dim or MLP_MULTIPLE * math.ceil(int(8 * d / 3) / MLP_MULTIPLE)


def _kernel(module, name, init, shape, axes):
  """A float32 parameter `name` of `shape` with logical axes `axes`."""
  return module.param(name, nn.with_logical_partitioning(init, axes), shape, jnp.float32)


class Dense(nn.Module):
  """x [..., D_in] -> [..., features]: a kernel [D_in, features] and an optional bias, in
  the network's products dtype (`matmul.project`)."""
  features: int
  axes: tuple[str | None, str | None]  # logical axes of the kernel
  dtype: jnp.dtype
  matmul_dtype: jnp.dtype
  kernel_init: nn.initializers.Initializer = lecun_normal
  use_bias: bool = True
  bias_init: nn.initializers.Initializer = nn.initializers.zeros

  @nn.compact
  def __call__(self, x):
    kernel = _kernel(self, 'kernel', self.kernel_init, (x.shape[-1], self.features),
                     self.axes)
    y, = matmul.project(x, [kernel], self.dtype, self.matmul_dtype)
    if self.use_bias:
      y = y + _kernel(self, 'bias', self.bias_init, (self.features,), self.axes[1:])
    return y


def rotary(x, positions):
  """Rotary position embedding (Su et al., 2021) of x [B, L, H, K] at positions [L].

  Features are rotated in interleaved pairs (x_{2i}, x_{2i+1}), the pair i by the angle
  p·10000^(−2i/K) at position p, as in LLaMA and the original.
  """
  k = x.shape[-1]
  freqs = 1.0 / (10_000.0**(np.arange(0, k, 2) / k))  # [K/2]
  angles = np.asarray(positions)[:, None] * freqs[None]  # [L, K/2]
  cos = np.cos(angles).astype(np.float32)[None, :, None, :]
  sin = np.sin(angles).astype(np.float32)[None, :, None, :]
  pairs = x.reshape(x.shape[:-1] + (k // 2, 2))
  x1, x2 = pairs[..., 0], pairs[..., 1]  # [B, L, H, K/2]
  out = jnp.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
  return out.reshape(x.shape)


def einsum_attention(q, k, v, causal=False, dropout_rate=0.0, dropout_rng=None):
  """Attention softmax(q·kᵀ/√K)·v (Vaswani et al., 2017, eq. 1), [B, L, H, K].

  Two products in [B, H, L, K] layout, with the softmax's normalisation applied after the
  second: softmax(s)·v = (exp(s − max s)·v) / Σ exp(s − max s), so that the division acts
  on [B, H, L, K] rather than on the [B, H, L, L] scores. Scores, exponentials and sums are
  float32. `causal` lets position i attend to positions ≤ i only. With `dropout_rate` > 0
  each attention probability is dropped (and the kept ones scaled by 1/(1 − rate)) by
  dropping its exponential in the numerator only. The same function as
  jax.nn.dot_product_attention, faster on XLA's CPU backend (docs/experiments.md).
  """
  scale = q.shape[-1]**-0.5
  q, k, v = (a.transpose(0, 2, 1, 3) for a in (q, k, v))  # [B, H, L, K]
  s = jnp.einsum('bhlk,bhmk->bhlm', q * scale, k, preferred_element_type=jnp.float32)
  if causal:
    l = s.shape[-1]
    s = jnp.where(np.tril(np.ones((l, l), bool)), s, -jnp.inf)
  # The subtracted maximum cancels in the ratio, so no gradient flows through it.
  e = jnp.exp(s - jax.lax.stop_gradient(s.max(axis=-1, keepdims=True)))
  total = e.sum(axis=-1, keepdims=True)
  if dropout_rate > 0.0:
    keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, e.shape)
    e = jnp.where(keep, e / (1.0 - dropout_rate), 0.0)
  y = jnp.einsum('bhlm,bhmk->bhlk', e.astype(v.dtype), v, preferred_element_type=jnp.float32)
  y = y / total
  return y.astype(v.dtype).transpose(0, 2, 1, 3)


def attention(q, k, v, impl, causal=False):
  """softmax(q·kᵀ/√K)·v of [B, L, H, K] by implementation `impl` (ATTENTION_IMPLS).

  'auto' is chosen where the program is lowered (jax.lax.platform_dependent): `einsum` on
  CPUs, XLA's elsewhere, and cuDNN's fused kernel on GPUs in 16-bit compute when the
  tracing host has cuDNN (a program exported from a CPU host for GPUs gets XLA's).
  """
  if impl == 'einsum':
    return einsum_attention(q, k, v, causal)
  xla = lambda *a, implementation='xla': jax.nn.dot_product_attention(
      *a, is_causal=causal, implementation=implementation)
  if impl != 'auto':
    return xla(q, k, v, implementation=impl)
  per_platform = {'cpu': lambda *a: einsum_attention(*a, causal)}
  if q.dtype == jnp.bfloat16 and jax.default_backend() == 'gpu':
    per_platform['cuda'] = lambda *a: xla(*a, implementation='cudnn')
  return jax.lax.platform_dependent(q, k, v, default=xla, **per_platform)


def channel_dropout(module, x, rate, train):
  """Dropout of whole channels of x [B, L, C]: one mask [B, 1, C] per example and channel,
  shared by every position, kept values scaled by 1/(1 − rate) (the original's Dropout1d)."""
  if rate == 0.0 or not train:
    return x
  keep = jax.random.bernoulli(module.make_rng('dropout'), 1.0 - rate,
                              (x.shape[0], 1, x.shape[-1]))
  return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


def modulate(x, shift, scale):
  """adaLN: x·(1 + scale) + shift, with shift/scale [B, D] broadcast over L."""
  return x * (1.0 + scale[:, None]) + shift[:, None]


def _constrain(x, axes):
  """Pins an activation's sharding by logical axis names (a no-op outside a mesh)."""
  return nn.with_logical_constraint(x, axes)


def _layer_norm(dtype, name):
  """LayerNorm without scale or bias, ε = 1e-5: the norm under adaLN."""
  return nn.LayerNorm(epsilon=NORM_EPS, use_bias=False, use_scale=False, dtype=dtype,
                      name=name)


def _rms_norm(dtype, name, axis='embed'):
  """RMSNorm with a learned scale, ε = 1e-5 (over the last axis, logical name `axis`)."""
  return nn.RMSNorm(
      epsilon=NORM_EPS, dtype=dtype, param_dtype=jnp.float32, use_scale=True,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones, (axis,)), name=name)


class Canon(nn.Module):
  """A Canon layer (Allen-Zhu, 2025, "Physics of Language Models: Part 4.1"), centred:

    h_i ← h_i + Σ_{j=−r..r} w_j ⊙ h_{i+j},   r = (width − 1)/2,

  a residual depthwise convolution over the length axis of [B, L, C] activations, with
  zeros beyond the sequence's ends. The paper's is causal; this network is bidirectional,
  so the window is centred. w [width, C] starts at zero, so the layer starts as the identity.
  """
  width: int

  @nn.compact
  def __call__(self, h):  # [B, L, C]
    r = self.width // 2
    w = self.param('kernel', nn.with_logical_partitioning(nn.initializers.zeros, (None, None)),
                   (self.width, h.shape[-1]), jnp.float32).astype(h.dtype)
    padded = jnp.pad(h, ((0, 0), (r, r), (0, 0)))
    l = h.shape[1]
    return h + sum(w[j] * padded[:, j:j + l] for j in range(self.width))


class Attention(nn.Module):
  """Multi-head self-attention with rotary positions: wo(attn(wq·x, wk·x, wv·x))."""
  num_heads: int
  dropout_rate: float
  dtype: jnp.dtype
  matmul_dtype: jnp.dtype
  attention_impl: str
  causal: bool = False
  qk_norm: bool = False  # RMSNorm on each head's queries and keys (before rotary)
  canon_width: int = 0  # > 0: a Canon layer on q, k and v
  init_std: float = 0.0  # > 0: N(0, init_std²) projections instead of LeCun's
  out_init_std: float = 0.0  # with init_std: wo's standard deviation

  @nn.compact
  def __call__(self, x, train):  # x [B, L, D]
    b, l, d = x.shape
    h = self.num_heads
    k = d // h
    init = _init(self.init_std, lecun_normal)
    w = lambda name, axes: _kernel(self, name, init, (d, d), axes)
    wq, wk, wv = (w(n, ('embed', 'heads')) for n in ('wq', 'wk', 'wv'))
    q, kk, v = matmul.project(x, [wq, wk, wv], self.dtype, self.matmul_dtype)  # [B, L, D] each
    if self.canon_width:
      q, kk, v = jnp.split(Canon(self.canon_width, name='canon_qkv')(
          jnp.concatenate([q, kk, v], axis=-1)), 3, axis=-1)
    q, kk, v = (_constrain(a.reshape(b, l, h, k), ('batch', 'length', 'act_heads', None))
                for a in (q, kk, v))  # [B, L, H, K]
    if self.qk_norm:  # QK-norm: scores q̂·k̂ᵀ/√K bounded by the norms' learned scales
      q = _rms_norm(self.dtype, 'q_norm', axis=None)(q)
      kk = _rms_norm(self.dtype, 'k_norm', axis=None)(kk)
    positions = np.arange(l, dtype=np.float32)
    q, kk = rotary(q, positions).astype(v.dtype), rotary(kk, positions).astype(v.dtype)
    dropout = self.dropout_rate if train else 0.0
    if dropout > 0.0:  # the implementation with dropout on the probabilities
      y = einsum_attention(q, kk, v, self.causal, dropout, self.make_rng('dropout'))
    else:
      y = attention(q, kk, v, self.attention_impl, self.causal)
    wo = _kernel(self, 'wo', _init(self.out_init_std, lecun_normal), (d, d),
                 ('heads', 'embed'))
    y, = matmul.project(y.reshape(b, l, d), [wo], self.dtype, self.matmul_dtype)
    return channel_dropout(self, y, self.dropout_rate, train)


class FeedForward(nn.Module):
  """The gated MLP act(x·W1)·(x·W3)·W2, each weight of variance init_scale/fan_in."""
  hidden_dim: int  # F
  mlp_type: str
  init_scale: float  # 2/n_layers with depth_scaled_init, else 1
  dropout_rate: float
  dtype: jnp.dtype
  matmul_dtype: jnp.dtype
  canon_width: int = 0  # > 0: a Canon layer on the W1 and W3 units
  init_std: float = 0.0  # > 0: N(0, init_std²) weights instead
  out_init_std: float = 0.0  # with init_std: W2's standard deviation

  @nn.compact
  def __call__(self, x, train):  # x [B, L, D]
    d, f = x.shape[-1], self.hidden_dim
    original = nn.initializers.variance_scaling(self.init_scale, 'fan_in',
                                                'truncated_normal')
    init = _init(self.init_std, original)
    w1 = _kernel(self, 'w1', init, (d, f), ('embed', 'mlp'))
    w3 = _kernel(self, 'w3', init, (d, f), ('embed', 'mlp'))
    gate, up = matmul.project(x, [w1, w3], self.dtype, self.matmul_dtype)  # [B, L, F] each
    if self.canon_width:
      gate, up = jnp.split(Canon(self.canon_width, name='canon_mlp_hidden')(
          jnp.concatenate([gate, up], axis=-1)), 2, axis=-1)
    y = MLP_ACTIVATIONS[self.mlp_type](gate) * up
    y = _constrain(y, ('batch', 'length', 'act_mlp'))
    w2 = _kernel(self, 'w2', _init(self.out_init_std, original), (f, d), ('mlp', 'embed'))
    y, = matmul.project(y, [w2], self.dtype, self.matmul_dtype)
    return channel_dropout(self, y, self.dropout_rate, train)


def adaln(cond, n, d, mlp_type, cond_type, dtype, matmul_dtype, name, init_std=0.0):
  """n modulation vectors [B, D] from the time embedding: Dense(act(c)), with `act` the MLP's
  activation as in the original; adaLN-zero starts the Dense at zero."""
  zero = cond_type == 'adaln_zero'
  init = nn.initializers.zeros if zero else _init(init_std, lecun_normal)
  mods = Dense(n * d, ('cond', 'embed'), dtype, matmul_dtype, kernel_init=init,
               name=name)(MLP_ACTIVATIONS[mlp_type](cond))
  return jnp.split(mods, n, axis=-1)


@dataclasses.dataclass(frozen=True)
class BlockConfig:
  """What every block of one network shares: its Transformer's settings, resolved (dtypes
  as jnp types, F and the initialisation scales computed). Frozen, hence hashable: one static
  attribute through nn.remat and nn.scan."""
  num_heads: int  # H
  mlp_type: str  # see MLP_ACTIVATIONS; also the activation before adaLN
  mlp_dim: int  # F
  cond_type: str  # see COND_TYPES
  dropout_rate: float
  ffn_init_scale: float  # FFN weights' variance·fan_in: 2/n_layers with depth_scaled_init
  dtype: jnp.dtype  # compute dtype
  matmul_dtype: jnp.dtype  # operands of the dense layers' products
  attention_impl: str  # see ATTENTION_IMPLS
  causal: bool = False
  canon_width: int = 0  # 0: no Canon layers
  canon_positions: tuple[str, ...] = ()  # CANON_POSITIONS keys
  qk_norm: bool = False
  init_std: float = 0.0  # > 0: N(0, init_std²) weights (Transformer.init_std)
  out_init_std: float = 0.0  # with init_std: the residual output projections' (wo, W2)

  def canon_width_at(self, position):
    """The width of the Canon layer at `position` (a CANON_POSITIONS key), 0 if none."""
    return self.canon_width if position in self.canon_positions else 0


class Block(nn.Module):
  """x + g₁·Attn(adaLN(x)), then + g₂·MLP(adaLN(x)), with Canon layers where
  `config.canon_positions` asks for them (`CANON_POSITIONS`)."""
  config: BlockConfig

  def canon(self, position, h):
    """h through the Canon layer at `position`, if one sits there."""
    width = self.config.canon_width_at(position)
    return Canon(width, name=f'canon_{position}')(h) if width else h

  def modulations(self, x, cond):
    """(norm, shift, scale, gate) for attention and for the MLP: adaLN from cond [B, K], or
    for cond None the original's unconditioned block (RMSNorms, no shifts, scales, gates)."""
    c = self.config
    d = x.shape[-1]
    if cond is None:
      zeros = jnp.zeros((x.shape[0], d), x.dtype)  # [B, D]
      return [(_rms_norm(c.dtype, n), zeros, zeros, 1.0)
              for n in ('attention_norm', 'ffn_norm')]
    norms = [_layer_norm(c.dtype, n) for n in ('attention_norm', 'ffn_norm')]
    mods = adaln(cond, 6, d, c.mlp_type, c.cond_type, c.dtype, c.matmul_dtype, 'adaln',
                 c.init_std)  # 6 × [B, D]
    return [(norm, shift, scale, gate[:, None])
            for norm, (shift, scale, gate) in zip(norms, (mods[:3], mods[3:]))]

  @nn.compact
  def __call__(self, x, cond, train):  # x [B, L, D], cond [B, K] or None
    c = self.config
    x = _constrain(x, ('batch', 'length', 'act_embed'))
    (norm1, shift1, scale1, gate1), (norm2, shift2, scale2, gate2) = self.modulations(
        x, cond)

    y = self.canon('attn_in', modulate(norm1(x), shift1, scale1))
    y = Attention(c.num_heads, c.dropout_rate, c.dtype, c.matmul_dtype, c.attention_impl,
                  c.causal, c.qk_norm, c.canon_width_at('qkv'), c.init_std, c.out_init_std,
                  name='attention')(y, train)
    x = x + gate1 * y

    y = self.canon('mlp_in', modulate(norm2(x), shift2, scale2))
    y = FeedForward(c.mlp_dim, c.mlp_type, c.ffn_init_scale, c.dropout_rate, c.dtype,
                    c.matmul_dtype, c.canon_width_at('mlp_hidden'), c.init_std,
                    c.out_init_std, name='feed_forward')(y, train)
    return x + gate2 * y


class ScannedBlock(Block):
  """A Block with nn.scan's (carry, x) -> (carry, y) signature; `train` is an attribute."""
  train: bool = False

  def __call__(self, x, cond):
    return super().__call__(x, cond, self.train), None


class Transformer(nn.Module):
  """Bidirectional (or, with `causal`, left-to-right) transformer mapping (z_t, t) to
  logits of x over V classes."""
  vocab_size: int  # V; inputs also take the mask id V
  n_layers: int = 12
  num_heads: int = 12
  feature_dim: int = 64  # per-head width K; model width D = num_heads·K; time embedding K
  mlp_type: str = 'glu'  # see MLP_ACTIVATIONS; also the activation before adaLN
  mlp_dim: int = 0  # F; 0: ⌊8D/3⌋ rounded up to a multiple of 32 (`mlp_width`)
  cond_type: str = 'adaln_zero'  # 'adaln' | 'adaln_zero'
  time_features: str = 't'  # 't' (condition on t) | 'none'
  dropout_rate: float = 0.0
  depth_scaled_init: bool = True  # FFN weights of variance 2/(n_layers·fan_in)
  # Input embedding: 0 embeds ids in D directly (with dropout); E > 0 embeds them in E and
  # projects to D with a Dense layer (the original's `outside_embed`, E = feature_dim).
  embed_dim: int = 0
  causal: bool = False  # attend to earlier positions only (the autoregressive baseline)
  dtype: str = 'float32'  # compute dtype (see DTYPES); parameters and logits stay float32
  # Operands of the dense layers' products ('': dtype), accumulated in float32. 'bfloat16'
  # with dtype 'float32' suits CPUs with bfloat16 matrix units (AMX): only the products
  # round their inputs; the rest of the network computes in float32.
  matmul_dtype: str = ''
  remat_policy: str = 'none'  # see REMAT_POLICIES
  scan_layers: bool = False  # one scanned block: compile time flat in depth
  attention_impl: str = 'auto'  # see ATTENTION_IMPLS
  # Canon layers: centred residual depthwise convolutions over `canon_width` neighbouring
  # positions (0: none; odd), at the CANON_POSITIONS named in `canon_positions`.
  canon_width: int = 0
  canon_positions: tuple[str, ...] = ('mlp_in',)
  # QK-norm (Dehghani et al., 2023, "Scaling Vision Transformers to 22 Billion Parameters",
  # with RMSNorm as in OLMo 2): each head's queries and keys RMS-normalised over K, with a
  # learned scale of K shared by the heads, before the rotary embedding.
  qk_norm: bool = False
  # > 0: GPT-2's initialisation (Radford et al., 2019), N(0, init_std²) for the embedding
  # and every weight the original initialises by fan-in (projections, FFN, time MLP), the
  # residual output projections (wo, W2) N(0, init_std²/(2·n_layers)) with
  # depth_scaled_init; zero-initialised layers stay zero. 0: the original's (module
  # docstring).
  init_std: float = 0.0

  def __post_init__(self):
    if self.mlp_dim < 0:
      raise ValueError(f'mlp_dim must be >= 0 (0: 8D/3 rounded up to {MLP_MULTIPLE}), got'
                       f' {self.mlp_dim}')
    if self.embed_dim < 0:
      raise ValueError(f'embed_dim must be >= 0 (0: embed in the model width), got'
                       f' {self.embed_dim}')
    if self.feature_dim < 4 or self.feature_dim % 2:
      raise ValueError(f'feature_dim must be even and >= 4 (rotary pairs, time'
                       f' sinusoids), got {self.feature_dim}')
    if self.init_std < 0:
      raise ValueError(f'init_std must be >= 0 (0: the original initialisation), got'
                       f' {self.init_std}')
    if self.canon_width < 0 or (self.canon_width and self.canon_width % 2 == 0):
      raise ValueError(f'canon_width must be 0 (no Canon layers) or odd, got'
                       f' {self.canon_width}')
    unknown = set(self.canon_positions) - set(CANON_POSITIONS)
    if unknown:
      raise ValueError(f'unknown canon_positions {sorted(unknown)}; choose from'
                       f' {list(CANON_POSITIONS)}')
    for value, allowed, key in ((self.mlp_type, MLP_ACTIVATIONS, 'mlp_type'),
                                (self.cond_type, COND_TYPES, 'cond_type'),
                                (self.time_features, TIME_FEATURES, 'time_features'),
                                (self.dtype, DTYPES, 'dtype'),
                                (self.matmul_dtype, ('',) + tuple(DTYPES), 'matmul_dtype'),
                                (self.remat_policy, REMAT_POLICIES, 'remat_policy'),
                                (self.attention_impl, ATTENTION_IMPLS, 'attention_impl')):
      if value not in allowed:
        raise ValueError(
            f'unknown {key} {value!r}; choose from {sorted(allowed)}')
    super().__post_init__()

  def time_embedding(self, t, dtype, matmul_dtype):
    """The original's time embedding: Dense(swish(Dense(sinusoids(1000·t)))), [B] -> [B, K],
    through a hidden layer of 4K."""
    k = self.feature_dim
    dense = functools.partial(Dense, dtype=dtype, matmul_dtype=matmul_dtype,
                              kernel_init=_init(self.init_std, lecun_normal))
    c = embeddings.timestep_embedding(1000.0 * t, k)  # [B, K]
    c = nn.swish(dense(4 * k, (None, 'cond'), name='time_mlp_in')(c))
    return dense(k, ('cond', None), name='time_mlp_out')(c)

  def block_config(self, d, dtype, matmul_dtype):
    """The BlockConfig of this network's blocks at width D = d: F from `mlp_width`, and with
    depth_scaled_init FFN variance 2/n_layers and residual outputs init_std/√(2·n_layers)."""
    scaled = self.depth_scaled_init
    return BlockConfig(
        num_heads=self.num_heads, mlp_type=self.mlp_type, mlp_dim=mlp_width(d, self.mlp_dim),
        cond_type=self.cond_type, dropout_rate=self.dropout_rate,
        ffn_init_scale=2.0 / self.n_layers if scaled else 1.0, dtype=dtype,
        matmul_dtype=matmul_dtype, attention_impl=self.attention_impl, causal=self.causal,
        canon_width=self.canon_width, canon_positions=tuple(self.canon_positions),
        qk_norm=self.qk_norm, init_std=self.init_std,
        out_init_std=(self.init_std / math.sqrt(2 * self.n_layers) if scaled
                      else self.init_std))

  @nn.compact
  def __call__(self, z, t, train=False):  # z [B, L] int, t [B] -> [B, L, V]
    d = self.num_heads * self.feature_dim
    dtype = DTYPES[self.dtype]
    matmul_dtype = DTYPES[self.matmul_dtype or self.dtype]
    embed_init = nn.with_logical_partitioning(
        _init(self.init_std, nn.linear.default_embed_init), ('vocab', 'embed'))
    if self.embed_dim:  # narrow embedding, then a Dense (with bias) to D
      x = nn.Embed(self.vocab_size + 1, self.embed_dim, dtype=dtype,
                   param_dtype=jnp.float32, embedding_init=embed_init, name='embed')(z)
      x = Dense(d, (None, 'embed'), dtype, matmul_dtype,
                kernel_init=_init(self.init_std, lecun_normal), name='embed_proj')(x)
    else:
      x = nn.Embed(self.vocab_size + 1, d, dtype=dtype, param_dtype=jnp.float32,
                   embedding_init=embed_init, name='embed')(z)  # [B, L, D]
      x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)

    cond = None
    if self.time_features == 't':
      cond = self.time_embedding(t, dtype, matmul_dtype)  # [B, K]

    config = self.block_config(d, dtype, matmul_dtype)
    policy = REMAT_POLICIES[self.remat_policy]
    if self.scan_layers:
      block = ScannedBlock
      if self.remat_policy != 'none':
        block = nn.remat(block, policy=policy, prevent_cse=False)
      x, _ = nn.scan(
          block, variable_axes={'params': 0}, split_rngs={'params': True, 'dropout': True},
          in_axes=nn.broadcast, length=self.n_layers,
          metadata_params={nn.PARTITION_NAME: 'layers'})(
              config, train=train, name='blocks')(x, cond)
    else:
      block = Block
      if self.remat_policy != 'none':
        block = nn.remat(block, policy=policy, static_argnums=(3,))
      for i in range(self.n_layers):
        x = block(config, name=f'block_{i}')(x, cond, train)

    if cond is None:
      x = _rms_norm(dtype, 'final_norm')(x)
    else:
      shift, scale = adaln(cond, 2, d, self.mlp_type, self.cond_type, dtype, matmul_dtype,
                           'final_adaln', self.init_std)
      x = modulate(_layer_norm(dtype, 'final_norm')(x), shift, scale)
    kernel = _kernel(self, 'logits', nn.initializers.zeros, (d, self.vocab_size),
                     ('embed', 'vocab'))
    logits = matmul.float32_matmul(x.reshape(-1, d).astype(matmul_dtype),  # [B·L, V]
                                   kernel.astype(matmul_dtype)).reshape(x.shape[:-1] + (-1,))
    return _constrain(logits, ('batch', 'length', 'act_vocab'))  # [B, L, V] float32
