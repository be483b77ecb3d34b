"""Training and evaluation: one jitted loop for one device or a mesh of many.

Data flows config -> (dataset, model, optimizer, mesh) -> `train_step` under `jax.jit` with
`NamedSharding`s -> metrics, checkpoints and samples in the workdir. The mesh has axes
(data, fsdp, tensor). By default every device is on 'data' and parameters are replicated;
with `sharded=True` the mesh takes `config.mesh_shape` and parameters, optimizer state and
activations shard by `config.axis_rules`, which map the networks' logical axis names to mesh
axes. The batch always splits over data x fsdp. Randomness is a pure function of (seed,
step), and so is the data, so a run restarted from a checkpoint continues exactly: after
SIGTERM or SIGINT (the loop saves a checkpoint after its current step and stops), after
SIGKILL (Orbax's saves are atomic), or past a checkpoint that cannot be read (the newest
readable one is used).
"""

import functools
import json
import math
import os
import signal
import sys
import sysconfig
import threading
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
                                optim.ema_decay(state.step, config.opt.ema_rate,
                                                config.opt.ema_warmup))
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
  """Orbax's manager of {workdir}/checkpoints, keeping the newest config.keep_checkpoints.

  Saves are atomic: Orbax writes a step into `<step>.orbax-checkpoint-tmp` and renames it
  when complete; such a directory left by a process killed mid-save is an unfinished save,
  not a checkpoint, and is removed when the next manager opens the directory.
  """
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), 'checkpoints'),
      item_handlers=ocp.StandardCheckpointHandler(),
      options=ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints,
                                           create=True, cleanup_tmp_directories=True))


UNREADABLE_DIR = 'unreadable_checkpoints'  # in the workdir, beside checkpoints/


def restore_or_init(manager, optimizer, abstract, shardings, init_params, rng,
                    steps=None):
  """The newest readable checkpoint (among `steps`; None: all the manager's), restored
  onto these shardings; else a fresh state.

  A checkpoint whose arrays are not this config's state (another model, network or
  optimizer) stops the run with a ValueError. One that cannot be read (a truncated or
  missing file) is reported with its step and error, and the next newest is tried. Once one
  is read, the unreadable newer ones are moved, whole, to {workdir}/unreadable_checkpoints/
  (out of Orbax's directory, so that keep_checkpoints never deletes them and a new save of
  the same step does not meet them); nothing is deleted. When none can be read, nothing is
  moved and a ValueError lists them.
  """
  target = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract,
      shardings)
  unreadable = []
  for step in sorted(manager.all_steps() if steps is None else steps, reverse=True):
    logging.info('Restoring checkpoint at step %d from %s', step, manager.directory)
    try:
      state, error = _read_checkpoint(manager, step, abstract, target), None
    except _Unreadable as e:
      state, error = None, e.__cause__
    if not _all_processes(error is None):
      error = error or RuntimeError('another process could not read it')
      logging.warning('The checkpoint at step %d in %s cannot be read (%s); trying the '
                      'previous one.', step, manager.directory, _describe(error))
      unreadable.append((step, error))
      continue
    if unreadable:
      _move_aside(manager, [s for s, _ in unreadable], step)
    return state
  if unreadable:
    listed = '; '.join(f'step {s}: {_describe(e)}' for s, e in unreadable)
    raise ValueError(
        f'no checkpoint in {manager.directory} can be read ({listed}). Nothing was moved or '
        'deleted; to start afresh, use a new --workdir (or move the checkpoints away).')
  return init_state(optimizer, init_params, shardings, rng)


def _describe(error):
  """'Type: message' of the innermost cause of `error` (TensorStore's names the file)."""
  while error.__cause__ is not None:
    error = error.__cause__
  return f'{type(error).__name__}: {" ".join(str(error).split())[:500]}'


class _Unreadable(Exception):
  """A checkpoint's files cannot be read; the cause is Orbax's or TensorStore's error."""


def _read_checkpoint(manager, step, abstract, target):
  """The state at `step`; _Unreadable if its files cannot be read, ValueError if its arrays
  are not those of `abstract` (compared by path, shape and dtype before reading them)."""
  try:
    tree = getattr(manager.metadata(step).item_metadata, 'tree', None)
    if not isinstance(tree, dict):
      raise FileNotFoundError(f'no array metadata in {manager.directory}/{step}')
  except Exception as e:
    raise _Unreadable() from e
  saved, wanted = _flat_arrays(tree), _flat_arrays(abstract)
  differing = sorted(k for k in saved.keys() | wanted.keys() if saved.get(k) != wanted.get(k))
  if differing:
    show = lambda a: 'absent' if a is None else f'{a[1]}{list(a[0])}'
    diff = [f'{"/".join(k)} is {show(saved.get(k))} there, {show(wanted.get(k))} here'
            for k in differing[:4]]
    raise ValueError(
        f'the checkpoint at step {step} in {manager.directory} does not match the state of '
        'this config (a different model, network or optimizer?); resume with the config '
        f'it was trained with, or use a new --workdir. {len(differing)} arrays differ, e.g. '
        f'{"; ".join(diff)}')
  try:
    return manager.restore(step, args=ocp.args.StandardRestore(target))
  except Exception as e:
    raise _Unreadable() from e


