"""MD4's forward process and ELBO against exact computations on tiny problems."""

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from md4 import schedules
from md4.models import MD4
import toys


def _model(network, vocab_size, length, **kw):
  return MD4(network=network, vocab_size=vocab_size, data_shape=(length,), **kw)


@pytest.mark.parametrize('t', [0.1, 0.5, 0.9])
def test_masking_rate_is_one_minus_alpha(t):
  model = _model(toys.Oracle((0.5, 0.5)), 2, 64)
  x = jnp.zeros((256, 64), jnp.int32)
  z = model.apply({}, x, jnp.full((256,), t), method=model.forward_sample,
                  rngs={'sample': jax.random.key(3)})
  assert set(np.unique(z)) <= {0, 2}  # only the mask id is written
  rate = float(jnp.mean(z == 2))
  expected = 1.0 - float(schedules.MaskingSchedule('linear').alpha(t))
  stderr = math.sqrt(expected * (1 - expected) / z.size)
  assert abs(rate - expected) < 5 * stderr


@pytest.mark.parametrize('schedule,estimator', [
    ('linear', 'time'), ('cosine', 'time'), ('poly2', 'time'), ('cosine', 'mask_count')])
def test_oracle_elbo_is_data_nll(schedule, estimator):
  """For i.i.d. x ~ p and μθ ≡ p, E[ELBO] = (1 − 2ε)·NLL(x) + ε·log V (exactly): the
  diffusion term ∫ α′/(1 − α)·(1 − α)·log p dt, the reconstruction term, no prior term."""
  probs = (0.5, 0.25, 0.15, 0.1)
  v, length, n = len(probs), 16, 4096
  model = _model(toys.Oracle(probs), v, length, noise_schedule=schedule,
                 antithetic_time_sampling=False, elbo_estimator=estimator)
  x = jax.random.categorical(jax.random.key(0), jnp.log(jnp.asarray(probs)),
                             shape=(length,))
  xs = jnp.broadcast_to(x, (n, length))
  terms = model.apply({}, xs, rngs={'sample': jax.random.key(1)})
  loss = np.asarray(terms['loss'])  # bits per token, one draw of (t, z_t) each
  nll_bits = -np.sum(np.log2(np.asarray(probs)[np.asarray(x)])) / length
  eps = schedules.EPS
  expected = (1 - 2 * eps) * nll_bits + eps * math.log2(v)
  stderr = loss.std() / math.sqrt(n)
  assert abs(loss.mean() - expected) < 4 * stderr
  assert abs(expected - nll_bits) < 1e-3


def _exact_expected_loss(model, params, x, t):
  """E_{z_t ~ q(·|x)} of the diffusion integrand at each t [G], by enumerating masks."""
  length = x.shape[0]
  patterns = np.array(list(itertools.product([0, 1], repeat=length)), bool)  # [P, L]
  alpha = np.asarray(model.schedule.alpha(t))[:, None]  # [G, 1]
  n_masked = patterns.sum(1)[None]
  prob = alpha**(length - n_masked) * (1 - alpha)**n_masked  # [G, P]
  g, p = prob.shape
  z = np.where(patterns, model.vocab_size, np.asarray(x)[None])  # [P, L]
  z = np.broadcast_to(z, (g, p, length)).reshape(g * p, length)
  tt = np.repeat(np.asarray(t), p)
  logits = model.apply({'params': params}, jnp.asarray(z), jnp.asarray(tt),
                       method=model.predict_logits)
  log_p = np.asarray(jax.nn.log_softmax(logits, -1)).reshape(g, p, length, -1)
  log_p_x = np.take_along_axis(log_p, np.asarray(x)[None, None, :, None], -1)[..., 0]
  masked_log_p = np.where(patterns[None], log_p_x, 0.0).sum(-1)  # [G, P]
  return (prob * masked_log_p).sum(-1)  # [G]


