"""The image backbones: UNet and U-ViT shapes, conditioning, axis names, paper sizes."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from md4 import data
from md4 import networks
from md4 import train
from md4.configs.md4 import cifar10
from md4.configs.md4 import imagenet64
from md4.networks import unet
from md4.networks import uvit
import toys

V, K = 17, 10
SMALL = dict(feature_dim=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
             embed_dim=4, dropout_rate=0.0, num_classes=K)
TINY_UVIT = dict(SMALL, attn_resolutions=(), n_dit_layers=2, dit_hidden_size=32,
                 dit_num_heads=2)
NETS = {'unet': lambda **kw: unet.UNet(V, **{**SMALL, **kw}),
        'uvit': lambda **kw: uvit.UViT(V, **{**TINY_UVIT, **kw})}


def _inputs(b=2, shape=(8, 8, 1)):
  z = jax.random.randint(jax.random.key(3), (b,) + shape, 0, V + 1)  # masks included
  return z, jnp.linspace(0.1, 0.9, b)


@pytest.mark.parametrize('name', sorted(NETS))
@pytest.mark.parametrize('shape', [(8, 8, 1), (4, 6, 3)])
def test_logits_shape_for_any_image_shape(name, shape):
  net = NETS[name]()
  z, t = _inputs(shape=shape)
  params = toys.random_params(net, z, t)
  logits = jax.jit(net.apply)({'params': params}, z, t, jnp.array([0, 3]))
  assert logits.shape == (2,) + shape + (V,) and logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))


@pytest.mark.parametrize('name', sorted(NETS))
def test_label_and_time_condition_the_output_and_none_is_the_null_class(name):
  net = NETS[name]()
  z, t = _inputs()
  params = toys.random_params(net, z, t)
  f = jax.jit(lambda label, t=t: net.apply({'params': params}, z, t, label))
  a, b = f(jnp.array([1, 2])), f(jnp.array([4, 2]))
  assert not np.allclose(a[0], b[0], atol=1e-4)  # example 0's label changed
  np.testing.assert_allclose(a[1], b[1], rtol=1e-5, atol=1e-5)  # example 1's did not
  # Two programs (no label, the null class's id): float32 summation order differs; such
  # UNet logits (up to about 4) differed by 1.5e-5 on an AMX Xeon.
  np.testing.assert_allclose(f(None), f(jnp.full((2,), K)), rtol=1e-4, atol=1e-4)
  assert not np.allclose(f(None), a, atol=1e-4)
  assert not np.allclose(f(None, t=t[::-1]), f(None), atol=1e-4)


def test_label_dropout_sends_labels_to_the_null_class_only_when_training():
  net = NETS['unet'](label_dropout=1.0)
  z, t = _inputs()
  params = toys.random_params(net, z, t)
  label = jnp.array([1, 2])
  apply = jax.jit(lambda label, train: net.apply(
      {'params': params}, z, t, label, train=train, rngs={'dropout': jax.random.key(0)}),
                  static_argnums=1)
  np.testing.assert_allclose(apply(label, True), apply(None, False), rtol=1e-6,
                             atol=1e-6)
  assert not np.allclose(apply(label, False), apply(None, False), atol=1e-4)
  never = NETS['unet'](label_dropout=0.0)
  np.testing.assert_allclose(
      jax.jit(never.apply, static_argnames='train')(
          {'params': params}, z, t, label, train=True, rngs={'dropout': jax.random.key(0)}),
      apply(label, False), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('name', sorted(NETS))
def test_every_parameter_has_logical_axis_names(name):
  net = NETS[name]()
  z, t = _inputs()
  boxed = jax.eval_shape(lambda: net.init({'params': jax.random.key(0)}, z, t))['params']
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert leaves and all(isinstance(p, nn.Partitioned) for p in leaves)
  assert all(len(p.names) == p.value.ndim for p in leaves)


def test_errors():
  z, t = _inputs(shape=(6, 6, 1))
  with pytest.raises(ValueError, match='cannot be halved'):
    NETS['unet'](ch_mult=(1, 2, 2)).init(jax.random.key(0), z, t)
  with pytest.raises(ValueError, match='num_classes = 0'):
    unet.UNet(V, **{**SMALL, 'num_classes': 0}).init(jax.random.key(0), z, t,
                                                      jnp.zeros(2, jnp.int32))
  with pytest.raises(ValueError, match='dit_num_heads'):
    NETS['uvit'](dit_num_heads=3)
  transformer_config = cifar10.get_config().network
  transformer_config.type = 'transformer'
  with pytest.raises(ValueError, match='takes no labels'):
    networks.build_network(transformer_config, V, K)


@pytest.mark.parametrize('config_module, paper_size', [(cifar10, 28e6), (imagenet64, 198e6)])
def test_paper_configs_match_the_paper_sizes(config_module, paper_size):
  """Counts from shapes only (jax.eval_shape); no parameters are materialised."""
  config = config_module.get_config()
  shape = tuple(config.data.data_shape)
  info = data.DatasetInfo(256, shape, lambda x: x, ('test',))
  model = train.build_model(config, info)
  z = jnp.zeros((1,) + shape, jnp.int32)
  params = jax.eval_shape(lambda: model.init(
      {'params': jax.random.key(0), 'sample': jax.random.key(0)}, z))['params']
  count = sum(math.prod(p.shape) for p in jax.tree.leaves(params))
  print(f'{config_module.__name__}: {count / 1e6:.1f}M parameters '
        f'(paper: {paper_size / 1e6:.0f}M)')
  assert abs(count / paper_size - 1) < 0.1
