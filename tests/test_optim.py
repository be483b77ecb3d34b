"""Optimizers, learning-rate schedules and the EMA (md4/optim.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from md4 import optim
from test_train import tiny_config


def test_ema_decay_warmup_and_update():
  assert float(optim.ema_decay(0, 0.9999)) == pytest.approx(0.1)
  assert float(optim.ema_decay(90, 0.9999)) == pytest.approx(91 / 100)
  assert float(optim.ema_decay(10**7, 0.9999)) == pytest.approx(0.9999)
  assert float(optim.ema_decay(0, 0.9999, warmup=False)) == pytest.approx(0.9999)
  ema = optim.ema_update({'w': jnp.ones(3)}, {'w': jnp.zeros(3)}, 0.25)
  np.testing.assert_allclose(ema['w'], 0.25)


def test_learning_rate_schedules():
  config = tiny_config()
  opt = config.opt
  opt.learning_rate, opt.warmup_steps = 1.0, 10
  cosine = optim.learning_rate_schedule(opt, 110)
  assert float(cosine(0)) == 0.0
  assert float(cosine(5)) == pytest.approx(0.5)
  assert float(cosine(10)) == pytest.approx(1.0)
  assert float(cosine(60)) == pytest.approx(0.5, abs=1e-6)
  assert float(cosine(110)) == pytest.approx(0.0, abs=1e-6)
  opt.lr_schedule = 'linear'
  linear = optim.learning_rate_schedule(opt, 110)
  assert float(linear(5)) == pytest.approx(0.5)
  assert float(linear(10)) == pytest.approx(1.0)
  assert float(linear(85)) == pytest.approx(0.25)
  assert float(linear(110)) == pytest.approx(0.0, abs=1e-6)
  opt.lr_schedule = 'constant'
  constant = optim.learning_rate_schedule(opt, 110)
  assert float(constant(5)) == pytest.approx(0.5)
  assert float(constant(100)) == pytest.approx(1.0)
  opt.lr_schedule = 'step'
  with pytest.raises(ValueError, match="unknown opt.lr_schedule 'step'"):
    optim.learning_rate_schedule(opt, 110)


@pytest.mark.parametrize('mask,vectors_decay', [('matrices', False), ('all', True)])
def test_weight_decay_and_clipping(mask, vectors_decay):
  """Decay on matrices only, or on every parameter as the original's optax.adamw."""
  config = tiny_config(**{'opt.optimizer': 'adamw', 'opt.weight_decay': 0.5,
                          'opt.grad_clip': 1e-3, 'opt.weight_decay_mask': mask})
  tx = optim.make_optimizer(config.opt, 10)
  params = {'kernel': jnp.ones((2, 2)), 'scale': jnp.ones(2)}
  grads = {'kernel': jnp.full((2, 2), 100.0), 'scale': jnp.zeros(2)}
  state = tx.init(params)
  for _ in range(config.opt.warmup_steps):  # reach the peak learning rate
    updates, state = tx.update(grads, state, params)
  assert (float(jnp.abs(updates['scale']).max()) > 0) == vectors_decay
  assert float(updates['kernel'][0, 0]) < 0
  config.opt.weight_decay_mask = 'none'
  with pytest.raises(ValueError, match="unknown opt.weight_decay_mask 'none'"):
    optim.make_optimizer(config.opt, 10)


