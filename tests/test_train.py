"""The train loop: microbatching, EMA and schedules, resume, devices, the CLI."""

import functools
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import sysconfig

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from md4 import checkpoint
from md4 import data
from md4 import evaluation
from md4 import models
from md4 import reporting
from md4 import sharding
from md4 import train
from md4.configs.md4 import shakespeare

ROOT = pathlib.Path(__file__).resolve().parents[1]


# What tiny_config changes, as dotted keys (cli_args passes them to md4/main.py as flags).
TINY = {
    'data.data_shape': (32,), 'network.n_layers': 1, 'network.num_heads': 2,
    'network.feature_dim': 8, 'batch_size': 8, 'eval_batch_size': 512,
    'num_train_steps': 6, 'opt.warmup_steps': 2, 'log_every_steps': 2,
    'eval_every_steps': 3, 'sample_every_steps': 6, 'checkpoint_every_steps': 3,
    'keep_checkpoints': 5, 'sampling.timesteps': 4, 'sampling.num_samples': 2,
    'eval_repeats': 1,
}


def tiny_config(config=None, **overrides):
  """A config (default: Shakespeare's) shrunk to run in seconds."""
  config = shakespeare.get_config() if config is None else config
  return set_keys(config, {**TINY, **overrides})


def set_keys(config, overrides):
  """Sets dotted keys ('network.n_layers': 1, ...) in config, as --config.KEY=VALUE would."""
  for key, value in overrides.items():
    section = config
    *path, last = key.split('.')
    for p in path:
      section = section[p]
    section[last] = value
  return config


def model_and_batch(config, batch_size=8):
  info, splits = data.load_dataset(config.data)
  model = models.build(config, info)
  batch = jnp.asarray(data.train_batch(splits['train'], 0, batch_size, 0))
  return model, batch


def test_microbatched_gradient_equals_full_batch_gradient():
  config = tiny_config()
  model, batch = model_and_batch(config)
  params = model.init({'params': jax.random.key(0), 'sample': jax.random.key(0)},
                      batch)['params']
  params = jax.tree.map(lambda p: p + 0.01, params)  # leave the zero init
  rng = jax.random.key(5)
  m = 4
  loss = functools.partial(train.loss_fn, model, train=True)
  grads, metrics = jax.jit(train.compute_grads, static_argnums=(0, 4))(
      loss, params, batch, rng, m)

  # Independently: one gradient of the mean over all examples, microbatch i's losses
  # drawn with key fold_in(rng, i), exactly as the accumulation promises.
  def full_loss(params):
    mbs = train.split_microbatches(batch, m)
    losses = [train.loss_fn(model, params, mbs[i], jax.random.fold_in(rng, i), True)[0]
              for i in range(m)]
    return jnp.mean(jnp.stack(losses))

  loss, want = jax.jit(jax.value_and_grad(full_loss))(params)
  # Two programs (a scan over microbatches, and four unrolled), so float32 sums run in
  # different orders; where the CPU has AMX the config rounds the products' inputs to
  # bfloat16, and such a difference can flip one rounding (a 4e-3 change of one term).
  scale = max(float(jnp.abs(w).max()) for w in jax.tree.leaves(want))
  for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=2e-4, atol=1e-5 * scale)
  np.testing.assert_allclose(metrics['loss'], loss, rtol=1e-5)
  # Each microbatch takes rows i, i+m, ...: all rows are used once.
  mbs = train.split_microbatches(batch, m)
  np.testing.assert_array_equal(np.sort(np.asarray(mbs).reshape(-1, 32), 0),
                                np.sort(np.asarray(batch), 0))


def test_nan_check_names_the_first_non_finite_step_and_metric(tmp_path):
  manager = checkpoint.make_manager(str(tmp_path), 5)
  finite = {'loss': jnp.float32(1.0), 'grad_norm': jnp.float32(2.0)}
  reporting.check_finite(5, [finite, finite], manager)
  history = [finite, {'loss': jnp.float32(1.0), 'grad_norm': jnp.float32(np.inf)},
             {'loss': jnp.float32(np.nan), 'grad_norm': jnp.float32(np.nan)}]
  with pytest.raises(FloatingPointError,
                     match="'grad_norm' is inf at step 6; .*No checkpoint was saved"):
    reporting.check_finite(5, history, manager)


@pytest.mark.parametrize('key,value,match', [
    ('batch_size', 10, 'divisible by num_microbatches'),
    ('num_train_steps', 0, 'num_train_steps'),
    ('opt.ema_rate', 1.0, 'ema_rate'),
    ('eval_repeats', 0, 'eval_repeats must be >= 1'),
])
def test_bad_config_values(key, value, match):
  config = tiny_config(**{'num_microbatches': 4, key: value})
  with pytest.raises(ValueError, match=match):
    train.validate_config(config, 1)


