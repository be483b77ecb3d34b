"""Preparing the zero-shot benchmark sets (md4.data.zero_shot) from the hub or local files.

The conventions are those of SEDD's (Lou et al., 2024) and MDLM's (Sahoo et al., 2024)
released data code, which the MD4 paper's zero-shot table compares with:

- Records. Each record of the set is a document: a line of WikiText (blank lines are
  empty records, headings ' = Title = ' lines), a PTB sentence, a LAMBADA passage, a One
  Billion Words sentence; read from the hub (`datasets`, the names MDLM uses) or from
  local files in the set's own format (`local_records`).
- Detokenizers (`DETOKENIZERS`). The tokenized text of WikiText, PTB and One Billion Words
  is put back into ordinary text before GPT-2's BPE sees it (' @-@ ' -> '-', " n't" ->
  "n't", '<unk>' -> '?', ...); LAMBADA's curly quotes become straight ones and each
  passage starts with a newline. They are SEDD's, which MDLM reuses, step by step,
  quirks included (e.g. WikiText's quote rule joins "players ' guild" into
  "players'guild").
- Tokens. Each record's GPT-2 ids followed by <|endoftext|> (md4.data.tokenizer).
- Rows (`LAYOUTS`), by default SEDD's 'wrap': the records of each group of
  GROUP_DOCUMENTS (1,000: `datasets.map`'s batch, within which SEDD and MDLM concatenate)
  are concatenated and cut into rows of seq_len, each group's tail that fills no row
  dropped. This is the format MD4's OpenWebText rows have. 'wrap_bos' is MDLM's: pieces of
  seq_len − 2 tokens, each row <|endoftext|> + piece + <|endoftext|> (GPT-2's BOS and EOS
  are both id 50256). 'pad' gives each record rows of its own, the last padded with
  <|endoftext|> (md4.data.zero_shot says how padding is scored); empty records are
  skipped. A set too small for one wrapped row (PTB with a large seq_len and few records,
  or groups of few tokens) fails with a message that suggests 'pad' or a smaller seq_len,
  instead of an empty set.

SEDD and MDLM tokenize with several processes (`num_proc`), which moves the group
boundaries; here groups start at record 0, as with one process. Every file is written
atomically, metadata.json last.
"""

from collections.abc import Callable, Iterator
import dataclasses
import itertools
import json
from pathlib import Path
import re

import numpy as np

from md4 import files
from md4.data import tokenizer
from md4.data import zero_shot as zero_shot_data

GROUP_DOCUMENTS = 1000  # records concatenated together before cutting ('wrap', 'wrap_bos')
SPLIT_NAMES = {'validation': 'valid', 'test': 'test', 'train': 'train'}  # hub -> ours
HUB_SPLITS = {ours: hub for hub, ours in SPLIT_NAMES.items()}

# ------------------------------------------------------------------- detokenizers
# A detokenizer is a table of steps applied in order: ('str', old, new) replaces a
# substring, ('re', pattern, replacement) a regular expression, ('repeat', n, step) applies
# a step n times.

_PUNCTUATION = tuple(('str', f' {p} ', f'{p} ') for p in ':;.!?,')
_BRACKETS = tuple(('re', rf'\{a}\s*([^\{b}]*?)\s*\{b}', rf'{a}\1{b}')
                  for a, b in ('()', '[]', '{}')) + (
                      ('re', r'"\s*([^"]*?)\s*"', r'"\1"'), ('re', r"'\s*([^']*?)\s*'", r"'\1'"))

WIKITEXT = (
    ('str', "s '", "s'"),
    ('re', r"/' [0-9]/", r"/'[0-9]/"),
    ('str', ' @-@ ', '-'), ('str', ' @,@ ', ','), ('str', ' @.@ ', '.'),
    *_PUNCTUATION,
    *_BRACKETS,
    ('str', '= = = =', '===='), ('str', '= = =', '==='), ('str', '= =', '=='),
    ('str', ' \u00b0 ', '\u00b0'),
    ('str', ' \n', '\n'), ('str', '\n ', '\n'),
    ('str', ' N ', ' 1 '),
    ('str', " 's", "'s"),
)

