"""Stopping a run on request: SIGTERM and SIGINT stop it after the current step, with a
checkpoint, and the same command resumes it.

With one process, handlers record the signal and `StopRequest.stop(step)` reads that
record: no device or network round-trip. The processes of a multi-host run must stop after
the same step, or those that go on wait forever in the next step's collectives. There JAX's
preemption service (started by jax.distributed.initialize) catches SIGTERM itself and its
coordination service picks a step that every process stops after
(multihost_utils.reached_preemption_sync_point, called at every step); SIGINT is handed to
it as a SIGTERM. Without that service the signals keep their default actions: the run
stops at once and resumes from its last periodic checkpoint.
"""

import signal
import threading

from absl import logging
import jax
from jax.experimental import multihost_utils


class Preempted(Exception):
  """Training stopped on a signal before its end, after saving a checkpoint."""

  def __init__(self, signal_name, step, num_steps, directory):
    super().__init__(
        f'{signal_name} received: stopped after step {step} of {num_steps} and saved a '
        f'checkpoint in {directory}.')
    self.signal_name, self.step = signal_name, step


class StopRequest:
  """SIGTERM and SIGINT as a request to stop after the current step and save a checkpoint.

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
    """Whether to stop after train step `step`; every process gets the same answer."""
    if self._service:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.signal_name is not None

  def requested(self) -> bool:
    """Whether to stop the eval or sampling under way (between its batches or chunks).

    One process only: the processes of a multi-host run cannot agree on a point inside an
    eval, so they finish it and stop after their next train step (the checkpoint of the
    step being evaluated is already saved).
    """
    return not self._service and self.signal_name is not None

  def restore(self):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.restore()
