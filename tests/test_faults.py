"""Runs that stop early: signals, SIGKILL (between checkpoints and inside a save), unreadable
checkpoints, a non-finite loss, a workdir that cannot be written; and the progress line.

A run restarted after any of them ends with exactly the parameters (and metrics.jsonl) of
an uninterrupted one: the steps are the same compiled programs, fed data and keys that are
functions of the seed and the step, so the comparisons below are exact.
"""

import io
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from md4 import checkpoint
from md4 import data
from md4 import preemption
from md4 import reporting
from md4 import train
from test_train import ROOT, cli_args, tiny_config

# 300 steps (a few seconds), a checkpoint every 20, no eval or samples before the last
# step, so that the killed runs compile only the train step. The kills land before step
# 150, leaving the runs' host-side lag a wide margin.
FAULTS = {'num_train_steps': 300, 'checkpoint_every_steps': 20, 'keep_checkpoints': 10,
          'log_every_steps': 2, 'eval_every_steps': 300, 'sample_every_steps': 300}
TMP = '.orbax-checkpoint-tmp'  # suffix of the directory Orbax writes a step into


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """The workdir of an uninterrupted run."""
  workdir = tmp_path_factory.mktemp('reference')
  train.train_and_evaluate(tiny_config(**FAULTS), str(workdir))
  return workdir


def _final_state(workdir):
  step = FAULTS['num_train_steps']
  return ocp.StandardCheckpointer().restore(workdir / 'checkpoints' / str(step) / 'default')


def _records(workdir):
  return [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]


def assert_same_run(reference, workdir, stopped_after=None):
  """The same final state (parameters, EMA, optimizer state) bit for bit, and the same
  metrics.jsonl records from the first step workdir logged on.

  A run stopped by a signal after step `stopped_after` logged the steps since its last
  log step there; the next record holds the steps after it, so that the two average to the
  uninterrupted run's record.
  """
  want, got = _final_state(reference), _final_state(workdir)
  assert jax.tree.structure(want) == jax.tree.structure(got)
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    np.testing.assert_array_equal(a, b)
  records = _records(workdir)
  expected = [r for r in _records(reference) if r['step'] >= records[0]['step']]
  every = FAULTS['log_every_steps']
  if stopped_after is not None and stopped_after % every:
    split = {r['step']: r for r in records if r['step'] - stopped_after in (0, 1)}
    assert sorted(split) == [stopped_after, stopped_after + 1]  # log_every_steps = 2
    whole = next(r for r in expected if r['step'] == stopped_after + 1)
    assert (split[stopped_after]['loss'] + split[stopped_after + 1]['loss']) / 2 == (
        pytest.approx(whole['loss'], rel=1e-6))
    records = [r for r in records if r['step'] not in split]
    expected = [r for r in expected if r['step'] != stopped_after + 1]
  assert records == expected


def _logged_step(workdir):
  """The last step in metrics.jsonl (0 without one)."""
  try:
    lines = (workdir / 'metrics.jsonl').read_text().splitlines()
    return json.loads(lines[-1])['step'] if lines else 0
  except (FileNotFoundError, ValueError):  # not written yet, or a line being written
    return 0


@pytest.fixture
def start():
  """start(args, log): a subprocess (killed at teardown if still running) writing its
  stdout and stderr to log.out and log.err."""
  procs = []

  def start(args, log):
    procs.append(subprocess.Popen(args, cwd=ROOT, stdout=open(f'{log}.out', 'w'),
                                  stderr=open(f'{log}.err', 'w'), text=True))
    return procs[-1]

  yield start
  for proc in procs:
    proc.kill()
    proc.wait()


def _wait_for(proc, condition, log, timeout=240):
  """Polls condition every millisecond until it holds; fails if proc exits first."""
  deadline = time.monotonic() + timeout
  while not condition():
    if proc.poll() is not None or time.monotonic() > deadline:
      pytest.fail(f'exit status {proc.returncode} before the kill point:\n' +
                  open(f'{log}.err').read()[-3000:])
    time.sleep(0.001)


