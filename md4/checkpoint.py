"""Checkpoints of the train state in {workdir}/checkpoints: saving, and restoring the newest
readable one.

Saves are Orbax's and atomic: a step is written into `<step>.orbax-checkpoint-tmp` and
renamed when complete; such a directory left by a process killed mid-save is an unfinished
save, not a checkpoint, and is removed when the next manager opens the directory. A
checkpoint that cannot be read (a truncated or missing file) is reported and skipped; once
an older one is read, the unreadable ones are moved aside to
{workdir}/unreadable_checkpoints/, never deleted.
"""

import os
from typing import Callable

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

from md4 import optim
from md4 import sharding
from md4 import state as state_lib

UNREADABLE_DIR = 'unreadable_checkpoints'  # in the workdir, beside checkpoints/


def make_manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  """Orbax's manager of {workdir}/checkpoints, keeping the newest `keep` checkpoints."""
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), 'checkpoints'),
      item_handlers=ocp.StandardCheckpointHandler(),
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           cleanup_tmp_directories=True))


def maybe_save(manager, state, step: int, every: int, last: bool, stop: bool) -> bool:
  """Saves `state` as checkpoint `step` if it is a periodic step (a multiple of `every`),
  the last step, or the step a stop was requested after; returns whether it saved.

  The save runs in the background; the manager's next save or wait_until_finished()
  completes it.
  """
  if step % every and not last and not stop:
    return False
  manager.save(step, args=ocp.args.StandardSave(state))
  return True


def restore_or_init(manager, abstract, shardings, init: Callable, steps=None):
  """The newest readable checkpoint (among `steps`; None: all the manager's), restored
  onto `shardings`; else `init()`, a fresh state.

  A checkpoint whose arrays are not `abstract`'s (another model, network or optimizer)
  stops with a ValueError. One that cannot be read is reported with its step and error,
  and the next newest is tried. Once one is read, the unreadable newer ones are moved,
  whole, to {workdir}/unreadable_checkpoints/ (out of Orbax's directory, so that
  keep_checkpoints never deletes them and a new save of the same step does not meet
  them). When none can be read, nothing is moved and a ValueError lists them.
  """
  target = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract,
      shardings)
  unreadable = []
  for step in sorted(manager.all_steps() if steps is None else steps, reverse=True):
    logging.info('Restoring checkpoint at step %d from %s', step, manager.directory)
    try:
      state, error = _read(manager, step, abstract, target), None
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
  return init()


def restore_workdir(workdir: str, config, model, step: int | None = None):
  """(the TrainState of `workdir`'s checkpoint at `step`, None: the latest; that step),
  restored onto one device's mesh for `model` as `config` builds it (its optimizer, and a
  teacher for a distillation run's)."""
  if not os.path.isdir(os.path.join(workdir, 'checkpoints')):
    raise FileNotFoundError(f'{workdir} has no checkpoints/ folder; train there first')
  manager = make_manager(workdir, config.keep_checkpoints)
  steps = sorted(manager.all_steps())
  if not steps:
    raise FileNotFoundError(f'{manager.directory} holds no checkpoint yet')
  step = steps[-1] if step is None else step
  if step not in steps:
    raise ValueError(f'no checkpoint at step {step} in {manager.directory}; it has {steps}')
  mesh, rules = sharding.setup(config, sharded=False)
  optimizer = optim.make_optimizer(config.opt, config.num_train_steps)
  example = jax.numpy.zeros((1,) + tuple(model.data_shape), jax.numpy.int32)
  with sharding.active(mesh, rules):
    abstract, shardings, _ = state_lib.abstract_state(
        model, optimizer, mesh, rules, example, with_teacher=state_lib.distills(config))
    state = restore_or_init(manager, abstract, shardings, init=None, steps=[step])
  manager.close()
  return state, step


def _describe(error):
  """'Type: message' of the innermost cause of `error` (TensorStore's names the file)."""
  while error.__cause__ is not None:
    error = error.__cause__
  return f'{type(error).__name__}: {" ".join(str(error).split())[:500]}'


class _Unreadable(Exception):
  """A checkpoint's files cannot be read; the cause is Orbax's or TensorStore's error."""


def _read(manager, step, abstract, target):
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


def check_workdir(workdir: str):
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