PTB = (
    ('str', " 's", "'s"), ('str', "s ' ", "s' "), ('str', " n't", "n't"),
    ('str', ' \n ', '\n'), ('str', '\\/', '/'),
    ('repeat', 10, ('str', ' N ', ' 1 ')),
    ('str', '$ 1', '$1'), ('str', '# 1', '#1'),
    ('str', '<unk>', '?'),
)

LM1B = (
    ('str', 'http : / / ', 'http://'), ('str', 'https : / / ', 'https://'),
    ('re', r" '(\w+)", r"'\1"),
    ('re', r' (\w+) \. ', r' \1. '), ('re', r' (\w+) \.$', r' \1.'),
    ('str', ' ? ', '? '), ('re', r' \?$', '?'),
    ('str', ' ! ', '! '), ('re', r' !$', '!'),
    ('str', ' , ', ', '), ('str', ' : ', ': '), ('str', ' ; ', '; '), ('str', ' / ', '/'),
    ('re', r'" ([^"]+) "', r'"\1"'), ('re', r"' ([^']+) '", r"'\1'"),
    ('re', r'\( ([^\(\)]+) \)', r'(\1)'), ('re', r'\[ ([^\[\]]+) \]', r'[\1]'),
    ('str', '$ ', '$'), ('str', '\u00a3 ', '\u00a3'),
)

LAMBADA = (('str', '\u201c', '"'), ('str', '\u201d', '"'), ('strip_newline',))


def _step(text: str, step) -> str:
  kind = step[0]
  if kind == 'str':
    return text.replace(step[1], step[2])
  if kind == 're':
    return re.sub(step[1], step[2], text)
  if kind == 'repeat':
    for _ in range(step[1]):
      text = _step(text, step[2])
    return text
  if kind == 'strip_newline':  # LAMBADA's: the passage, stripped, after a newline
    return '\n' + text.strip()
  raise ValueError(f'unknown detokenizer step {step!r}')


def detokenize(text: str, steps) -> str:
  """`text` through a detokenizer's table of steps, in order."""
  for step in steps:
    text = _step(text, step)
  return text


DETOKENIZERS = {'wikitext': WIKITEXT, 'ptb': PTB, 'lm1b': LM1B, 'lambada': LAMBADA,
                'none': ()}

# ------------------------------------------------------------------------ recipes


@dataclasses.dataclass(frozen=True)
class Recipe:
  hf_path: str  # the hub dataset (as MDLM's dataloader names it)
  hf_config: str | None
  field: str  # the column holding a record's text
  detokenizer: str  # a key of DETOKENIZERS
  # How a plain-text file's lines are records, as the hub's loading scripts read the
  # original files: 'wikitext' keeps each line with its newline and makes a blank line ''
  # (WikiText's raw files); 'strip' strips each line (PTB's, One Billion Words').
  lines: str
  fetch: str  # what to download for an offline preparation


RECIPES = {
    'lambada': Recipe(
        'EleutherAI/lambada_openai', 'default', 'text', 'lambada', 'strip',
        "GPT-2's LAMBADA test set lambada_test.jsonl (MDLM and SEDD download it from"
        " OpenAI's gpt-2 data), or the test parquet of EleutherAI/lambada_openai"),
    'wikitext2': Recipe(
        'wikitext', 'wikitext-2-raw-v1', 'text', 'wikitext', 'wikitext',
        "the split's parquet of the hub's wikitext/wikitext-2-raw-v1 (e.g."
        ' validation-00000-of-00001.parquet), or wiki.valid.raw of wikitext-2-raw-v1.zip'),
    'ptb': Recipe(
        'ptb_text_only', None, 'sentence', 'ptb', 'strip',
        "the split's parquet of the hub's ptb_text_only, or ptb.valid.txt of the Penn"
        ' Treebank (Mikolov\'s simple-examples)'),
    'wikitext103': Recipe(
        'wikitext', 'wikitext-103-raw-v1', 'text', 'wikitext', 'wikitext',
        "the split's parquet of the hub's wikitext/wikitext-103-raw-v1, or wiki.valid.raw"
        ' of wikitext-103-raw-v1.zip'),
    'lm1b': Recipe(
        'lm1b', None, 'text', 'lm1b', 'strip',
        "the test parquet of the hub's lm1b, or the folder of the 50 held-out files"
        ' (heldout-monolingual.tokenized.shuffled/news.en.heldout-*, the hub\'s test split) of'
        ' 1-billion-word-language-modeling-benchmark-r13output'),
}


