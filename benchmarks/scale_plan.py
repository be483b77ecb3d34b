r"""A memory and time plan for every paper config at full size, before renting a pod.

  python benchmarks/scale_plan.py [--devices=8] [--only=MD4-S,text8] [--mfu=0.4]

For each paper experiment (md4/configs/paper.py) it builds the sharded train step that
`python md4/main.py --config=... --sharded` runs, on a simulated mesh of --devices host
devices (`--xla_force_host_platform_device_count`, the config's mesh_shape and axis_rules),
and compiles it without running it at two per-device batches. It prints two Markdown
tables:

1. Per config: parameters; per-device bytes of parameters, optimizer state and EMA (from
   their shardings); activation bytes per example (below), with and without
   `network.remat_policy=full`; model FLOPs per example counted from the parameters
   (benchmarks/flops.py: 6·N·positions plus attention) beside XLA's cost analysis.
2. Per config and accelerator (published bfloat16 dense peaks and memory, ACCELERATORS):
   the largest batch per device that fits, without and (in brackets) with remat; the step
   time at the paper's global batch over --devices such chips, at model FLOP utilisation
   --mfu of the bfloat16 peak, counting model FLOPs only (remat and microbatches, where the
   paper's batch does not fit, cost more); and the days to the paper's step count.

Memory on an accelerator = the persistent state per device (parameters, optimizer state,
EMA: exact) + the gradient and one gathered copy of the parameters (FSDP) + per example:
the residuals the forward pass saves for the backward pass (exact: JAX's autodiff under the
remat policy, measured from the backward function's arrays at batches 1 and 2) and the
loss head's transients, three copies of the logits (an estimate). XLA's CPU compilation is
printed beside it as a cross-check, but it is not an accelerator's: the CPU scheduler does
not minimise memory and keeps every layer's recomputed activations alive at once, so its
peak is several times higher and barely moves with remat. On GPUs JAX preallocates 75% of
memory by default (XLA_PYTHON_CLIENT_MEM_FRACTION raises it): the GPU rows fit within that
fraction, TPU rows within 95% of HBM.
"""

import os
import sys

_DEVICES = next((int(a.split('=', 1)[1]) for a in sys.argv if a.startswith('--devices=')), 8)
os.environ['XLA_FLAGS'] = ' '.join(
    [f for f in os.environ.get('XLA_FLAGS', '').split() if 'device_count' not in f]
    + [f'--xla_force_host_platform_device_count={_DEVICES}'])
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import math  # pylint: disable=g-import-not-at-top
import time

from absl import app
from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp

from benchmarks import flops
from benchmarks.tables import print_table
from md4 import data
from md4 import hardware
from md4 import models
from md4 import optim
from md4 import sharding
from md4 import state as state_lib
from md4 import train
from md4.configs import paper

GIB = 2**30
# Name -> (bfloat16 dense peak FLOP/s, memory bytes, usable fraction of it).
ACCELERATORS = {
    'H100 80GB': (989e12, 80 * GIB, 0.75),
    'A100 80GB': (312e12, 80 * GIB, 0.75),
    'A100 40GB': (312e12, 40 * GIB, 0.75),
    'TPU v5e': (197e12, 16 * GIB, 0.95),
    'TPU v5p': (459e12, 95 * GIB, 0.95),
}
REMATS = ('none', 'full')

_DEVICES_FLAG = flags.DEFINE_integer('devices', 8, 'Simulated devices (the mesh size).')
_ONLY = flags.DEFINE_list('only', list(paper.PAPER), 'Paper experiments to plan.')
_MFU = flags.DEFINE_float('mfu', 0.4, 'Model FLOP utilisation assumed for step times.')
_BATCHES = flags.DEFINE_list('batches', ['1', '2'], 'Two per-device batches to compile.')


def build(name, remat):
  """(config, model, optimizer, data shape) of paper experiment `name` at full size."""
  config, vocab, shape = paper.get(name)
  if remat != 'none':
    if config.network.type != 'transformer':
      return None
    config.network.remat_policy = remat
  model = models.build(config, data.DatasetInfo(vocab, shape, str, ()))
  optimizer = optim.make_optimizer(config.opt, config.num_train_steps)
  return config, model, optimizer, shape


def compiled(name, per_device):
  """(abstract state, its shardings, XLA's per-device peak bytes, XLA FLOPs per device) of
  `name`'s sharded train step at `per_device` examples per device, compiled for this CPU."""
  config, model, optimizer, shape = build(name, 'none')
  mesh, rules = sharding.setup(config, sharded=True)
  batch_sh = sharding.batch_sharding(mesh)
  with sharding.active(mesh, rules):
    abstract, shardings, _ = state_lib.abstract_state(
        model, optimizer, mesh, rules, jnp.zeros((1,) + shape, jnp.int32))
    state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                         abstract, shardings)
    step = train.jit_train_step(model, optimizer, config, shardings, batch_sh)
    batch = jax.ShapeDtypeStruct((per_device * mesh.size,) + shape, jnp.int32,
                                 sharding=batch_sh)
    exe = step.lower(state, batch, jax.random.key(0)).compile()
  mem = exe.memory_analysis()
  peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
          - mem.alias_size_in_bytes)
  cost = exe.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return state, abstract, peak, cost.get('flops', float('nan'))


