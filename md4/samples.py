"""Sample files: one writer and one reader per format.

Text samples are written one after another, separated by SEPARATOR; proteins as FASTA
records (60 residues a line); images as one PNG grid (one row per class when
class-conditional). The format of a dataset is its DatasetInfo.sample_format ('text' or
'fasta'), or 'png' for images. Files are written atomically (md4.files).
"""

import numpy as np

from md4 import files
from md4.data import images

SEPARATOR = '\n' + '=' * 40 + '\n'  # between two text samples
FASTA_WIDTH = 60


def _write_text(texts):
  return SEPARATOR.join(texts) + '\n'


def _read_text(contents, path):
  if not contents.endswith('\n'):
    raise ValueError(f'{path} is not a samples file written by md4 (it should end with a'
                     ' newline)')
  return contents[:-1].split(SEPARATOR)


def _write_fasta(texts):
  wrap = lambda s: '\n'.join(s[i:i + FASTA_WIDTH] for i in range(0, len(s), FASTA_WIDTH))
  return ''.join(f'>sample_{i} length={len(s)}\n{wrap(s)}\n' for i, s in enumerate(texts))


def _read_fasta(contents, path):
  del path
  return [''.join(r.split('\n')[1:]) for r in contents.split('>')[1:]]


# Format -> (file suffix, decoded texts -> contents, (contents, path) -> texts).
TEXT_FORMATS = {
    'text': ('txt', _write_text, _read_text),
    'fasta': ('fasta', _write_fasta, _read_fasta),
}


def suffix(info) -> str:
  """The file suffix of `info`'s samples: 'png' for images, else its text format's."""
  if info.is_image:
    return 'png'
  return _text_format(info.sample_format)[0]


def _text_format(name):
  if name not in TEXT_FORMATS:
    raise ValueError(f'unknown sample format {name!r}; choose from {sorted(TEXT_FORMATS)}')
  return TEXT_FORMATS[name]


def format_texts(texts: list[str], sample_format: str) -> str:
  """The contents of a samples file of `texts` in `sample_format`."""
  return _text_format(sample_format)[1](texts)


def write(path: str, tokens: np.ndarray, info) -> np.ndarray | str:
  """Samples [N, *S] decoded with `info` and written to path (text, FASTA or a PNG grid).

  Returns the PNG grid [H', W', C] for images, else the file's contents.
  """
  if info.is_image:
    return images.write_grid(path, np.stack([info.decode(s) for s in tokens]))
  contents = format_texts([info.decode(s) for s in tokens], info.sample_format)
  files.atomic_write(path, contents)
  return contents


def read(path: str) -> list[str]:
  """The texts of a samples file that `write` wrote (.txt or .fasta)."""
  with open(path, encoding='utf-8') as f:
    contents = f.read()
  for suffix_, _, read_fn in TEXT_FORMATS.values():
    if path.endswith('.' + suffix_):
      return read_fn(contents, path)
  raise ValueError(f'{path}: unknown samples file; expected one of'
                   f' {sorted("." + s for s, _, _ in TEXT_FORMATS.values())}')
