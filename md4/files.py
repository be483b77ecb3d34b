"""Files that appear whole or not at all: written under a temporary name, then renamed.

A reader, or a run resumed after a crash, finds either the previous file or the finished
new one, never a half-written one. The contents go to `temporary_path(path)`, i.e.
`path + '.tmp'` beside the final file (the same directory, so the same filesystem, where
os.replace is atomic), and are renamed over `path` once complete.
"""

from collections.abc import Iterator
import contextlib
import os
from typing import IO


def temporary_path(path: str | os.PathLike) -> str:
  """Where `path` is written before it is renamed into place: `path + '.tmp'`."""
  return os.fspath(path) + '.tmp'


def replace_into_place(path: str | os.PathLike) -> None:
  """Renames the finished `temporary_path(path)` over `path`, atomically."""
  os.replace(temporary_path(path), path)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = 'w') -> Iterator[IO]:
  """`open(temporary_path(path), mode)`, renamed over `path` when the block completes.

  Creates the parent directory. On an exception inside the block the temporary file is
  removed and `path` is left as it was. Text modes write UTF-8.
  """
  if 'w' not in mode:
    raise ValueError(f"atomic_open writes a new file: mode {mode!r} should contain 'w'")
  path = os.fspath(path)
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  tmp = temporary_path(path)
  encoding = None if 'b' in mode else 'utf-8'
  try:
    with open(tmp, mode, encoding=encoding) as f:
      yield f
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise
  replace_into_place(path)


def atomic_write(path: str | os.PathLike, contents: str | bytes) -> None:
  """Writes `contents` (text as UTF-8, or bytes) to `path` through `atomic_open`."""
  with atomic_open(path, 'wb' if isinstance(contents, bytes) else 'w') as f:
    f.write(contents)
