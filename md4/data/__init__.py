"""The data pipeline: one entry point that dispatches on the dataset name.

`load_dataset(config.data)` returns a `DatasetInfo` and every split as one integer
array `[N, *data_shape]` (large ones memory-mapped; overlapping training windows of a token
stream a strided view of it), or for class-conditional data a dict
`{'x': [N, *data_shape], 'label': [N]}` whose rows are selected together. Batches are plain
row selections of those arrays, as int32: `train_batch` is a pure function of (seed, step),
so resuming from a checkpoint needs only the step, and `eval_batches` walks a split in order.
Every check of the data runs in `load_dataset`, before anything is compiled.
"""

from collections.abc import Callable, Iterator
import dataclasses
import functools
import queue
import threading

import numpy as np

from md4.data import images
from md4.data import openwebtext
from md4.data import protein
from md4.data import ragged
from md4.data import text


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  vocab_size: int                      # number of real token ids; the mask id is vocab_size
  data_shape: tuple[int, ...]          # shape of one example, e.g. (256,)
  # One example's ids [*data_shape] -> readable text, or uint8 pixels [H, W, C] for images.
  decode: Callable[[np.ndarray], str | np.ndarray]
  eval_splits: tuple[str, ...]         # e.g. ('valid', 'test')
  pad_id: int | None = None            # padding id (never masked nor counted); None: none
  length_probs: tuple[float, ...] | None = None  # padded data: P(length = L), L = 0..S
  sample_format: str = 'text'          # how samples are written: md4.samples.TEXT_FORMATS
  num_classes: int = 0                 # K > 0: batches carry labels in [0, K)

  @property
  def is_image(self) -> bool:
    return len(self.data_shape) == 3


# Dataset name -> builder of (vocab_size, decode, {split: [N, *data_shape] integers}) from
# config.data, plus optionally a dict of further DatasetInfo fields.
DATASETS = {
    'shakespeare': lambda c: text.shakespeare(c.data_shape[0], _stride(c)),
    'text8': lambda c: text.text8(c.data_dir, c.data_shape[0], _stride(c)),
    'array': lambda c: text.array(c.data_dir, c.data_shape[0], c.vocab_size, _stride(c)),
    'openwebtext': lambda c: openwebtext.openwebtext(c.data_dir, c.data_shape[0]),
    'fineweb_edu': lambda c: openwebtext.fineweb_edu(c.data_dir, c.data_shape[0]),
    'protein': lambda c: protein.protein(c.data_dir, c.data_shape[0]),
    'digits': images.digits,
    'cifar10': lambda c: images.tfds_images('cifar10', c),
    'imagenet64': lambda c: images.tfds_images('imagenet64', c),
}


# Datasets that are token streams, whose training windows may overlap (train_window_stride).
STREAM_DATASETS = ('array', 'shakespeare', 'text8')


def uses_gpt2_tokens(dataset: str) -> bool:
  """Whether dataset `dataset` holds GPT-2 token ids (md4.data.tokenizer)."""
  return dataset in openwebtext.GPT2_DATASETS


def _stride(data_config) -> int:
  return data_config.get('train_window_stride', 0)


def load_dataset(data_config) -> tuple[DatasetInfo, dict[str, np.ndarray]]:
  """Info and {'train': [N, *data_shape], <each eval split>: ...} (see the module doc)."""
  name = data_config.dataset
  if name not in DATASETS:
    raise ValueError(f'unknown dataset {name!r}; choose from {sorted(DATASETS)}')
  data_shape = tuple(data_config.data_shape)
  if not data_shape or min(data_shape) < 1:
    raise ValueError(f'config.data.data_shape should hold positive sizes, got {data_shape}')
  stride = _stride(data_config)
  if stride and name not in STREAM_DATASETS:
    raise ValueError(f'config.data.train_window_stride = {stride}, but dataset {name!r} has'
                     ' fixed examples; windows of a token stream are for'
                     f' {list(STREAM_DATASETS)}; set it to 0')
  if not 0 <= stride <= data_shape[0]:
    raise ValueError(f'config.data.train_window_stride = {stride} should lie in [0,'
                     f' {data_shape[0]}] (the sequence length; 0: non-overlapping windows)')
  class_conditional = data_config.get('class_conditional', False)
  if class_conditional and name not in images.NUM_CLASSES:
    raise ValueError(f'dataset {name!r} has no labels; class_conditional needs one of '
                     f'{sorted(images.NUM_CLASSES)}')
  if name not in images.NUM_CLASSES and len(data_shape) != 1:
    raise ValueError(f'dataset {name!r} holds token sequences; data_shape should be'
                     f' (sequence_length,), got {data_shape}')
  vocab_size, decode, splits, *extra = DATASETS[name](data_config)
  for split, arr in splits.items():
    if _len(arr) == 0:
      raise ValueError(f'the {split!r} split of dataset {name!r} (data_dir'
                       f' {data_config.data_dir}) has no examples; add data to it')
  wanted = data_config.vocab_size
  if wanted is not None and wanted != vocab_size:
    if wanted < vocab_size or name in images.NUM_CLASSES:
      raise ValueError(f'dataset {name!r} has {vocab_size} token ids but config.data.'
                       f'vocab_size = {wanted}; leave it unset (None)'
                       + ('' if name in images.NUM_CLASSES else ' or set a larger one'))
    decode = functools.partial(_decode_known, decode=decode, known=vocab_size)
    vocab_size = wanted
  eval_splits = tuple(s for s in splits if s != 'train')
  fields = extra[0] if extra else {}
  num_classes = images.NUM_CLASSES[name] if class_conditional else 0
  return (DatasetInfo(vocab_size, data_shape, decode, eval_splits, num_classes=num_classes,
                      **fields), splits)


