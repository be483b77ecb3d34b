"""The image backbones (UNet, U-ViT and its DiT): the paper configs' parameter shapes against
the original release's, forward and backward passes, conditioning, axis names, errors."""

import collections
import json
import math
import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from md4 import data
from md4 import models
from md4 import networks
from md4.configs.md4 import cifar10
from md4.configs.md4 import imagenet64
from md4.networks import dit
from md4.networks import unet
from md4.networks import uvit
import toys

V, K = 17, 10
SMALL_UNET = dict(feature_dim=16, n_layers=1, dropout_rate=0.1, num_classes=K)
SMALL_UVIT = dict(SMALL_UNET, n_dit_layers=1, dit_hidden_size=16, dit_num_heads=2)
NETS = {'unet': lambda **kw: unet.UNet(V, **{**SMALL_UNET, **kw}),
        'uvit': lambda **kw: uvit.UViT(V, **{**SMALL_UVIT, **kw})}
FIXTURE = os.path.join(os.path.dirname(__file__), 'fixtures', 'image_network_shapes.json')


def _inputs(b=2, shape=(8, 8, 1)):
  z = jax.random.randint(jax.random.key(3), (b,) + shape, 0, V + 1)  # masks included
  return z, jnp.linspace(0.1, 0.9, b)


# The paper configs against the original release (shapes only: nothing is materialised).


PAPER_NETWORKS = {
    'cifar10': (cifar10.get_config, False),
    'cifar10_class_conditional': (cifar10.get_config, True),
    'imagenet64': (imagenet64.get_config, False),
    'imagenet64_paper_best': (lambda: imagenet64.get_config('paper_best'), False),
}


@pytest.mark.parametrize('name', sorted(PAPER_NETWORKS))
def test_paper_networks_have_the_original_releases_parameter_shapes(name):
  get_config, class_conditional = PAPER_NETWORKS[name]
  config = get_config()
  shape = tuple(config.data.data_shape)
  info = data.DatasetInfo(256, shape, lambda x: x, ('test',),
                          num_classes=10 if class_conditional else 0)
  model = models.build(config, info)
  z = jnp.zeros((1,) + shape, jnp.int32)
  label = jnp.zeros((1,), jnp.int32) if class_conditional else None
  params = jax.eval_shape(lambda: model.init(
      {'params': jax.random.key(0), 'sample': jax.random.key(0)}, z, label=label))['params']
  ours = sorted(tuple(p.shape) for p in jax.tree.leaves(nn.unbox(params)))
  with open(FIXTURE) as f:
    original = json.load(f)['networks'][name]
  want = sorted(tuple(s) for s, n in original['shapes'] for _ in range(n))
  count = sum(math.prod(s) for s in ours)
  print(f'{name}: {count:,} parameters (original: {original["count"]:,})')
  assert count == original['count']
  assert ours == want, (collections.Counter(ours) - collections.Counter(want),
                        collections.Counter(want) - collections.Counter(ours))


def test_imagenet64_depths_are_named():
  assert (imagenet64.get_config().network.n_layers,
          imagenet64.get_config().network.n_dit_layers) == (8, 20)
  with pytest.raises(ValueError, match="unknown depths 'best'; choose from"):
    imagenet64.get_config('best')


# Forward and backward passes on shrunken networks.


@pytest.mark.parametrize('name', sorted(NETS))
@pytest.mark.parametrize('with_labels', [False, True])
def test_forward_and_backward_reach_every_parameter(name, with_labels):
  net = NETS[name](num_classes=K if with_labels else 0)
  z, t = _inputs()
  label = jnp.array([0, 3]) if with_labels else None
  params = toys.random_params(net, z, t, label)

  def loss(params):
    logits = net.apply({'params': params}, z, t, label, train=True,
                       rngs={'dropout': jax.random.key(1)})
    return jnp.mean(jax.nn.log_softmax(logits)[..., 0]), logits

  grads, logits = jax.jit(jax.grad(loss, has_aux=True))(params)
  assert logits.shape == (2, 8, 8, 1, V) and logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))
  leaves = jax.tree_util.tree_leaves_with_path(grads)
  assert ('label_embed' in str(leaves)) == with_labels
  for path, g in leaves:
    name = jax.tree_util.keystr(path)
    assert np.all(np.isfinite(g)), name
    # A key bias adds q·b to every score of a query, which the softmax ignores.
    if not re.search(r"'key(_bias|'\]\['bias)'", name):
      assert np.any(g != 0), f'no gradient reaches {name}'


@pytest.mark.parametrize('name', sorted(NETS))
@pytest.mark.parametrize('shape', [(8, 8, 1), (4, 6, 3)])
def test_logits_shape_for_any_image_shape(name, shape):
  net = NETS[name]()
  z, t = _inputs(shape=shape)
  params = toys.random_params(net, z, t)
  logits = jax.jit(net.apply)({'params': params}, z, t, jnp.array([0, 3]))
  assert logits.shape == (2,) + shape + (V,) and logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))


# Conditioning.


