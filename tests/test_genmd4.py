"""GenMD4's schedules, ELBO, RLOO gradient and reverse step against independent computations."""

import functools
import itertools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from md4 import data
from md4 import evaluation
from md4 import models
from md4 import sampling
from md4 import schedules
from md4 import sharding
from md4 import state as state_lib
from md4 import train
from md4.sampling import steps as steps_lib
from md4.configs.genmd4 import shakespeare as genmd4_shakespeare
from md4.models import GenMD4
from md4.models import genmd4
from test_train import tiny_config
import toys

EPS = schedules.EPS


def _model(network, vocab_size, length, **kw):
  return GenMD4(network=network, vocab_size=vocab_size, data_shape=(length,), **kw)


def _init(model, x):
  return jax.jit(functools.partial(toys.init, model))(x)  # jitted: eager init is slow


def _with_powers(params, w):
  """params with w_raw = softplus⁻¹(w), so that softplus(w_raw) = w."""
  w_raw = np.log(np.expm1(np.asarray(w, np.float64)))
  return {**params, 'w_raw': jnp.asarray(w_raw, jnp.float32)}


def _alpha_np(t, w):
  """α_t(v) = 1 − (1 − ε)·t^{w_v} in float64."""
  return 1 - (1 - EPS) * np.asarray(t)**np.asarray(w, np.float64)


def _recon_np(x, w, t1, v):
  """Σ_n (1 − α_t1(x_n))·(−log p(x_n | mask)) in nats [B], p(v | mask) ∝ t1^{w_v}."""
  w = np.asarray(w, np.float64)
  decoder = t1**w / np.sum(t1**w)  # [V]
  return np.sum((1 - _alpha_np(t1, w[x])) * -np.log(decoder[x]), axis=-1)


def test_init_terms_shapes_and_units():
  v, length, batch = 5, 8, 6
  model = _model(toys.ToyNet(v), v, length, power_init=0.7)
  x = jax.random.randint(jax.random.key(0), (batch, length), 0, v)
  params = _init(model, x)
  np.testing.assert_allclose(jax.nn.softplus(params['w_raw']), np.full(v, 0.7), rtol=1e-6)
  w = np.array([0.5, 1.0, 2.0, 3.0, 0.8])
  params = _with_powers(params, w)
  terms = jax.jit(model.apply)({'params': params}, x, rngs={'sample': jax.random.key(2)})
  assert set(terms) == {'loss', 'loss_nelbo', 'loss_diff', 'loss_recon', 'loss_prior',
                        'w_min', 'w_mean', 'w_max'}
  for value in terms.values():
    assert value.shape == (batch,)
  # The RLOO term is exactly 0 in value: `loss` is the NELBO estimate.
  np.testing.assert_array_equal(terms['loss'], terms['loss_nelbo'])
  np.testing.assert_allclose(terms['loss_nelbo'], terms['loss_diff'] + terms['loss_recon'] +
                             terms['loss_prior'], rtol=1e-6)
  # Reconstruction at t1 with the posterior decoder; no prior term. In bits/token.
  recon = _recon_np(np.asarray(x), w, 1e-3, v) / (length * math.log(2))
  np.testing.assert_allclose(terms['loss_recon'], recon, rtol=1e-4)
  np.testing.assert_array_equal(terms['loss_prior'], 0.0)
  for name, value in (('w_min', w.min()), ('w_mean', w.mean()), ('w_max', w.max())):
    np.testing.assert_allclose(terms[name], value, rtol=1e-5)


def test_network_gradient_is_the_nelbo_gradient():
  """The RLOO term touches only w; the network's gradient is that of ½(l₁ + l₂)."""
  v, length = 4, 6
  model = _model(toys.ToyNet(v), v, length)
  x = jax.random.randint(jax.random.key(0), (8, length), 0, v)
  params = _init(model, x)

  @functools.partial(jax.jit, static_argnums=0)
  def grad(key):
    return jax.grad(lambda p: model.apply({'params': p}, x, rngs={
        'sample': jax.random.key(3)})[key].mean())(params)

  surrogate, nelbo = grad('loss'), grad('loss_nelbo')
  for a, b in zip(jax.tree.leaves(surrogate['network']), jax.tree.leaves(nelbo['network'])):
    # Two programs (the gradients of 'loss' and of 'loss_nelbo'): float32 summation order
    # differs; 1e-6 is 2e-6 of the largest gradient (0.5), a leak of the RLOO term far more.
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert np.max(np.abs(surrogate['w_raw'] - nelbo['w_raw'])) > 1e-4