def test_killed_anywhere_and_preempted_runs_resume_to_the_uninterrupted_result(
    reference, tmp_path, start):
  """SIGKILL inside a checkpoint save, SIGKILL and SIGTERM at seeded steps, each followed
  by a restart with the same command; the last restart runs to the end."""
  workdir = tmp_path / 'run'
  checkpoints = workdir / 'checkpoints'
  args = cli_args(workdir, **FAULTS)
  listing = lambda: os.listdir(checkpoints) if checkpoints.exists() else []
  rng = random.Random(24)

  # SIGKILL the moment Orbax's temporary directory for a step appears: mid-save, with
  # the step-20 checkpoint complete. The kill landed inside the save if the temporary
  # directory is still there and the step's own is not; the save may also win the race
  # (or finish between two looks), then the next one is the target.
  for target in (40, 60, 80):
    proc = start(args, tmp_path / f'save{target}')
    _wait_for(proc, lambda: {f'{target}{TMP}', str(target)} & set(listing()),
              tmp_path / f'save{target}')
    proc.kill()
    proc.wait()
    if f'{target}{TMP}' in listing() and str(target) not in listing():
      break
  else:
    pytest.fail('no SIGKILL landed inside a checkpoint save in three tries')

  # SIGKILL right after a seeded log step, between checkpoints.
  kill_at = rng.randrange(_logged_step(workdir) + 2, 120, 2)
  proc = start(args, tmp_path / 'kill')
  _wait_for(proc, lambda: _logged_step(workdir) >= kill_at, tmp_path / 'kill')
  proc.kill()
  proc.wait()

  # SIGTERM after a seeded log step: the run stops after its step with a checkpoint and
  # says how to resume.
  term_at = rng.randrange(_logged_step(workdir) + 2, 150, 2)
  proc = start(args, tmp_path / 'term')
  _wait_for(proc, lambda: _logged_step(workdir) >= term_at, tmp_path / 'term')
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=120) == 128 + signal.SIGTERM
  err = (tmp_path / 'term.err').read_text()
  stopped = re.search(r'SIGTERM received: stopped after step (\d+) of 300 and saved a '
                      r'checkpoint in (\S+)\. To resume, run the same command again', err)
  assert stopped, err[-3000:]
  assert int(stopped[1]) < 300 and os.path.isdir(stopped[2])
  assert max(map(int, filter(str.isdigit, listing()))) == int(stopped[1])
  assert _logged_step(workdir) <= int(stopped[1])

  train.train_and_evaluate(tiny_config(**FAULTS), str(workdir))
  assert_same_run(reference, workdir, stopped_after=int(stopped[1]))
  assert _records(workdir)[0]['step'] == 2  # one record per log step, none repeated
  assert not [n for n in listing() if TMP in n]  # unfinished saves were removed


