"""Samplers against exact step probabilities and hand-made predictors."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from md4 import sampling
from md4.models import MD4
import toys

V, L = 4, 6


def _model(network=None, schedule='linear'):
  network = network or toys.ToyNet(V)
  return MD4(network=network, vocab_size=V, data_shape=(L,), noise_schedule=schedule)


def _config(**kw):
  base = dict(sampler='ancestral', sampling_grid='uniform', timesteps=8, topp=0.9,
              num_samples=4, guidance_scale=0.0)
  base.update(kw)
  return ml_collections.ConfigDict(base)


@pytest.mark.parametrize('sampler', sorted(sampling.SAMPLERS))
@pytest.mark.parametrize('grid', sorted(sampling.GRIDS))
def test_every_sampler_leaves_no_mask(sampler, grid):
  model = _model()
  params = toys.init(model, jnp.zeros((1, L), jnp.int32))
  generate = jax.jit(sampling.make_generate_fn(
      model, _config(sampler=sampler, sampling_grid=grid, timesteps=5)))
  z = jnp.full((16, L), V)
  out = generate(params, jax.random.key(0), z)
  assert out.shape == (16, L)
  assert int(jnp.max(out)) < V and int(jnp.min(out)) >= 0


@pytest.mark.parametrize('sampler', sorted(sampling.SAMPLERS))
def test_one_step_distribution_is_exact(sampler):
  """A masked position becomes v w.p. μ(v)·(α_s−α_t)/(1−α_t); top-p uses the nucleus of μ."""
  probs = np.array([0.55, 0.3, 0.1, 0.05])
  model = _model(toys.Oracle(tuple(probs)))
  n, s, t = 40000, 0.3, 0.7
  logits = jnp.broadcast_to(jnp.log(jnp.asarray(probs)), (n, 1, V))
  u = model.apply({}, jnp.full((n,), s), jnp.full((n,), t), method=model.unmask_prob)
  z = jnp.full((n, 1), V)
  out = np.asarray(sampling.SAMPLERS[sampler](jax.random.key(1), z, logits, u, V, 0.8))
  alpha = model.schedule.alpha
  reveal = float((alpha(s) - alpha(t)) / (1 - alpha(t)))
  mu = probs if sampler != 'topp' else np.array([0.55, 0.3, 0, 0]) / 0.85
  expected = np.append(mu * reveal, 1 - reveal)  # tokens 0..V-1, then the mask
  freq = np.bincount(out[:, 0], minlength=V + 1) / n
  stderr = np.sqrt(expected * (1 - expected) / n) + 1e-12
  assert np.all(np.abs(freq - expected) < 5 * stderr), (freq, expected)


def test_nucleus_matches_numpy():
  rng = np.random.default_rng(0)
  probs = rng.dirichlet(np.ones(10), size=(5,))
  for p in (0.3, 0.7, 0.95, 1.0):
    got = np.asarray(sampling.nucleus(jnp.asarray(probs, jnp.float32), p))
    for row, out in zip(probs, got):
      order = np.argsort(-row)
      k = np.searchsorted(np.cumsum(row[order]), p - 1e-7) + 1  # smallest set with mass ≥ p
      want = np.zeros_like(row)
      want[order[:k]] = row[order[:k]]
      np.testing.assert_allclose(out, want / want.sum(), rtol=1e-5, atol=1e-6)


def test_certain_predictor_writes_its_token_and_keeps_given_tokens():
  """Conditional completion with μθ = δ_2: masks become 2, given tokens stay."""
  model = _model(toys.Oracle((1e-9, 1e-9, 1.0, 1e-9)))
  generate = jax.jit(sampling.make_generate_fn(model, _config(timesteps=3)))
  given = jnp.asarray([[0, V, 1, V, V, 3], [V, V, V, V, V, V]])
  out = np.asarray(generate({}, jax.random.key(0), given))
  np.testing.assert_array_equal(out, [[0, 2, 1, 2, 2, 3], [2, 2, 2, 2, 2, 2]])


def test_ancestral_loop_reveals_expected_fraction_per_step():
  """After k of T uniform steps from all-masked, a fraction 1 − (1−α(1−k/T))/(1−α(1)) is revealed."""
  model = _model()
  params = toys.init(model, jnp.zeros((1, L), jnp.int32))
  big_t, k, n = 10, 4, 4000
  variables = {'params': params}
  z = jnp.full((n, L), V)
  for i in range(k):
    t, s = 1 - i / big_t, 1 - (i + 1) / big_t
    logits = model.apply(variables, z, jnp.full((n,), t), method=model.predict_logits)
    u = model.apply(variables, jnp.full((n,), s), jnp.full((n,), t),
                    method=model.unmask_prob)
    z = sampling.ancestral_step(jax.random.key(i), z, logits, u, V, 1.0)
  alpha = model.schedule.alpha
  expected = float(1 - (1 - alpha(1 - k / big_t)) / (1 - alpha(1.0)))
  frac = float(jnp.mean(z != V))
  assert abs(frac - expected) < 5 * math.sqrt(expected * (1 - expected) / z.size)


def test_bad_names_are_errors():
  model = _model()
  with pytest.raises(ValueError, match="unknown sampler 'greedy'"):
    sampling.make_generate_fn(model, _config(sampler='greedy'))
  with pytest.raises(ValueError, match='unknown sampling grid'):
    sampling.make_generate_fn(model, _config(sampling_grid='log'))
  with pytest.raises(ValueError, match='topp'):
    sampling.make_generate_fn(model, _config(topp=0.0))
