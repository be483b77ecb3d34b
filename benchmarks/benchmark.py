r"""Training and sampling speed against the hardware's limit, printed as Markdown tables.

  python benchmarks/benchmark.py                    # this CPU: default, 4L-256, text8
  python benchmarks/benchmark.py --only=md4-s --dtype=bfloat16 --batch=64 --sweep  # a GPU
  python benchmarks/benchmark.py --only=text8 --mesh=1,-1,1   # FSDP over every device

Data are random tokens of each shape's vocabulary, so no data set is needed. For each shape:
parameters, tokens/s per device, step time, compile time, peak device memory of the
compiled step (XLA's buffer assignment: arguments + outputs + temporaries - donated
aliases), model FLOPs per token, counted (6 per parameter-token of every dense layer applied
per token, i.e. 2 forward + 4 backward, plus 12·L·D per token per layer for attention scores
and values) and as XLA's cost analysis counts them, achieved FLOP/s, and that as a fraction
of this device's peak (model FLOP utilisation, MFU). The peak is the best rate of a large
matrix product in the dtype of the model's products, measured just before and just after
each row's timed steps (the larger of the two), so that a shared machine's load moves both
alike. Each
shape's step uses its config's optimizer: Muon for the default (its Newton-Schulz products
are not model FLOPs, so they lower MFU), AdamW for 4L-256 and text8.

--sweep adds, for each sequence length in --sweep_lengths with and without remat, the
largest batch whose compiled step fits in the device's memory (found from the compiled
memory of two batch sizes, which grows linearly in the batch, then confirmed by running
steps at that batch) and the speed there. The last table times one reverse sampling step.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import flops
from benchmarks.tables import print_row, print_table
from md4 import data
from md4 import hardware
from md4 import models
from md4 import optim
from md4 import sampling
from md4 import sharding
from md4 import state as state_lib
from md4 import train
from md4.configs.md4 import shakespeare
from md4.configs.md4 import text8
from md4.networks import matmul

_ONLY = flags.DEFINE_list('only', ['default', '4L-256', 'text8'], 'Shapes to run.')
_STEPS = flags.DEFINE_integer('steps', 10, 'Timed training steps per shape.')
_BATCH = flags.DEFINE_integer('batch', None, 'Global batch size (default: the shape\'s).')
_SEQ_LEN = flags.DEFINE_integer('seq_len', None, 'Sequence length (default: the shape\'s).')
_DTYPE = flags.DEFINE_enum('dtype', None, ['float32', 'bfloat16'], 'Compute dtype.')
_MATMUL_DTYPE = flags.DEFINE_enum('matmul_dtype', None, ['float32', 'bfloat16'],
                                  'network.matmul_dtype: operands of the dense products.')
_REMAT = flags.DEFINE_string('remat', None, 'network.remat_policy.')
_SCAN = flags.DEFINE_bool('scan', None, 'network.scan_layers.')
_ATTENTION = flags.DEFINE_string('attention', None, 'network.attention_impl.')
_MESH = flags.DEFINE_list('mesh', None, 'data,fsdp,tensor sizes (-1: the rest); shards '
                          'parameters by the config\'s axis_rules. Default: data parallel.')
_SWEEP = flags.DEFINE_bool('sweep', False, 'Largest batch per length, with/without remat.')
_SWEEP_LENGTHS = flags.DEFINE_list('sweep_lengths', ['256', '1024', '4096'], 'For --sweep.')
_MEMORY_GB = flags.DEFINE_float(
    'memory_gb', None, 'Device memory for --sweep (default: the device\'s limit; 16 on CPU).')
_SAMPLE_STEPS = flags.DEFINE_integer('sample_steps', 32, 'Timed reverse steps (0: none).')


def shapes():
  """Name -> (config, vocabulary size)."""
  default = shakespeare.get_config()
  small = shakespeare.get_config()
  small.network.n_layers, small.network.num_heads, small.network.feature_dim = 4, 4, 64
  small.data.data_shape, small.batch_size = (256,), 16
  small.opt.optimizer = 'adamw'  # the original's optimizer: MFU of the model's own step
  small.network.matmul_dtype = ''  # float32 products, against the float32 peak
  big = text8.get_config()
  big.batch_size, big.network.dropout_rate, big.network.dtype = 8, 0.0, 'float32'
  md4_s = text8.get_config()  # MD4-S: text8's 12 x 768 network on GPT-2 tokens
  md4_s.data.data_shape, md4_s.batch_size = (1024,), 32
  md4_s.network.dropout_rate = 0.0
  return {'default': (default, 84), 'default-amx': (shakespeare.get_config('amx'), 84),
          '4L-256': (small, 84), 'text8': (big, 27),
          'md4-s': (md4_s, 50257)}


def apply_flags(config):
  for value, section, key in ((_BATCH.value, config, 'batch_size'),
                              (_DTYPE.value, config.network, 'dtype'),
                              (_MATMUL_DTYPE.value, config.network, 'matmul_dtype'),
                              (_REMAT.value, config.network, 'remat_policy'),
                              (_SCAN.value, config.network, 'scan_layers'),
                              (_ATTENTION.value, config.network, 'attention_impl')):
    if value is not None:
      section[key] = value
  if _SEQ_LEN.value:
    config.data.data_shape = (_SEQ_LEN.value,)
  config.num_microbatches = 1
  return config


def mesh_and_rules(config):
  if _MESH.value is None:
    return sharding.make_mesh(), sharding.DATA_PARALLEL_RULES
  config.mesh_shape = tuple(int(s) for s in _MESH.value)
  return sharding.setup(config, sharded=True)


def matmul_peak(dtype):
  """Best FLOP/s of one device's n³ matrix product in `dtype` (n = 8192 on accelerators),
  accumulated in float32 as the model's products are (md4.networks.matmul)."""
  n = 2048 if jax.default_backend() == 'cpu' else 8192
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  f = jax.jit(lambda a: matmul.float32_matmul(a, a))
  f(a).block_until_ready()
  best = min(_timed(lambda: f(a).block_until_ready()) for _ in range(10))
  return 2 * n**3 / best