def _truncate_largest_array_file(step_dir):
  files = [os.path.join(d, f) for d, _, fs in os.walk(step_dir / 'default') for f in fs
           if os.path.basename(d) == 'd']  # OCDBT's data files, not the JSON metadata
  largest = max(files, key=os.path.getsize)
  with open(largest, 'r+b') as f:
    f.truncate(os.path.getsize(largest) // 2)


def _files(directory):
  return {os.path.relpath(os.path.join(d, f), directory): open(os.path.join(d, f), 'rb').read()
          for d, _, fs in os.walk(directory) for f in fs}


def test_sigint_stops_with_a_checkpoint_and_unreadable_ones_are_kept_and_skipped(
    reference, tmp_path, monkeypatch, caplog, request):
  """Ctrl-C in the loop stops it after the current step, with a checkpoint there, before
  the next periodic one (60). Then that checkpoint (an array file cut short) and the one at
  40 (its array metadata gone) cannot be read: each is reported by step and error and moved
  whole to unreadable_checkpoints/, and the rerun resumes from 20 to the uninterrupted
  run's end."""
  checkpoints = tmp_path / 'checkpoints'
  train_batch = data.train_batch
  # Ctrl-C's default action, also where this runs with SIGINT ignored (a background job).
  previous = signal.signal(signal.SIGINT, signal.default_int_handler)
  request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))

  def interrupting_train_batch(split, step, *args):
    if step == 43:  # asked for by the prefetching thread, a few steps ahead of the loop
      os.kill(os.getpid(), signal.SIGINT)
    return train_batch(split, step, *args)

  monkeypatch.setattr(data, 'train_batch', interrupting_train_batch)
  with pytest.raises(preemption.Preempted, match=r'SIGINT received: stopped after step') as e:
    train.train_and_evaluate(tiny_config(**FAULTS), str(tmp_path))
  stopped = e.value.step
  assert 40 < stopped < 60
  assert sorted(map(int, os.listdir(checkpoints))) == [20, 40, stopped]
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
  monkeypatch.undo()

  _truncate_largest_array_file(checkpoints / str(stopped))
  os.remove(checkpoints / '40' / 'default' / '_METADATA')
  damaged = {step: _files(checkpoints / str(step)) for step in (40, stopped)}
  caplog.set_level('WARNING')
  train.train_and_evaluate(tiny_config(**FAULTS), str(tmp_path))
  warnings = '\n'.join(r.getMessage() for r in caplog.records)
  assert re.search(rf'checkpoint at step {stopped} in \S+ cannot be read \(ValueError: \w+: '
                   r'Error reading .* in OCDBT database', warnings), warnings
  assert re.search(r'checkpoint at step 40 in \S+ cannot be read \(\w+: ', warnings)
  assert 'resuming from step 20' in warnings
  for step in (40, stopped):
    assert _files(tmp_path / checkpoint.UNREADABLE_DIR / str(step)) == damaged[step]
  assert_same_run(reference, tmp_path)
  assert _records(tmp_path)[0]['step'] == 2

  # When no checkpoint can be read, the run stops and moves nothing.
  workdir = tmp_path / 'none_readable'
  shutil.copytree(reference / 'checkpoints' / '300', workdir / 'checkpoints' / '300')
  _truncate_largest_array_file(workdir / 'checkpoints' / '300')
  with pytest.raises(ValueError, match=r'no checkpoint in \S+ can be read \(step 300: '
                     r'ValueError: \w+: Error reading .*\)\. Nothing was moved or deleted'):
    train.train_and_evaluate(tiny_config(**FAULTS), str(workdir))
  assert os.listdir(workdir / 'checkpoints') == ['300']


def test_nan_check_stops_at_the_first_non_finite_step_reading_metrics_at_log_steps(
    tmp_path, monkeypatch):
  """A corrupt batch at step 23 (ids past the vocabulary, which the embedding's gather
  reads as NaN) makes that step's loss NaN. The check reads the metrics at log and
  checkpoint steps only (every second step here), finds step 23 at step 24, and leaves the
  step-20 checkpoint as it was. The run's steps are FAULTS' (nothing new to compile)."""
  train_batch = data.train_batch

  def corrupting_train_batch(split, step, *args):
    batch = train_batch(split, step, *args)
    return np.full_like(batch, 10**6) if step == 22 else batch  # the batch of step 23

  checked = []
  check_finite = reporting.check_finite

  def recording_check_finite(first_step, history, manager):
    checked.append((first_step, len(history)))
    return check_finite(first_step, history, manager)

  monkeypatch.setattr(data, 'train_batch', corrupting_train_batch)
  monkeypatch.setattr(reporting, 'check_finite', recording_check_finite)
  with pytest.raises(FloatingPointError, match=r"'loss' is nan at step 23; lower "
                     r'opt.learning_rate.* The last checkpoint, step 20 in \S+, is from '
                     r'before it; rerun with the same workdir'):
    train.train_and_evaluate(tiny_config(**FAULTS, check_nans=True), str(tmp_path))
  assert checked == [(step - 1, 2) for step in range(2, 25, 2)]
  assert os.listdir(tmp_path / 'checkpoints') == ['20']
  restored = ocp.StandardCheckpointer().restore(tmp_path / 'checkpoints' / '20' / 'default')
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(restored))


