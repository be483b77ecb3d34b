"""Test-session settings, made before jax is imported and inherited by the tests'
subprocesses (and by pytest-xdist's workers, which `make test` runs two of, one per core).
The tests' models are tiny, so XLA's CPU compiler, not the steps, takes most of their time:
- one persistent compilation cache for the session, so that a step compiled by one test
  (or one run of a resume test, or the other worker) is not compiled again by the next;
- LLVM's backend optimisation level 0: the suite runs about a third faster.
"""

import os
import shutil
import tempfile

if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:  # created here, removed at the end
  os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(prefix='md4-tests-xla-cache-')
  os.environ['MD4_TESTS_OWN_CACHE'] = '1'
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
_OPT_LEVEL = '--xla_backend_optimization_level=0'
if _OPT_LEVEL not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = ' '.join(filter(None, [os.environ.get('XLA_FLAGS'), _OPT_LEVEL]))


def pytest_sessionfinish(session, exitstatus):
  del exitstatus
  own = os.environ.get('MD4_TESTS_OWN_CACHE') == '1'
  if own and not hasattr(session.config, 'workerinput'):  # the controller, at the very end
    shutil.rmtree(os.environ['JAX_COMPILATION_CACHE_DIR'], ignore_errors=True)
