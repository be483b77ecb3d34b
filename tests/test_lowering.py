"""Every paper config's sharded train step, eval step and sampler lower for GPUs and TPUs.

jax.export traces each program on this CPU host, with the shardings of `--sharded` on 8
simulated devices, and lowers it for platforms 'cuda' and 'tpu' at once. A program that
uses a CPU-only piece or an API missing on those platforms fails here, not on a rented
pod. Each config runs at a tiny size (md4.configs.paper.tiny) in a subprocess that has 8
host devices.
"""

import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

from md4.networks import matmul

ROOT = pathlib.Path(__file__).resolve().parents[1]
EIGHT = dict(os.environ, XLA_FLAGS=' '.join(
    [f for f in os.environ.get('XLA_FLAGS', '').split() if 'device_count' not in f]
    + ['--xla_force_host_platform_device_count=8']))

LOWERING_SCRIPT = r'''
import functools
import jax, jax.numpy as jnp
from jax import export
from md4 import data, evaluation, models, optim, sampling, sharding, train
from md4 import state as state_lib
from md4.configs import paper
assert jax.device_count() == 8
PLATFORMS = ('cuda', 'tpu')
abstract_like = lambda tree, sh: jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, sh)
for name in paper.PAPER:
  config, vocab, _ = paper.get(name)
  config = paper.tiny(config)
  shape = tuple(config.data.data_shape)
  info = data.DatasetInfo(vocab, shape, str, ('valid',))
  model = models.build(config, info)
  opt = optim.make_optimizer(config.opt, config.num_train_steps)
  mesh, rules = sharding.setup(config, sharded=True)
  batch_sh = sharding.batch_sharding(mesh)
  with sharding.active(mesh, rules):
    abstract, sh, _ = state_lib.abstract_state(model, opt, mesh, rules,
                                               jnp.zeros((1,) + shape, jnp.int32))
    state = abstract_like(abstract, sh)
    batch = jax.ShapeDtypeStruct((16,) + shape, jnp.int32, sharding=batch_sh)
    key = jax.random.key(0)
    step = train.jit_train_step(model, opt, config, sh, batch_sh)
    evaluate = jax.jit(functools.partial(evaluation.eval_step, model),
                       in_shardings=(sh.params, batch_sh, None))
    sampler = sampling.make_sampler(model, config.sampling)
    chain_state = jax.eval_shape(sampler.start, state.params, key, batch)
    advance = jax.jit(lambda p, k, z, s, n: sampler.advance(p, k, z, None, s, n),
                      in_shardings=(sh.params, None, batch_sh, None, None))
    lowered = {
        'train': export.export(step, platforms=PLATFORMS)(state, batch, key),
        'eval': export.export(evaluate, platforms=PLATFORMS)(state.params, batch, key),
        'sample': export.export(advance, platforms=PLATFORMS)(
            state.params, key, batch, chain_state, jnp.int32(1)),
    }
  for what, e in lowered.items():
    assert e.platforms == PLATFORMS and e.nr_devices == 8, (name, what)
    assert e.mlir_module_serialized
    if what != 'train':  # the train state's optax nodes have no serialization registered
      export.deserialize(e.serialize())  # a complete, portable artifact
    print('LOWERED', name, what, flush=True)
print('OK')
'''


def test_paper_configs_lower_for_cuda_and_tpu():
  proc = subprocess.run([sys.executable, '-c', LOWERING_SCRIPT], env=EIGHT, cwd=ROOT,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.count('LOWERED') == 24 and 'OK' in proc.stdout, proc.stdout


def test_cpu_only_products_stay_on_cpus():
  """The CPU's one concatenated product for q, k and v is chosen where the program is
  lowered: a GPU or TPU program keeps one product per kernel (and its sharding)."""
  x = jax.ShapeDtypeStruct((4, 8), jnp.float32)
  kernels = [jax.ShapeDtypeStruct((8, 8), jnp.float32)] * 3
  project = lambda x, *ks: matmul.project(x, list(ks), jnp.float32, jnp.float32)
  products = {p: jax.export.export(jax.jit(project), platforms=(p,))(x, *kernels)
              .mlir_module().count('stablehlo.dot_general') for p in ('cpu', 'cuda', 'tpu')}
  assert products == {'cpu': 1, 'cuda': 3, 'tpu': 3}
  rng = np.random.default_rng(0)
  x, *ks = (jnp.asarray(rng.normal(size=s.shape), jnp.float32) for s in [x] + kernels)
  for got, k in zip(jax.jit(project)(x, *ks), ks):  # and on this CPU the same products
    np.testing.assert_allclose(got, x @ k, rtol=1e-5, atol=1e-5)
