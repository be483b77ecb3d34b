"""md4.files: a file written atomically appears whole or not at all."""

import os

import pytest

from md4 import files


def test_atomic_write_creates_the_folder_and_leaves_no_temporary(tmp_path):
  path = tmp_path / 'new' / 'folder' / 'a.json'
  files.atomic_write(path, '{"ü": 1}')
  assert path.read_text('utf-8') == '{"ü": 1}'
  files.atomic_write(str(path), b'\x89PNG')
  assert path.read_bytes() == b'\x89PNG'
  assert os.listdir(path.parent) == ['a.json']


def test_an_exception_inside_leaves_the_old_file_and_no_temporary(tmp_path):
  path = tmp_path / 'samples.txt'
  path.write_text('old')
  with pytest.raises(KeyboardInterrupt):
    with files.atomic_open(path) as f:
      f.write('half of the new')
      f.flush()
      assert os.path.exists(files.temporary_path(path))
      raise KeyboardInterrupt
  assert path.read_text() == 'old'
  assert os.listdir(tmp_path) == ['samples.txt']


def test_temporary_path_is_beside_the_file_and_replaced_into_place(tmp_path):
  path = tmp_path / 'rows.npy'
  assert files.temporary_path(path) == str(path) + '.tmp'
  with open(files.temporary_path(path), 'w') as f:
    f.write('rows')
  files.replace_into_place(path)
  assert path.read_text() == 'rows' and os.listdir(tmp_path) == ['rows.npy']
  with pytest.raises(ValueError, match="should contain 'w'"):
    with files.atomic_open(path, 'a'):
      pass
