"""U-ViT: the UNet's down and up paths with a DiT-style transformer in the middle.

As in simple diffusion's U-ViT (Hoogeboom et al., 2023), the convolutional levels of
md4/networks/unet.py reduce the image to its lowest resolution, where the h×w feature map
becomes h·w tokens for `n_dit_layers` transformer blocks (md4/networks/transformer.py's
Block: adaLN-zero conditioning as in DiT, Peebles & Xie 2023, on the UNet's time-and-label
vector), and the up path takes the result back to logits. Everything else (token
embedding, conditioning, null class, output logits) is the UNet's.

Shapes: B batch, h×w the lowest resolution, D its channels, M = dit_hidden_size.
"""

import flax.linen as nn
import jax.numpy as jnp

from md4.networks import transformer
from md4.networks import unet


class UViT(unet.UNet):
  """(z_t [B, H, W, C] ids, t [B], label [B] or None) -> logits [B, H, W, C, V]."""
  attn_resolutions: tuple[int, ...] = ()  # the convolutional levels need no attention
  n_dit_layers: int = 12  # transformer blocks at the lowest resolution
  dit_hidden_size: int = 768  # M
  dit_num_heads: int = 12  # M / dit_num_heads is the per-head width

  def __post_init__(self):
    if self.dit_hidden_size % self.dit_num_heads:
      raise ValueError(f'network.dit_hidden_size {self.dit_hidden_size} is not divisible'
                       f' by network.dit_num_heads {self.dit_num_heads}')
    super().__post_init__()

  def middle(self, h, cond, train):
    """h + W_out·Transformer(W_in·h + position embedding), over the h·w positions."""
    b, height, width, d = h.shape
    m = self.dit_hidden_size
    x = unet.dense(m, ('embed', 'mlp'), name='dit_in')(h.reshape(b, height * width, d))
    x = x + self.param(
        'dit_pos', nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                (None, 'mlp')), (height * width, m))
    for i in range(self.n_dit_layers):
      x = transformer.Block(self.dit_num_heads, 'geglu', transformer.mlp_width(m),
                            'adaln_zero', self.dropout_rate, 2.0 / self.n_dit_layers,
                            jnp.float32, jnp.float32, 'auto', name=f'dit_{i}')(x, cond, train)
    x = unet.dense(d, ('mlp', 'embed'), zero=True, name='dit_out')(x)
    return h + x.reshape(b, height, width, d)