def _block(d, f, make):
  """A transformer block's parameters: make(shape) for each matrix and a norm scale."""
  return {'attention': {name: make((d, d)) for name in ('wq', 'wk', 'wv', 'wo')}
                       | {'q_norm': {'scale': make((d // 2,))}},
          'feed_forward': {'w1': make((d, f)), 'w3': make((d, f)), 'w2': make((f, d))}}


def test_muon_orthogonalises_each_block_matrix_and_adams_the_rest():
  """opt.optimizer='muon': one step moves each of q, k, v, o and W1, W2, W3 by an
  orthogonal-ish matrix on its own (singular values near 1, times lr), even when stacked
  with others of its shape; the embedding and norms take AdamW's (with Nesterov momentum,
  as optax's Muon does)."""
  config = tiny_config(**{'opt.optimizer': 'muon', 'opt.warmup_steps': 0,
                          'opt.lr_schedule': 'constant', 'opt.grad_clip': 0.0,
                          'opt.muon_learning_rate': 0.5, 'opt.learning_rate': 0.1})
  d, f = 16, 48
  params = {'block_0': _block(d, f, jnp.zeros), 'embed': {'embedding': jnp.zeros((5, d))}}
  rng = np.random.default_rng(0)

  def well_conditioned(shape):  # singular values spread over [1, 3]; vectors: normal
    if len(shape) == 1:
      return rng.normal(size=shape)
    m, n = shape
    u = np.linalg.qr(rng.normal(size=(m, m)))[0]
    v = np.linalg.qr(rng.normal(size=(n, n)))[0]
    r = min(m, n)
    return (u[:, :r] * np.linspace(1.0, 3.0, r)) @ v[:r]

  grads = {'block_0': _block(d, f, well_conditioned),
           'embed': {'embedding': rng.normal(size=(5, d))}}
  grads = jax.tree.map(jnp.asarray, grads)
  # Scale q, k and v's gradients differently: a joint orthogonalisation would keep the
  # ratio, a separate one removes it.
  attention = grads['block_0']['attention']
  for name, scale in (('wk', 10.0), ('wv', 100.0)):
    attention[name] = attention[name] * scale
  tx = optim.make_optimizer(config.opt, 10)
  updates, _ = tx.update(grads, tx.init(params), params)
  assert set(jax.tree.leaves(optim.muon_labels(params))) == {'muon', 'adamw'}

  def singular_values(m):
    return np.linalg.svd(np.asarray(m), compute_uv=False)

  block = updates['block_0']
  for module, name, width_scale in [('attention', n, 1.0) for n in ('wq', 'wk', 'wv', 'wo')] + [
      ('feed_forward', 'w1', np.sqrt(f / d)), ('feed_forward', 'w3', np.sqrt(f / d)),
      ('feed_forward', 'w2', 1.0)]:  # scaled by sqrt(max(1, fan_out/fan_in))
    s = singular_values(block[module][name]) / 0.5 / width_scale
    assert 0.5 < s.min() and s.max() < 1.5, (name, s)
  adamw = optax.adamw(0.1, b1=0.9, b2=config.opt.b2, weight_decay=0.0, nesterov=True)
  for name, g, u in [('embedding', grads['embed']['embedding'],
                      updates['embed']['embedding']),
                     ('scale', attention['q_norm']['scale'],
                      block['attention']['q_norm']['scale'])]:
    expected, _ = adamw.update(g, adamw.init(g), g)
    np.testing.assert_allclose(u, expected, rtol=1e-5, err_msg=name)
  config.opt.optimizer = 'lion'
  with pytest.raises(ValueError, match="unknown opt.optimizer 'lion'"):
    optim.make_optimizer(config.opt, 10)


@pytest.mark.parametrize('muon_dtype,rtol', [('float32', 1e-4), ('bfloat16', 0.1)])
def test_muon_matches_optax_muon(muon_dtype, rtol):
  """Our Muon, which stacks each block's same-shaped matrices into one Newton-Schulz batch,
  against optax.contrib.muon, one matrix at a time, over three steps with weight decay, on
  unscanned blocks and a scanned one (a leading layer axis); bfloat16 products round."""
  config = tiny_config(**{'opt.optimizer': 'muon', 'opt.warmup_steps': 0,
                          'opt.lr_schedule': 'constant', 'opt.grad_clip': 0.0,
                          'opt.weight_decay': 0.1, 'opt.muon_dtype': muon_dtype})
  rng = np.random.default_rng(0)
  normal = lambda shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
  params = {'block_0': _block(16, 48, normal), 'block_1': _block(16, 32, normal),
            'blocks': {'attention': {'wq': normal((3, 16, 16))},
                       'feed_forward': {'w2': normal((3, 48, 16))}},
            'embed': {'embedding': normal((5, 16))}}

  def dimension_numbers(tree):
    def spec(path, x):
      axes = optim.muon_axes(path, x)
      return None if axes is None else optax.contrib.MuonDimensionNumbers(*axes[1:])
    return jax.tree_util.tree_map_with_path(spec, tree)

  schedule = lambda lr: optim.learning_rate_schedule(config.opt, 10, lr)
  reference = optax.partition({
      'muon': optax.contrib.muon(schedule(config.opt.muon_learning_rate), beta=0.95,
                                 weight_decay=0.1,
                                 muon_weight_dimension_numbers=dimension_numbers),
      'adamw': optax.adamw(schedule(config.opt.learning_rate), b1=0.9, b2=config.opt.b2,
                           weight_decay=0.1, mask=optim.DECAY_MASKS['matrices'],
                           nesterov=True)},
                              optim.muon_labels)
  ours = optim.make_optimizer(config.opt, 10)
  state, ref_state = ours.init(params), reference.init(params)
  for _ in range(3):
    grads = jax.tree.map(lambda p: normal(p.shape), params)
    updates, state = ours.update(grads, state, params)
    expected, ref_state = reference.update(grads, ref_state, params)
  labels = optim.muon_labels(params)
  assert jax.tree.leaves(labels).count('muon') == 16
  for u, e in zip(jax.tree.leaves(updates), jax.tree.leaves(expected)):
    scale = float(jnp.abs(e).max())
    np.testing.assert_allclose(u / scale, e / scale, atol=rtol)
  config.opt.muon_dtype = 'float16'
  with pytest.raises(ValueError, match="unknown opt.muon_dtype 'float16'"):
    optim.make_optimizer(config.opt, 10)
