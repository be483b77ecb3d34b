"""Self-distillation through time (md4.distill): targets against exact enumeration on a tiny
vocabulary, a student equal to a one-step teacher has zero loss, and a distillation run
through the training loop gives an ordinary run directory."""

import itertools
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from md4 import checkpoint
from md4 import configs
from md4 import data
from md4 import distill
from md4 import models
from md4 import optim
from md4 import run as run_lib
from md4 import sharding
from md4 import state as state_lib
from md4 import train
from md4.models import MD4
import toys
from test_train import tiny_config

V, L = 3, 3


def _teacher():
  model = MD4(network=toys.ToyNet(V), vocab_size=V, data_shape=(L,))
  return model, toys.random_params(model, jnp.zeros((1, L), jnp.int32), seed=3)


def _mu(model, params, z, t):
  """μθ(z, t) of one sequence z [L] as float64 [L, V]."""
  logits = model.apply({'params': params}, jnp.asarray(z)[None], jnp.full((1,), t),
                       method=model.predict_logits)
  return np.asarray(jax.nn.softmax(logits[0]), np.float64)


def _exact(model, params, z_t, times):
  """By enumerating every z_s of the teacher's first step from z_t: at each position
  masked in z_t, (the teacher's two-step distribution given a reveal, the expectation of
  SDTT's target)."""
  u = lambda s, t: float(model.apply({}, jnp.asarray([s]), jnp.asarray([t]),
                                     method=model.unmask_prob).ravel()[0])
  (t, mid, s), u1, u2 = times, u(times[1], times[0]), u(times[2], times[1])
  mu1, masked = _mu(model, params, z_t, t), [i for i in range(L) if z_t[i] == V]
  two_step, sdtt = np.zeros((L, V)), np.zeros((L, V))
  for outcome in itertools.product(range(V + 1), repeat=len(masked)):  # V: stays masked
    z1, prob = list(z_t), 1.0
    for i, o in zip(masked, outcome):
      z1[i] = o
      prob *= (1 - u1) if o == V else u1 * mu1[i, o]
    mu2 = _mu(model, params, z1, mid)
    for i, o in zip(masked, outcome):
      if o == V:
        two_step[i] += prob * u2 * mu2[i]
        sdtt[i] += prob * mu2[i]
      else:
        two_step[i, o] += prob
        sdtt[i] += prob * mu1[i]
  u_all = u(s, t)
  return {i: (two_step[i] / u_all, sdtt[i]) for i in masked}


@pytest.mark.parametrize('target', ['two_step', 'sdtt'])
def test_targets_are_the_teachers_two_step_distribution(target):
  model, params = _teacher()
  z_t, times, n = [1, V, V], (0.9, 0.6, 0.35), 40_000
  times_b = jnp.broadcast_to(jnp.asarray(times)[:, None], (3, n))
  p, _ = jax.jit(lambda rng: distill.teacher_targets(
      model, params, jnp.broadcast_to(jnp.asarray(z_t), (n, L)), None, times_b,
      jnp.zeros((3, n), bool), rng, target))(jax.random.key(0))
  p = np.asarray(p, np.float64)
  for i, (two_step, sdtt) in _exact(model, params, z_t, times).items():
    want = two_step if target == 'two_step' else sdtt
    got, spread = p[:, i].mean(0), p[:, i].std(0) / math.sqrt(n)
    np.testing.assert_allclose(got, want, atol=5 * spread.max() + 1e-6)
    if target == 'two_step':
      assert abs(want.sum() - 1) < 1e-6  # the teacher's distribution given a reveal


@pytest.mark.parametrize('target,divergence', [(t, d) for t, ds in distill.TARGETS.items()
                                               for d in ds])
def test_a_student_equal_to_a_one_step_teacher_has_zero_loss(target, divergence):
  model, params = _teacher()
  dconfig = ml_collections.ConfigDict(dict(teacher_steps=8, substeps=1, target=target,
                                           divergence=divergence))
  x = jax.random.randint(jax.random.key(1), (64, L), 0, V)
  terms = jax.jit(lambda r: distill.loss_terms(model, params, params, x, r, dconfig,
                                               'cosine', 0))(jax.random.key(2))
  np.testing.assert_allclose(terms['loss'], 0.0, atol=1e-6)
  assert float(terms['masked'].mean()) > 0.2
  other = toys.random_params(model, jnp.zeros((1, L), jnp.int32), seed=4)
  terms = distill.loss_terms(model, other, params, x, jax.random.key(2), dconfig, 'cosine', 0)
  assert float(terms['loss'].mean()) > 1e-3


def test_distillation_runs_through_the_loop_into_an_ordinary_run(tmp_path):
  """A tiny teacher, then 2 rounds of 2 steps (8 -> 4 -> 2 sampling steps): the student
  starts from the teacher's EMA, the teacher takes the student's parameters when round 2
  begins, and the result samples and evaluates as any run."""
  teacher = _teacher_workdir(tmp_path / 'teacher')
  config = tiny_config(**{
      'distill.teacher_workdir': str(teacher), 'distill.teacher_steps': 8,
      'distill.rounds': 2, 'distill.steps_per_round': 2, 'num_train_steps': 4,
      'sampling.timesteps': 2, 'checkpoint_every_steps': 2, 'eval_every_steps': 4,
      'sample_every_steps': 4, 'log_every_steps': 2})
  student = tmp_path / 'student'
  metrics = train.train_and_evaluate(config, str(student))
  assert np.isfinite(metrics['valid_loss'])
  start = run_lib.load_run(str(teacher))
  mid, _ = _checkpoint(student, config, 2)
  end, _ = _checkpoint(student, config, 4)
  assert isinstance(end, state_lib.DistillState)
  for t, e in zip(jax.tree.leaves(start.params), jax.tree.leaves(mid.teacher_params)):
    np.testing.assert_array_equal(t, e)  # round 1's teacher: the teacher run's EMA
  for p, t in zip(jax.tree.leaves(mid.params), jax.tree.leaves(end.teacher_params)):
    np.testing.assert_array_equal(p, t)  # round 2's: the student as it began
  run = run_lib.load_run(str(student))
  assert run.config.sampling.timesteps == 2 and run.step == 4
  config.network.n_layers = 2  # not the teacher's network
  with pytest.raises(ValueError, match="other \\['network'\\]"):
    train.train_and_evaluate(config, str(tmp_path / 'other'))


def _teacher_workdir(workdir):
  """A run directory holding the tiny config and a checkpoint of random parameters."""
  config = tiny_config()
  configs.save(config, str(workdir))
  info, _ = data.load_dataset(config.data)
  model = models.build(config, info)
  optimizer = optim.make_optimizer(config.opt, config.num_train_steps)
  mesh, rules = sharding.setup(config, sharded=False)
  with sharding.active(mesh, rules):
    _, shardings, init_params = state_lib.abstract_state(
        model, optimizer, mesh, rules, jnp.zeros((1,) + info.data_shape, jnp.int32))
    state = state_lib.init_state(optimizer, init_params, shardings, jax.random.key(0))
  state = state.replace(ema_params=jax.tree.map(  # leave the zero initialisations
      lambda p: p + 0.05 * jax.random.normal(jax.random.key(1), p.shape), state.params))
  with checkpoint.make_manager(str(workdir), 1) as manager:
    checkpoint.maybe_save(manager, state, 6, 6, True, False)
  return workdir


def _checkpoint(workdir, config, step):
  return checkpoint.restore_workdir(str(workdir), config, run_lib.load_run(str(workdir)).model,
                                    step)