@pytest.mark.parametrize('k', [0.5, 1.0, 3.0])
def test_schedule_and_equal_powers(k):
  """α_t = 1 − (1 − ε)·t^w and α′ against autodiff, the ELBO weight α′/(1 − α) = −w/t; with
  every w_v = K the integrand is MD4's: −(K/t)·Σ_masked log μθ(x_n)."""
  v, length, batch = 5, 8, 64
  gen = _model(toys.ToyNet(v), v, length)
  x = jax.random.randint(jax.random.key(0), (batch, length), 0, v)
  params = _with_powers(_init(gen, x), np.full(v, k))
  t = jax.random.uniform(jax.random.key(1), (batch,), minval=1e-3, maxval=1.0)
  variables = {'params': params}
  alpha = gen.apply(variables, t, method=gen.alpha)  # [B, 1, V]
  assert alpha.shape == (batch, 1, v)
  np.testing.assert_allclose(alpha, np.broadcast_to(_alpha_np(t, k)[:, None, None],
                                                    alpha.shape), rtol=1e-5)
  dalpha = gen.apply(variables, t, method=gen.dalpha)
  autodiff = jax.vmap(jax.grad(lambda s: genmd4.alpha(s, k)))(t)
  np.testing.assert_allclose(dalpha[:, 0, 0], autodiff, rtol=1e-5)
  mask_prob = gen.apply(variables, t, method=gen.mask_prob)  # 1 − α, without cancellation
  np.testing.assert_allclose(mask_prob, 1 - _alpha_np(t, k)[:, None, None] + 0 * alpha,
                             rtol=1e-4)
  np.testing.assert_allclose(genmd4.elbo_weight(t, k), dalpha[:, 0, 0] / mask_prob[:, 0, 0],
                             rtol=1e-5)

  @jax.jit
  def integrand(x, t):
    z_t = gen.apply(variables, x, t, method=gen.forward_sample,
                    rngs={'sample': jax.random.key(2)})
    logits = gen.apply(variables, z_t, t, method=gen.predict_logits)
    return z_t, logits, gen.apply(variables, x, t, z_t, logits, method=gen.diffusion_loss)

  z_t, logits, got = integrand(x, t)
  assert int(jnp.sum(z_t == v)) > batch  # the test exercises masked tokens
  log_p_x = np.take_along_axis(np.asarray(jax.nn.log_softmax(logits)),
                               np.asarray(x)[..., None], -1)[..., 0]
  want = -k / np.asarray(t) * np.sum(np.where(np.asarray(z_t) == v, log_p_x, 0.0), -1)
  np.testing.assert_allclose(got, want, rtol=1e-4)


# ------------------------------------------------- the gradient in w, against enumeration

V_SMALL, X_SMALL, W_SMALL = 3, np.array([2, 0]), np.array([0.6, 1.5, 3.0])


def _small_problem():
  model = _model(toys.ToyNet(V_SMALL), V_SMALL, len(X_SMALL))
  params = _with_powers(_init(model, jnp.asarray(X_SMALL)[None]), W_SMALL)
  return model, params


