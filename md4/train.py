"""Training and evaluation: one jitted loop for one device or a mesh of many.

Data flows config -> (dataset, model, optimizer, mesh) -> `train_step` under `jax.jit` with
`NamedSharding`s -> metrics, checkpoints and samples in the workdir. The mesh has axes
(data, fsdp, tensor). By default every device is on 'data' and parameters are replicated;
with `sharded=True` the mesh takes `config.mesh_shape` and parameters, optimizer state and
activations shard by `config.axis_rules`, which map the networks' logical axis names to mesh
axes. The batch always splits over data x fsdp. Randomness is a pure function of (seed,
step), and so is the data, so a run restarted from a checkpoint continues exactly.
"""

import functools
import json
import math
import os
import sysconfig
import time
from typing import Any

from absl import logging
import flax
import flax.linen as nn
import jax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from md4 import configs
from md4 import data
from md4.data import images
from md4 import models
from md4 import networks
from md4 import optim
from md4 import sampling

MESH_AXES = ('data', 'fsdp', 'tensor')
BATCH_AXES = ('data', 'fsdp')  # the batch dimension splits over both
# Logical axis -> mesh axes without --sharded: only the batch splits.
DATA_PARALLEL_RULES = (('batch', BATCH_AXES),)


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # number of steps taken
  params: Any
  ema_params: Any
  opt_state: Any


def mimalloc_preloaded() -> bool:
  """Whether this process runs with mimalloc (LD_PRELOAD) instead of glibc's malloc."""
  if not os.path.exists('/proc/self/maps'):
    return False
  with open('/proc/self/maps') as f:
    return 'libmimalloc' in f.read()


def warn_without_mimalloc():
  """On a CPU, says how to run with mimalloc when this process runs without it.

  Under glibc's malloc, XLA's CPU runtime hands its step's temporary buffer back to the
  kernel after every step and the next step faults it in again (about 130 MB for the
  Shakespeare default). mimalloc with MIMALLOC_PURGE_DELAY=-1 keeps freed memory, and
  training steps run 1.1x (text8's model) to 1.4x (the default) faster.
  """
  if jax.default_backend() != 'cpu' or (
      mimalloc_preloaded() and os.environ.get('MIMALLOC_PURGE_DELAY') == '-1'):
    return
  lib = os.path.join(sysconfig.get_paths()['purelib'], 'cmeel.prefix', 'lib',
                     'libmimalloc.so.3')
  if not os.path.exists(lib):
    lib = '<site-packages>/cmeel.prefix/lib/libmimalloc.so.3 after pip install cmeel-mimalloc'
  logging.warning('On this CPU, training steps run up to 1.4x faster with'
                  ' MIMALLOC_PURGE_DELAY=-1 LD_PRELOAD=%s (as `make train` does).', lib)


def build_model(config, info: data.DatasetInfo):
  """The diffusion model named by config.model_type around the configured backbone."""
  if config.model_type not in models.MODELS:
    raise ValueError(f'unknown model_type {config.model_type!r}; '
                     f'choose from {sorted(models.MODELS)}')
  network = networks.build_network(config.network, info.vocab_size, info.num_classes)
  padding = {}
  if info.pad_id is not None:
    if config.model_type != 'md4':
      raise ValueError(f'dataset {config.data.dataset!r} pads its examples, which only'
                       " model_type 'md4' handles")
    padding = dict(pad_id=info.pad_id, length_probs=info.length_probs)
  return models.MODELS[config.model_type](
      network=network, vocab_size=info.vocab_size, data_shape=info.data_shape,
      **padding, **config.model)