def test_eval_repeats_average_independent_draws():
  """eval_repeats=3 is the mean of three single-draw evals per batch, with keys i·3 + r."""
  config = tiny_config(**{'eval_batch_size': 16})
  info, splits = data.load_dataset(config.data)
  model = models.build(config, info)
  mesh = sharding.make_mesh()
  params = model.init({'params': jax.random.key(0), 'sample': jax.random.key(1)},
                      jnp.zeros((2,) + info.data_shape, jnp.int32))['params']
  params = jax.tree.map(  # a non-zero output layer, so that the loss depends on the masks
      lambda p: p + 0.3 * jax.random.normal(jax.random.key(4), p.shape), params)
  splits = {s: splits[s][:32] for s in info.eval_splits}  # two batches per split
  eval_fn = jax.jit(lambda p, b, r: evaluation.eval_step(model, p, b, r))
  rng = jax.random.key(3)
  repeated = evaluation.Evaluator(model, mesh, 16, 3)(params, splits, rng)
  for split in info.eval_splits:
    single = [float(eval_fn(params, jnp.asarray(splits[split][16 * i:16 * (i + 1)]),
                            jax.random.fold_in(rng, 3 * i + r))['loss'])
              for i in range(2) for r in range(3)]
    assert repeated[f'{split}_loss'] == pytest.approx(np.mean(single), rel=1e-5)
    assert np.std(single) > 0  # the draws differ


def _restore(directory, step):
  with ocp.CheckpointManager(directory) as manager:
    return manager.restore(step)


def test_resume_continues_exactly(tmp_path):
  config = tiny_config(**{'network.dropout_rate': 0.1, 'num_microbatches': 2})
  full = tmp_path / 'full'
  train.train_and_evaluate(config, str(full))
  final = _restore(full / 'checkpoints', 6)

  # A run killed after its step-3 checkpoint: keep only that one, then restart.
  killed = tmp_path / 'killed'
  shutil.copytree(full / 'checkpoints' / '3', killed / 'checkpoints' / '3')
  train.train_and_evaluate(config, str(killed))
  resumed = _restore(killed / 'checkpoints', 6)
  for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(a, b)
  assert int(resumed['step']) == 6
  # A different model in the same workdir is refused with a message saying what to do.
  with pytest.raises(ValueError, match='does not match the state of this config'):
    train.train_and_evaluate(tiny_config(**{'network.n_layers': 2}), str(killed))


def test_train_writes_metrics_samples_and_checkpoints(tmp_path):
  config = tiny_config()
  result = train.train_and_evaluate(config, str(tmp_path))
  records = [json.loads(l) for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in records] == [2, 3, 4, 6]
  assert list(records[0])[0] == 'step'
  for key in ('loss', 'loss_diff', 'loss_recon', 'loss_prior', 'grad_norm', 'learning_rate'):
    assert key in records[0]
  for split in ('valid', 'test'):
    assert f'{split}_loss' in records[1] and f'{split}_loss' in records[-1]
    assert result[f'{split}_loss'] == pytest.approx(records[-1][f'{split}_loss'])
  samples = (tmp_path / 'samples' / 'step_00000006.txt').read_text()
  assert len(samples) > 2 * 32
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['3', '6']
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(tmp_path))


def cli_args(workdir, **overrides):
  """The command line of md4/main.py training tiny_config(**overrides) in workdir."""
  flags = [f'--config.{k}={v if isinstance(v, str) else repr(v)}'
           for k, v in {**TINY, **overrides}.items()]
  return [sys.executable, 'md4/main.py', '--config=md4/configs/md4/shakespeare.py',
          f'--workdir={workdir}', *flags]


def _cli(workdir, *flags):
  return subprocess.run(
      cli_args(workdir, num_train_steps=3, eval_every_steps=3, sample_every_steps=3) +
      list(flags), cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_cli_end_to_end(tmp_path):
  proc = _cli(tmp_path / 'run', '--sharded')
  assert proc.returncode == 0, proc.stderr[-3000:]
  *_, progress, last = proc.stdout.strip().splitlines()
  assert re.fullmatch(r'step 3/3 \| [0-9.]+ steps/s \| loss \d+\.\d{4}', progress), progress
  assert last.startswith('Final eval at step 3') and 'valid_loss=' in last
  assert (tmp_path / 'run' / 'samples' / 'step_00000003.txt').exists()


def test_cli_rejects_unknown_key_and_bad_value(tmp_path):
  proc = _cli(tmp_path / 'a', '--config.opt.learning_rat=0.1')
  assert proc.returncode != 0 and 'learning_rat' in proc.stderr
  proc = _cli(tmp_path / 'b', '--config.model.noise_schedule=quadratic')
  assert proc.returncode != 0 and "unknown masking schedule 'quadratic'" in proc.stderr


def test_cpu_run_says_how_to_preload_mimalloc():
  """The warning appears unless mimalloc is preloaded and set to keep freed memory."""
  lib = os.path.join(sysconfig.get_paths()['purelib'], 'cmeel.prefix', 'lib',
                     'libmimalloc.so.3')
  code = ('from absl import logging; from md4 import hardware; logging.use_absl_handler();'
          ' hardware.warn_without_mimalloc()')
  env = {k: v for k, v in os.environ.items()
         if k not in ('LD_PRELOAD', 'MIMALLOC_PURGE_DELAY')}
  run = lambda env: subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=env,
                                   capture_output=True, text=True, timeout=120)
  without = run(env)
  assert without.returncode == 0, without.stderr[-2000:]
  hint = f'MIMALLOC_PURGE_DELAY=-1 LD_PRELOAD={lib}'
  assert hint in without.stderr
  assert hint in run({**env, 'LD_PRELOAD': lib}).stderr  # preloaded, but purging
  with_lib = run({**env, 'LD_PRELOAD': lib, 'MIMALLOC_PURGE_DELAY': '-1'})
  assert with_lib.returncode == 0, with_lib.stderr[-2000:]
  assert 'mimalloc' not in with_lib.stderr