def _decode_known(ids, decode, known):
  """`decode` of the ids below `known`: the dataset's own, without the extra ones."""
  ids = np.asarray(ids)
  return decode(ids[ids < known])


def _rows(split, rows):
  """Rows of a split (an array or a dict of arrays) as int32: [len(rows), ...]."""
  if isinstance(split, dict):
    return {k: np.asarray(v[rows], np.int32) for k, v in split.items()}
  return np.asarray(split[rows], np.int32)


def _len(split) -> int:
  return len(split['x']) if isinstance(split, dict) else len(split)


def _check_sharding(global_batch_size: int, process_index: int, process_count: int):
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise ValueError(f'batch size {global_batch_size} should be positive and divisible'
                     f' by the process count {process_count}')
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index {process_index} not in [0, {process_count})')


@functools.lru_cache(maxsize=2)
def _permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  """The order of the n training rows in `epoch`: [n], the values of
  `default_rng([seed, epoch]).permutation(n)`, held as int32 where they fit."""
  dtype = np.int32 if n <= np.iinfo(np.int32).max else np.int64
  return np.random.default_rng([seed, epoch]).permutation(np.arange(n, dtype=dtype))


def train_batch(arr, step, global_batch_size, seed, process_index=0,
                process_count=1) -> np.ndarray:
  """This process's rows of the global training batch for `step`: [B // P, *data_shape].

  Training visits rows in the order of the concatenated per-epoch permutations
  `default_rng([seed, epoch]).permutation(N)`; global batch `step` is positions
  [step * B, (step + 1) * B) of that order, and process p takes its p-th B / P slice.
  A `ragged.Ragged` split is cropped with the p-th slice of the global batch's uniforms
  `default_rng([seed, step, 1]).random(B)`.
  """
  _check_sharding(global_batch_size, process_index, process_count)
  n = _len(arr)
  if n == 0:
    raise ValueError('the training split is empty')
  per_process = global_batch_size // process_count
  start = step * global_batch_size + process_index * per_process
  pos = np.arange(start, start + per_process)  # [B / P] positions in the visiting order
  epochs, offsets = np.divmod(pos, n)
  rows = np.empty_like(pos)
  for e in np.unique(epochs):
    rows[epochs == e] = _permutation(seed, int(e), n)[offsets[epochs == e]]
  if isinstance(arr, ragged.Ragged):
    u = np.random.default_rng([seed, step, 1]).random(global_batch_size)  # [B]
    return arr.crops(rows, u[process_index * per_process:][:per_process])
  return _rows(arr, rows)


def check_eval_splits(splits, global_batch_size, process_count=1):
  """Raises unless every eval split of `splits` fills at least one eval batch.

  `eval_batches` would raise the same, but only when the first evaluation comes.
  """
  for split, arr in splits.items():
    if split != 'train' and _len(arr) < global_batch_size:
      multiple = f', a multiple of the {process_count} processes' if process_count > 1 else ''
      raise ValueError(f'the {split!r} split has {_len(arr)} examples, fewer than the eval'
                       f' batch size {global_batch_size}, so it cannot be evaluated; set'
                       f' --config.eval_batch_size to at most {_len(arr)}{multiple}')


def eval_batches(arr, global_batch_size, process_index=0,
                 process_count=1) -> Iterator[np.ndarray]:
  """This process's rows of every full global batch of a split, in order: [B // P, ...]."""
  _check_sharding(global_batch_size, process_index, process_count)
  num_batches = _len(arr) // global_batch_size  # a final partial batch is dropped
  if num_batches == 0:
    raise ValueError(f'the split has {_len(arr)} examples, smaller than the eval batch'
                     f' size {global_batch_size}; use a smaller eval batch size')
  per_process = global_batch_size // process_count
  starts = range(process_index * per_process, num_batches * global_batch_size,
                 global_batch_size)
  return (_rows(arr, slice(s, s + per_process)) for s in starts)


def prefetch(iterator, size=2) -> Iterator:
  """Runs `iterator` in a daemon thread, keeping up to `size` items ready."""
  items = queue.Queue(maxsize=size)
  end = object()

  def produce():
    try:
      for item in iterator:
        items.put((item, None))
      items.put((end, None))
    except BaseException as e:  # re-raised in the consumer
      items.put((end, e))

  threading.Thread(target=produce, daemon=True).start()

  def consume():
    while True:
      item, error = items.get()
      if error is not None:
        raise error
      if item is end:
        return
      yield item

  return consume()