# ------------------------------------------------------------------------ sources


def _text_lines(path: Path, rule: str) -> Iterator[str]:
  with open(path, encoding='utf-8') as f:
    for line in f:
      if rule == 'wikitext':
        yield line if line.strip() else ''
      else:
        yield line.strip()


def _jsonl(path: Path, field: str) -> Iterator[str]:
  with open(path, encoding='utf-8') as f:
    for number, line in enumerate(f, 1):
      if line.strip():
        record = json.loads(line)
        if field not in record:
          raise ValueError(f'{path} line {number} has no {field!r} field (it has'
                           f' {sorted(record)})')
        yield record[field]


def _parquet(path: Path, field: str) -> Iterator[str]:
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  table = pq.ParquetFile(path)
  if field not in table.schema_arrow.names:
    raise ValueError(f'{path} has no {field!r} column (it has {table.schema_arrow.names})')
  for batch in table.iter_batches(columns=[field]):
    yield from batch.column(field).to_pylist()


def _arrow_stream(path: Path, field: str) -> Iterator[str]:
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  with pa.memory_map(str(path)) as source:
    reader = pa.ipc.open_stream(source)
    if field not in reader.schema.names:
      raise ValueError(f'{path} has no {field!r} column (it has {reader.schema.names})')
    for batch in reader:
      yield from batch.column(field).to_pylist()


def saved_dataset_records(folder: Path, split: str, field: str) -> Iterator[str]:
  """The `field` column of a `datasets` save_to_disk folder: a Dataset, or the `split` of
  a DatasetDict; its Arrow files in state.json's order, read with pyarrow."""
  if (folder / 'dataset_dict.json').exists():
    splits = json.loads((folder / 'dataset_dict.json').read_text())['splits']
    if split not in splits:
      raise ValueError(f'{folder} is a saved DatasetDict without a {split!r} split (it has'
                       f' {splits})')
    folder = folder / split
  for entry in json.loads((folder / 'state.json').read_text())['_data_files']:
    yield from _arrow_stream(folder / entry['filename'], field)


# File suffix -> reader of its records (path, recipe).
FILE_READERS: dict[str, Callable] = {
    '.parquet': lambda p, r: _parquet(p, r.field),
    '.jsonl': lambda p, r: _jsonl(p, r.field),
    '.json': lambda p, r: _jsonl(p, r.field),
    '.arrow': lambda p, r: _arrow_stream(p, r.field),
}


def _split_files(folder: Path, split: str) -> list[Path]:
  """The data files under `folder`, sorted; those naming `split` when some do (the hub's
  layout: <config>/<split>-00000-of-00001.parquet), else all of them."""
  found = sorted(p for p in folder.rglob('*') if p.is_file() and not p.name.startswith('.')
                 and p.suffix not in ('.md', '.py', '.lock', '.zip', '.gz'))
  named = [p for p in found if split in p.name or (split == 'validation' and 'valid' in p.name)]
  return named or found


def local_records(source: str, recipe: Recipe, split: str) -> Iterator[str]:
  """The records of a local copy of a set: a save_to_disk folder, a file (.parquet,
  .jsonl, .arrow, or plain text, one record a line), or a folder of such files."""
  path = Path(source).expanduser()
  if not path.exists():
    raise FileNotFoundError(f'--source {path} does not exist; give {recipe.fetch}')
  if path.is_dir() and ((path / 'state.json').exists()
                        or (path / 'dataset_dict.json').exists()):
    yield from saved_dataset_records(path, split, recipe.field)
    return
  paths = _split_files(path, split) if path.is_dir() else [path]
  if not paths:
    raise FileNotFoundError(f'no data files under {path}; give {recipe.fetch}')
  for p in paths:
    reader = FILE_READERS.get(p.suffix)
    yield from (reader(p, recipe) if reader else _text_lines(p, recipe.lines))