def _exact_nelbo(model, params, w_raw, t):
  """E_{z_t ~ q(·|x)} of the one-sample NELBO at t (bits/token), by enumerating the masks.

  The integrand is the paper's GenMD4 ELBO integrand as written, Σ_v α′/(1 − α)·[x(v)(1 + xᵀlog μ) − μ(v)],
  the reconstruction term the posterior decoder's, p(v | mask) ∝ t1^{w_v}.
  """
  v, length, t1 = V_SMALL, len(X_SMALL), model.t1
  masked = np.array(list(itertools.product([0, 1], repeat=length)), bool)  # [P, L]
  z = np.where(masked, v, X_SMALL[None])
  logits = model.apply({'params': params}, jnp.asarray(z), jnp.full((len(z),), t),
                       method=model.predict_logits)
  mu, log_mu = jax.nn.softmax(logits), jax.nn.log_softmax(logits)  # [P, L, V]
  x_onehot = jnp.eye(v)[X_SMALL]  # [L, V]
  log_mu_x = jnp.sum(x_onehot * log_mu, -1, keepdims=True)  # [P, L, 1]
  w = jax.nn.softplus(w_raw)
  alpha = 1 - (1 - EPS) * t**w  # [V]
  weight = -(1 - EPS) * w * t**(w - 1) / (1 - alpha)
  integrand = jnp.sum(weight * (x_onehot * (1 + log_mu_x) - mu), -1)  # [P, L]
  alpha_x = alpha[X_SMALL]
  prob = jnp.prod(jnp.where(masked, 1 - alpha_x, alpha_x), -1)  # [P]
  # t ~ U(t1, 1) without the factor 1 − t1, as the original (GenMD4.objective).
  diff = jnp.sum(prob * jnp.sum(jnp.where(masked, integrand, 0.0), -1))
  mask_t1_x = (1 - EPS) * t1**w[X_SMALL]
  log_decoder = w * math.log(t1) - jax.nn.logsumexp(w * math.log(t1))  # log p(v | mask)
  recon = -jnp.sum(mask_t1_x * log_decoder[X_SMALL])
  return (diff + recon) / (length * math.log(2))


def test_rloo_gradient_matches_exact_gradient():
  """At fixed t, the average over examples of ∇_{w_raw} loss is the exact ∇_{w_raw} E_z[NELBO].

  Each example's gradient is one independent draw, so their spread gives the error bar.
  """
  model, params = _small_problem()
  n = 40_000
  xs = jnp.broadcast_to(jnp.asarray(X_SMALL), (n, len(X_SMALL)))

  def per_example(key, w_raw, t):  # [n], one draw of the two masks per example
    terms = model.apply({'params': {**params, 'w_raw': w_raw}}, xs, jnp.full((n,), t),
                        method=model.loss_terms, rngs={'sample': jax.random.key(4)})
    return terms[key]

  @jax.jit
  def estimates(w_raw, t):  # per-example gradients by forward mode over w_raw's V entries
    return {'loss': jax.jacfwd(per_example, 1)('loss', w_raw, t),  # [n, V]
            'loss_nelbo': jax.jacfwd(per_example, 1)('loss_nelbo', w_raw, t),
            'value': per_example('loss', w_raw, t)}  # [n]

  exact = jax.jit(jax.value_and_grad(functools.partial(_exact_nelbo, model, params)))
  for t in (0.2, 0.6):
    # float64 before averaging: a float32 running sum over 40k rows drifts by ~1e-3.
    got = jax.tree.map(lambda a: np.asarray(a, np.float64), estimates(params['w_raw'], t))
    exact_value, exact_grad = exact(params['w_raw'], t)
    values, g = got['value'], got['loss']
    assert abs(values.mean() - exact_value) < 5 * values.std() / math.sqrt(n)
    stderr = g.std(0) / math.sqrt(n)
    assert np.all(np.abs(g.mean(0) - exact_grad) < 5 * stderr), (t, g.mean(0), exact_grad,
                                                                stderr)
    # Without the RLOO term the estimate is biased: the test can tell the two apart.
    pathwise = got['loss_nelbo'].mean(0)
    assert np.max(np.abs(pathwise - exact_grad) / stderr) > 20, (t, pathwise, exact_grad)


# ----------------------------------------------------------------------- reverse step

PROBS = np.array([0.55, 0.3, 0.1, 0.05])
W_REVERSE = np.array([0.5, 1.0, 2.0, 4.0])


def _reverse_model(network):
  model = _model(network, len(PROBS), 6)
  return model, _with_powers(_init(model, jnp.zeros((1, 6), jnp.int32)), W_REVERSE)


def _brute_force_step(s, t):
  """[P(z_s = v) for v < V, P(z_s = m)] from z_t = m with x ~ μ, from q(z_s | z_t = m, x)."""
  out = np.zeros(len(PROBS) + 1)
  for x, mu_x in enumerate(PROBS):
    a_s, a_t = _alpha_np(s, W_REVERSE[x]), _alpha_np(t, W_REVERSE[x])
    out[x] += mu_x * (a_s - a_t) / (1 - a_t)  # q(z_s = x | z_t = m, x)
    out[-1] += mu_x * (1 - a_s) / (1 - a_t)  # q(z_s = m | z_t = m, x)
  return out


