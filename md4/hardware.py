"""What this host's CPU and allocator offer: AMX matrix units, mimalloc, a one-line name.

Nothing here changes an experiment: configs never ask the hardware (a variant such as the
Shakespeare config's `:amx` is named on the command line); the loop only warns when a CPU
run goes without mimalloc, and benchmarks name the machine their numbers come from.
"""

import functools
import os
import platform
import sysconfig

from absl import logging
import jax

MIMALLOC_LIB = os.path.join('cmeel.prefix', 'lib', 'libmimalloc.so.3')  # in site-packages


@functools.cache
def cpu_has_amx(cpuinfo='/proc/cpuinfo') -> bool:
  """Whether this host's CPU has bfloat16 matrix units: Intel AMX ('amx_bf16' among the
  flags in `cpuinfo`). There XLA's CPU backend runs bfloat16 products several times faster
  than float32 ones; on CPUs without them (AVX2, or AVX-512 alone) it converts bfloat16
  operands and runs slower than in float32."""
  try:
    with open(cpuinfo) as f:
      return any(line.startswith('flags') and 'amx_bf16' in line.split() for line in f)
  except OSError:  # not Linux
    return False


def mimalloc_preloaded() -> bool:
  """Whether this process runs with mimalloc (LD_PRELOAD) instead of glibc's malloc."""
  if not os.path.exists('/proc/self/maps'):
    return False
  with open('/proc/self/maps') as f:
    return 'libmimalloc' in f.read()


def warn_without_mimalloc():
  """On a CPU, says how to run with mimalloc when this process runs without it.

  Under glibc's malloc, XLA's CPU runtime hands its step's temporary buffer back to the
  kernel after every step and the next step faults it in again. mimalloc with
  MIMALLOC_PURGE_DELAY=-1 keeps freed memory, so CPU training steps run faster
  (docs/experiments.md has the measurements).
  """
  if jax.default_backend() != 'cpu' or (
      mimalloc_preloaded() and os.environ.get('MIMALLOC_PURGE_DELAY') == '-1'):
    return
  lib = os.path.join(sysconfig.get_paths()['purelib'], MIMALLOC_LIB)
  if not os.path.exists(lib):
    lib = f'<site-packages>/{MIMALLOC_LIB} after pip install cmeel-mimalloc'
  logging.warning('On this CPU, training steps run up to 1.4x faster with'
                  ' MIMALLOC_PURGE_DELAY=-1 LD_PRELOAD=%s (as `make train` does).', lib)


def describe() -> str:
  """One line naming this machine: CPU model and threads, JAX and its devices, malloc."""
  cpu = platform.processor() or platform.machine()
  if os.path.exists('/proc/cpuinfo'):
    with open('/proc/cpuinfo') as f:
      names = [l.split(':', 1)[1].strip() for l in f if l.startswith('model name')]
    if names:
      cpu = f'{names[0]} x {len(names)} threads'
    cpu += ' (AMX)' if cpu_has_amx() else ''
  devices = jax.devices()
  malloc = 'mimalloc' if mimalloc_preloaded() else 'glibc malloc'
  return (f'{cpu}; JAX {jax.__version__} on {len(devices)} {devices[0].device_kind};'
          f' {malloc}')
