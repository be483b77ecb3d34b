"""MDLM's DiT (Sahoo et al., 2024, "Simple and Effective Masked Diffusion Language Models"),
the backbone of the MDLM family's released text models (kuleshov-group/mdlm-owt and the
SDTT students of Deschenaux & Gulcehre, 2024), so that their weights run here.

Block for block the network of MDLM's models/dit.py (`DIT`), as it computes at evaluation:

  h = E[z]                                      [B, L, D]; E has V + 1 rows (the mask id V)
  c = silu(W₂·silu(W₁·freq(σ) + b₁) + b₂)       [B, C]; freq: 256 sinusoids [cos, sin]
  for each block:
    (shift, scale, gate) × 2 = W·c + b          adaLN-zero
    h = h + gate₁·W_o·Attn(rotary(W_qkv·(LN(h)·(1 + scale₁) + shift₁)))
    h = h + gate₂·MLP(LN(h)·(1 + scale₂) + shift₂)
  logits = W·(LN(h)·(1 + scale) + shift) + b    [B, L, V]

LN is a LayerNorm with a learned scale and no bias (ε = 1e-5); attention is bidirectional
with rotary embeddings in GPT-NeoX's layout (the first and second halves of each head's
features form the rotated pairs, not adjacent features); q, k, v and the output projection
have no bias; the MLP is W₂·GELU_tanh(W₁·x + b₁) + b₂ of width `mlp_ratio`·D. Dropout (on
the attention and MLP outputs, before the gates) acts in training only.

Time: MDLM conditions on the total noise σ(t) = −log(1 − (1 − ε)·t) of its log-linear
schedule (ε = MDLM_EPS), not on t; its released OpenWebText models have
`time_conditioning` False and feed σ = 0 whatever t is, so the network ignores time (as
`time_features` 'none' says to the samplers' cache). With `time_conditioning` True, σ(t)
is computed from MD4's t, which for MD4's linear schedule is MDLM's t up to the schedules'
ε's.

Outputs: MDLM's output layer has V + 1 logits, the last one the mask's, which its SUBS
parameterisation sets to −∞ before normalising; this network has the V others
(md4.mdlm drops the mask's row when converting), so its log-softmax is MDLM's.

Parameters carry logical axis names ('vocab', 'embed', 'heads', 'mlp', 'cond'), as
md4.networks.transformer's, so that a mesh shards them by rules. Shapes: B batch, L length,
D `hidden_size`, H `n_heads`, K = D/H, C `cond_dim`, V vocabulary.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

MDLM_EPS = 1e-3  # ε of MDLM's log-linear noise schedule
FREQUENCY_DIM = 256  # sinusoids of σ (MDLM's TimestepEmbedder.frequency_embedding_size)
ROTARY_BASE = 10_000.0
NORM_EPS = 1e-5
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def log_linear_sigma(t):
  """MDLM's total noise σ(t) = −log(1 − (1 − ε)·t) (its LogLinearNoise), [B]."""
  return -jnp.log1p(-(1.0 - MDLM_EPS) * t)


def sigma_embedding(sigma, dim=FREQUENCY_DIM, max_period=10_000.0):
  """MDLM's sinusoids of σ [B] -> [B, dim]: [cos(σ·f), sin(σ·f)] with
  f_i = max_period^(−i/h), i < h = dim/2 (GLIDE's timestep embedding; cosines first)."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = sigma.astype(jnp.float32)[:, None] * freqs[None]
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  return jnp.pad(emb, ((0, 0), (0, dim % 2)))


def rotary_half(x):
  """Rotary position embedding of x [B, L, H, K] in GPT-NeoX's layout (as flash-attn's
  non-interleaved kernel that MDLM calls): the pair i is (x_i, x_{i+K/2}), rotated by the
  angle p·base^(−2i/K) at position p; angles computed in float32 as MDLM's `Rotary`."""
  l, k = x.shape[1], x.shape[-1]
  exponent = np.arange(0, k, 2, dtype=np.float32) / np.float32(k)
  inv_freq = np.float32(1.0) / np.power(np.float32(ROTARY_BASE), exponent)  # [K/2]
  angles = np.outer(np.arange(l, dtype=np.float32), inv_freq)  # [L, K/2]
  cos = jnp.asarray(np.cos(angles))[None, :, None, :]
  sin = jnp.asarray(np.sin(angles))[None, :, None, :]
  x1, x2 = x[..., :k // 2], x[..., k // 2:]
  return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1).astype(x.dtype)


def _dense(features, axes, dtype, use_bias=True, name=None):
  init = nn.initializers.lecun_normal()
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                  kernel_init=nn.with_logical_partitioning(init, axes),
                  bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[1:]),
                  name=name)


def _zero_dense(features, axes, name):
  """adaLN's modulation layer: zero kernel and bias (MDLM's init), float32."""
  zeros = nn.initializers.zeros
  return nn.Dense(features, param_dtype=jnp.float32,
                  kernel_init=nn.with_logical_partitioning(zeros, axes),
                  bias_init=nn.with_logical_partitioning(zeros, axes[1:]), name=name)


