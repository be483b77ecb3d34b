"""The train state: what a checkpoint holds, where each leaf lives, how it starts; and the
run's random keys, derived by name.

A TrainState is (step, params, ema_params, opt_state). Its parameters carry the networks'
logical axis names, which md4.sharding maps to mesh axes; the EMA and every optimizer-state
leaf that mirrors a parameter take that parameter's sharding.
"""

from typing import Any

import flax
import flax.linen as nn
import jax
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np

from md4 import sharding

# The run's keys: fold_in(key(config.seed), KEYS[name]). Each stream has its own key, so
# that a tool can re-derive the one it needs (md4/evaluate.py: the evals') by name.
KEYS = {'init': 0, 'train': 1, 'eval': 2, 'sample': 3}


def run_key(seed: int, name: str) -> jax.Array:
  """The key of stream `name` (a key of KEYS) of a run with `seed`."""
  if name not in KEYS:
    raise ValueError(f'unknown key {name!r}; choose from {sorted(KEYS)}')
  return jax.random.fold_in(jax.random.key(seed), KEYS[name])


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # number of steps taken
  params: Any
  ema_params: Any
  opt_state: Any


@flax.struct.dataclass
class DistillState(TrainState):
  """The state of a distillation run (md4.distill): a TrainState whose parameters are the
  student's, with the teacher's beside them."""
  teacher_params: Any


def distills(config) -> bool:
  """Whether `config` is a distillation run: config.distill.teacher_workdir is set."""
  return bool(config.get('distill') and config.distill.get('teacher_workdir'))


def abstract_state(model, optimizer, mesh, rules, example_batch, with_teacher=False):
  """(abstract TrainState, its NamedShardings, init_params(rng) -> boxed parameters).

  Parameters shard by the logical-axis rules; the EMA and every optimizer-state leaf that
  mirrors a parameter take that parameter's sharding; scalars (counts) are replicated.
  with_teacher: a DistillState, whose teacher parameters shard as the parameters. Call
  within `sharding.active(mesh, rules)`.
  """

  def init_params(rng):
    return model.init({'params': rng, 'sample': rng, 'dropout': rng},
                      example_batch)['params']

  boxed = jax.eval_shape(init_params, jax.random.key(0))
  params, param_sh = sharding.param_shardings(boxed, mesh, rules)
  opt_state = jax.eval_shape(optimizer.init, params)
  replicated = NamedSharding(mesh, P())
  opt_sh = sharding.mirror_shardings(opt_state, params, param_sh, replicated)
  abstract = TrainState(step=jax.ShapeDtypeStruct((), np.int32), params=params,
                        ema_params=params, opt_state=opt_state)
  shardings = TrainState(step=replicated, params=param_sh, ema_params=param_sh,
                         opt_state=opt_sh)
  if with_teacher:
    abstract = DistillState(**vars(abstract), teacher_params=params)
    shardings = DistillState(**vars(shardings), teacher_params=param_sh)
  return abstract, shardings, init_params


def init_state(optimizer, init_params, shardings, rng) -> TrainState:
  """A fresh TrainState created directly in its shardings."""

  def init(rng):
    params = nn.unbox(init_params(rng))
    return TrainState(step=jax.numpy.zeros((), jax.numpy.int32), params=params,
                      ema_params=params, opt_state=optimizer.init(params))

  return jax.jit(init, out_shardings=shardings)(rng)
