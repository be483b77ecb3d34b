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

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

MLP_ACTIVATIONS = {
    'glu': jax.nn.sigmoid,  # GLU (Dauphin et al.): σ(xW)·xV
    'geglu': jax.nn.gelu,
    'swiglu': jax.nn.silu,
}
COND_TYPES = ('adaln', 'adaln_zero')
TIME_FEATURES = ('t', 'none')
MLP_MULTIPLE = 128  # F = 8D/3 rounded up to a multiple of this


def _dense(features, axes, std=0.02, name=None, zero=False):
  init = nn.initializers.zeros if zero else nn.initializers.normal(std)
  return nn.Dense(
      features,
      use_bias=False,
      kernel_init=nn.with_logical_partitioning(init, axes),
      name=name)


def _rms_norm(name):
  return nn.RMSNorm(
      epsilon=1e-6,
      use_scale=True,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ('embed',)),
      name=name)


def sinusoidal_embedding(t, dim, max_period=10_000.0):
  """Transformer sinusoids of 1000·t (DDPM convention): [B] -> [B, dim]."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half) / half)  # [dim/2]
  args = 1000.0 * t[:, None] * freqs[None]  # [B, dim/2]
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def rotary(x, positions):
  """Rotary position embedding (Su et al., 2021) of x [B, L, H, K] at positions [L]."""
  k = x.shape[-1]
  freqs = 1.0 / (10_000.0**(jnp.arange(0, k, 2) / k))  # [K/2]
  angles = positions[:, None] * freqs[None]  # [L, K/2]
  cos = jnp.cos(angles)[None, :, None, :]
  sin = jnp.sin(angles)[None, :, None, :]
  x1, x2 = jnp.split(x, 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)


def modulate(x, shift, scale):
  """adaLN: x·(1 + scale) + shift, with shift/scale [B, D] broadcast over L."""
  return x * (1.0 + scale[:, None]) + shift[:, None]


class Block(nn.Module):
  """Pre-norm block: x + g₁·Attn(adaLN(x)), then + g₂·MLP(adaLN(x))."""
  num_heads: int
  feature_dim: int
  mlp_type: str
  cond_type: str
  dropout_rate: float
  out_std: float

  @nn.compact
  def __call__(self, x, cond, train):  # x [B, L, D], cond [B, C] or None
    b, l, d = x.shape
    h, k = self.num_heads, self.feature_dim
    if cond is None:
      shift1 = scale1 = shift2 = scale2 = jnp.zeros((b, d), x.dtype)
      gate1 = gate2 = 1.0
    else:
      n_mod = 6 if self.cond_type == 'adaln_zero' else 4
      mods = _dense(n_mod * d, ('cond', 'embed'), zero=True, name='adaln')(
          nn.silu(cond))
      mods = jnp.split(mods, n_mod, axis=-1)
      shift1, scale1, shift2, scale2 = mods[:4]
      gate1, gate2 = ((mods[4][:, None], mods[5][:, None])
                      if n_mod == 6 else (1.0, 1.0))

    # Attention.
    y = modulate(_rms_norm('attn_norm')(x), shift1, scale1)
    qkv = _dense(3 * h * k, ('embed', 'heads'), name='qkv')(y)
    q, kk, v = jnp.split(qkv.reshape(b, l, 3 * h, k), 3, axis=2)  # [B, L, H, K]
    positions = jnp.arange(l, dtype=jnp.float32)
    q, kk = rotary(q, positions), rotary(kk, positions)
    y = jax.nn.dot_product_attention(q, kk, v)  # bidirectional, [B, L, H, K]
    y = _dense(d, ('heads', 'embed'), self.out_std, name='attn_out')(
        y.reshape(b, l, h * k))
    y = nn.Dropout(self.dropout_rate)(y, deterministic=not train)
    x = x + gate1 * y

    # Gated MLP.
    f = MLP_MULTIPLE * math.ceil(8 * d / 3 / MLP_MULTIPLE)
    y = modulate(_rms_norm('mlp_norm')(x), shift2, scale2)
    gate, up = jnp.split(_dense(2 * f, ('embed', 'mlp'), name='mlp_in')(y), 2,
                         axis=-1)
    y = MLP_ACTIVATIONS[self.mlp_type](gate) * up  # [B, L, F]
    y = _dense(d, ('mlp', 'embed'), self.out_std, name='mlp_out')(y)
    y = nn.Dropout(self.dropout_rate)(y, deterministic=not train)
    return x + gate2 * y


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

  def __post_init__(self):
    for value, allowed, key in ((self.mlp_type, MLP_ACTIVATIONS, 'mlp_type'),
                                (self.cond_type, COND_TYPES, 'cond_type'),
                                (self.time_features, TIME_FEATURES,
                                 'time_features')):
      if value not in allowed:
        raise ValueError(
            f'unknown {key} {value!r}; choose from {sorted(allowed)}')
    super().__post_init__()

  @nn.compact
  def __call__(self, z, t, train=False):  # z [B, L] int, t [B] -> [B, L, V]
    d = self.num_heads * self.feature_dim
    x = nn.Embed(
        self.vocab_size + 1,
        d,
        embedding_init=nn.with_logical_partitioning(
            nn.initializers.normal(0.02), ('vocab', 'embed')),
        name='embed')(z)  # [B, L, D]

    cond = None
    if self.time_features == 't':
      cond = sinusoidal_embedding(t, self.cond_dim)  # [B, C]
      cond = _dense(self.cond_dim, (None, 'cond'), name='time_mlp_in')(cond)
      cond = _dense(self.cond_dim, (None, 'cond'), name='time_mlp_out')(nn.silu(cond))

    out_std = 0.02 / math.sqrt(2 * self.n_layers) if self.depth_scaled_init else 0.02
    for i in range(self.n_layers):
      x = Block(self.num_heads, self.feature_dim, self.mlp_type, self.cond_type,
                self.dropout_rate, out_std, name=f'block_{i}')(x, cond, train)

    x = _rms_norm('final_norm')(x)
    if cond is not None:
      shift, scale = jnp.split(
          _dense(2 * d, ('cond', 'embed'), zero=True, name='final_adaln')(
              nn.silu(cond)), 2, axis=-1)
      x = modulate(x, shift, scale)
    logits = _dense(self.vocab_size, ('embed', 'vocab'), zero=True,
                    name='logits')(x)
    return logits.astype(jnp.float32)