def make_mesh(shape=None, devices=None) -> Mesh:
  """A (data, fsdp, tensor) mesh of `shape` (one entry may be -1); None: all on 'data'."""
  devices = jax.devices() if devices is None else devices
  n = len(devices)
  shape = (n, 1, 1) if shape is None else tuple(int(s) for s in shape)
  if len(shape) != 3 or shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
    raise ValueError(f'mesh_shape {shape} should give the sizes of {MESH_AXES}, positive'
                     ' or -1 (the remaining devices) for at most one of them')
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape and n % known == 0:
    shape = tuple(n // known if s == -1 else s for s in shape)
  if math.prod(shape) != n:
    raise ValueError(f'mesh_shape {shape} does not use the {n} devices; make the sizes'
                     ' multiply to the device count or set one to -1')
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def sharding_setup(config, sharded):
  """The mesh and the logical-axis rules of a run (see config.mesh_shape/axis_rules)."""
  if not sharded:
    return make_mesh(), DATA_PARALLEL_RULES
  rules = []
  for rule in config.axis_rules:
    name, axes = rule
    axes = tuple(axes) if isinstance(axes, (list, tuple)) else axes
    unknown = set((axes,) if isinstance(axes, str) else axes or ()) - set(MESH_AXES)
    if unknown:
      raise ValueError(f'config.axis_rules maps {name!r} to unknown mesh axes '
                       f'{sorted(unknown)}; use {MESH_AXES}')
    rules.append((name, axes))
  return make_mesh(config.mesh_shape), tuple(rules)


def batch_sharding(mesh):
  """Leading (batch) dimension split over data x fsdp, the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES))


def batch_shards(mesh) -> int:
  return math.prod(mesh.shape[a] for a in BATCH_AXES)


# ---------------------------------------------------------------------------- steps


def loss_fn(model, params, batch, rng, train):
  """Mean over the batch of the model's per-example terms; 'loss' is the objective.

  batch: [B, *S] ids, or {'x': [B, *S], 'label': [B]} for class-conditional data.
  """
  rng_sample, rng_dropout = jax.random.split(rng)
  x, label = (batch['x'], batch['label']) if isinstance(batch, dict) else (batch, None)
  terms = model.apply({'params': params}, x, train=train, label=label,
                      rngs={'sample': rng_sample, 'dropout': rng_dropout})
  metrics = {k: v.mean() for k, v in terms.items()}
  return metrics['loss'], metrics


def split_microbatches(batch, num_microbatches):
  """[B, ...] -> [M, B/M, ...]; microbatch i takes rows i, i + M, ... so each stays spread
  over the data-parallel devices."""
  def split(a):
    return a.reshape((a.shape[0] // num_microbatches, num_microbatches) + a.shape[1:]
                     ).swapaxes(0, 1)
  return jax.tree.map(split, batch)


def compute_grads(model, params, batch, rng, num_microbatches):
  """Gradient of the mean loss, accumulated over microbatches with keys fold_in(rng, i).

  Microbatches are equal in size, so the average of their gradients is the gradient of the
  full batch's mean loss.
  """
  grad_fn = jax.grad(functools.partial(loss_fn, model, train=True), has_aux=True)
  if num_microbatches == 1:
    return grad_fn(params, batch, jax.random.fold_in(rng, 0))

  def body(carry, i_mb):
    i, mb = i_mb
    grads, metrics = grad_fn(params, mb, jax.random.fold_in(rng, i))
    return jax.tree.map(jax.numpy.add, carry, (grads, metrics)), None

  mbs = split_microbatches(batch, num_microbatches)
  zeros = jax.eval_shape(grad_fn, params, jax.tree.map(lambda a: a[0], mbs), rng)
  zeros = jax.tree.map(lambda s: jax.numpy.zeros(s.shape, s.dtype), zeros)
  total, _ = jax.lax.scan(body, zeros, (jax.numpy.arange(num_microbatches), mbs))
  return jax.tree.map(lambda x: x / num_microbatches, total)


def train_step(model, optimizer, config, state, batch, rng):
  """One optimizer step: (state, batch [B, *S]) -> (state, metrics). rng is the run's train key."""
  rng = jax.random.fold_in(rng, state.step)
  grads, metrics = compute_grads(model, state.params, batch, rng,
                                 config.num_microbatches)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema_params = optim.ema_update(state.ema_params, params,
                                optim.ema_decay(state.step, config.opt.ema_rate))
  metrics['grad_norm'] = optax.global_norm(grads)
  new_state = state.replace(step=state.step + 1, params=params,
                            ema_params=ema_params, opt_state=opt_state)
  return new_state, metrics


def jit_train_step(model, optimizer, config, shardings, data_sharding):
  """train_step under jit, state and batch in their shardings, the state's buffers donated."""
  return jax.jit(
      functools.partial(train_step, model, optimizer, config),
      in_shardings=(shardings, data_sharding, None),
      out_shardings=(shardings, None), donate_argnums=0)


def eval_step(model, params, batch, rng):
  """Mean negative-ELBO terms of a batch (no dropout)."""
  return loss_fn(model, params, batch, rng, train=False)[1]


# ----------------------------------------------------------------- state and sharding


def _fit_to_shape(spec: P, shape, mesh: Mesh) -> P:
  """Drops a mesh axis from a dimension it does not divide (that dimension is replicated)."""
  fitted = []
  for dim, axis in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    size = 1 if axis is None else math.prod(
        mesh.shape[a] for a in ((axis,) if isinstance(axis, str) else axis))
    fitted.append(axis if dim % size == 0 else None)
  return P(*fitted)


def state_shardings(model, optimizer, mesh, rules, example_batch):
  """Abstract TrainState and its NamedShardings (parameters by logical-axis rules).

  The EMA and every optimizer-state leaf that mirrors a parameter take that parameter's
  sharding; scalars (counts) are replicated.
  """

  def init_params(rng):
    return model.init({'params': rng, 'sample': rng, 'dropout': rng},
                      example_batch)['params']

  boxed = jax.eval_shape(init_params, jax.random.key(0))
  params = jax.tree.map(  # unboxed without the sharding constraint nn.unbox would add
      lambda x: x.unbox(apply_constraint=False) if isinstance(x, nn.Partitioned) else x,
      boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  logical = nn.get_partition_spec(boxed)
  param_sh = jax.tree.map(
      lambda spec, p: NamedSharding(
          mesh, _fit_to_shape(nn.logical_to_mesh_axes(spec, rules), p.shape, mesh)),
      logical, params, is_leaf=lambda x: isinstance(x, P))
  opt_state = jax.eval_shape(optimizer.init, params)
  replicated = NamedSharding(mesh, P())
  opt_sh = _mirror_shardings(opt_state, params, param_sh, replicated)
  abstract = TrainState(step=jax.ShapeDtypeStruct((), np.int32), params=params,
                        ema_params=params, opt_state=opt_state)
  shardings = TrainState(step=replicated, params=param_sh, ema_params=param_sh,
                         opt_state=opt_sh)
  return abstract, shardings, init_params


def _mirror_shardings(tree, params, param_sh, default):
  """Shardings for `tree`: a leaf whose key path ends in a parameter's path and whose shape is
  that parameter's takes its sharding (Adam moments, Muon momentum), anything else `default`.

  Path suffixes rather than optax.tree_map_params, which cannot follow the masked states of
  optimizers that partition the parameters (Muon with AdamW for the rest).
  """
  names = lambda path: tuple(getattr(k, 'key', getattr(k, 'name', None)) for k in path)
  by_path = {names(path): (p.shape, sh) for (path, p), sh in zip(
      jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(param_sh))}
  depth = max(map(len, by_path))

  def pick(path, leaf):
    keys = names(path)
    for n in range(min(depth, len(keys)), 0, -1):
      shape, sh = by_path.get(keys[-n:], (None, None))
      if sh is not None and shape == leaf.shape:
        return sh
    return default

  return jax.tree_util.tree_map_with_path(pick, tree)


def init_state(optimizer, init_params, shardings, rng):
  """A fresh TrainState created directly in its shardings."""

  def init(rng):
    params = nn.unbox(init_params(rng))
    return TrainState(step=jax.numpy.zeros((), jax.numpy.int32), params=params,
                      ema_params=params, opt_state=optimizer.init(params))

  return jax.jit(init, out_shardings=shardings)(rng)


def make_checkpoint_manager(workdir, config):
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), 'checkpoints'),
      options=ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints,
                                           create=True))