def _exact_losses(schedule, timesteps):
  v, length = 3, 3
  model = _model(toys.ToyNet(v), v, length, noise_schedule=schedule)
  x = jnp.asarray([2, 0, 1])
  params = toys.init(model, x[None])
  s = model.schedule
  # Continuous time: ∫ α′/(1 − α) E[Σ_masked log μθ] dt, by Gauss-Legendre quadrature.
  nodes, weights = np.polynomial.legendre.leggauss(200)
  tq = 0.5 * (nodes + 1)
  cont = 0.5 * np.sum(weights * np.asarray(s.weight(tq)) *
                      _exact_expected_loss(model, params, x, tq))
  out = {'cont': cont}
  for big_t in timesteps:
    ti = np.arange(1, big_t + 1) / big_t
    si = ti - 1 / big_t
    a_t, a_s = np.asarray(s.alpha(ti)), np.asarray(s.alpha(si))
    out[big_t] = -np.sum((a_s - a_t) / (1 - a_t) *
                         _exact_expected_loss(model, params, x, ti))
  return model, params, x, out


@pytest.mark.parametrize('schedule', ['linear', 'cosine'])
def test_discrete_time_loss_approaches_continuous(schedule):
  _, _, _, exact = _exact_losses(schedule, (4, 16, 64, 256))
  gaps = [abs(exact[t] - exact['cont']) for t in (4, 16, 64, 256)]
  assert all(a > b for a, b in zip(gaps, gaps[1:])), gaps
  assert gaps[-1] < 2e-3 * abs(exact['cont'])
  # The finite-T bound is looser than the continuous one (the paper's remark).
  assert exact[4] > exact['cont']


@pytest.mark.parametrize('schedule,cont_time,timesteps,estimator', [
    ('linear', True, 1000, 'time'), ('linear', False, 4, 'time'),
    ('linear', True, 1000, 'mask_count'), ('cosine', True, 1000, 'mask_count'),
    ('poly3', True, 1000, 'mask_count')])
def test_monte_carlo_loss_matches_enumeration(schedule, cont_time, timesteps, estimator):
  _monte_carlo_nats(schedule, cont_time, timesteps, estimator)


def _monte_carlo_nats(schedule, cont_time, timesteps, estimator):
  """20000 draws of the diffusion term (nats), checked against its exact expectation."""
  base, params, x, exact = _exact_losses(schedule, (timesteps,))
  model = base.clone(cont_time=cont_time, timesteps=timesteps, elbo_estimator=estimator)
  n = 20000
  terms = model.apply({'params': params}, jnp.broadcast_to(x, (n, 3)),
                      rngs={'sample': jax.random.key(7)})
  nats = np.asarray(terms['loss_diff']) * 3 * math.log(2)
  target = exact['cont'] if cont_time else exact[timesteps]
  assert abs(nats.mean() - target) < 4 * nats.std() / math.sqrt(n)
  return nats


def test_mask_count_estimator_has_lower_variance():
  """Same ELBO, a fraction of the 'time' estimator's variance (its 1/t weight is gone)."""
  time = _monte_carlo_nats('linear', True, 1000, 'time')
  count = _monte_carlo_nats('linear', True, 1000, 'mask_count')
  assert count.var() < 0.25 * time.var(), (count.var(), time.var())


def test_mask_count_masks_exactly_m_real_tokens():
  model = _padded_model(toys.Oracle((0.4, 0.3, 0.2, 0.1)), elbo_estimator='mask_count')
  x = jnp.broadcast_to(jnp.asarray([2, 0, 1, 3, 3]), (300, 5))
  t, z, weight = model.apply({}, x, method=model.mask_count_sample,
                             rngs={'sample': jax.random.key(0)})
  z, weight = np.asarray(z), np.asarray(weight)
  assert (z[:, 3:] == 3).all()  # padding untouched
  m = (z[:, :3] == 4).sum(1)
  assert sorted(set(m)) == [1, 2, 3] and abs((m == 1).mean() - 1 / 3) < 0.01  # stratified
  inside = weight != 0
  assert inside.mean() > 0.99
  np.testing.assert_allclose(weight[inside], -3 / m[inside])
  assert (np.asarray(t) >= 0).all() and (np.asarray(t) <= 1).all()