def test_stop_request_handles_sigterm_once_and_leaves_ignored_signals_alone(request):
  """One process: SIGTERM is recorded and its previous handler put back (a second one acts
  at once); SIGINT, ignored as in a background job, stays ignored."""
  previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
  request.addfinalizer(lambda: [signal.signal(s, h) for s, h in previous.items()])
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  signal.signal(signal.SIGTERM, signal.SIG_DFL)
  with preemption.StopRequest(0) as signals:
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    assert signal.getsignal(signal.SIGTERM) == signals._handle
    assert not signals.stop(1)
    os.kill(os.getpid(), signal.SIGTERM)  # handled before the next line runs
    assert signals.stop(2) and signals.signal_name == 'SIGTERM'
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
  assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


@pytest.mark.parametrize('kind', ['a file', 'under a file', 'read-only'])
def test_workdir_that_cannot_be_written_fails_before_the_data_is_loaded(
    tmp_path, monkeypatch, kind):
  (tmp_path / 'file').write_text('')
  workdir = {'a file': tmp_path / 'file', 'under a file': tmp_path / 'file' / 'run',
             'read-only': tmp_path / 'read-only'}[kind]
  if kind == 'read-only':
    if os.geteuid() == 0:
      pytest.skip('root writes in read-only directories')
    workdir.mkdir(mode=0o500)
  monkeypatch.setattr(data, 'load_dataset', lambda *a: pytest.fail('data loaded'))
  problem = {'a file': 'is a file, not a directory',
             'under a file': 'Not a directory', 'read-only': 'Permission denied'}[kind]
  with pytest.raises(ValueError, match=f'workdir {re.escape(str(workdir))}.*{problem}.*'
                     'pass a --workdir'):
    train.train_and_evaluate(tiny_config(), str(workdir))


class _Stream(io.StringIO):

  def __init__(self, tty):
    super().__init__()
    self.tty = tty

  def isatty(self):
    return self.tty


def test_progress_line_in_place_on_a_terminal_and_plain_lines_elsewhere():
  """Steps 1..10, a log step every 4 (losses 3.0, 2.5, then 2.25 at the last step); the
  first step returns at t = 10 s (after compiling), then 0.5 s per step."""
  def run(tty):
    now = [0.0]
    line = reporting.ProgressLine(10, _Stream(tty), every_secs=2.5, redraw_secs=0.0,
                              clock=lambda: now[0])
    for step in range(1, 11):
      now[0] = 10 + 0.5 * (step - 1)
      line.update(step, {4: 3.0, 8: 2.5, 10: 2.25}.get(step))
    return line.stream.getvalue()

  # Rates: 3 steps in 1.5 s at step 4; from step 4 on, 4 steps in 2 s, then 6 in 3 s.
  assert run(tty=False).splitlines() == [
      'step 4/10 | 2 steps/s | ETA 3s | loss 3.0000',
      'step 10/10 | 2 steps/s | loss 2.2500']  # step 8: 2 s after the last line
  screen = run(tty=True)
  frames = screen.split('\r')[1:]  # each redraw pads to the width of the one before
  assert frames[-1] == 'step 10/10 | 2 steps/s | loss 2.2500'.ljust(len(frames[-2])) + '\n'
  assert [f.rstrip() for f in frames[:5]] == [
      'step 1/10', 'step 2/10', 'step 3/10', 'step 4/10 | 2 steps/s | ETA 3s | loss 3.0000',
      'step 5/10 | 2 steps/s | ETA 2s | loss 3.0000']
  assert '\n' not in screen[:-1]


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


# One process of a two-process run: a collective at each step, as a train step has, and
# the loop's StopRequest. Argv: coordinator address, process id. SIGINT acts as in a
# foreground process, also where the tests run as a background job (which ignores it).
_TWO_PROCESS_LOOP = """
import signal
import sys
signal.signal(signal.SIGINT, signal.default_int_handler)
import jax
import numpy as np
from jax.experimental import multihost_utils
jax.distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
from md4 import preemption
with preemption.StopRequest(0) as signals:
  for step in range(1, 10**6):
    multihost_utils.process_allgather(np.int32(step))
    if step == 10:
      print('running', flush=True)
    if signals.stop(step):
      break
print('stopped after', step, signals.signal_name, flush=True)
"""


