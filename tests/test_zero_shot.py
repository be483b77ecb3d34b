"""The zero-shot benchmark sets (md4.zero_shot, md4.data.zero_shot): detokenizers, local
files in each set's own format, the row layouts, offline failures, and
md4/evaluate.py --zero_shot's table on a toy GPT-2 run."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from md4 import configs
from md4 import inference
from md4 import run as run_lib
from md4 import train
from md4 import zero_shot
from md4.data import text
from md4.data import tokenizer
from md4.data import zero_shot as zero_shot_data

ROOT = pathlib.Path(__file__).resolve().parents[1]
EOT = tokenizer.EOT_ID
SEQ_LEN = 32

# (detokenizer, text, what SEDD's and MDLM's detokenizer of that name returns; the
# expected outputs were checked once against theirs, louaaron/Score-Entropy-Discrete-
# Diffusion data.py at 0605786, whose detokenizers MDLM's dataloader.py repeats).
DETOKENIZED = [
    ('wikitext', ' The game @-@ play , which began in 1 @,@ 000 BC ( approximately ) , is'
     ' " great " . \n', ' The game-play, which began in 1,000 BC (approximately), is'
     ' "great".\n'),
    ('wikitext', ' = = = Reception = = = \n', ' === Reception ===\n'),
    ('wikitext', " the players ' guild 's \u00b0 rule : 3 @.@ 5 N km ; [ note ] { x } '"
     " quoted ' ! ? \n", " the players'guild's\u00b0rule: 3.5 1 km; [note] {x} 'quoted'!?\n"),
    ('wikitext', '', ''),
    ('ptb', "the company 's shares fell N N to $ N a share \\/ <unk> and they did n't",
     "the company's shares fell 1 1 to $1 a share / ? and they didn't"),
    ('lm1b', 'He said : " I \'m going to http : / / example.com , ok ? " ( yes ) [ no ] \u00a3'
     ' 5 $ 3 .', 'He said: "I\'m going to http://example.com, ok?" (yes) [no] \u00a35 $3.'),
    ('lm1b', "It 's a test ! Wow !", "It's a test! Wow!"),
    ('lambada', '\u201cHello,\u201d she said.  ', '\n"Hello," she said.'),
]


@pytest.mark.parametrize('name, raw, want', DETOKENIZED)
def test_detokenizers_are_sedds_and_mdlms(name, raw, want):
  assert zero_shot.detokenize(raw, zero_shot.DETOKENIZERS[name]) == want


# Each set's records: one shorter than a row of 32 tokens, one longer, blank WikiText lines.
LONG = 'the fellow was quite sure that the night would never end , and so he waited ' * 3
RECORDS = {
    'lambada': ['\u201cShort,\u201d he said.', LONG.replace(' ,', ','), 'A third passage.'],
    'wikitext2': [' = Title = \n', '', ' A short line . \n', LONG + '\n', ''],
    'ptb': ['a short sentence with N words', LONG.strip(), "it 's done"],  # stripped
    'wikitext103': [' = Other = \n', '', LONG + '\n', ' Tail line @-@ here . \n'],
    'lm1b': ['A short one .', LONG.strip(), 'Last words !'],
}


def _saved_dataset_dict(folder, split, column, records):
  """A `datasets` save_to_disk DatasetDict with one split: Arrow stream + state.json."""
  (folder / split).mkdir(parents=True)
  table = pa.table({column: records})
  with pa.OSFile(str(folder / split / 'data-00000-of-00001.arrow'), 'wb') as sink:
    with pa.ipc.new_stream(sink, table.schema) as writer:
      writer.write_table(table)
  (folder / split / 'state.json').write_text(json.dumps(
      {'_data_files': [{'filename': 'data-00000-of-00001.arrow'}], '_split': split}))
  (folder / 'dataset_dict.json').write_text(json.dumps({'splits': [split]}))


def write_sources(root: pathlib.Path) -> pathlib.Path:
  """Every set in a format of its own: GPT-2's LAMBADA jsonl, the hub's WikiText-2 parquet
  files (a train file beside, to be skipped), PTB's ptb.valid.txt, WikiText-103's
  wiki.valid.raw, and One Billion Words as a saved DatasetDict."""
  with open(root / 'lambada_test.jsonl', 'w') as f:
    f.writelines(json.dumps({'text': t}) + '\n' for t in RECORDS['lambada'])
  wiki = root / 'wikitext2' / 'wikitext-2-raw-v1'
  wiki.mkdir(parents=True)
  pq.write_table(pa.table({'text': RECORDS['wikitext2']}),
                 wiki / 'validation-00000-of-00001.parquet')
  pq.write_table(pa.table({'text': ['never read']}), wiki / 'train-00000-of-00001.parquet')
  (root / 'ptb.valid.txt').write_text(''.join(f' {r} \n' for r in RECORDS['ptb']))
  (root / 'wiki.valid.raw').write_text(''.join(r or '\n' for r in RECORDS['wikitext103']))
  _saved_dataset_dict(root / 'lm1b', 'test', 'text', RECORDS['lm1b'])
  return root


SOURCES = {'lambada': 'lambada_test.jsonl', 'wikitext2': 'wikitext2', 'ptb': 'ptb.valid.txt',
           'wikitext103': 'wiki.valid.raw', 'lm1b': 'lm1b'}


def _stream(name):
  steps = zero_shot.DETOKENIZERS[zero_shot.RECIPES[name].detokenizer]
  return tokenizer.encode_documents([zero_shot.detokenize(r, steps) for r in RECORDS[name]])


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
  root = write_sources(tmp_path_factory.mktemp('sources'))
  data_dir = tmp_path_factory.mktemp('zero_shot')
  metas = {name: zero_shot.prepare(name, str(data_dir), str(root / SOURCES[name]),
                                   seq_len=SEQ_LEN)
           for name in zero_shot_data.BENCHMARKS}
  return root, data_dir, metas


def test_sets_in_their_own_formats_wrap_into_rows(prepared):
  """'wrap': the records' ids, each followed by <|endoftext|>, cut into rows of 32; the
  tail dropped; blank WikiText lines are records of one <|endoftext|>."""
  _, data_dir, metas = prepared
  for name, meta in metas.items():
    stream, lengths = _stream(name)
    n = len(stream) // SEQ_LEN
    zs = zero_shot_data.read(str(data_dir), name, SEQ_LEN)
    assert zs.split == zero_shot_data.BENCHMARKS[name].split and zs.pad_id is None
    np.testing.assert_array_equal(zs.rows, stream[:n * SEQ_LEN].reshape(n, SEQ_LEN))
    assert meta['documents'] == len(RECORDS[name]) == len(lengths)
    assert meta['splits'][zs.split]['dropped_tokens'] == len(stream) - n * SEQ_LEN
  assert metas['wikitext2']['zero_shot']['hf_split'] == 'validation'  # not the train file
  assert metas['lm1b']['zero_shot']['hf_split'] == 'test'


def test_mdlm_and_padded_layouts(prepared, tmp_path):
  root = prepared[0]
  stream, lengths = _stream('lambada')
  zero_shot.prepare('lambada', str(tmp_path), str(root / SOURCES['lambada']),
                    layout='wrap_bos', seq_len=SEQ_LEN)
  rows = zero_shot_data.read(str(tmp_path), 'lambada', SEQ_LEN).rows
  n = len(stream) // (SEQ_LEN - 2)  # MDLM's: <|endoftext|>, 30 tokens, <|endoftext|>
  assert (rows[:, 0] == EOT).all() and (rows[:, -1] == EOT).all() and len(rows) == n
  np.testing.assert_array_equal(rows[:, 1:-1].reshape(-1), stream[:n * (SEQ_LEN - 2)])
  meta = zero_shot.prepare('lambada', str(tmp_path), str(root / SOURCES['lambada']),
                           layout='pad', seq_len=SEQ_LEN)
  zs = zero_shot_data.read(str(tmp_path), 'lambada', SEQ_LEN)
  assert zs.pad_id == EOT and meta['zero_shot']['layout'] == 'pad'
  docs = np.split(stream, np.cumsum(lengths)[:-1])  # each with its <|endoftext|>
  short, long, third = (d[:-1] for d in docs)
  assert len(short) < SEQ_LEN < len(long) <= 2 * SEQ_LEN
  want = [short, long[:SEQ_LEN], long[SEQ_LEN:], third]  # each record's own rows, padded
  assert len(zs.rows) == 4
  for row, ids in zip(zs.rows, want):
    np.testing.assert_array_equal(row[:len(ids)], ids)
    assert (row[len(ids):] == EOT).all()
  np.testing.assert_array_equal(zs.num_tokens(zs.rows), [len(w) for w in want])
  with pytest.raises(ValueError, match='cannot be cut into rows of 16'):
    zero_shot_data.read(str(tmp_path), 'lambada', 16)


def test_too_little_text_and_missing_sources_fail_at_once(prepared, tmp_path, monkeypatch):
  root = prepared[0]
  with pytest.raises(ValueError, match='fill no row of 1024 tokens.*--layout=pad'):
    zero_shot.prepare('ptb', str(tmp_path), str(root / SOURCES['ptb']))
  monkeypatch.setenv('HF_HUB_OFFLINE', '1')  # no hub: says what to download instead
  with pytest.raises((ConnectionError, ImportError), match='ptb.valid.txt.*--source=PATH'):
    zero_shot.prepare('ptb', str(tmp_path))
  with pytest.raises(FileNotFoundError, match='does not exist; give'):
    zero_shot.prepare('lm1b', str(tmp_path), str(tmp_path / 'absent'))
  with pytest.raises(FileNotFoundError, match='prepare_zero_shot_data.py --sets=ptb'):
    zero_shot_data.read(str(tmp_path), 'ptb', SEQ_LEN)
  with pytest.raises(ValueError, match='unknown zero-shot set'):
    zero_shot_data.names(['wikitext'])


@pytest.fixture(scope='module')
def toy_run(tmp_path_factory):
  """A GPT-2-token MD4 run of two steps on a little of Shakespeare's text."""
  from test_openwebtext import prepare, tiny  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp('toy')
  (root / 'works').mkdir()
  for f in sorted(f for fs in text.shakespeare_works().values() for f in fs)[:3]:
    (root / 'works' / f.name).write_text(f.read_text('utf-8')[:3000])
  prepare(root / 'works', root / 'owt', seq_len=SEQ_LEN, eval_fraction=0.34, num_workers=1)
  config = tiny('md4.configs.md4.openwebtext', root / 'owt')
  config.eval_repeats = 2
  train.train_and_evaluate(config, str(root / 'run'))
  return str(root / 'run')