@pytest.mark.parametrize('estimator', ['time', 'mask_count'])
def test_train_time_power_masks_more_in_training_only(estimator):
  """With u ↦ u^p in training, the masked fraction is E[u^p] = 1/(1 + p) (about; exact for
  'time' with the linear schedule, up to ε), and 1/2 in eval."""
  p, n, length = 0.5, 2048, 64
  model = _model(toys.Oracle((0.5, 0.5)), 2, length, elbo_estimator=estimator,
                 train_time_power=p)
  x = jnp.zeros((n, length), jnp.int32)
  def masked_fraction(train):
    if estimator == 'mask_count':
      z = model.apply({}, x, train, method=model.mask_count_sample,
                      rngs={'sample': jax.random.key(0)})[1]
    else:
      t = model.apply({}, n, train, method=model.sample_times, rngs={'sample': jax.random.key(0)})
      z = model.apply({}, x, t, method=model.forward_sample, rngs={'sample': jax.random.key(1)})
    return float(jnp.mean(z == 2))
  # Mask counts round u·n down and add 1: 1/(2n) more on average.
  offset = 0.5 / length if estimator == 'mask_count' else 0.0
  assert abs(masked_fraction(True) - (1 / (1 + p) + offset)) < 0.01
  assert abs(masked_fraction(False) - (0.5 + offset)) < 0.01
  with pytest.raises(ValueError, match='train_time_power must be > 0'):
    _model(toys.Oracle((0.5, 0.5)), 2, 4, train_time_power=0.0)


def test_mask_count_needs_continuous_time():
  with pytest.raises(ValueError, match='continuous-time'):
    _model(toys.Oracle((0.5, 0.5)), 2, 4, cont_time=False, elbo_estimator='mask_count')
  with pytest.raises(ValueError, match='elbo_estimator'):
    _model(toys.Oracle((0.5, 0.5)), 2, 4, elbo_estimator='count')


def test_loss_terms_shapes_and_units():
  v, length = 5, 8
  model = _model(toys.ToyNet(v), v, length)
  x = jax.random.randint(jax.random.key(0), (6, length), 0, v)
  params = toys.init(model, x)
  terms = model.apply({'params': params}, x, rngs={'sample': jax.random.key(2)})
  assert set(terms) == {'loss', 'loss_diff', 'loss_recon', 'loss_prior'}
  for value in terms.values():
    assert value.shape == (6,)
  np.testing.assert_allclose(terms['loss'], terms['loss_diff'] + terms['loss_recon'] +
                             terms['loss_prior'], rtol=1e-6)
  # Reconstruction: ε·log₂V bits per token; the prior (all masks) is counted as 0.
  np.testing.assert_allclose(terms['loss_recon'], schedules.EPS * math.log2(v), rtol=1e-3)
  np.testing.assert_array_equal(terms['loss_prior'], 0.0)


def test_antithetic_times_are_stratified():
  model = _model(toys.Oracle((0.5, 0.5)), 2, 4)
  t = model.apply({}, 8, method=model.sample_times, rngs={'sample': jax.random.key(0)})
  bins = np.sort(np.floor(np.asarray(t) * 8))
  np.testing.assert_array_equal(bins, np.arange(8))


def test_prior_is_fully_masked():
  model = _model(toys.Oracle((0.5, 0.5)), 2, 1000)
  z = model.apply({}, jax.random.key(0), 100, method=model.sample_prior)
  assert z.shape == (100, 1000)
  np.testing.assert_array_equal(z, 2)


# Padding: never masked, never counted.


