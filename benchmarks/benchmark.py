r"""Training and sampling speed on this machine, printed as a Markdown table.

  python benchmarks/benchmark.py [--steps=10] [--only=default,4L-256,text8]

For each shape: parameters, training tokens/s, step time, compile time (and whether the
second step compiled again), peak memory of the compiled step (XLA's buffer assignment:
arguments + outputs + temporaries), model FLOP/s and its fraction of this machine's float32
matmul peak, measured in the same run with a 2048³ matrix product. Model FLOPs count the
matrix multiplies of a training step: 6 per parameter-token of every dense layer (2 forward,
4 backward) plus 12·L·D per token per layer for attention scores and values; XLA's own count
of the compiled step is printed beside it as a check. A last table gives the time of one
reverse step when generating 16 samples of length 256 with the default sampler.
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

from md4 import data
from md4 import optim
from md4 import sampling
from md4 import train
from md4.configs.md4 import shakespeare
from md4.configs.md4 import text8

_STEPS = flags.DEFINE_integer('steps', 10, 'Timed training steps per shape.')
_ONLY = flags.DEFINE_list('only', ['default', '4L-256', 'text8'], 'Shapes to run.')
_SAMPLE_STEPS = flags.DEFINE_integer('sample_steps', 32, 'Timed reverse steps.')


def shapes():
  default = shakespeare.get_config()
  small = shakespeare.get_config()
  small.network.n_layers, small.network.num_heads, small.network.feature_dim = 4, 4, 64
  small.data.data_shape, small.batch_size = (256,), 16
  big = text8.get_config()
  big.data.dataset, big.batch_size = 'shakespeare', 8  # text8's model, offline data
  big.network.dropout_rate = 0.0
  return {'default': default, '4L-256': small, 'text8': big}


def matmul_peak(n=2048, repeats=10):
  """Best float32 FLOP/s of an n³ matrix product."""
  a = jax.random.normal(jax.random.key(0), (n, n))
  f = jax.jit(lambda a: a @ a)
  f(a).block_until_ready()
  best = min(_timed(lambda: f(a).block_until_ready()) for _ in range(repeats))
  return 2 * n**3 / best


def _timed(fn):
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def model_flops_per_token(params, config):
  """Matmul FLOPs of one training token: 6·(dense weights applied per token) + attention."""
  net = config.network
  d = net.num_heads * net.feature_dim
  seq_len = config.data.data_shape[0]
  per_token = 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    name = jax.tree_util.keystr(path)
    # Per-token dense layers; embeddings are lookups and adaLN/time layers act per example.
    if leaf.ndim == 2 and not any(k in name for k in ('embed', 'adaln', 'time_mlp')):
      per_token += leaf.size
  attention = 2 * 2 * seq_len * d * net.n_layers  # QKᵀ and PV, forward
  return 6 * per_token + 3 * attention


def bench_train(name, config, peak):
  info, splits = data.load_dataset(config.data)
  model = train.build_model(config, info)
  opt = optim.make_optimizer(config.opt, config.num_train_steps)
  mesh = train.make_mesh()
  example = jnp.zeros((1,) + info.data_shape, jnp.int32)
  _, shardings, init_params = train.state_shardings(model, opt, mesh, False, example)
  state = train.init_state(opt, init_params, shardings, jax.random.key(0))
  batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  step = train.jit_train_step(model, opt, config, shardings, batch_sharding)
  batch = jax.device_put(
      data.train_batch(splits['train'], 0, config.batch_size, 0), batch_sharding)
  rng = jax.random.key(1)

  start = time.perf_counter()
  compiled = step.lower(state, batch, rng).compile()
  compile_s = time.perf_counter() - start
  mem = compiled.memory_analysis()
  peak_bytes = (mem.argument_size_in_bytes + mem.output_size_in_bytes +
                mem.temp_size_in_bytes - mem.alias_size_in_bytes)
  xla_flops = compiled.cost_analysis().get('flops', float('nan'))

  state, metrics = step(state, batch, rng)  # compiles once (cached from lower above)
  jax.block_until_ready(metrics)
  cache_before = step._cache_size()  # pylint: disable=protected-access
  state, metrics = step(state, batch, rng)
  jax.block_until_ready(metrics)
  recompiled = step._cache_size() != cache_before  # pylint: disable=protected-access

  times = []
  for _ in range(_STEPS.value):
    start = time.perf_counter()
    state, metrics = step(state, batch, rng)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  step_s = float(np.median(times))
  tokens = config.batch_size * info.data_shape[0]
  flops = model_flops_per_token(state.params, config) * tokens
  n_params = sum(x.size for x in jax.tree.leaves(state.params))
  return {
      'shape': name,
      'params': f'{n_params / 1e6:.1f}M',
      'batch x len': f'{config.batch_size} x {info.data_shape[0]}',
      'tokens/s': f'{tokens / step_s:,.0f}',
      'step ms': f'{1e3 * step_s:.0f}',
      'compile s': f'{compile_s:.1f}' + (' (recompiled!)' if recompiled else ''),
      'peak MiB': f'{peak_bytes / 2**20:,.0f}',
      'model GFLOP/step': f'{flops / 1e9:.1f} (XLA {xla_flops / 1e9:.1f})',
      'GFLOP/s': f'{flops / step_s / 1e9:.0f}',
      'of matmul peak': f'{100 * flops / step_s / peak:.0f}%',
  }


def bench_sampling(name, config, num_samples=16, length=256):
  config.data.data_shape = (length,)
  info, _ = data.load_dataset(config.data)
  model = train.build_model(config, info)
  params = model.init({'params': jax.random.key(0), 'sample': jax.random.key(0)},
                      jnp.zeros((1, length), jnp.int32))['params']
  times = {}
  for steps in (1, 1 + _SAMPLE_STEPS.value):
    config.sampling.timesteps = steps
    gen = jax.jit(sampling.make_generate_fn(model, config.sampling))
    z = jnp.full((num_samples, length), info.vocab_size)
    gen(params, jax.random.key(0), z).block_until_ready()
    times[steps] = min(_timed(lambda: gen(params, jax.random.key(1), z).block_until_ready())
                       for _ in range(3))
  per_step = (times[1 + _SAMPLE_STEPS.value] - times[1]) / _SAMPLE_STEPS.value
  return {'shape': name, 'sampler': config.sampling.sampler,
          'samples x len': f'{num_samples} x {length}',
          'ms per reverse step': f'{1e3 * per_step:.1f}'}


def print_table(rows):
  keys = list(rows[0])
  print('| ' + ' | '.join(keys) + ' |')
  print('|' + '|'.join('---' for _ in keys) + '|')
  for row in rows:
    print('| ' + ' | '.join(str(row[k]) for k in keys) + ' |')
  print()


def main(argv):
  del argv
  peak = matmul_peak()
  print(f'Machine: {jax.devices()[0].device_kind}, {os.cpu_count()} cores, jax '
        f'{jax.__version__}; float32 matmul peak {peak / 1e9:.0f} GFLOP/s\n')
  configs = shapes()
  print_table([bench_train(n, configs[n], peak) for n in _ONLY.value])
  print_table([bench_sampling(n, shapes()[n]) for n in _ONLY.value if n != 'text8'])


if __name__ == '__main__':
  app.run(main)
