"""Sharding on 8 simulated CPU devices and across two processes.

Each check runs in a subprocess so that XLA_FLAGS can give it 8 host devices (or make it
one of two jax.distributed processes) without affecting the other tests.
"""

import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from md4 import sharding
from md4 import train
from md4.configs.md4 import shakespeare
from test_train import set_keys

ROOT = pathlib.Path(__file__).resolve().parents[1]
# The session's XLA flags (conftest.py) without any device count, then with 8 devices.
ONE = dict(os.environ, XLA_FLAGS=' '.join(
    f for f in os.environ.get('XLA_FLAGS', '').split() if 'device_count' not in f))
EIGHT = dict(ONE, XLA_FLAGS=ONE['XLA_FLAGS'] + ' --xla_force_host_platform_device_count=8')

MESHES_SCRIPT = r'''
import functools, sys
import flax.linen as nn, jax, numpy as np
sys.path.insert(0, sys.argv[1])
from test_train import tiny_config, model_and_batch
from md4 import optim, sharding, train
from md4 import state as state_lib
assert jax.device_count() == 8
config = tiny_config(**{'network.num_heads': 2, 'network.feature_dim': 16})
model, batch = model_and_batch(config, batch_size=16)
opt = optim.make_optimizer(config.opt, config.num_train_steps)
rules = tuple(config.axis_rules)
results = {}
for shape in [(1, 1, 1), (8, 1, 1), (2, 4, 1), (2, 2, 2)]:
  mesh = sharding.make_mesh(shape, jax.devices()[:int(np.prod(shape))])
  with jax.sharding.set_mesh(mesh), nn.logical_axis_rules(rules):
    _, shardings, init_params = state_lib.abstract_state(model, opt, mesh, rules, batch[:1])
    state = state_lib.init_state(opt, init_params, shardings, jax.random.key(0))
    grads_fn = jax.jit(functools.partial(train.compute_grads,
                                         functools.partial(train.loss_fn, model, train=True),
                                         num_microbatches=2),
                       out_shardings=(shardings.params, None))
    data = jax.device_put(batch, sharding.batch_sharding(mesh))
    grads, metrics = grads_fn(state.params, data, rng=jax.random.key(1))
  results[shape] = (float(metrics['loss']), jax.device_get(grads))
  # Bytes of parameters each device holds, as a fraction of all parameters.
  params = jax.tree.leaves(state.params)
  total = sum(p.size for p in params)
  held = max(sum(s.data.size for p in params for s in p.addressable_shards
                 if s.device == d) for d in mesh.devices.flat)
  print('FRACTION', shape, held / total)
  if shape == (2, 4, 1):  # FSDP over 4 devices: each holds about a quarter
    assert held / total < 1.2 / 4, held / total
ref = results[(1, 1, 1)]
for shape, (loss, grads) in results.items():
  np.testing.assert_allclose(loss, ref[0], rtol=1e-5)
  # Differently partitioned programs sum in different orders; on CPUs with AMX the config
  # rounds products' inputs to bfloat16, where such a difference can flip a rounding.
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref[1])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
print('OK')
'''