def test_two_processes_stop_after_the_same_step_when_one_gets_sigint(tmp_path, start):
  """Ctrl-C reaches the second process only; JAX's preemption service (to which it is
  handed as SIGTERM) picks one step, and both stop after it: none waits forever in the
  next step's collective. (The whole loop does the same; a run of two processes of
  md4/main.py with --coordinator_address stops after one step and saves it.)"""
  address = f'localhost:{_free_port()}'
  logs = [tmp_path / f'p{i}' for i in range(2)]
  procs = [start([sys.executable, '-c', _TWO_PROCESS_LOOP, address, str(i)], log)
           for i, log in enumerate(logs)]
  for proc, log in zip(procs, logs):
    _wait_for(proc, lambda: 'running' in open(f'{log}.out').read(), log, timeout=120)
  procs[1].send_signal(signal.SIGINT)
  assert [proc.wait(timeout=60) for proc in procs] == [0, 0]
  stops = [re.search(r'^stopped after (\d+) (\w+)$', open(f'{log}.out').read(), re.M)
           for log in logs]
  assert stops[0] and stops[1] and stops[0][1] == stops[1][1]
  assert (stops[0][2], stops[1][2]) == ('None', 'SIGINT')


def _sigterm_when(condition, delay):
  """A thread that sends this process SIGTERM `delay` seconds after `condition()` holds;
  returns a list that receives the time of the signal."""
  sent = []

  def watch():
    deadline = time.monotonic() + 240
    while not condition() and time.monotonic() < deadline:
      time.sleep(0.01)
    time.sleep(delay)
    sent.append(time.monotonic())
    os.kill(os.getpid(), signal.SIGTERM)

  threading.Thread(target=watch, daemon=True).start()
  return sent


@pytest.mark.parametrize('phase', ['eval', 'samples'])
def test_sigterm_during_the_last_eval_or_sampling_stops_within_seconds(
    tmp_path, request, phase):
  """The last step's checkpoint is saved before its eval and samples. An eval (10,000 draws
  per batch) or a sampling run (10^6 reverse steps) that would take many minutes stops
  within seconds of SIGTERM, with that checkpoint in place; the rerun does what was cut
  short (with a shorter eval or sampling) and finishes, one record per step."""
  previous = signal.getsignal(signal.SIGTERM)
  request.addfinalizer(lambda: signal.signal(signal.SIGTERM, previous))
  long = {'eval_repeats': 10_000} if phase == 'eval' else {'sampling.timesteps': 10**6}
  config = lambda **kw: tiny_config(**{'num_train_steps': 4, 'eval_every_steps': 4,
                                       'sample_every_steps': 4, 'checkpoint_every_steps': 4,
                                       **kw})
  def started():  # the phase is under way: the checkpoint saved; for samples, eval done
    if not (tmp_path / 'checkpoints' / '4').exists():
      return False
    return phase == 'eval' or '"valid_loss"' in (tmp_path / 'metrics.jsonl').read_text()

  sent = _sigterm_when(started, delay=3.0)
  with pytest.raises(preemption.Preempted, match='SIGTERM received: stopped after step 4 '
                     'of 4') as stopped:
    train.train_and_evaluate(config(**long), str(tmp_path))
  assert time.monotonic() - sent[0] < 60
  assert stopped.value.step == 4 and os.listdir(tmp_path / 'checkpoints') == ['4']
  record = _records(tmp_path)[-1]
  assert record['step'] == 4 and ('valid_loss' in record) == (phase == 'samples')
  assert not (tmp_path / 'samples').exists()

  metrics = train.train_and_evaluate(config(), str(tmp_path))
  records = _records(tmp_path)
  assert [r['step'] for r in records] == [2, 4]
  assert records[-1]['valid_loss'] == pytest.approx(metrics['valid_loss'])
  assert (record.items() <= records[-1].items()) and 'loss' in records[-1]
  assert (tmp_path / 'samples' / 'step_00000004.txt').exists()
  assert os.listdir(tmp_path / 'checkpoints') == ['4']