def _layer_norm(name):
  """MDLM's LayerNorm: float32 statistics, a learned scale, no bias."""
  return nn.LayerNorm(epsilon=NORM_EPS, use_bias=False, use_fast_variance=False,
                      dtype=jnp.float32, param_dtype=jnp.float32,
                      scale_init=nn.with_logical_partitioning(nn.initializers.ones,
                                                              ('embed',)), name=name)


def modulate(x, shift, scale):
  """adaLN: x·(1 + scale) + shift, shift and scale [B, D] broadcast over L."""
  return x * (1.0 + scale[:, None]) + shift[:, None]


class Block(nn.Module):
  """One DDiT block (see the module docstring)."""
  n_heads: int
  mlp_ratio: int
  dropout_rate: float
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x, c, train):  # x [B, L, D], c [B, C]
    b, l, d = x.shape
    k = d // self.n_heads
    mods = _zero_dense(6 * d, ('cond', 'embed'), 'adaln')(c)  # [B, 6D]
    shift1, scale1, gate1, shift2, scale2, gate2 = jnp.split(mods, 6, axis=-1)
    h = modulate(_layer_norm('norm1')(x), shift1, scale1).astype(self.dtype)
    q, kk, v = (_dense(d, ('embed', 'heads'), self.dtype, use_bias=False, name=n)(h)
                .reshape(b, l, self.n_heads, k) for n in ('wq', 'wk', 'wv'))
    q, kk = rotary_half(q), rotary_half(kk)
    scores = jnp.einsum('blhk,bmhk->bhlm', q, kk, preferred_element_type=jnp.float32)
    probs = jax.nn.softmax(scores / math.sqrt(k), axis=-1).astype(self.dtype)
    y = jnp.einsum('bhlm,bmhk->blhk', probs, v).reshape(b, l, d)
    y = _dense(d, ('heads', 'embed'), self.dtype, use_bias=False, name='wo')(y)
    y = nn.Dropout(self.dropout_rate)(y, deterministic=not train)
    x = x + gate1[:, None] * y.astype(jnp.float32)
    h = modulate(_layer_norm('norm2')(x), shift2, scale2).astype(self.dtype)
    h = nn.gelu(_dense(self.mlp_ratio * d, ('embed', 'mlp'), self.dtype, name='fc1')(h),
                approximate=True)
    y = _dense(d, ('mlp', 'embed'), self.dtype, name='fc2')(h)
    y = nn.Dropout(self.dropout_rate)(y, deterministic=not train)
    return x + gate2[:, None] * y.astype(jnp.float32)


class MDLMDiT(nn.Module):
  """MDLM's DiT mapping (z_t, t) to logits of x over V classes: [B, L] ids (with the mask
  id V), t [B] -> [B, L, V] float32."""
  vocab_size: int  # V; the embedding has V + 1 rows
  hidden_size: int = 768  # D
  n_blocks: int = 12
  n_heads: int = 12
  cond_dim: int = 128  # C, the width of the time conditioning
  mlp_ratio: int = 4
  dropout_rate: float = 0.1  # training only
  time_conditioning: bool = False  # False: σ = 0 whatever t (the released models')
  dtype: str = 'float32'  # compute dtype of the blocks' products; norms, logits float32

  def __post_init__(self):
    if self.hidden_size % self.n_heads or (self.hidden_size // self.n_heads) % 2:
      raise ValueError(f'network.hidden_size {self.hidden_size} must be n_heads'
                       f' {self.n_heads} times an even head width (rotary pairs)')
    if self.dtype not in DTYPES:
      raise ValueError(f'unknown network.dtype {self.dtype!r}; choose from {sorted(DTYPES)}')
    super().__post_init__()

  @property
  def time_features(self) -> str:
    """'t' when the network conditions on time, else 'none' (md4.sampling's cache reads
    it: caching μθ is exact for a network that ignores t)."""
    return 't' if self.time_conditioning else 'none'

  @nn.compact
  def __call__(self, z, t, train=False):
    dtype = DTYPES[self.dtype]
    embed = self.param('embed', nn.with_logical_partitioning(
        nn.initializers.normal(1.0 / math.sqrt(self.hidden_size)), ('vocab', 'embed')),
                       (self.vocab_size + 1, self.hidden_size), jnp.float32)
    x = jnp.take(embed, z, axis=0)  # [B, L, D]
    sigma = log_linear_sigma(t) if self.time_conditioning else jnp.zeros_like(t)
    c = nn.silu(_dense(self.cond_dim, (None, 'cond'), jnp.float32, name='time_mlp_in')(
        sigma_embedding(sigma)))
    c = nn.silu(_dense(self.cond_dim, ('cond', None), jnp.float32, name='time_mlp_out')(c))
    for i in range(self.n_blocks):
      x = Block(self.n_heads, self.mlp_ratio, self.dropout_rate, dtype,
                name=f'block_{i}')(x, c, train)
    shift, scale = jnp.split(_zero_dense(2 * self.hidden_size, ('cond', 'embed'),
                                         'final_adaln')(c), 2, axis=-1)
    x = modulate(_layer_norm('final_norm')(x), shift, scale)
    out = nn.Dense(self.vocab_size, param_dtype=jnp.float32, name='logits',
                   kernel_init=nn.with_logical_partitioning(nn.initializers.zeros,
                                                            ('embed', 'vocab')),
                   bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('vocab',)))
    return out(x).astype(jnp.float32)  # [B, L, V]
