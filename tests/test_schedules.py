import jax
import jax.numpy as jnp
import numpy as np
import pytest

from md4 import schedules

NAMES = ['linear', 'cosine', 'poly3', 'poly0.5', 'poly1']


@pytest.mark.parametrize('name', NAMES)
def test_endpoints(name):
  s = schedules.MaskingSchedule(name)
  np.testing.assert_allclose(s.alpha(jnp.float32(0.0)), 1.0 - schedules.EPS, rtol=0, atol=1e-7)
  np.testing.assert_allclose(s.alpha(jnp.float32(1.0)), schedules.EPS, rtol=0, atol=1e-7)


@pytest.mark.parametrize('name', NAMES)
def test_decreasing_and_weight_negative(name):
  s = schedules.MaskingSchedule(name)
  t = jnp.linspace(0.05, 0.95, 200)
  assert np.all(np.diff(np.asarray(s.alpha(t))) < 0)
  assert np.all(np.asarray(s.weight(t)) < 0)


@pytest.mark.parametrize('name', NAMES)
def test_dalpha_is_autodiff_of_alpha(name):
  s = schedules.MaskingSchedule(name)
  t = jnp.linspace(0.01, 0.99, 50)
  autodiff = jax.vmap(jax.grad(s.alpha))(t)
  np.testing.assert_allclose(s.dalpha(t), autodiff, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('name', NAMES)
def test_time_of_alpha_inverts_alpha(name):
  s = schedules.MaskingSchedule(name)
  t = np.linspace(0.05, 1.0, 96)  # (float32: t^K near 0 loses t's digits for poly3)
  np.testing.assert_allclose(s.time_of_alpha(s.alpha(jnp.asarray(t))), t, atol=2e-5)
  # And the other way round, at the end points of α's range.
  a = jnp.asarray([schedules.EPS, 0.3, 1.0 - schedules.EPS])
  np.testing.assert_allclose(s.alpha(s.time_of_alpha(a)), a, rtol=1e-6)


def test_weight_formula_and_closed_forms():
  t = jnp.asarray([0.2, 0.5, 0.9])
  eps = schedules.EPS
  np.testing.assert_allclose(
      schedules.MaskingSchedule('linear').weight(t),
      -(1 - 2 * eps) / (1 - ((1 - 2 * eps) * (1 - t) + eps)), rtol=1e-6)
  np.testing.assert_allclose(
      schedules.MaskingSchedule('cosine').alpha(t),
      (1 - 2 * eps) * (1 - np.cos(np.pi / 2 * (1 - t))) + eps, atol=1e-6)
  np.testing.assert_allclose(
      schedules.MaskingSchedule('poly2').alpha(t), (1 - 2 * eps) * (1 - t**2) + eps, atol=1e-6,
      rtol=1e-6)
  # poly1 is the linear schedule.
  np.testing.assert_allclose(schedules.MaskingSchedule('poly1').alpha(t),
                             schedules.MaskingSchedule('linear').alpha(t), atol=1e-6)


@pytest.mark.parametrize('name', ['poly', 'polyx', 'poly-1', 'square', ''])
def test_unknown_names(name):
  with pytest.raises(ValueError, match='unknown masking schedule'):
    schedules.MaskingSchedule(name)
