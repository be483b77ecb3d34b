"""The one transformer backbone: bidirectional, LLaMA-style, time-conditioned.

Token ids in [0, V] (V is the mask id) are embedded, passed through `n_layers` pre-norm
blocks (RMSNorm, rotary self-attention, gated MLP), and projected to V logits by a
zero-initialised layer. The diffusion time t enters through a sinusoidal embedding and an
MLP, and modulates every norm (adaLN), optionally with zero-initialised residual gates
(adaLN-zero, as in DiT). Parameters carry logical axis names ('vocab', 'embed', 'heads',
'mlp', 'cond') so that a mesh can shard them by rules without a second copy of this file.

Shapes: B batch, L length, D = num_heads·feature_dim width, H heads, K = feature_dim,
F MLP width, V vocabulary.
"""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

MLP_ACTIVATIONS = {
    'glu': jax.nn.sigmoid,  # GLU (Dauphin et al.): σ(xW)·xV
    'geglu': jax.nn.gelu,
    'swiglu': jax.nn.silu,
}
COND_TYPES = ('adaln', 'adaln_zero')
TIME_FEATURES = ('t', 'none')
MLP_MULTIPLE = 128  # F = 8D/3 rounded up to a multiple of this, unless mlp_dim is set
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
# Attention kernel: 'xla' and 'cudnn' are jax.nn.dot_product_attention's implementations,
# 'einsum' is `einsum_attention`. 'auto' picks cuDNN's fused kernel on GPUs in 16-bit
# compute, 'einsum' on CPUs (where it is the faster one), else 'xla'.
ATTENTION_IMPLS = ('auto', 'xla', 'cudnn', 'einsum')
# Where a block may have a Canon layer (`Canon`; Allen-Zhu's A, B, C, D): on the normed
# input of attention, on q, k and v, on the normed input of the MLP, on its gate and up units.
CANON_POSITIONS = ('attn_in', 'qkv', 'mlp_in', 'mlp_hidden')
# What a rematerialised block keeps from its forward pass for the backward pass.
REMAT_POLICIES = {
    'none': None,  # no remat: keep every activation
    'full': jax.checkpoint_policies.nothing_saveable,  # keep only the block's input
    'dots': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep matmul outputs
}


class Projection(nn.Module):
  """Bias-free linear map of the last axis: x [..., D] -> [..., *features].

  The leading axes are flattened first, so the product is one [N, D] matrix times the
  kernel: XLA's CPU backend runs the backward pass of a contraction over [B, L, D] up to
  2.5x slower. On CPUs a fused kernel ([D, 3, H, K] for q, k, v) is also flattened to one
  [D, 3·H·K] matrix (1.4x faster backward); elsewhere it keeps its shape, so that a kernel
  sharded along heads or MLP units over 'tensor' stays sharded. Either way the parameter
  keeps its shape, its logical axes and its per-matrix treatment by Muon.
  """
  features: tuple[int, ...]
  axes: tuple[str | None, ...]  # logical axes of the kernel [D, *features]
  dtype: jnp.dtype  # of the output (the activations)
  std: float = 0.02
  zero: bool = False
  matmul_dtype: jnp.dtype | None = None  # of the product's operands (None: dtype)

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    init = nn.initializers.zeros if self.zero else nn.initializers.normal(self.std)
    md = self.matmul_dtype or self.dtype
    kernel = self.param('kernel', nn.with_logical_partitioning(init, self.axes),
                        (d,) + self.features, jnp.float32).astype(md)
    x2 = x.reshape(-1, d).astype(md)  # [N, D]
    if jax.default_backend() == 'cpu':
      y = float32_matmul(x2, kernel.reshape(d, -1))
    else:
      y = jnp.tensordot(x2, kernel, axes=1)
    return y.astype(self.dtype).reshape(x.shape[:-1] + self.features)


def _dense(features, axes, dtype, std=0.02, name=None, zero=False, matmul_dtype=None):
  return Projection((features,), axes, dtype, std=std, zero=zero, name=name,
                    matmul_dtype=matmul_dtype)


