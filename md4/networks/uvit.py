"""The paper's ImageNet-64 network: a U-ViT (Hoogeboom et al., 2023) of residual blocks at
full resolution around a DiT.

As in md4/networks/unet.py, each channel value of a pixel is embedded in D dimensions, the C
embeddings are concatenated and a 3×3 conv maps them to D channels; `n_layers` residual
blocks at full resolution follow. In the middle, md4/networks/dit.py's DiT cuts the H×W×D
features into 2×2 patches (at 64×64, 1,024 tokens) for `n_dit_layers` adaLN-zero blocks of
width `dit_hidden_size` and puts its output back in place; `n_layers + 1` residual blocks,
each on the concatenation of the running features with the matching output of the way down,
lead to a conditioned GroupNorm, swish and a zero-initialised 3×3 conv to the C·V logits.

Every GroupNorm here is conditional: GN(x)·(1 + s) + b without learned parameters of its own,
(s, b) = W·c + β zero-initialised, with c unet.Conditioning's time (and label) vector: the
same c feeds the DiT's adaLN. The residual blocks have no other conditioning.

With the ImageNet-64 config (D = 256, 8 layers, 20 DiT layers of width 768) this has
204,595,712 parameters, and 198,279,680 with the paper's best depths (24 and 12), both as the
original release's network (tests/test_image_networks.py checks every shape against it).

Shapes: B batch, H×W pixels, C channels, D feature_dim, V vocabulary, D_c = D.
"""

import flax.linen as nn
import jax.numpy as jnp

from md4.networks import dit
from md4.networks import unet

PATCH_SIZE = 2  # side of the DiT's patches


class CondGroupNorm(nn.Module):
  """GN(x)·(1 + s) + b, (s, b) = W·c + β [B, 2·D_x], zero-initialised."""

  @nn.compact
  def __call__(self, x, cond):  # x [B, H, W, D_x], cond [B, D_c]
    d = x.shape[-1]
    scale, shift = jnp.split(
        unet.dense(2 * d, ('cond', 'mlp'), zero=True, name='cond')(cond)[:, None, None],
        2, axis=-1)  # each [B, 1, 1, D_x]
    norm = nn.GroupNorm(num_groups=unet.num_groups(d), use_bias=False,
                        use_scale=False, name='norm')
    return norm(x) * (1.0 + scale) + shift


class ResBlock(nn.Module):
  """x + conv₂(dropout(swish(CGN(conv₁(swish(CGN(x))))))), conv₂ zero-initialised, and a
  dense layer on the skip when the width changes."""
  features: int
  dropout_rate: float

  @nn.compact
  def __call__(self, x, cond, train):  # x [B, H, W, D_in], cond [B, D_c] -> [B, H, W, D]
    h = unet.conv(self.features, name='conv1')(nn.swish(CondGroupNorm(name='norm1')(x, cond)))
    h = nn.swish(CondGroupNorm(name='norm2')(h, cond))
    h = nn.Dropout(self.dropout_rate)(h, deterministic=not train)
    h = unet.conv(self.features, zero=True, name='conv2')(h)
    if x.shape[-1] != self.features:
      x = unet.dense(self.features, ('embed', 'mlp'), name='skip')(x)
    return x + h


class UViT(nn.Module):
  """(z_t [B, H, W, C] ids, t [B], label [B] or None) -> logits [B, H, W, C, V]."""
  vocab_size: int  # V; inputs also take the mask id V
  feature_dim: int = 256  # D: channels of the residual blocks, embedding, conditioning
  n_layers: int = 8  # residual blocks before the DiT (n_layers + 1 after it)
  n_dit_layers: int = 20  # DiT blocks
  dit_hidden_size: int = 768  # their width M
  dit_num_heads: int = 12
  dropout_rate: float = 0.1  # residual blocks and DiT
  num_classes: int = 0  # K; 0: no label input
  label_dropout: float = 0.1  # training: chance a label is replaced by the null class K

  def __post_init__(self):
    unet.check_label_dropout(self.label_dropout)
    super().__post_init__()

  @nn.compact
  def __call__(self, z, t, label=None, train=False):
    d = self.feature_dim
    cond = unet.Conditioning(d, self.num_classes, self.label_dropout, name='cond')(
        t, label, train)  # [B, D]
    h = unet.embed_pixels(z, self.vocab_size, d)  # [B, H, W, D]
    skips = [h]
    for i in range(self.n_layers):
      h = ResBlock(d, self.dropout_rate, name=f'down_{i}')(h, cond, train)
      skips.append(h)
    h = dit.DiT(self.dit_hidden_size, self.n_dit_layers, self.dit_num_heads, PATCH_SIZE,
                self.dropout_rate, name='dit')(h, cond, train)
    for i in range(self.n_layers + 1):
      h = ResBlock(d, self.dropout_rate, name=f'up_{i}')(
          jnp.concatenate([h, skips.pop()], axis=-1), cond, train)
    h = nn.swish(CondGroupNorm(name='norm_out')(h, cond))
    return unet.pixel_logits(h, z.shape[-1], self.vocab_size)
