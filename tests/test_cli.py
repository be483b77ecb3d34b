"""The entry points: a user error is one line naming the problem and the fix, with exit
status 1; any other error keeps its traceback."""

import pathlib
import subprocess
import sys

import jax.numpy as jnp
import pytest

from md4 import cli

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(*args):
  return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                        timeout=300)


@pytest.mark.parametrize('args,message', [
    (['md4/main.py', '--config=md4/configs/md4/text8.py', '--workdir={tmp}/run',
      '--config.data.data_dir={tmp}/nowhere'], r'text8.zip'),
    (['md4/main.py', '--config=md4/configs/md4/shakespeare.py', '--workdir={tmp}/file'],
     'is a file, not a directory'),
    (['md4/sample.py', '--workdir={tmp}/nothing_here'], 'config.json not found'),
])
def test_user_errors_are_one_line_without_a_traceback(tmp_path, args, message):
  (tmp_path / 'file').write_text('')
  proc = _run(*(a.format(tmp=tmp_path) for a in args))
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr
  errors = [l for l in proc.stderr.splitlines() if l.startswith('Error: ')]
  assert len(errors) == 1 and message in errors[0], proc.stderr[-3000:]


def test_only_md4s_own_checks_count_as_user_errors():
  try:
    raise ValueError('a check of ours')
  except ValueError as e:
    ours = e  # raised in a test file, not in md4/: not a user error either
  assert not cli.is_user_error(ours)
  try:
    jnp.zeros((2, 3)).reshape(4)  # JAX's own ValueError
  except (ValueError, TypeError) as e:
    theirs = e
  assert not cli.is_user_error(theirs)
  from md4.sampling import options  # pylint: disable=g-import-not-at-top
  try:
    options.Options(sampler='greedy').check()
  except ValueError as e:
    assert cli.is_user_error(e) and 'unknown sampler' in str(e)
  assert not cli.is_user_error(KeyError('x'))