def residual_bytes_per_example(name, remat):
  """Bytes the forward pass saves for the backward pass, per example (None: no remat)."""
  built = build(name, remat)
  if built is None:
    return None
  config, model, _, shape = built
  params = nn.unbox(jax.eval_shape(lambda: model.init(
      {'params': jax.random.key(0), 'sample': jax.random.key(0)},
      jnp.zeros((1,) + shape, jnp.int32)))['params'])
  loss = lambda p, x: train.loss_fn(model, p, x, jax.random.key(0), True)[0]

  def saved(batch_size):  # the backward function's arrays: residuals and parameters
    vjp = jax.eval_shape(lambda p, x: jax.vjp(loss, p, x)[1], params,
                         jax.ShapeDtypeStruct((batch_size,) + shape, jnp.int32))
    return sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(vjp))

  return saved(2) - saved(1)


def _bytes_per_device(tree):
  """Bytes one device holds of `tree` (abstract arrays with shardings)."""
  return sum(a.dtype.itemsize * math.prod(a.sharding.shard_shape(a.shape))
             for a in jax.tree.leaves(tree))


def plan(name):
  """The rows of both tables for one experiment."""
  b1, b2 = (int(b) for b in _BATCHES.value)
  start = time.time()
  state, abstract, peak1, xla_flops = compiled(name, b1)
  peak2 = compiled(name, b2)[2]
  config, vocab, shape = paper.get(name)
  per_leaf = {k: _bytes_per_device(getattr(state, k))
              for k in ('params', 'opt_state', 'ema_params')}
  full_params = sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(abstract.params))
  # Persistent state, the gradient (as the parameters) and one gathered copy of them.
  fixed = sum(per_leaf.values()) + per_leaf['params'] + full_params
  head = 3 * 4 * math.prod(shape) * vocab  # three float32 copies of the logits
  activations = {r: residual_bytes_per_example(name, r) for r in REMATS}
  per_example = {r: a + head for r, a in activations.items() if a is not None}
  model_flops = flops.per_example(abstract.params, config)
  print(f'  {name}: planned in {time.time() - start:.0f} s', flush=True)
  show = lambda r: 'n/a' if activations[r] is None else f'{activations[r] / GIB:.2f}'
  memory_row = {
      'config': name, 'parameters': f'{sum(a.size for a in jax.tree.leaves(abstract.params)):,}',
      'params / opt state / EMA GiB per device': ' / '.join(
          f'{per_leaf[k] / GIB:.3f}' for k in ('params', 'opt_state', 'ema_params')),
      'activations + head GiB per example (remat full)':
          f'{show("none")} + {head / GIB:.2f} ({show("full")} + {head / GIB:.2f})',
      'XLA CPU GiB per example': f'{(peak2 - peak1) / (b2 - b1) / GIB:.2f}',
      'GFLOP per example: model (XLA)': f'{model_flops / 1e9:,.0f} ({xla_flops / b1 / 1e9:,.0f})',
  }
  return memory_row, accelerator_rows(name, config, model_flops, fixed, per_example)


def accelerator_rows(name, config, model_flops, fixed, per_example):
  """One row: per accelerator, 'largest batch per device (with remat full) · step seconds ·
  days to the paper's steps'."""
  row = {'config': name, 'paper batch, steps':
         f'{config.batch_size}, {config.num_train_steps / 1e6:g}M'}
  per_device = config.batch_size / _DEVICES
  for accel, (peak, memory, usable) in ACCELERATORS.items():
    largest = {r: max(0, int((usable * memory - fixed) // each))
               for r, each in per_example.items()}
    step = model_flops * per_device / (peak * _MFU.value)
    row[accel] = (f'{largest["none"]} ({largest.get("full", "-")}) · {step:.2f} s ·'
                  f' {config.num_train_steps * step / 86400:.1f} d')
  return row


def main(argv):
  del argv
  unknown = set(_ONLY.value) - set(paper.PAPER)
  if unknown:
    raise app.UsageError(f'unknown experiments {sorted(unknown)}; choose from'
                         f' {list(paper.PAPER)}')
  print(f'Compiled on {hardware.describe()}; {_DEVICES} simulated devices,'
        f' `--sharded` with each config\'s mesh_shape and axis_rules;'
        f' MFU {_MFU.value:.0%} of the bfloat16 peak.\n', flush=True)
  memory, accel = [], []
  for name in _ONLY.value:
    row, accel_row = plan(name)
    memory.append(row)
    accel.append(accel_row)
  print_table(memory)
  print_table(accel)


if __name__ == '__main__':
  app.run(main)
