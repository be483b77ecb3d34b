"""Where a run's progress goes: the terminal's progress line, metrics.jsonl, TensorBoard
(clu's writers), sample files; and the check that the metrics are finite.

Process 0 writes everything; the other processes only log. Metrics are read from the
device at log steps only, never at every step.
"""

import json
import math
import os
import sys
import time

from absl import logging
import jax
import numpy as np

from md4 import files
from md4 import samples as samples_lib


def format_secs(secs):
  secs = int(round(secs))
  h, m, s = secs // 3600, secs // 60 % 60, secs % 60
  return f'{h}h{m:02d}m' if h else f'{m}m{s:02d}s' if m else f'{s}s'


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
        parts.append(f'ETA {format_secs((self.num_steps - step) / self.rate)}')
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


class JsonlWriter:
  """One JSON object per logged step in {workdir}/metrics.jsonl.

  A step's metrics may come in parts (train metrics, then its eval's after the checkpoint
  is saved): a part for the step of the last record is merged into it, so that each step
  has one record. A run resumed from step `start_step` first drops the records after it
  (and a line cut short by a killed process): they came from a run that stopped before its
  next checkpoint, and this one writes them again, so that the file reads as one
  uninterrupted run.
  """

  def __init__(self, workdir, start_step=0):
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self.records = []
    if os.path.exists(self.path):
      with open(self.path) as f:
        lines = f.read().splitlines()
      self.records = [r for r in map(_record, lines) if r and r['step'] <= start_step]
      if len(self.records) != len(lines):
        self._rewrite()

  def _rewrite(self):
    files.atomic_write(self.path, ''.join(json.dumps(r) + '\n' for r in self.records))

  def write(self, step, metrics):
    part = {k: float(v) for k, v in metrics.items()}
    if self.records and self.records[-1]['step'] == step:
      self.records[-1].update(part)
      self._rewrite()
      return
    self.records.append({'step': int(step), **part})
    with open(self.path, 'a') as f:
      f.write(json.dumps(self.records[-1]) + '\n')

  def logged(self, step) -> dict:
    """The record of `step` ({} if none)."""
    return next((r for r in reversed(self.records) if r['step'] == step), {})


def _record(line):
  try:
    record = json.loads(line)
    return record if isinstance(record.get('step'), int) else None
  except (ValueError, AttributeError):
    return None


def flatten(tree, prefix=''):
  """{'a': {'b': 1}} -> {'a.b': 1}, non-scalar values as strings (hyperparameters)."""
  flat = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      flat.update(flatten(v, f'{prefix}{k}.'))
    else:
      flat[f'{prefix}{k}'] = v if isinstance(v, (int, float, str, bool)) else str(v)
  return flat


def mean_metrics(history):
  """The mean of each metric over a list of per-step metric dicts (read from the device)."""
  stacked = jax.device_get(history)
  return {k: float(np.mean([m[k] for m in stacked])) for k in stacked[0]}


def check_finite(first_step, history, manager):
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


class Reporter:
  """A run's outputs in its workdir: metrics to TensorBoard and metrics.jsonl, samples to
  samples/, and the progress line, all from process 0."""

  def __init__(self, workdir, config, start_step):
    from clu import metric_writers  # pylint: disable=g-import-not-at-top  (imports TF)
    self.workdir = workdir
    self.main = jax.process_index() == 0
    self.writer = metric_writers.create_default_writer(workdir, just_logging=not self.main)
    self.jsonl = JsonlWriter(workdir, start_step) if self.main else None
    self.progress = ProgressLine(config.num_train_steps) if self.main else None
    if self.main and start_step == 0:
      self.writer.write_hparams(flatten(config.to_dict()))

  def before_output(self):
    """Clears the progress line so that log lines start on a line of their own."""
    if self.progress:
      self.progress.clear()

  def scalars(self, step, record):
    """Writes a record (or a part of one) of `step`."""
    self.writer.write_scalars(step, record)
    if self.jsonl:
      self.jsonl.write(step, record)

  def logged(self, step) -> dict:
    """What metrics.jsonl holds for `step` ({} if nothing, or not process 0)."""
    return self.jsonl.logged(step) if self.jsonl else {}

  def sample_path(self, step, info):
    return os.path.join(self.workdir, 'samples', f'step_{step:08d}.{samples_lib.suffix(info)}')

  def samples(self, step, tokens, info):
    """Writes the samples of `step` [N, *S] to samples/ and a few to TensorBoard."""
    if not self.main:
      return
    path = self.sample_path(step, info)
    written = samples_lib.write(path, tokens, info)
    if info.is_image:
      self.writer.write_images(step, {'samples': written[None]})
    else:
      texts = [info.decode(s) for s in tokens[:4]]
      self.writer.write_texts(step, {'samples': samples_lib.format_texts(
          texts, info.sample_format)})
    logging.info('Wrote samples to %s', path)

  def update(self, step, loss=None, flush=False):
    """The progress line after `step`; flush: the log lines above it first."""
    if self.progress:
      if flush and self.progress.tty:
        self.writer.flush()
      self.progress.update(step, loss)

  def close(self):
    if self.progress:
      self.progress.close()
    self.writer.flush()
