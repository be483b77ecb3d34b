"""The negative ELBO over held-out splits, as the training loop logs it and
md4/evaluate.py reports it (with its Monte-Carlo standard error).

Each full batch of a split is estimated `repeats` times with independent draws of t (or of
the mask count) and masks, batch i's draw r with key fold_in(rng, i·repeats + r); the
split's value is the mean over all draws. The repeats' spread measures the noise the
draws add: stderr = sqrt(Σ_batches s²_b / R) / n_batches. An autoregressive model's loss
is exact: no draws.
"""

import dataclasses
import functools
from typing import Callable

import jax
import numpy as np

from md4 import data
from md4 import models
from md4 import sharding

IN_FLIGHT = 2  # draws dispatched beyond the one whose metrics the host waits for


def eval_step(model, params, batch, rng):
  """Mean loss terms of a batch (no dropout): {'loss': scalar, ...}."""
  terms = models.loss_terms(model, params, batch, rng, train=False)
  return {k: v.mean() for k, v in terms.items()}


@dataclasses.dataclass
class SplitResult:
  means: dict[str, float]  # each loss term's mean over every draw of every batch
  draws: np.ndarray  # [batches, repeats]: each draw's batch-mean loss
  examples: int

  @property
  def stderr(self) -> float | None:
    """Standard error of means['loss'] from the spread of the repeats (None for one)."""
    repeats = self.draws.shape[1]
    if repeats < 2:
      return None
    return float(np.sqrt(np.sum(self.draws.var(axis=1, ddof=1) / repeats)) / len(self.draws))


class Evaluator:
  """ELBO terms of a model's parameters on eval splits, batch by batch.

  batch_size is global; each process feeds its rows of every batch. `stop()`, asked
  before each draw, ends the evaluation early (the call then returns None); at most
  IN_FLIGHT draws are dispatched ahead of the one the host waits for, so a stop takes
  effect within a few draws' time.
  """

  def __init__(self, model, mesh, batch_size: int, repeats: int):
    self.model, self.mesh = model, mesh
    self.batch_size, self.repeats = batch_size, repeats
    self.step = jax.jit(functools.partial(eval_step, model))

  def split(self, params, split, rng, stop: Callable[[], bool] = lambda: False):
    """SplitResult of one split (an array or dict of arrays [N, ...]), or None if stopped."""
    batch_sharding = sharding.batch_sharding(self.mesh)
    sums, draws, pending = {}, [], []

    def collect(metrics):  # in order, as float32 sums like the device's
      for k, v in jax.device_get(metrics).items():
        sums[k] = sums.get(k, 0.0) + v
      draws.append(float(metrics['loss']))

    batches = data.eval_batches(split, self.batch_size, jax.process_index(),
                                jax.process_count())
    for i, local in enumerate(batches):
      batch = sharding.global_batch(batch_sharding, local)
      for r in range(self.repeats):
        if stop():
          return None
        pending.append(self.step(params, batch, jax.random.fold_in(rng, i * self.repeats + r)))
        if len(pending) > IN_FLIGHT:
          collect(pending.pop(0))
    for metrics in pending:
      collect(metrics)
    n = len(draws)
    return SplitResult({k: float(v) / n for k, v in sums.items()},
                       np.asarray(draws, np.float64).reshape(-1, self.repeats),
                       n // self.repeats * self.batch_size)

  def __call__(self, params, splits: dict, rng, stop: Callable[[], bool] = lambda: False):
    """{'{split}_{term}': mean} over every split of `splits`, or None if stopped."""
    results = {}
    for name, split in splits.items():
      result = self.split(params, split, rng, stop)
      if result is None:
        return None
      results.update({f'{name}_{k}': v for k, v in result.means.items()})
    return results