def _timed(fn):
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


class Step:
  """A shape's jitted train step on a mesh, compiled for one batch size."""

  def __init__(self, config, vocab_size, mesh, rules):
    self.config, self.mesh, self.rules = config, mesh, rules
    self.info = data.DatasetInfo(vocab_size, tuple(config.data.data_shape), str, ())
    self.model = models.build(config, self.info)
    self.opt = optim.make_optimizer(config.opt, config.num_train_steps)
    example = jnp.zeros((1,) + self.info.data_shape, jnp.int32)
    with self.context():
      self.abstract, self.shardings, self.init_params = state_lib.abstract_state(
          self.model, self.opt, mesh, rules, example)
      self.fn = train.jit_train_step(self.model, self.opt, config, self.shardings,
                                     sharding.batch_sharding(mesh))

  def context(self):
    return sharding.active(self.mesh, self.rules)

  def batch_struct(self, batch_size):
    return jax.ShapeDtypeStruct((batch_size,) + self.info.data_shape, jnp.int32,
                                sharding=sharding.batch_sharding(self.mesh))

  def compile(self, batch_size):
    """(compiled, seconds, peak bytes per device, XLA FLOPs per step)."""
    state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                         self.abstract, self.shardings)
    start = time.perf_counter()
    with self.context():
      compiled = self.fn.lower(state, self.batch_struct(batch_size),
                               jax.random.key(1)).compile()
    seconds = time.perf_counter() - start
    mem = compiled.memory_analysis()
    peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes -
            mem.alias_size_in_bytes)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return compiled, seconds, peak, cost.get('flops', float('nan'))

  def time(self, compiled, batch_size, steps):
    """(median step seconds, parameters) of `steps` runs of `compiled` after a warm-up."""
    with self.context():
      state = state_lib.init_state(self.opt, self.init_params, self.shardings,
                                   jax.random.key(0))
      tokens = jax.random.randint(jax.random.key(2), (batch_size,) + self.info.data_shape,
                                  0, self.info.vocab_size)
      batch = jax.device_put(tokens, sharding.batch_sharding(self.mesh))
      rng = jax.random.key(1)
      state, metrics = compiled(state, batch, rng)
      jax.block_until_ready(metrics)
      times = []
      for _ in range(steps):
        start = time.perf_counter()
        state, metrics = compiled(state, batch, rng)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    return float(np.median(times)), state.params


def speed_row(name, step, batch_size, compiled_info=None):
  compiled, compile_s, peak_bytes, xla_flops = compiled_info or step.compile(batch_size)
  dtype = jnp.dtype(step.config.network.matmul_dtype or step.config.network.dtype)
  peak_flops = matmul_peak(dtype)
  step_s, params = step.time(compiled, batch_size, _STEPS.value)
  peak_flops = max(peak_flops, matmul_peak(dtype))
  seq_len = step.info.data_shape[0]
  tokens = batch_size * seq_len
  n_dev = step.mesh.size
  per_token = flops.per_example(params, step.config) / seq_len
  flops_per_device = per_token * tokens / n_dev
  return {
      'shape': name,
      'params': f'{sum(x.size for x in jax.tree.leaves(params)) / 1e6:.1f}M',
      'batch x len': f'{batch_size} x {seq_len}',
      'dtype (products) / remat': f'{_dtypes(step.config.network)} / '
                                  f'{step.config.network.remat_policy}',
      'tokens/s/device': f'{tokens / step_s / n_dev:,.0f}',
      'step ms': f'{1e3 * step_s:.1f}',
      'compile s': f'{compile_s:.1f}',
      'peak GiB/device': f'{peak_bytes / 2**30:.2f}',
      'model GFLOP/token (XLA)': f'{per_token / 1e9:.3f} ({xla_flops / tokens / 1e9:.3f})',
      'TFLOP/s/device': f'{flops_per_device / step_s / 1e12:.2f}',
      'peak TFLOP/s': f'{peak_flops / 1e12:.2f}',
      'MFU': f'{100 * flops_per_device / step_s / peak_flops:.1f}%',
  }