def restore_or_init(manager, optimizer, abstract, shardings, init_params, rng):
  """The latest checkpoint if there is one, restored onto these shardings; else a fresh state."""
  step = manager.latest_step()
  if step is None:
    return init_state(optimizer, init_params, shardings, rng)
  target = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract,
      shardings)
  logging.info('Restoring checkpoint at step %d from %s', step, manager.directory)
  try:
    return manager.restore(step, args=ocp.args.StandardRestore(target))
  except ValueError as e:
    raise ValueError(
        f'the checkpoint at step {step} in {manager.directory} does not match the state of '
        'this config (a different model, network or optimizer?); resume with the config '
        f'it was trained with, or use a new --workdir. Orbax said: {str(e)[:2000]}') from e


# ------------------------------------------------------------------------ validation


def validate_config(config, num_devices):
  """Raises ValueError for values that cannot run, naming the key and the fix.

  num_devices: how many ways the batch splits (the mesh's data x fsdp size).
  """
  def check(ok, message):
    if not ok:
      raise ValueError(message)

  check(config.num_train_steps > 0, 'num_train_steps must be positive')
  check(config.batch_size > 0, 'batch_size must be positive')
  check(config.num_microbatches >= 1, 'num_microbatches must be >= 1')
  check(config.batch_size % config.num_microbatches == 0,
        f'batch_size {config.batch_size} must be divisible by num_microbatches '
        f'{config.num_microbatches}')
  micro = config.batch_size // config.num_microbatches
  check(micro % num_devices == 0,
        f'each microbatch ({micro} = batch_size / num_microbatches) must split evenly '
        f'over the {num_devices} devices; change batch_size or num_microbatches')
  check(config.eval_batch_size % num_devices == 0,
        f'eval_batch_size {config.eval_batch_size} must be divisible by the '
        f'{num_devices} devices')
  check(config.sampling.num_samples % num_devices == 0,
        f'sampling.num_samples {config.sampling.num_samples} must be divisible by the '
        f'{num_devices} devices')
  for key in ('log_every_steps', 'eval_every_steps', 'eval_repeats', 'sample_every_steps',
              'checkpoint_every_steps', 'keep_checkpoints'):
    check(config[key] >= 1, f'{key} must be >= 1, got {config[key]}')
  check(0.0 <= config.opt.ema_rate < 1.0, 'opt.ema_rate must be in [0, 1)')