def test_evaluate_cli_prints_the_zero_shot_table(toy_run, prepared):
  _, data_dir, metas = prepared
  proc = subprocess.run(
      [sys.executable, 'md4/evaluate.py', f'--workdir={toy_run}', '--zero_shot=all',
       f'--zero_shot_dir={data_dir}', '--params=raw', '--config.eval_batch_size=4'],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.strip().splitlines()
  assert 'zero-shot negative ELBO in bits per GPT-2 token, rows of 32' in lines[0]
  assert lines[1].startswith('| set | split | layout | examples | tokens | bits | ± |')
  table = {line.split(' | ')[0][2:]: line.split(' | ') for line in lines[3:]}
  assert list(table) == [b.title for b in zero_shot_data.BENCHMARKS.values()]
  for name, bench in zero_shot_data.BENCHMARKS.items():
    row = table[bench.title]
    rows = metas[name]['splits'][bench.split]['rows']
    assert row[1:5] == [bench.split, 'wrap', str(rows), str(rows * SEQ_LEN)]  # every row
    bits, stderr, ppl = float(row[5]), float(row[6]), float(row[7])
    assert 0 < stderr < 1 and ppl == pytest.approx(2**bits, rel=1e-3)
    assert row[8:10] == [f'{bench.paper["MD4-S"]:.2f}', f'{bench.paper["MD4-M"]:.2f} |']
  # The same numbers in-process, and a padded set weighs its rows by their tokens.
  run = run_lib.load_run(toy_run, configs.load(toy_run), params='raw')
  run.config.eval_batch_size = 4
  got = inference.evaluate_zero_shot(run, ['ptb'], str(data_dir))['ptb']
  assert f'{got["loss"]:.4f}' == table['PTB'][5]
