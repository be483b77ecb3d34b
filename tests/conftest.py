"""Test-session settings, made before jax is imported and inherited by the tests'
subprocesses. The tests' models are tiny, so XLA's CPU compiler, not the steps, takes most
of their time:
- one persistent compilation cache for the session, so that a step compiled by one test
  (or one run of a resume test) is not compiled again by the next;
- LLVM's backend optimisation level 0: the suite runs about a third faster.
"""

import os
import shutil
import tempfile

_CACHE = tempfile.mkdtemp(prefix='md4-tests-xla-cache-')
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', _CACHE)
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ['XLA_FLAGS'] = ' '.join(
    filter(None, [os.environ.get('XLA_FLAGS'), '--xla_backend_optimization_level=0']))


def pytest_sessionfinish(session, exitstatus):
  del session, exitstatus
  shutil.rmtree(_CACHE, ignore_errors=True)
