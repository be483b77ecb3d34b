"""Masking schedules α(t) of MD4 (Shi et al., 2024: the schedules of its Sec. 2 and appendix).

A schedule gives the probability α(t) that a token is still unmasked at time t ∈ [0, 1].
Every schedule here is a base curve α̃(t) with α̃(0) = 1 and α̃(1) = 0, pulled away from the
end points by ε as in the paper's code:

    α(t) = (1 − 2ε)·α̃(t) + ε,      α′(t) = (1 − 2ε)·α̃′(t),

so that α(0) = 1 − ε and α(1) = ε. The ELBO weight of the continuous-time ELBO is
α′(t) / (1 − α(t)), which is ≤ 0. Each schedule also inverts α (`time_of_alpha`), which the
mask-count ELBO estimator of md4.models.md4 uses to find t from a masking rate.

Names are looked up in `SCHEDULES`; `polyK` takes any positive float K from the name
(`poly3`, `poly0.5`).
"""

import dataclasses
from typing import Callable

import jax.numpy as jnp

EPS = 1e-4

# name -> (α̃(t), α̃′(t), α̃⁻¹(a)): α̃ is decreasing from 1 to 0 on [0, 1], so invertible.
_BaseFns = tuple[Callable, Callable, Callable]


def _linear() -> _BaseFns:
  return (lambda t: 1.0 - t), (lambda t: -jnp.ones_like(t)), (lambda a: 1.0 - a)


def _cosine() -> _BaseFns:
  return ((lambda t: 1.0 - jnp.cos(0.5 * jnp.pi * (1.0 - t))),
          (lambda t: -0.5 * jnp.pi * jnp.sin(0.5 * jnp.pi * (1.0 - t))),
          (lambda a: 1.0 - jnp.arccos(1.0 - a) / (0.5 * jnp.pi)))


def _poly(k: float) -> _BaseFns:
  return ((lambda t: 1.0 - t**k), (lambda t: -k * t**(k - 1.0)),
          (lambda a: (1.0 - a)**(1.0 / k)))


SCHEDULES: dict[str, Callable[[], _BaseFns]] = {
    'linear': _linear,
    'cosine': _cosine,
}
POLY_PREFIX = 'poly'


@dataclasses.dataclass(frozen=True)
class MaskingSchedule:
  """α(t), α′(t) and the ELBO weight α′(t)/(1 − α(t)) of one named schedule."""
  name: str
  eps: float = EPS

  def __post_init__(self):
    base_alpha, base_dalpha, base_inverse = _base_fns(self.name)
    object.__setattr__(self, '_base_alpha', base_alpha)
    object.__setattr__(self, '_base_dalpha', base_dalpha)
    object.__setattr__(self, '_base_inverse', base_inverse)

  def alpha(self, t):
    """α(t) = (1 − 2ε)·α̃(t) + ε."""
    return (1.0 - 2.0 * self.eps) * self._base_alpha(t) + self.eps

  def dalpha(self, t):
    """α′(t) = (1 − 2ε)·α̃′(t)."""
    return (1.0 - 2.0 * self.eps) * self._base_dalpha(t)

  def time_of_alpha(self, a):
    """t with α(t) = a, for a in [ε, 1 − ε]: α̃⁻¹((a − ε)/(1 − 2ε))."""
    base = (a - self.eps) / (1.0 - 2.0 * self.eps)
    return self._base_inverse(jnp.clip(base, 0.0, 1.0))

  def weight(self, t):
    """ELBO weight α′(t) / (1 − α(t)) (negative)."""
    return self.dalpha(t) / (1.0 - self.alpha(t))


def _base_fns(name: str) -> _BaseFns:
  if name in SCHEDULES:
    return SCHEDULES[name]()
  if name.startswith(POLY_PREFIX):
    try:
      k = float(name[len(POLY_PREFIX):])
    except ValueError:
      k = 0.0
    if k > 0:
      return _poly(k)
  raise ValueError(
      f'unknown masking schedule {name!r}; choose from {sorted(SCHEDULES)} '
      f'or {POLY_PREFIX}K with a positive float K (e.g. poly3, poly0.5)')