@functools.cache
def cpu_has_amx(cpuinfo='/proc/cpuinfo') -> bool:
  """Whether this host's CPU has bfloat16 matrix units: Intel AMX ('amx_bf16' among the
  flags in `cpuinfo`). There XLA's CPU backend runs bfloat16 products 2-5x faster than
  float32 ones; on CPUs without them (AVX2, or AVX-512 alone) it converts bfloat16 operands
  and runs slower than in float32 (on a 2-core AMD EPYC with AVX2, the Shakespeare
  default's step took 160 ms with bfloat16 products against 126 in float32)."""
  try:
    with open(cpuinfo) as f:
      return any(line.startswith('flags') and 'amx_bf16' in line.split() for line in f)
  except OSError:  # not Linux
    return False


def float32_matmul(x, w):
  """x [N, D] · w [D, F] with operands in their dtype, accumulated and returned in float32."""
  if x.dtype == w.dtype == jnp.float32:
    return x @ w
  return _low_precision_matmul(x, w)


def _matmul(spec, a, b):
  """einsum(spec, a, b) accumulated in float32, on operands with a leading axis of size 1.

  With that axis XLA's CPU backend runs all three products of a layer in 16 bits on its
  YNNPACK kernels (AMX units where the CPU has them); as 2-D products it runs x·wᵀ about
  4x slower and hands xᵀ·g to Eigen, which first converts both operands to float32.
  Elsewhere the axis costs nothing.
  """
  return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)


@jax.custom_vjp
def _low_precision_matmul(x, w):
  """float32_matmul for 16-bit operands; its backward products are 16-bit too (the float32
  cotangent is rounded first), so they never fall back to float32 products."""
  return _matmul('knd,df->knf', x[None], w)[0]


def _low_precision_matmul_fwd(x, w):
  return _low_precision_matmul(x, w), (x, w)


def _low_precision_matmul_bwd(residuals, g):  # g [N, F] float32
  x, w = residuals
  g = g.astype(x.dtype)[None]
  dx = _matmul('knf,df->knd', g, w)[0]
  dw = _matmul('knd,knf->df', x[None], g)
  return dx.astype(x.dtype), dw.astype(w.dtype)


_low_precision_matmul.defvjp(_low_precision_matmul_fwd, _low_precision_matmul_bwd)


class Logits(nn.Module):
  """The zero-initialised output layer: [..., D] -> float32 logits [..., V]."""
  vocab_size: int
  dtype: jnp.dtype  # of the product's operands

  @nn.compact
  def __call__(self, x):
    kernel = self.param(
        'kernel', nn.with_logical_partitioning(nn.initializers.zeros, ('embed', 'vocab')),
        (x.shape[-1], self.vocab_size), jnp.float32)
    y = float32_matmul(x.reshape(-1, x.shape[-1]).astype(self.dtype), kernel.astype(self.dtype))
    return y.reshape(x.shape[:-1] + (self.vocab_size,))


def _rms_norm(name, dtype, axis='embed'):
  """RMSNorm over the last axis, whose logical name is `axis`, with a learned scale."""
  return nn.RMSNorm(
      epsilon=1e-6,
      dtype=dtype,
      param_dtype=jnp.float32,
      use_scale=True,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones, (axis,)),
      name=name)


def _constrain(x, axes):
  """Pins an activation's sharding by logical axis names (a no-op outside a mesh)."""
  return nn.with_logical_constraint(x, axes)


