"""What the command-line entry points share: flags to one call, user errors as one line.

An error the user can fix (a bad config value, a missing data file, an unwritable workdir,
an unknown sampler) is raised by md4's own checks as a ValueError, an OSError (e.g.
FileNotFoundError) or an ImportError with a message that says what is wrong, where, and
what to do; the entry points print that message as one line and exit with status 1. An
error raised anywhere else (in JAX, or a bug) keeps its traceback.
"""

import contextlib
import logging
import os
import sys
import traceback

from absl import app
from absl import logging as absl_logging

USER_ERRORS = (ValueError, OSError, ImportError, FloatingPointError)
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def is_user_error(error: BaseException) -> bool:
  """Whether `error` is one of md4's checks: a USER_ERRORS type raised in md4's code (not
  in its tests, and not in a library it called)."""
  if not isinstance(error, USER_ERRORS):
    return False
  frames = traceback.extract_tb(error.__traceback__)
  return bool(frames) and os.path.abspath(frames[-1].filename).startswith(
      PACKAGE_DIR + os.sep)


@contextlib.contextmanager
def user_errors():
  """Within it, md4's user errors are printed as one line and exit with status 1."""
  try:
    yield
  except USER_ERRORS as e:
    if not is_user_error(e):
      raise
    print(f'Error: {" ".join(str(e).split())}', file=sys.stderr, flush=True)
    sys.exit(1)


def run(main):
  """absl's app.run(main), with md4's user errors printed as one line (exit status 1)."""

  def checked_main(argv):
    # Orbax logs every checkpoint it opens or saves at INFO; keep its warnings only.
    absl_logging.get_absl_handler().addFilter(
        lambda r: r.levelno >= logging.WARNING or '/orbax/' not in r.pathname)
    with user_errors():
      return main(argv)

  app.run(checked_main)