@pytest.mark.parametrize('s,t', [(0.3, 0.7), (0.0, 0.1), (0.9, 1.0)])
def test_reverse_step_probabilities(s, t):
  model, params = _reverse_model(toys.Oracle(tuple(PROBS)))
  u = model.apply({'params': params}, jnp.full((2,), s), jnp.full((2,), t),
                  method=model.unmask_prob)  # [B, 1, V]
  assert u.shape == (2, 1, len(PROBS))
  p_tokens = PROBS * np.asarray(u[0, 0], np.float64)
  want = _brute_force_step(s, t)
  np.testing.assert_allclose(p_tokens, want[:-1], rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(1 - p_tokens.sum(), want[-1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('sampler', sorted(set(steps_lib.STEPS)
                                           - set(steps_lib.SCALAR_SCHEDULE_STEPS)))
def test_every_sampler_takes_the_genmd4_step(sampler):
  """Empirical frequencies of one step from z_t = m (top-p at p = 1 keeps all of μ)."""
  model, params = _reverse_model(toys.Oracle(tuple(PROBS)))
  n, s, t = 40_000, 0.3, 0.7
  v = len(PROBS)
  logits = jnp.broadcast_to(jnp.log(jnp.asarray(PROBS, jnp.float32)), (n, 1, v))
  u = model.apply({'params': params}, jnp.full((n,), s), jnp.full((n,), t),
                  method=model.unmask_prob)
  ctx = steps_lib.StepContext(v, unmask_prob=u, topp=1.0)
  out = np.asarray(steps_lib.STEPS[sampler](jax.random.key(1), jnp.full((n, 1), v), logits,
                                            ctx))
  freq = np.bincount(out[:, 0], minlength=v + 1) / n
  want = _brute_force_step(s, t)
  stderr = np.sqrt(want * (1 - want) / n)
  assert np.all(np.abs(freq - want) < 5 * stderr), (freq, want)


def test_generate_leaves_no_mask():
  model, params = _reverse_model(toys.ToyNet(len(PROBS)))
  config = genmd4_shakespeare.get_config().sampling
  config.timesteps, config.num_samples = 5, 8
  generate = jax.jit(sampling.make_sampler(model, config))
  prior = model.apply({'params': params}, jax.random.key(0), 8, method=model.sample_prior)
  assert prior.shape == (8, 6) and bool(jnp.all(prior == len(PROBS)))  # all masks
  out = np.asarray(generate(params, jax.random.key(1), prior)[0])
  assert out.shape == (8, 6) and out.min() >= 0 and out.max() < len(PROBS)


# ---------------------------------------------------------------------------- training


def test_short_training_moves_w_and_lowers_valid_loss(tmp_path):
  config = tiny_config()
  genmd4 = genmd4_shakespeare.get_config()
  config.model_type, config.model = genmd4.model_type, genmd4.model
  steps = 12
  config.num_train_steps = steps
  for key in ('log_every_steps', 'eval_every_steps', 'sample_every_steps',
              'checkpoint_every_steps'):
    config[key] = steps

  # The step-0 model, initialised and evaluated with the run's own keys.
  info, splits = data.load_dataset(config.data)
  model = models.build(config, info)
  init_rng, eval_rng = (state_lib.run_key(config.seed, k) for k in ('init', 'eval'))
  example = jnp.zeros((1,) + info.data_shape, jnp.int32)
  params = jax.jit(lambda r: model.init({'params': r, 'sample': r, 'dropout': r},
                                        example)['params'])(init_rng)
  evaluator = evaluation.Evaluator(model, sharding.make_mesh(), config.eval_batch_size,
                                   config.eval_repeats)
  before = evaluator(params, {s: splits[s] for s in info.eval_splits}, eval_rng)

  after = train.train_and_evaluate(config, str(tmp_path))
  assert after['valid_loss'] < before['valid_loss'] - 0.1, (before, after)
  assert after['valid_loss'] == after['valid_loss_nelbo']
  moved = max(abs(after['valid_w_min'] - 1.0), abs(after['valid_w_max'] - 1.0))
  assert moved > 1e-3, after
  record = json.loads((tmp_path / 'metrics.jsonl').read_text().splitlines()[-1])
  assert {'w_min', 'w_mean', 'w_max', 'loss_nelbo'} <= set(record)