def sinusoidal_embedding(t, dim, max_period=10_000.0):
  """Transformer sinusoids of 1000·t (DDPM convention): [B] -> [B, dim]."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half) / half)  # [dim/2]
  args = 1000.0 * t[:, None] * freqs[None]  # [B, dim/2]
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def rotary(x, positions):
  """Rotary position embedding (Su et al., 2021) of x [B, L, H, K] at positions [L]."""
  k = x.shape[-1]
  freqs = 1.0 / (10_000.0**(np.arange(0, k, 2) / k))  # [K/2]
  angles = np.asarray(positions)[:, None] * freqs[None]  # [L, K/2]
  cos = np.cos(angles).astype(np.float32)[None, :, None, :]
  sin = np.sin(angles).astype(np.float32)[None, :, None, :]
  x1, x2 = jnp.split(x, 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)


def einsum_attention(q, k, v, causal=False):
  """Attention softmax(q·kᵀ/√K)·v (Vaswani et al., 2017, eq. 1), [B, L, H, K]; bidirectional,
  or with causal, position l attending only to positions m ≤ l.

  Two products in [B, H, L, K] layout, with the softmax's normalisation applied after the
  second: softmax(s)·v = (exp(s − max s)·v) / Σ exp(s − max s), so that the division acts
  on [B, H, L, K] rather than on the [B, H, L, L] scores. Scores, exponentials and sums are
  float32. The same function as jax.nn.dot_product_attention; on XLA's CPU backend the
  train step of the benchmark's 4-layer 256-wide shape is about 10% faster with it.
  """
  scale = q.shape[-1]**-0.5
  q, k, v = (a.transpose(0, 2, 1, 3) for a in (q, k, v))  # [B, H, L, K]
  s = jnp.einsum('bhlk,bhmk->bhlm', q * scale, k, preferred_element_type=jnp.float32)
  if causal:
    s = jnp.where(jnp.tril(jnp.ones(s.shape[-2:], bool)), s, -jnp.inf)
  # The subtracted maximum cancels in the ratio, so no gradient flows through it.
  e = jnp.exp(s - jax.lax.stop_gradient(s.max(axis=-1, keepdims=True)))
  y = jnp.einsum('bhlm,bhmk->bhlk', e.astype(v.dtype), v, preferred_element_type=jnp.float32)
  y = y / e.sum(axis=-1, keepdims=True)
  return y.astype(v.dtype).transpose(0, 2, 1, 3)


def modulate(x, shift, scale):
  """adaLN: x·(1 + scale) + shift, with shift/scale [B, D] broadcast over L."""
  return x * (1.0 + scale[:, None]) + shift[:, None]


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


class Block(nn.Module):
  """Pre-norm block: x + g₁·Attn(adaLN(x)), then + g₂·MLP(adaLN(x)), with Canon layers
  (`CANON_POSITIONS`) where `canon_positions` asks for them."""
  num_heads: int
  feature_dim: int
  mlp_type: str
  cond_type: str
  dropout_rate: float
  out_std: float
  dtype: jnp.dtype
  attention_impl: str
  matmul_dtype: jnp.dtype | None = None  # of the products' operands (None: dtype)
  canon_width: int = 0  # 0: no Canon layers
  canon_positions: tuple[str, ...] = ()
  mlp_dim: int = 0  # F, the MLP's gate and up width (0: 8D/3 rounded up to MLP_MULTIPLE)
  qk_norm: bool = False  # RMSNorm on each head's queries and keys (before rotary)
  causal: bool = False  # position l attends only to positions <= l

  def canon(self, position, h):
    """h through a Canon layer if one sits at `position` (a CANON_POSITIONS key)."""
    if self.canon_width and position in self.canon_positions:
      shape = h.shape
      h = Canon(self.canon_width, name=f'canon_{position}')(h.reshape(shape[:2] + (-1,)))
      return h.reshape(shape)
    return h

  @nn.compact
  def __call__(self, x, cond, train):  # x [B, L, D], cond [B, C] or None
    b, l, d = x.shape
    project = functools.partial(Projection, dtype=self.dtype, matmul_dtype=self.matmul_dtype)
    dense = functools.partial(_dense, dtype=self.dtype, matmul_dtype=self.matmul_dtype)
    x = _constrain(x, ('batch', 'length', 'act_embed'))
    h, k = self.num_heads, self.feature_dim
    if cond is None:
      shift1 = scale1 = shift2 = scale2 = jnp.zeros((b, d), x.dtype)
      gate1 = gate2 = 1.0
    else:
      n_mod = 6 if self.cond_type == 'adaln_zero' else 4
      mods = dense(n_mod * d, ('cond', 'embed'), zero=True, name='adaln')(
          nn.silu(cond))
      mods = jnp.split(mods, n_mod, axis=-1)
      shift1, scale1, shift2, scale2 = mods[:4]
      gate1, gate2 = ((mods[4][:, None], mods[5][:, None])
                      if n_mod == 6 else (1.0, 1.0))

    # Attention.
    y = modulate(_rms_norm('attn_norm', self.dtype)(x), shift1, scale1)
    y = self.canon('attn_in', y)
    qkv = project((3, h, k), ('embed', None, 'heads', None), name='qkv')(y)
    qkv = self.canon('qkv', qkv)
    qkv = _constrain(qkv, ('batch', 'length', None, 'act_heads', None))  # [B, L, 3, H, K]
    # jnp.split, not indexing: its gradient is one concatenation, not three padded copies.
    q, kk, v = (a.squeeze(2) for a in jnp.split(qkv, 3, axis=2))  # [B, L, H, K]
    if self.qk_norm:  # QK-norm: scores q̂·k̂ᵀ/√K bounded by the norms' learned scales
      q = _rms_norm('q_norm', self.dtype, axis=None)(q)
      kk = _rms_norm('k_norm', self.dtype, axis=None)(kk)
    positions = np.arange(l, dtype=np.float32)
    q, kk = rotary(q, positions).astype(v.dtype), rotary(kk, positions).astype(v.dtype)
    impl = self.attention_impl
    if impl == 'auto':
      impl = {'gpu': 'cudnn' if self.dtype == jnp.bfloat16 else 'xla',
              'cpu': 'einsum'}.get(jax.default_backend(), 'xla')
    if impl == 'einsum':
      y = einsum_attention(q, kk, v, self.causal)
    else:
      y = jax.nn.dot_product_attention(q, kk, v, is_causal=self.causal, implementation=impl)
    y = dense(d, ('heads', 'embed'), std=self.out_std, name='attn_out')(
        y.reshape(b, l, h * k))
    y = nn.Dropout(self.dropout_rate)(y, deterministic=not train)
    x = x + gate1 * y

    # Gated MLP.
    f = self.mlp_dim or MLP_MULTIPLE * math.ceil(8 * d / 3 / MLP_MULTIPLE)
    y = modulate(_rms_norm('mlp_norm', self.dtype)(x), shift2, scale2)
    y = self.canon('mlp_in', y)
    y = project((2, f), ('embed', None, 'mlp'), name='mlp_in')(y)
    y = self.canon('mlp_hidden', y)
    y = _constrain(y, ('batch', 'length', None, 'act_mlp'))  # [B, L, 2, F]
    gate, up = (a.squeeze(2) for a in jnp.split(y, 2, axis=2))  # [B, L, F]
    y = MLP_ACTIVATIONS[self.mlp_type](gate) * up  # [B, L, F]
    y = dense(d, ('mlp', 'embed'), std=self.out_std, name='mlp_out')(y)
    y = nn.Dropout(self.dropout_rate)(y, deterministic=not train)
    return x + gate2 * y


class ScannedBlock(Block):
  """A Block with nn.scan's (carry, x) -> (carry, y) signature; `train` is an attribute."""
  train: bool = False

  def __call__(self, x, cond):
    return super().__call__(x, cond, self.train), None