def test_meshes_give_the_same_loss_and_gradients():
  """(8,1,1), (2,4,1), (2,2,2) against one device; FSDP over 4 holds ~1/4 per device."""
  proc = subprocess.run([sys.executable, '-c', MESHES_SCRIPT, str(ROOT / 'tests')],
                        env=EIGHT, capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'OK' in proc.stdout, proc.stdout


RESTORE_SCRIPT = r'''
import sys
import flax.linen as nn, jax, numpy as np
sys.path.insert(0, sys.argv[1])
from test_train import tiny_config, model_and_batch
import orbax.checkpoint as ocp
from md4 import checkpoint, optim, sharding, train
from md4 import state as state_lib
config = tiny_config(**{'network.num_heads': 2, 'network.feature_dim': 16})
model, batch = model_and_batch(config, batch_size=16)
opt = optim.make_optimizer(config.opt, config.num_train_steps)
rules = tuple(config.axis_rules)
manager = checkpoint.make_manager(sys.argv[2], config.keep_checkpoints)
states = {}
for shape in [(2, 2, 2), (1, 1, 1), (1, 4, 2)]:
  mesh = sharding.make_mesh(shape, jax.devices()[:int(np.prod(shape))])
  with jax.sharding.set_mesh(mesh), nn.logical_axis_rules(rules):
    abstract, shardings, init_params = state_lib.abstract_state(model, opt, mesh, rules,
                                                                batch[:1])
    state = checkpoint.restore_or_init(
        manager, abstract, shardings,
        lambda: state_lib.init_state(opt, init_params, shardings, jax.random.key(0)))
    if shape == (2, 2, 2):  # train and save on 8 devices, sharded
      step = train.jit_train_step(model, opt, config, shardings, sharding.batch_sharding(mesh))
      for _ in range(2):
        state, _ = step(state, jax.device_put(batch, sharding.batch_sharding(mesh)),
                        jax.random.key(1))
      manager.save(2, args=ocp.args.StandardSave(state))
      manager.wait_until_finished()
  assert int(state.step) == 2
  leaf = state.params['network']['block_0']['attention']['wq']
  assert leaf.sharding.mesh.shape == mesh.shape, leaf.sharding
  states[shape] = jax.device_get(state)
for shape, s in states.items():
  for a, b in zip(jax.tree.leaves(s), jax.tree.leaves(states[(2, 2, 2)])):
    np.testing.assert_array_equal(a, b)
print('OK')
'''


def test_checkpoint_saved_on_one_mesh_restores_on_another(tmp_path):
  proc = subprocess.run(
      [sys.executable, '-c', RESTORE_SCRIPT, str(ROOT / 'tests'), str(tmp_path)],
      env=EIGHT, capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'OK' in proc.stdout, proc.stdout


def test_make_mesh_resolves_and_rejects_shapes():
  devices = jax.devices()[:1] * 1
  assert dict(sharding.make_mesh((1, -1, 1), devices).shape) == {
      'data': 1, 'fsdp': 1, 'tensor': 1}
  with pytest.raises(ValueError, match='remaining devices'):
    sharding.make_mesh((-1, -1, 1), devices)
  with pytest.raises(ValueError, match='does not use the 1 devices'):
    sharding.make_mesh((2, 1, 1), devices)
  with pytest.raises(ValueError, match='sizes of'):
    sharding.make_mesh((1, 1), devices)


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


OVERRIDES = {'data.data_shape': (32,), 'network.n_layers': 1, 'network.num_heads': 2,
             'network.feature_dim': 8, 'batch_size': 8, 'eval_batch_size': 256,
             'num_train_steps': 3, 'eval_every_steps': 3, 'sample_every_steps': 3,
             'sampling.timesteps': 4, 'sampling.num_samples': 2, 'eval_repeats': 1}


def _config():
  return set_keys(shakespeare.get_config(), OVERRIDES)


def _cli(workdir, env, *flags):
  overrides = [f'--config.{k}={v}'.replace(' ', '') for k, v in OVERRIDES.items()]
  return subprocess.Popen(
      [sys.executable, 'md4/main.py', '--config=md4/configs/md4/shakespeare.py',
       f'--workdir={workdir}', *overrides, *flags],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _final_eval(stdout):
  """{'valid_loss': ..., 'test_loss': ...} from the run's last line."""
  summary = stdout.strip().splitlines()[-1].split('): ')[1]
  return {k: float(v) for k, v in (kv.split('=') for kv in summary.split(', '))}


def _restore_params(workdir, step):
  """The parameters of a run's checkpoint at `step`, restored onto this one device."""
  path = workdir / 'checkpoints' / str(step) / 'default'
  checkpointer = ocp.StandardCheckpointer()
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                        checkpointer.metadata(path).item_metadata)
  return jax.tree.leaves(checkpointer.restore(path, target)['params'])


def test_two_processes_match_one_process_on_the_same_global_batch(tmp_path):
  """Two jax.distributed CPU processes, one device each, each loading half the batch."""
  port = _free_port()
  procs = [_cli(tmp_path / 'two', ONE, f'--coordinator_address=localhost:{port}',
                '--num_processes=2', f'--process_id={i}') for i in range(2)]
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  assert outs[0][0].strip().splitlines()[-1].startswith('Final eval at step 3')
  assert 'Final eval' not in outs[1][0]  # only process 0 reports
  # The same run in this process: one device, the whole batch.
  single = train.train_and_evaluate(_config(), str(tmp_path / 'one'))
  two = _final_eval(outs[0][0])
  assert {k: v for k, v in single.items() if k in two} == pytest.approx(two, rel=1e-4)
  # Two programs: on CPUs with AMX, Muon's bfloat16 Newton-Schulz products can round
  # differently, moving an update element (~1e-4 in these first steps) by about 1%.
  for a, b in zip(_restore_params(tmp_path / 'two', 3), _restore_params(tmp_path / 'one', 3)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=5e-6)


def test_axis_rules_must_name_mesh_axes():
  config = shakespeare.get_config()
  config.axis_rules = (('batch', ('data', 'fsdp')), ('embed', 'model'))
  with pytest.raises(ValueError, match="'embed' to unknown mesh axes \\['model'\\]"):
    sharding.setup(config, sharded=True)
  mesh, rules = sharding.setup(shakespeare.get_config(), sharded=False)
  assert rules == sharding.DATA_PARALLEL_RULES and mesh.shape['data'] == jax.device_count()