# ------------------------------------------------------------------------- the loop


class JsonlWriter:
  """Appends one JSON object per logged step to {workdir}/metrics.jsonl."""

  def __init__(self, workdir):
    self.path = os.path.join(workdir, 'metrics.jsonl')

  def write(self, step, metrics):
    record = {'step': int(step), **{k: float(v) for k, v in metrics.items()}}
    with open(self.path, 'a') as f:
      f.write(json.dumps(record) + '\n')


def evaluate(eval_fn, params, splits, info, config, mesh, rng):
  """ELBO terms on every full batch of every eval split: {'{split}_{term}': mean}.

  Each batch is estimated `eval_repeats` times with independent draws of t (or of the
  mask count) and masks, which divides the estimate's Monte-Carlo variance by that number.
  """
  sharding = batch_sharding(mesh)
  repeats = config.eval_repeats
  results = {}
  for split in info.eval_splits:
    sums, n = {}, 0
    for i, local in enumerate(data.eval_batches(
        splits[split], config.eval_batch_size, jax.process_index(),
        jax.process_count())):
      batch = global_batch(sharding, local)
      for r in range(repeats):
        metrics = eval_fn(params, batch, jax.random.fold_in(rng, i * repeats + r))
        sums = {k: sums.get(k, 0.0) + v for k, v in metrics.items()}
        n += 1
    results.update({f'{split}_{k}': float(v) / n for k, v in sums.items()})
  return results


def global_batch(sharding, local):
  """This process's rows (an array or a dict of them) -> global arrays in `sharding`."""
  return jax.tree.map(
      lambda a: jax.make_array_from_process_local_data(sharding, a), local)


def write_samples(workdir, step, samples, info, writer):
  """Samples as text, or for images a PNG grid (one row per class when conditional)."""
  if info.is_image:
    path = os.path.join(workdir, 'samples', f'step_{step:08d}.png')
    grid = images.write_grid(path, np.stack([info.decode(s) for s in samples]))
    writer.write_images(step, {'samples': grid[None]})
    return path
  texts = [info.decode(s) for s in samples]
  suffix, contents = data.format_samples(texts, info.sample_format)
  path = os.path.join(workdir, 'samples', f'step_{step:08d}.{suffix}')
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + '.tmp', 'w') as f:
    f.write(contents)
  os.replace(path + '.tmp', path)
  writer.write_texts(step, {'samples': data.format_samples(texts[:4], info.sample_format)[1]})
  return path


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       sharded: bool = False) -> dict[str, float]:
  """Trains config's model in workdir, resuming from its latest checkpoint.

  Returns the final eval metrics (bits per token).
  """
  mesh, rules = sharding_setup(config, sharded)
  # Tracing inside this context applies the networks' activation sharding constraints.
  with jax.sharding.set_mesh(mesh), nn.logical_axis_rules(rules):
    return _train_and_evaluate(config, workdir, mesh, rules)