def _flat_arrays(tree):
  """{path as a tuple of strings: (shape, dtype)} for the arrays (or their metadata) of tree."""
  key = lambda k: str(getattr(k, 'name', getattr(k, 'key', getattr(k, 'idx', k))))
  return {tuple(map(key, path)): (tuple(leaf.shape), str(np.dtype(leaf.dtype)))
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _all_processes(ok: bool) -> bool:
  """Whether `ok` holds on every process (one all-gather when there are several)."""
  if jax.process_count() == 1:
    return ok
  return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


def _move_aside(manager, steps, restored):
  """Moves the step directories `steps` to {workdir}/unreadable_checkpoints/ (process 0)."""
  if jax.process_index() == 0:
    aside = os.path.join(os.path.dirname(os.fspath(manager.directory)), UNREADABLE_DIR)
    os.makedirs(aside, exist_ok=True)
    for step in steps:
      dest = os.path.join(aside, str(step))
      n = 1
      while os.path.exists(dest):
        n += 1
        dest = os.path.join(aside, f'{step}-{n}')
      os.rename(os.path.join(os.fspath(manager.directory), str(step)), dest)
      logging.warning('Moved the unreadable checkpoint at step %d to %s (kept for '
                      'inspection; delete it when done); resuming from step %d.',
                      step, dest, restored)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('md4: unreadable checkpoints moved')
  manager.reload()


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


def check_workdir(workdir):
  """Creates workdir if needed and checks that this process can write in it (and in its
  checkpoints/ and samples/ when they exist), so that a bad --workdir fails before the
  data is loaded and anything is compiled."""
  path = os.path.abspath(workdir)
  if os.path.exists(path) and not os.path.isdir(path):
    raise ValueError(f'workdir {path} is a file, not a directory; pass a --workdir that is '
                     'a directory or a path that does not exist yet')
  probe_name = f'.md4-write-test-{jax.process_index()}-{os.getpid()}'
  for directory in [path] + [os.path.join(path, d) for d in ('checkpoints', 'samples')
                             if os.path.isdir(os.path.join(path, d))]:
    try:
      os.makedirs(directory, exist_ok=True)
      probe = os.path.join(directory, probe_name)
      with open(probe, 'w'):
        pass
      os.remove(probe)
    except OSError as e:
      raise ValueError(
          f'cannot write in workdir {path}: {e.strerror or e} ({e.filename or directory}); '
          'pass a --workdir in a directory you can write, or fix its permissions') from e


# ----------------------------------------------------------------- signals and progress


class Preempted(Exception):
  """Training stopped on a signal before its last step, after saving a checkpoint."""

  def __init__(self, signal_name, step, num_steps, directory):
    super().__init__(
        f'{signal_name} received: stopped after step {step} of {num_steps} and saved a '
        f'checkpoint in {directory}.')
    self.signal_name, self.step = signal_name, step


class StopRequest:
  """SIGTERM and SIGINT as a request to stop after the current step and save a checkpoint.

  With one process, handlers record the signal and `stop(step)` reads that record: no
  device or network round-trip. The processes of a multi-host run must stop after the same
  step, or those that go on wait forever in the next step's collectives. There JAX's
  preemption service (started by jax.distributed.initialize) catches SIGTERM itself and its
  coordination service picks a step that every process stops after
  (multihost_utils.reached_preemption_sync_point, called at every step); SIGINT is handed to
  it as a SIGTERM. Without that service the signals keep their default actions: the run
  stops at once and resumes from its last periodic checkpoint.

  After the first signal the previous handlers are back, so that a second one acts at once
  (Ctrl-C twice: stop without saving). A signal the process ignores (SIGINT in a shell's
  background job) stays ignored. Use as a context manager around the loop.
  """

  def __init__(self, start_step):
    self.signal_name = None  # e.g. 'SIGTERM', once received
    self._previous = {}  # signal -> the handler before ours
    self._service = jax.process_count() > 1
    if self._service:
      try:
        multihost_utils.reached_preemption_sync_point(start_step)
      except RuntimeError:  # jax_enable_preemption_service is off
        logging.warning("JAX's preemption service is off: SIGTERM and SIGINT stop this "
                        'multi-host run at once, without a checkpoint.')
        self._service = False
        return
    if threading.current_thread() is not threading.main_thread():
      return  # Python sets signal handlers from the main thread only
    for signum in (signal.SIGINT,) if self._service else (signal.SIGTERM, signal.SIGINT):
      if signal.getsignal(signum) is not signal.SIG_IGN:  # e.g. SIGINT in a background job
        self._previous[signum] = signal.signal(signum, self._handle)

  def _handle(self, signum, frame):
    del frame
    self.signal_name = signal.Signals(signum).name
    self.restore()
    if self._service:
      signal.raise_signal(signal.SIGTERM)  # to JAX's preemption notifier

  @property
  def name(self):
    """The signal received, here or (multi-host) by another process: JAX's service's."""
    return self.signal_name or 'SIGTERM'

  def stop(self, step) -> bool:
    """Whether to stop after `step`; every process gets the same answer."""
    if self._service:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.signal_name is not None

  def restore(self):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.restore()


class ProgressLine:
  """The terminal's training progress: step, steps per second, ETA and the logged loss.

  On a terminal the line is redrawn in place (a carriage return) at most every
  `redraw_secs`; otherwise (a log file, a pipe) it is printed as a plain line at log steps,
  at most every `every_secs`, and at the last step. It reads nothing from the device: the
  loop passes the loss it has fetched at log steps, where it has waited for the device.
  Steps per second are measured between such steps (the first and the latest; at the first
  one, from the return of the first step, after compilation), so they include evals and
  saves; between log steps only the step count moves, the host's, which may be a few steps
  ahead of the device's.
  """

  def __init__(self, num_steps, stream=None, every_secs=30.0, redraw_secs=0.1,
               clock=time.monotonic):
    self.num_steps = num_steps
    self.stream = sys.stdout if stream is None else stream
    self.tty = self.stream.isatty()
    self.every_secs, self.redraw_secs, self.clock = every_secs, redraw_secs, clock
    self.loss = self.rate = None
    self.first = self.synced = None  # (step, time) of the first step, the first log step
    self.drawn_at, self.width = -math.inf, 0  # width of the line on screen (tty)

  def update(self, step, loss=None):
    """After each step; `loss` at log steps."""
    now = self.clock()
    if self.first is None:
      self.first = (step, now)
    if loss is not None:
      self.loss = loss
      origin = self.synced or self.first
      if step > origin[0]:
        self.rate = (step - origin[0]) / max(now - origin[1], 1e-9)
      self.synced = self.synced or (step, now)
    last = step == self.num_steps
    if self.tty:
      if last or loss is not None or now - self.drawn_at >= self.redraw_secs:
        text = self.text(step)
        self.stream.write('\r' + text.ljust(self.width) + ('\n' if last else ''))
        self.width = 0 if last else len(text)
        self.stream.flush()
        self.drawn_at = now
    elif last or (loss is not None and now - self.drawn_at >= self.every_secs):
      self.stream.write(self.text(step) + '\n')
      self.stream.flush()
      self.drawn_at = now

  def text(self, step):
    parts = [f'step {step}/{self.num_steps}']
    if self.rate:
      parts.append(f'{self.rate:.3g} steps/s')
      if step < self.num_steps:
        parts.append(f'ETA {_format_secs((self.num_steps - step) / self.rate)}')
    if self.loss is not None:
      parts.append(f'loss {self.loss:.4f}')
    return ' | '.join(parts)

  def close(self):
    """Ends the line on a terminal, leaving it on screen."""
    if self.tty and self.width:
      self.stream.write('\n')
      self.stream.flush()
      self.width = 0

  def clear(self):
    """Erases the line on a terminal, before other output."""
    if self.tty and self.width:
      self.stream.write('\r' + ' ' * self.width + '\r')
      self.stream.flush()
      self.width = 0


def _format_secs(secs):
  secs = int(round(secs))
  h, m, s = secs // 3600, secs // 60 % 60, secs % 60
  return f'{h}h{m:02d}m' if h else f'{m}m{s:02d}s' if m else f'{s}s'


# ------------------------------------------------------------------------- the loop


class JsonlWriter:
  """Appends one JSON object per logged step to {workdir}/metrics.jsonl.

  A run resumed from step `start_step` first drops the records after it (and a line cut
  short by a killed process): they came from a run that stopped before its next checkpoint,
  and this one writes them again, so that the file reads as one uninterrupted run.
  """

  def __init__(self, workdir, start_step=0):
    self.path = os.path.join(workdir, 'metrics.jsonl')
    if os.path.exists(self.path):
      with open(self.path) as f:
        lines = f.read().splitlines()
      kept = [l for l in lines if (_jsonl_step(l) or math.inf) <= start_step]
      if kept != lines:
        with open(self.path + '.tmp', 'w') as f:
          f.writelines(l + '\n' for l in kept)
        os.replace(self.path + '.tmp', self.path)

  def write(self, step, metrics):
    record = {'step': int(step), **{k: float(v) for k, v in metrics.items()}}
    with open(self.path, 'a') as f:
      f.write(json.dumps(record) + '\n')


def _jsonl_step(line):
  try:
    return int(json.loads(line)['step'])
  except (ValueError, KeyError, TypeError):
    return None


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

  start_time = time.time()
  validate_config(config, batch_shards(mesh))
  check_workdir(workdir)
  info, splits = data.load_dataset(config.data)
  data.check_eval_splits(splits, config.eval_batch_size, jax.process_count())
  model = build_model(config, info)
  optimizer = optim.make_optimizer(config.opt, config.num_train_steps)
  lr_fn = optim.learning_rate_schedule(config.opt, config.num_train_steps)
  generate = sampling.make_generate_fn(model, config.sampling)
  sample_labels = (images.sample_labels(config.sampling.num_samples, info.num_classes)
                   if info.num_classes else None)
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
  jsonl = JsonlWriter(workdir, start_step) if is_main else None
  if is_main and start_step == 0:
    writer.write_hparams(_flatten(config.to_dict()))
  progress = ProgressLine(config.num_train_steps) if is_main else None

  def batches():
    for step in range(start_step, config.num_train_steps):
      local = data.train_batch(splits['train'], step, config.batch_size, config.seed,
                               jax.process_index(), jax.process_count())
      yield global_batch(data_sharding, local)

  train_iter = data.prefetch(batches())
  history, eval_metrics = [], {}
  step, stop = start_step, False

  def every(n):  # at this step of the loop
    return step % n == 0 or step == config.num_train_steps

  try:
    with metric_writers.ensure_flushes(writer), StopRequest(start_step) as signals:
      for step in range(start_step + 1, config.num_train_steps + 1):
        state, metrics = p_train_step(state, next(train_iter), train_rng)
        history.append(metrics)
        stop = signals.stop(step)
        # On a stop, the metrics since the last log step are logged: each step's metrics
        # are in one record.
        log = every(config.log_every_steps) or stop
        save = every(config.checkpoint_every_steps) or stop
        if config.check_nans and (log or save):
          # Metrics are read here only, never at each step; no checkpoint holds a state
          # reached through a non-finite loss or gradient.
          _check_finite(step + 1 - len(history), history, manager)
        record = {}
        if log:
          record.update(_mean_metrics(history))
          record['learning_rate'] = float(lr_fn(step - 1))
          history = []
        talk = progress and (record or every(config.eval_every_steps)
                             or every(config.sample_every_steps))
        if talk:
          progress.clear()  # log lines below start on a line of their own
        if stop:
          logging.warning('%s received: saving a checkpoint at step %d, then stopping (send '
                          'it again to stop at once).', signals.name, step)
        if every(config.eval_every_steps):
          eval_metrics = evaluate(p_eval_step, state.ema_params, splits, info, config,
                                  mesh, eval_rng)
          record.update(eval_metrics)
        if record:
          writer.write_scalars(step, record)
          if jsonl:
            jsonl.write(step, record)
        if every(config.sample_every_steps):
          samples = p_generate(state.ema_params, jax.random.fold_in(sample_rng, step))
          samples = multihost_utils.process_allgather(samples, tiled=True)
          if is_main:
            path = write_samples(workdir, step, np.asarray(samples), info, writer)
            logging.info('Wrote samples to %s', path)
        if save:
          manager.save(step, args=ocp.args.StandardSave(state))
        if progress:
          if talk and progress.tty:
            writer.flush()  # the log lines are out before the progress line returns
          progress.update(step, record.get('loss'))
        if stop:
          break
  finally:
    if progress:
      progress.close()
    manager.wait_until_finished()  # a save in flight completes, whatever stopped the loop
    manager.close()
  if stop and step < config.num_train_steps:
    raise Preempted(signals.name, step, config.num_train_steps,
                    f'{manager.directory}/{step}')
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


def _check_finite(first_step, history, manager):
  """Raises FloatingPointError at the first non-finite metric of `history`, the metrics of
  steps first_step, first_step + 1, ..., naming the step, the fix and the last checkpoint."""
  for step, metrics in enumerate(jax.device_get(history), first_step):
    bad = sorted((name != 'loss', name) for name, v in metrics.items() if not np.isfinite(v))
    if bad:
      name = bad[0][1]
      manager.wait_until_finished()
      last = manager.latest_step()
      where = ('No checkpoint was saved before it.' if last is None else
               f'The last checkpoint, step {last} in {manager.directory}, is from before it; '
               'rerun with the same workdir to resume from there.')
      raise FloatingPointError(
          f'metric {name!r} is {metrics[name]} at step {step}; lower opt.learning_rate, set '
          f'opt.grad_clip, or check the data. {where}')