def _padded_model(network, schedule='linear', **kw):
  # V = 4 with id 3 the padding; length 5, of which x below has 3 real tokens.
  return _model(network, 4, 5, noise_schedule=schedule, pad_id=3,
                length_probs=(0, 0, 0.5, 0.5, 0, 0), **kw)


def test_padding_is_never_masked():
  model = _padded_model(toys.Oracle((0.4, 0.3, 0.2, 0.1)))
  x = jnp.broadcast_to(jnp.asarray([2, 0, 1, 3, 3]), (512, 5))
  z = model.apply({}, x, jnp.full((512,), 0.9), method=model.forward_sample,
                  rngs={'sample': jax.random.key(0)})
  z = np.asarray(z)
  assert (z[:, 3:] == 3).all()
  assert 0.8 < (z[:, :3] == 4).mean() < 1.0


@pytest.mark.parametrize('estimator', ['time', 'mask_count'])
def test_padded_monte_carlo_loss_matches_enumeration_over_real_tokens(estimator):
  """Exact E over masks of the 3 real tokens only, with the padding fixed and seen by a
  context-dependent network, integrated over t; bits per token divide by 3, not 5."""
  model = _padded_model(toys.ToyNet(4), elbo_estimator=estimator)
  x = np.array([2, 0, 1, 3, 3])
  params = toys.init(model, jnp.asarray(x)[None])
  nodes, weights = np.polynomial.legendre.leggauss(200)
  t = 0.5 * (nodes + 1)  # [G]
  patterns = np.array(list(itertools.product([0, 1], repeat=3)), bool)  # [P, 3]
  alpha = np.asarray(model.schedule.alpha(t))[:, None]  # [G, 1]
  prob = alpha**(3 - patterns.sum(1)) * (1 - alpha)**patterns.sum(1)  # [G, P]
  z = np.concatenate([np.where(patterns, 4, x[:3]), np.full((len(patterns), 2), 3)], 1)
  g, p = prob.shape
  logits = model.apply({'params': params}, jnp.asarray(np.tile(z, (g, 1))),
                       jnp.asarray(np.repeat(t, p)), method=model.predict_logits)
  log_p = np.asarray(jax.nn.log_softmax(logits, -1)).reshape(g, p, 5, 4)
  log_p_x = np.take_along_axis(log_p[:, :, :3], x[None, None, :3, None], -1)[..., 0]
  expected = (prob * np.where(patterns, log_p_x, 0.0).sum(-1)).sum(-1)  # [G]
  exact_nats = 0.5 * np.sum(weights * np.asarray(model.schedule.weight(t)) * expected)
  n = 20000
  terms = model.apply({'params': params}, jnp.broadcast_to(jnp.asarray(x), (n, 5)),
                      rngs={'sample': jax.random.key(7)})
  nats = np.asarray(terms['loss_diff']) * 3 * math.log(2)
  assert abs(nats.mean() - exact_nats) < 4 * nats.std() / math.sqrt(n)
  eps = schedules.EPS  # recon per real token: (1 − α(0))·log V = ε·log2(4); prior 0
  np.testing.assert_allclose(terms['loss_recon'] + terms['loss_prior'], eps * 2, rtol=1e-5)


def test_padded_prior_draws_lengths_and_pads_the_rest():
  model = _padded_model(toys.Oracle((0.4, 0.3, 0.2, 0.1)))
  z = np.asarray(model.apply({}, jax.random.key(3), 4000, method=model.sample_prior))
  lengths = np.where(z != 3, np.arange(5), -1).max(1) + 1  # after the last non-padding
  assert np.isin(lengths, [2, 3]).all() and 0.45 < (lengths == 2).mean() < 0.55
  assert (z[lengths == 2, 2:] == 3).all() and (z[:, :2] == 4).all()
  with pytest.raises(ValueError, match='length_probs'):
    _model(toys.Oracle((0.5, 0.5)), 2, 5, pad_id=1)
