r"""Trains and evaluates an MD4 model.

  python md4/main.py --config=md4/configs/md4/shakespeare.py --workdir=expt/shakespeare \
      [--config.key=value ...] [--sharded]

Multi-host: run the same command on every host with --distributed (JAX then finds the
coordinator on SLURM, Open MPI, TPU pods, or from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES
and JAX_PROCESS_ID), or with --coordinator_address, --num_processes and --process_id.

SIGTERM or SIGINT (Ctrl-C) stops the run after its current step (or within its eval or
sampling) with a checkpoint, and the exit status 128 + the signal's number (143, 130); the
same command resumes it. A problem with the config, the data or the workdir is printed as
one line, with exit status 1.
"""

import os
import shlex
import signal
import sys

# Lets `python md4/main.py` import the package from a plain checkout.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TensorFlow only writes events

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from md4 import cli
from md4 import hardware
from md4 import preemption
from md4 import train

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file, e.g. md4/configs/md4/shakespeare.py.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics, samples.')
_SHARDED = flags.DEFINE_bool(
    'sharded', False, 'Shard parameters and optimizer state over the devices (FSDP) '
    'instead of replicating them.')
_DISTRIBUTED = flags.DEFINE_bool(
    'distributed', False, 'Join a multi-host run through jax.distributed.initialize.')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'host:port of process 0 (implies --distributed).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Processes in the run.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process, in [0, num_processes).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if _DISTRIBUTED.value or _COORDINATOR.value:
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  if jax.process_index() != 0:  # process 0 logs; the others only warn
    logging.set_verbosity(logging.WARNING)
  hardware.warn_without_mimalloc()
  try:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value, sharded=_SHARDED.value)
  except preemption.Preempted as e:
    python = os.path.relpath(sys.executable)
    command = shlex.join([sys.executable if python.startswith('..') else python] + sys.argv)
    print(f'{e} To resume, run the same command again (the same --workdir resumes from '
          f'the latest checkpoint):\n  {command}', file=sys.stderr, flush=True)
    sys.exit(128 + signal.Signals[e.signal_name])  # as the shell reports a signal


if __name__ == '__main__':
  cli.run(main)