def _dtypes(network):
  """'float32', or 'float32 (bfloat16)' when the products' operands differ."""
  products = network.matmul_dtype
  return network.dtype + (f' ({products})' if products not in ('', network.dtype) else '')


def device_memory():
  if _MEMORY_GB.value:
    return _MEMORY_GB.value * 2**30
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get('bytes_limit', 16 * 2**30)


def largest_batch(step, limit):
  """Largest batch (a multiple of 8 per device) whose compiled step fits in `limit` bytes,
  with its compilation; None if even the smallest does not fit."""
  unit = 8 * sharding.batch_shards(step.mesh)
  infos = {b: step.compile(b) for b in (unit, 2 * unit)}
  if infos[unit][2] > limit:
    return None
  peaks = {b: info[2] for b, info in infos.items()}
  per_example = (peaks[2 * unit] - peaks[unit]) / unit
  fixed = peaks[unit] - per_example * unit
  batch = max(unit, int((limit - fixed) / per_example) // unit * unit)
  while batch > unit:
    info = step.compile(batch)
    if info[2] <= limit:
      return batch, info
    batch -= unit * max(1, batch // unit // 10)
  return unit, infos[unit]


def sweep_rows(name, vocab_size):
  rows = []
  limit = device_memory()
  for seq_len in (int(s) for s in _SWEEP_LENGTHS.value):
    for remat in ('none', 'full'):
      config = apply_flags(shapes()[name][0])
      config.data.data_shape = (seq_len,)
      config.network.remat_policy = remat
      mesh, rules = mesh_and_rules(config)
      step = Step(config, vocab_size, mesh, rules)
      found = largest_batch(step, limit)
      if found is None:
        rows.append({'shape': name, 'batch x len': f'none fits x {seq_len}',
                     'dtype (products) / remat': f'{_dtypes(config.network)} / {remat}'})
      else:
        batch, info = found
        try:
          rows.append(speed_row(name, step, batch, info))
        except jax.errors.JaxRuntimeError as e:  # out of memory despite the estimate
          rows.append({'shape': name, 'batch x len': f'{batch} x {seq_len}',
                       'dtype (products) / remat': f'{_dtypes(config.network)} / {remat}',
                       'MFU': f'failed to run: {str(e)[:100]}'})
      print_row(rows[-1])
  return rows


def bench_sampling(name, config, vocab_size, num_samples=16, length=256):
  config.data.data_shape = (length,)
  info = data.DatasetInfo(vocab_size, (length,), str, ())
  model = models.build(config, info)
  params = model.init({'params': jax.random.key(0), 'sample': jax.random.key(0)},
                      jnp.zeros((1, length), jnp.int32))['params']
  times = {}
  for steps in (1, 1 + _SAMPLE_STEPS.value):
    config.sampling.timesteps = steps
    gen = jax.jit(sampling.make_sampler(model, config.sampling))
    z = jnp.full((num_samples, length), vocab_size)
    jax.block_until_ready(gen(params, jax.random.key(0), z))
    times[steps] = min(_timed(lambda: jax.block_until_ready(gen(params, jax.random.key(1), z)))
                       for _ in range(3))
  per_step = (times[1 + _SAMPLE_STEPS.value] - times[1]) / _SAMPLE_STEPS.value
  return {'shape': name, 'sampler': config.sampling.sampler,
          'samples x len': f'{num_samples} x {length}',
          'ms per reverse step': f'{1e3 * per_step:.1f}'}


def main(argv):
  del argv
  all_shapes = shapes()
  for name in _ONLY.value:
    if name not in all_shapes:
      raise app.UsageError(f'unknown shape {name!r}; choose from {sorted(all_shapes)}')
  device = jax.devices()[0]
  print(f'Machine: {hardware.describe()}\n', flush=True)
  rows = []
  for name in _ONLY.value:
    config, vocab_size = all_shapes[name]
    config = apply_flags(config)
    mesh, rules = mesh_and_rules(config)
    step = Step(config, vocab_size, mesh, rules)
    rows.append(speed_row(name, step, config.batch_size))
  print_table(rows)
  if _SWEEP.value:
    for name in _ONLY.value:
      vocab_size = all_shapes[name][1]
      print(f'Largest batch in {device_memory() / 2**30:.1f} GiB per device ({name}):')
      print_table(sweep_rows(name, vocab_size))
  if _SAMPLE_STEPS.value:
    print_table([bench_sampling(n, *all_shapes[n]) for n in _ONLY.value])


if __name__ == '__main__':
  app.run(main)