def find_source(source_dir: str, name: str) -> str:
  """The local copy of set `name` in `source_dir`: the entry named after it (name/ or
  name.<ext>)."""
  folder = Path(source_dir).expanduser()
  found = sorted(p for p in folder.iterdir() if p.name == name or p.stem == name)
  if not found:
    raise FileNotFoundError(f'{folder} has no copy of {name} ({name}/ or {name}.<ext>);'
                            f' give {RECIPES[name].fetch}')
  return str(found[0])


def hub_records(recipe: Recipe, split: str, name: str) -> Iterator[str]:
  """The records of the hub's copy of a set (`datasets`); fails at once offline with
  what to download instead."""
  hint = (f'or download {recipe.fetch} and pass --source=PATH (or --source_dir=DIR holding'
          f' {name}/ or {name}.<ext>)')
  datasets = tokenizer.hub_datasets(f'downloading {name}', hint)
  dataset = datasets.load_dataset(recipe.hf_path, recipe.hf_config, split=split)
  for batch in dataset.iter(batch_size=GROUP_DOCUMENTS):
    yield from batch[recipe.field]


# ------------------------------------------------------------------------- layouts


def _wrap(seq_len: int, bos: bool):
  """Rows of a group's token stream [T]: full rows of seq_len (with bos: <|endoftext|>,
  seq_len − 2 tokens, <|endoftext|>); returns (rows [n, seq_len], dropped tokens)."""
  piece = seq_len - 2 if bos else seq_len

  def rows(stream, lengths):
    del lengths
    n = len(stream) // piece
    body = stream[:n * piece].reshape(n, piece)
    if bos:
      eot = np.full((n, 1), tokenizer.EOT_ID, np.uint16)
      body = np.concatenate([eot, body, eot], axis=1)
    return body, len(stream) - n * piece

  return rows


def _pad(seq_len: int):
  """Each record's own rows: its ids cut into rows of seq_len, the last padded with
  <|endoftext|> (which also ends the record); empty records skipped."""

  def rows(stream, lengths):
    out = []
    for end, length in zip(np.cumsum(lengths).tolist(), lengths.tolist()):
      ids = stream[end - length:end - 1]  # the record without its <|endoftext|>
      for start in range(0, len(ids), seq_len):
        row = np.full(seq_len, tokenizer.EOT_ID, np.uint16)
        row[:len(ids[start:start + seq_len])] = ids[start:start + seq_len]
        out.append(row)
    return np.stack(out) if out else np.zeros((0, seq_len), np.uint16), 0

  return rows


# Layout -> (seq_len -> rows(stream, lengths) -> (rows, dropped)), and its padding id.
LAYOUTS = {
    'wrap': (lambda seq_len: _wrap(seq_len, bos=False), None),  # SEDD's (the default)
    'wrap_bos': (lambda seq_len: _wrap(seq_len, bos=True), None),  # MDLM's
    'pad': (_pad, tokenizer.EOT_ID),  # one record per row, padded
}


# ----------------------------------------------------------------------- preparing


def _records(name, recipe, source, split, max_documents):
  records = local_records(source, recipe, split) if source else hub_records(recipe, split,
                                                                            name)
  return itertools.islice(records, max_documents)


def _build_rows(records, recipe, layout, seq_len, group_documents):
  """All rows of the records, group by group; and the counts of documents and tokens."""
  make_rows = LAYOUTS[layout][0](seq_len)
  steps = DETOKENIZERS[recipe.detokenizer]
  out, counts = [], {'documents': 0, 'tokens': 0, 'dropped_tokens': 0}
  groups = iter(lambda: list(itertools.islice(records, group_documents or None)), [])
  for group in groups:
    stream, lengths = tokenizer.encode_documents([detokenize(t, steps) for t in group])
    rows, dropped = make_rows(stream, lengths)
    out.append(rows)
    counts['documents'] += len(group)
    counts['tokens'] += len(stream)
    counts['dropped_tokens'] += dropped
  rows = np.concatenate(out) if out else np.zeros((0, seq_len), np.uint16)
  return rows, counts