@pytest.mark.parametrize('name', sorted(NETS))
def test_label_and_time_condition_the_output_and_none_is_the_null_class(name):
  net = NETS[name]()
  z, t = _inputs()
  params = toys.random_params(net, z, t)
  f = jax.jit(lambda label, t=t: net.apply({'params': params}, z, t, label))
  a, b = f(jnp.array([1, 2])), f(jnp.array([4, 2]))
  assert not np.allclose(a[0], b[0], atol=1e-3)  # example 0's label changed
  np.testing.assert_allclose(a[1], b[1], rtol=1e-5, atol=1e-5)  # example 1's did not
  np.testing.assert_allclose(f(None), f(jnp.full((2,), K)), rtol=1e-5, atol=1e-5)
  assert not np.allclose(f(None), a, atol=1e-3)
  assert not np.allclose(f(None, t=t[::-1]), f(None), atol=1e-3)


def test_group_norms_keep_the_originals_32_groups_and_never_fewer_than_4_channels():
  assert [unet.num_groups(c) for c in (128, 256, 512, 64, 32, 96, 8, 2)] == [
      32, 32, 32, 16, 8, 8, 2, 1]


def test_label_dropout_sends_labels_to_the_null_class_only_when_training():
  """Each comparison is between two calls of one compiled program, so that only the labels
  differ; across programs XLA's fusion choices may move float32 logits by ~1e-5."""
  z, t = _inputs()
  params = toys.random_params(NETS['unet'](), z, t)
  label, null = jnp.array([1, 2]), jnp.full((2,), K)

  def apply(label_dropout, train):
    net = NETS['unet'](label_dropout=label_dropout, dropout_rate=0.0)
    return jax.jit(lambda label: net.apply({'params': params}, z, t, label, train=train,
                                           rngs={'dropout': jax.random.key(0)}))

  always = apply(1.0, True)
  np.testing.assert_array_equal(always(label), always(null))
  for f in (apply(1.0, False), apply(0.0, True)):
    assert not np.allclose(f(label), f(null), atol=1e-3)


# The DiT's patches and positions.


def test_dit_puts_every_patch_back_in_its_place():
  """With no blocks, a patch embedding that copies each patch's p·p·C values and an output
  layer that copies them back, the DiT returns each patch layer-normalised in place: the
  patch and un-patch orderings agree."""
  p, c, height, width = 2, 3, 4, 6
  m = p * p * c
  net = dit.DiT(hidden_size=m, depth=0, num_heads=1, patch_size=p, dropout_rate=0.0)
  x = jax.random.normal(jax.random.key(0), (2, height, width, c))
  cond = jnp.zeros((2, 5))
  shapes = jax.eval_shape(lambda: net.init(jax.random.key(1), x, cond, False))['params']
  params = jax.tree.map(lambda s: jnp.zeros(s.shape), nn.unbox(shapes))
  eye = jnp.eye(m)
  params['patch_embed']['kernel'] = eye.reshape(p, p, c, m)
  params['final_linear']['kernel'] = eye
  got = net.apply({'params': params}, x, cond, False)
  patches = np.asarray(x).reshape(2, height // p, p, width // p, p, c)
  mean = patches.mean(axis=(2, 4, 5), keepdims=True)
  var = patches.var(axis=(2, 4, 5), keepdims=True)
  want = ((patches - mean) / np.sqrt(var + 1e-6)).reshape(x.shape)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_dit_position_embedding_starts_as_2d_sinusoids():
  rows, cols, m = 3, 5, 16
  pos = dit.sincos_2d(m, rows, cols)
  omega = 10_000.0**(-np.arange(4) / 4)
  for r, col in ((0, 0), (1, 3), (2, 4)):
    want = np.concatenate([np.sin(col * omega), np.cos(col * omega),
                           np.sin(r * omega), np.cos(r * omega)])
    np.testing.assert_allclose(pos[r * cols + col], want, rtol=1e-6, atol=1e-6)
  net = dit.DiT(hidden_size=m, depth=0, num_heads=2, patch_size=2, dropout_rate=0.0)
  x = jnp.zeros((1, 2 * rows, 2 * cols, 3))
  params = net.init(jax.random.key(0), x, jnp.zeros((1, 4)), False)['params']
  np.testing.assert_array_equal(nn.unbox(params)['pos_embed'], pos)


# Sharding names and errors.


@pytest.mark.parametrize('name', sorted(NETS))
def test_every_parameter_has_logical_axis_names(name):
  net = NETS[name]()
  z, t = _inputs()
  boxed = jax.eval_shape(lambda: net.init({'params': jax.random.key(0)}, z, t))['params']
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert leaves and all(isinstance(p, nn.Partitioned) for p in leaves)
  assert all(len(p.names) == p.value.ndim for p in leaves)


def test_errors():
  init = lambda net, z, t, *label: jax.eval_shape(
      lambda: net.init(jax.random.key(0), z, t, *label))
  z, t = _inputs(shape=(5, 6, 1))
  with pytest.raises(ValueError, match='cannot be cut into 2x2 patches'):
    init(NETS['uvit'](), z, t)
  with pytest.raises(ValueError, match='num_classes = 0'):
    init(NETS['unet'](num_classes=0), z, t, jnp.zeros(2, jnp.int32))
  z, t = _inputs()
  with pytest.raises(ValueError, match='dit_num_heads'):
    init(NETS['uvit'](dit_num_heads=3), z, t)
  with pytest.raises(ValueError, match='label_dropout'):
    NETS['unet'](label_dropout=1.5)
  transformer_config = cifar10.get_config().network
  transformer_config.type = 'transformer'
  with pytest.raises(ValueError, match='takes no labels'):
    networks.build_network(transformer_config, V, K)