def _train_and_evaluate(config, workdir, mesh, rules):
  # clu's writers import TensorFlow; only the loop needs them.
  from clu import metric_writers  # pylint: disable=g-import-not-at-top
  from clu import periodic_actions  # pylint: disable=g-import-not-at-top

  start_time = time.time()
  validate_config(config, batch_shards(mesh))
  info, splits = data.load_dataset(config.data)
  model = build_model(config, info)
  optimizer = optim.make_optimizer(config.opt, config.num_train_steps)
  lr_fn = optim.learning_rate_schedule(config.opt, config.num_train_steps)
  generate = sampling.make_generate_fn(model, config.sampling)
  sample_labels = (images.sample_labels(config.sampling.num_samples, info.num_classes)
                   if info.num_classes else None)
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    configs.save(config, workdir)  # tools rebuild the model from it (md4.configs.load)

  rng = jax.random.key(config.seed)
  init_rng, train_rng, eval_rng, sample_rng = (
      jax.random.fold_in(rng, i) for i in range(4))
  data_sharding = batch_sharding(mesh)
  example = jax.numpy.zeros((1,) + info.data_shape, jax.numpy.int32)

  manager = make_checkpoint_manager(workdir, config)
  abstract, shardings, init_params = state_shardings(model, optimizer, mesh, rules,
                                                     example)
  state = restore_or_init(manager, optimizer, abstract, shardings, init_params, init_rng)
  start_step = int(state.step)
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  logging.info('Model: %d parameters; vocab %d; data shape %s; mesh %s; start step %d',
               num_params, info.vocab_size, info.data_shape, dict(mesh.shape), start_step)

  p_train_step = jit_train_step(model, optimizer, config, shardings, data_sharding)
  p_eval_step = jax.jit(functools.partial(eval_step, model))
  p_generate = jax.jit(
      lambda params, rng: generate(
          params, rng,
          model.apply({'params': params}, rng, config.sampling.num_samples,
                      method=model.sample_prior), sample_labels),
      out_shardings=data_sharding)

  is_main = jax.process_index() == 0
  writer = metric_writers.create_default_writer(workdir, just_logging=not is_main)
  jsonl = JsonlWriter(workdir) if is_main else None
  if is_main and start_step == 0:
    writer.write_hparams(_flatten(config.to_dict()))
  report_progress = periodic_actions.ReportProgress(
      num_train_steps=config.num_train_steps, writer=writer)

  def batches():
    for step in range(start_step, config.num_train_steps):
      local = data.train_batch(splits['train'], step, config.batch_size, config.seed,
                               jax.process_index(), jax.process_count())
      yield global_batch(data_sharding, local)

  train_iter = data.prefetch(batches())
  history, eval_metrics = [], {}
  step = start_step
  with metric_writers.ensure_flushes(writer):
    for step in range(start_step + 1, config.num_train_steps + 1):
      state, metrics = p_train_step(state, next(train_iter), train_rng)
      history.append(metrics)
      if config.check_nans:
        _check_finite(step, metrics)
      report_progress(step, time.time())
      last = step == config.num_train_steps
      record = {}
      if step % config.log_every_steps == 0 or last:
        record.update(_mean_metrics(history))
        record['learning_rate'] = float(lr_fn(step - 1))
        history = []
      if step % config.eval_every_steps == 0 or last:
        eval_metrics = evaluate(p_eval_step, state.ema_params, splits, info, config,
                                mesh, eval_rng)
        record.update(eval_metrics)
      if record:
        writer.write_scalars(step, record)
        if jsonl:
          jsonl.write(step, record)
      if step % config.sample_every_steps == 0 or last:
        samples = p_generate(state.ema_params, jax.random.fold_in(sample_rng, step))
        samples = multihost_utils.process_allgather(samples, tiled=True)
        if is_main:
          path = write_samples(workdir, step, np.asarray(samples), info, writer)
          logging.info('Wrote samples to %s', path)
      if step % config.checkpoint_every_steps == 0 or last:
        manager.save(step, args=ocp.args.StandardSave(state))
  manager.wait_until_finished()
  manager.close()
  if not eval_metrics and info.eval_splits:
    eval_metrics = evaluate(p_eval_step, state.ema_params, splits, info, config, mesh,
                            eval_rng)
  summary = ', '.join(f'{k}={v:.4f}' for k, v in sorted(eval_metrics.items())
                      if k.endswith('_loss'))
  unit = 'bits per dimension' if info.is_image else 'bits per token'
  if is_main:
    print(f'Final eval at step {step} ({unit}, EMA parameters, '
          f'{time.time() - start_time:.0f} s): {summary}', flush=True)
  return eval_metrics


def _flatten(tree, prefix=''):
  flat = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      flat.update(_flatten(v, f'{prefix}{k}.'))
    else:
      flat[f'{prefix}{k}'] = v if isinstance(v, (int, float, str, bool)) else str(v)
  return flat


def _mean_metrics(history):
  stacked = jax.device_get(history)
  return {k: float(np.mean([m[k] for m in stacked])) for k in stacked[0]}


def _check_finite(step, metrics):
  for name, value in jax.device_get(metrics).items():
    if not np.isfinite(value):
      raise FloatingPointError(
          f'metric {name!r} is {value} at step {step}; lower opt.learning_rate, set '
          'opt.grad_clip, or check the data')