class Transformer(nn.Module):
  """Bidirectional transformer mapping (z_t, t) to logits of x over V classes."""
  vocab_size: int  # V; inputs also take the mask id V
  n_layers: int = 12
  num_heads: int = 12
  feature_dim: int = 64  # per-head width K; model width D = num_heads·K
  mlp_type: str = 'glu'  # see MLP_ACTIVATIONS
  cond_type: str = 'adaln_zero'  # 'adaln' | 'adaln_zero'
  time_features: str = 't'  # 't' (condition on t) | 'none'
  dropout_rate: float = 0.0
  depth_scaled_init: bool = True  # residual output layers std 0.02/√(2·n_layers)
  cond_dim: int = 128  # width C of the time embedding that drives adaLN
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
  # Width F of the gated MLP's hidden layer (0: LLaMA's 8D/3, rounded up to MLP_MULTIPLE).
  mlp_dim: int = 0
  # QK-norm (Dehghani et al., 2023, "Scaling Vision Transformers to 22 Billion Parameters",
  # with RMSNorm as in OLMo 2): each head's queries and keys RMS-normalised over K, with a
  # learned scale of K shared by the heads, before the rotary embedding.
  qk_norm: bool = False
  # Causal attention (position l sees positions <= l): the autoregressive baseline's network.
  causal: bool = False

  def __post_init__(self):
    if self.mlp_dim < 0:
      raise ValueError(f'mlp_dim must be >= 0 (0: 8D/3 rounded up to {MLP_MULTIPLE}), got'
                       f' {self.mlp_dim}')
    if self.canon_width < 0 or (self.canon_width and self.canon_width % 2 == 0):
      raise ValueError(f'canon_width must be 0 (no Canon layers) or odd, got'
                       f' {self.canon_width}')
    unknown = set(self.canon_positions) - set(CANON_POSITIONS)
    if unknown:
      raise ValueError(f'unknown canon_positions {sorted(unknown)}; choose from'
                       f' {list(CANON_POSITIONS)}')
    for value, allowed, key in ((self.mlp_type, MLP_ACTIVATIONS, 'mlp_type'),
                                (self.cond_type, COND_TYPES, 'cond_type'),
                                (self.time_features, TIME_FEATURES,
                                 'time_features'),
                                (self.dtype, DTYPES, 'dtype'),
                                (self.matmul_dtype, ('',) + tuple(DTYPES), 'matmul_dtype'),
                                (self.remat_policy, REMAT_POLICIES, 'remat_policy'),
                                (self.attention_impl, ATTENTION_IMPLS, 'attention_impl')):
      if value not in allowed:
        raise ValueError(
            f'unknown {key} {value!r}; choose from {sorted(allowed)}')
    super().__post_init__()

  @nn.compact
  def __call__(self, z, t, train=False):  # z [B, L] int, t [B] -> [B, L, V]
    d = self.num_heads * self.feature_dim
    dtype = DTYPES[self.dtype]
    matmul_dtype = DTYPES[self.matmul_dtype or self.dtype]
    dense = functools.partial(_dense, dtype=dtype, matmul_dtype=matmul_dtype)
    x = nn.Embed(
        self.vocab_size + 1,
        d,
        dtype=dtype,
        param_dtype=jnp.float32,
        embedding_init=nn.with_logical_partitioning(
            nn.initializers.normal(0.02), ('vocab', 'embed')),
        name='embed')(z)  # [B, L, D]

    cond = None
    if self.time_features == 't':
      cond = sinusoidal_embedding(t, self.cond_dim)  # [B, C]
      cond = dense(self.cond_dim, (None, 'cond'), name='time_mlp_in')(cond)
      cond = dense(self.cond_dim, (None, 'cond'), name='time_mlp_out')(nn.silu(cond))

    out_std = 0.02 / math.sqrt(2 * self.n_layers) if self.depth_scaled_init else 0.02
    block_args = (self.num_heads, self.feature_dim, self.mlp_type, self.cond_type,
                  self.dropout_rate, out_std, dtype, self.attention_impl, matmul_dtype,
                  self.canon_width, tuple(self.canon_positions), self.mlp_dim,
                  self.qk_norm, self.causal)
    policy = REMAT_POLICIES[self.remat_policy]
    if self.scan_layers:
      block = ScannedBlock
      if self.remat_policy != 'none':
        block = nn.remat(block, policy=policy, prevent_cse=False)
      x, _ = nn.scan(
          block, variable_axes={'params': 0}, split_rngs={'params': True, 'dropout': True},
          in_axes=nn.broadcast, length=self.n_layers,
          metadata_params={nn.PARTITION_NAME: 'layers'})(
              *block_args, train=train, name='blocks')(x, cond)
    else:
      block = Block
      if self.remat_policy != 'none':
        block = nn.remat(block, policy=policy, static_argnums=(3,))
      for i in range(self.n_layers):
        x = block(*block_args, name=f'block_{i}')(x, cond, train)

    x = _rms_norm('final_norm', dtype)(x)
    if cond is not None:
      shift, scale = jnp.split(
          dense(2 * d, ('cond', 'embed'), zero=True, name='final_adaln')(
              nn.silu(cond)), 2, axis=-1)
      x = modulate(x, shift, scale)
    logits = Logits(self.vocab_size, matmul_dtype, name='logits')(x)  # [B, L, V] float32
    return _constrain(logits, ('batch', 'length', 'act_vocab'))