def _check(layout, seq_len, split):
  if layout not in LAYOUTS:
    raise ValueError(f'unknown layout {layout!r}; choose from {sorted(LAYOUTS)}')
  if split not in SPLIT_NAMES:
    raise ValueError(f'unknown split {split!r}; choose from {sorted(SPLIT_NAMES)}')
  if seq_len < 3:
    raise ValueError(f'--seq_len should be at least 3, got {seq_len}')


def prepare(name: str, data_dir: str, source: str | None = None, layout: str = 'wrap',
            seq_len: int = 1024, split: str | None = None,
            group_documents: int = GROUP_DOCUMENTS, max_documents: int | None = None,
            hf_path: str | None = None, hf_config: str | None = None) -> dict:
  """Prepares benchmark `name` (a key of md4.data.zero_shot.BENCHMARKS) into
  data_dir/<name>/ from `source` (local files; None: the hub) and returns its metadata.

  split: the hub's split name ('validation', 'test'; default the benchmark's). layout: a
  key of LAYOUTS. group_documents: records concatenated together before cutting (0: all).
  hf_path, hf_config: another hub dataset than the recipe's (e.g. a renamed copy).
  """
  zero_shot_data.names([name])
  split = split or HUB_SPLITS[zero_shot_data.BENCHMARKS[name].split]
  _check(layout, seq_len, split)
  recipe = RECIPES[name]
  if hf_path:
    recipe = dataclasses.replace(recipe, hf_path=hf_path, hf_config=hf_config)
  out_dir = Path(data_dir).expanduser() / name
  source_name = (str(Path(source).expanduser().resolve()) if source
                 else f'hf:{recipe.hf_path}/{recipe.hf_config or ""}')
  _, tokenizer_files = tokenizer.gpt2_files()
  records = _records(name, recipe, source, split, max_documents)
  rows, counts = _build_rows(records, recipe, layout, seq_len, group_documents)
  if counts['documents'] == 0:
    raise ValueError(f'{source_name} holds no {split} records of {name}')
  if len(rows) == 0:
    raise ValueError(
        f'{name}: {counts["documents"]} records, {counts["tokens"]} tokens, fill no row of'
        f' {seq_len} tokens with layout {layout!r} (groups of {group_documents} records);'
        ' use --layout=pad, a smaller --seq_len, or check that the whole split was read')
  ours = SPLIT_NAMES[split]
  (out_dir / 'metadata.json').unlink(missing_ok=True)
  with files.atomic_open(out_dir / f'{ours}.npy', 'wb') as f:
    np.save(f, rows)
  pad_id = LAYOUTS[layout][1]
  scored = int((rows != pad_id).sum()) if pad_id is not None else int(rows.size)
  metadata = {
      'name': name, 'source': source_name, 'seq_len': seq_len, 'dtype': 'uint16',
      'tokenizer': 'gpt2', 'tokenizer_files': tokenizer_files,
      'vocab_size': tokenizer.GPT2_VOCAB_SIZE, 'eot_id': tokenizer.EOT_ID,
      'held_out': {'split': 'zero_shot', 'benchmark': name, 'hf_split': split},
      'zero_shot': {'benchmark': name, 'split': ours, 'hf_split': split, 'layout': layout,
                    'detokenizer': recipe.detokenizer, 'group_documents': group_documents,
                    'pad_id': pad_id},
      'documents': counts['documents'],
      'splits': {ours: {'rows': len(rows), 'tokens': int(rows.size), 'scored_tokens': scored,
                        'dropped_tokens': counts['dropped_tokens']}},
  }
  files.atomic_write(out_dir / 'metadata.json', json.dumps(metadata, indent=1))
  return metadata

