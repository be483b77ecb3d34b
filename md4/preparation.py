"""Preparing GPT-2 token data (OpenWebText, FineWeb-Edu): the recipe, run once, offline.

`prepare` (run by prepare_openwebtext_data.py) reads documents from a local source or the
Hugging Face hub, tokenizes them in worker processes, and writes `data_dir/<name>/` in the
layout that md4.data.openwebtext reads (described there), plus

  shards/   each shard's documents as tokens; an interrupted run skips the shards already
            here (safe to delete once metadata.json exists)

Documents are numbered in source order. Each becomes its GPT-2 ids, truncated to the first
`max_doc_tokens` where that is set (FineWeb-Edu: 1023), followed by <|endoftext|>; the
documents in order make one token stream. The held-out split (`split`, a key of
SPLIT_EVAL_FRACTION) is one of:

  'chunks'     The original release's (its prepare_openwebtext_data.py): the stream is cut
               into rows of seq_len (1024) tokens, the tail that fills no row dropped.
               After every CHUNK_GROUP_DOCS (10,000) documents, and after the last, the
               rows completed since the previous such point are shuffled, the first
               int(n·f) of their n held out for 'valid' (f = 0.02) and the rest kept for
               'train', both in the shuffled order. The original shuffles with numpy's
               unseeded global generator; here group g is shuffled by
               default_rng([CHUNK_SPLIT_SEED, g]).permutation(n), so the split is
               reproducible. Perplexities on this split compare with the paper's.
  'documents'  Whole documents held out: document i when floor((i + 1)·f) > floor(i·f)
               (md4.data.openwebtext.is_eval_document), exactly floor(n·f) of the first n,
               spread evenly (f = 0.0005, nanoGPT's fraction). Each split's documents are
               packed into rows on their own, so no held-out text is ever seen in training.
  'none'       Everything trains (FineWeb-Edu, evaluated on OpenWebText's held-out split).

Every file is written under a temporary name and renamed into place (md4.files),
metadata.json last, so a folder with metadata.json is complete.
"""

from collections.abc import Iterable, Iterator
import concurrent.futures
import dataclasses
import itertools
import json
import multiprocessing
import os
from pathlib import Path

import numpy as np

from md4 import files
from md4.data import openwebtext
from md4.data import tokenizer


@dataclasses.dataclass(frozen=True)
class Recipe:
  """How `prepare` makes a dataset unless told otherwise."""
  hf_path: str  # the Hugging Face dataset streamed when no local source is given
  hf_config: str  # its configuration
  split: str  # the held-out split: a key of SPLIT_EVAL_FRACTION
  max_doc_tokens: int  # each document's ids are cut to this many before <|endoftext|>; 0: all


# One recipe for each of md4.data.openwebtext.GPT2_DATASETS.
RECIPES = {
    # The original's prepare_openwebtext_data.py: all of OpenWebText, whole documents.
    'openwebtext': Recipe('Skylion007/openwebtext', 'plain_text', 'chunks', 0),
    # The original's input_pipeline_v2.py: all of FineWeb-Edu ('default'; the 10B-token
    # sample is hf_config 'sample-10BT'), each document cut to its first 1023 tokens.
    'fineweb_edu': Recipe('HuggingFaceFW/fineweb-edu', 'default', 'none', 1023),
}
# Held-out split -> its default fraction: of each group's rows, of documents, none.
SPLIT_EVAL_FRACTION = {'chunks': 0.02, 'documents': 0.0005, 'none': 0.0}
CHUNK_GROUP_DOCS = 10_000  # 'chunks': documents between two shuffles (the original's)
CHUNK_SPLIT_SEED = 0


# ------------------------------------------------------------------------ sources


def saved_dataset_texts(folder: Path) -> Iterator[str]:
  """The "text" column of a `datasets` save_to_disk folder, in order, read with pyarrow.

  A saved Dataset holds state.json, whose "_data_files" name its Arrow stream files in
  order; a saved DatasetDict holds dataset_dict.json and one such folder per split, of
  which 'train' is read.
  """
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  if (folder / 'dataset_dict.json').exists():
    splits = json.loads((folder / 'dataset_dict.json').read_text())['splits']
    if 'train' not in splits:
      raise ValueError(f'{folder} is a saved DatasetDict without a train split (it has'
                       f' {splits}); save the documents as its train split')
    folder = folder / 'train'
  state_path = folder / 'state.json'
  if not state_path.exists():
    raise FileNotFoundError(f'{state_path} not found: {folder} is not a folder written by'
                            ' `datasets.Dataset.save_to_disk`')
  for entry in json.loads(state_path.read_text())['_data_files']:
    path = folder / entry['filename']
    with pa.memory_map(str(path)) as source:
      reader = pa.ipc.open_stream(source)
      if 'text' not in reader.schema.names:
        raise ValueError(f'{path} has no "text" column (it has {reader.schema.names})')
      for batch in reader:
        yield from batch.column('text').to_pylist()


def local_documents(source: str) -> Iterator[str]:
  """Documents of a local source: a saved HF dataset dir, a folder of .txt, or a JSONL."""
  path = Path(source).expanduser()
  if not path.exists():
    raise FileNotFoundError(f'--source {path} does not exist; give a folder of .txt files,'
                            ' a JSONL file with a "text" field, or a saved HF dataset')
  if path.is_dir() and ((path / 'dataset_info.json').exists()
                        or (path / 'dataset_dict.json').exists()):
    yield from saved_dataset_texts(path)
  elif path.is_dir():
    files = sorted(path.rglob('*.txt'))
    if not files:
      raise FileNotFoundError(f'no .txt files under {path}')
    for f in files:
      yield f.read_text('utf-8', errors='replace')
  elif path.suffix == '.jsonl':
    with open(path, encoding='utf-8') as f:
      for line_number, line in enumerate(f, 1):
        if line.strip():
          record = json.loads(line)
          if 'text' not in record:
            raise ValueError(f'{path} line {line_number} has no "text" field')
          yield record['text']
  else:
    raise ValueError(f'--source {path}: expected a folder of .txt files, a .jsonl file or'
                     ' a saved Hugging Face dataset folder')


def hub_documents(hf_path: str, hf_config: str) -> Iterator[str]:
  """Documents of a Hugging Face dataset's train split, streamed; fails at once offline."""
  local_hint = (f'or pass --source=PATH (a folder of .txt files, a JSONL file with a "text"'
                f' field, or a `save_to_disk` copy of {hf_path})')
  datasets = tokenizer.hub_datasets(f'streaming {hf_path}', local_hint)
  dataset = datasets.load_dataset(hf_path, hf_config, split='train', streaming=True)
  for batch in dataset.iter(batch_size=1000):
    yield from batch['text']


# ---------------------------------------------------------------------- tokenizing


def _shard_path(out_dir: Path, shard: int) -> Path:
  return out_dir / 'shards' / f'{shard:06d}.npz'


def _load_shard(out_dir: Path, shard: int, key: str) -> np.ndarray:
  with np.load(_shard_path(out_dir, shard)) as z:
    return z[key]


def _init_worker():
  os.environ['TOKENIZERS_PARALLELISM'] = 'false'  # one core per worker process


def encode_shard(out_dir: Path, shard: int, texts: list[str], max_doc_tokens: int) -> int:
  """Tokenizes one shard's documents into `tokens` [T] and `lengths` [D]; returns T."""
  tokens, lengths = tokenizer.encode_documents(texts, max_doc_tokens)
  with files.atomic_open(_shard_path(out_dir, shard), 'wb') as f:
    np.savez(f, tokens=tokens, lengths=lengths)
  return len(tokens)


def _check_plan(out_dir: Path, plan: dict):
  """Records the shard settings; refuses to mix shards made with other settings."""
  path = out_dir / 'shards' / 'plan.json'
  if path.exists():
    old = json.loads(path.read_text())
    if old != plan:
      raise ValueError(f'{out_dir / "shards"} holds shards made with {old}, not {plan};'
                       ' rerun with the same settings, or delete that folder to start over')
  else:
    files.atomic_write(path, json.dumps(plan))


def _pool(num_workers: int) -> concurrent.futures.Executor:
  """`num_workers` spawned processes (not forked: the caller may hold threads, e.g. JAX's
  or a prefetch thread's), or for 1 a thread of this process."""
  if num_workers == 1:
    return concurrent.futures.ThreadPoolExecutor(1)
  return concurrent.futures.ProcessPoolExecutor(
      num_workers, mp_context=multiprocessing.get_context('spawn'), initializer=_init_worker)


def _tokenize_shards(documents: Iterator[str], out_dir: Path, shard_docs: int,
                     max_doc_tokens: int, num_workers: int,
                     progress: str | None) -> tuple[int, int]:
  """Writes the shards of `shard_docs` documents not written yet, by `num_workers`;
  returns the numbers of shards and of documents. `progress`: a progress bar's title."""
  bar = None
  if progress:
    import tqdm  # pylint: disable=g-import-not-at-top
    bar = tqdm.tqdm(desc=progress, unit='tok', unit_scale=True)
  num_shards = num_documents = 0
  with _pool(num_workers) as pool:
    pending = set()

    def collect(return_when):
      nonlocal pending
      done, pending = concurrent.futures.wait(pending, return_when=return_when)
      for future in done:
        tokens = future.result()
        if bar is not None:
          bar.update(tokens)

    shards = iter(lambda: list(itertools.islice(documents, shard_docs)), [])
    for shard, texts in enumerate(shards):
      num_shards += 1
      num_documents += len(texts)
      if _shard_path(out_dir, shard).exists():
        continue
      if len(pending) >= 2 * num_workers:  # bounded: the source is read as fast as it is used
        collect(concurrent.futures.FIRST_COMPLETED)
      pending.add(pool.submit(encode_shard, out_dir, shard, texts, max_doc_tokens))
    collect(concurrent.futures.ALL_COMPLETED)
  if bar is not None:
    bar.close()
  return num_shards, num_documents


# ---------------------------------------------------------------------- assembling


class _RowsWriter:
  """Fills a uint16 [rows, seq_len] .npy in order from token pieces (past its end they are
  dropped), under its temporary name (md4.files.temporary_path) until `close`."""

  def __init__(self, path: Path, rows: int, seq_len: int):
    self.path = path
    self.out = np.lib.format.open_memmap(files.temporary_path(path), 'w+', np.uint16,
                                         (rows, seq_len))
    self.flat = self.out.reshape(-1)  # [rows * seq_len]
    self.pos = 0

  def write(self, tokens: np.ndarray):
    take = tokens[: self.flat.size - self.pos]
    self.flat[self.pos : self.pos + len(take)] = take
    self.pos += len(take)

  def close(self):
    assert self.pos == self.flat.size, (self.path, self.pos, self.flat.size)
    self.out.flush()
    del self.out, self.flat
    files.replace_into_place(self.path)
def _blocks(out_dir: Path, num_shards: int, sizes: Iterable[int]) -> Iterator[np.ndarray]:
  """The shards' token stream, cut into consecutive blocks of `sizes` tokens."""
  shards = (_load_shard(out_dir, s, 'tokens') for s in range(num_shards))
  rest = np.empty(0, np.uint16)
  for size in sizes:
    pieces, have = [rest], len(rest)
    while have < size:
      pieces.append(next(shards))
      have += len(pieces[-1])
    stream = np.concatenate(pieces)
    rest = stream[size:]
    yield stream[:size]


def _write_splits(out_dir: Path, seq_len: int, rows: dict[str, int], fill) -> dict:
  """Writes {split}.npy of `rows[split]` rows, by `fill({split: writer})`; returns each
  split's rows and tokens in them."""
  for split, n in rows.items():
    if n == 0:
      raise ValueError(f'the {split} split would have no rows of {seq_len} tokens; use more'
                       ' documents, a larger --eval_fraction or a smaller --seq_len')
  writers = {s: _RowsWriter(out_dir / f'{s}.npy', n, seq_len) for s, n in rows.items()}
  fill(writers)
  for w in writers.values():
    w.close()
  return {s: {'rows': n, 'tokens': n * seq_len} for s, n in rows.items()}


def _assemble_documents(out_dir: Path, num_shards: int, seq_len: int,
                        eval_fraction: float) -> dict:
  """'documents' (and 'none', f = 0): each split's documents packed into rows."""
  held_out, tokens = [], {s: 0 for s in openwebtext.SPLITS}
  first = 0
  for shard in range(num_shards):
    lengths = _load_shard(out_dir, shard, 'lengths')
    index = np.arange(first, first + len(lengths))  # [D]
    held_out.append(openwebtext.is_eval_document(index, eval_fraction))
    first += len(lengths)
    tokens['valid'] += int(lengths[held_out[-1]].sum())
    tokens['train'] += int(lengths[~held_out[-1]].sum())
  splits = openwebtext.SPLITS if eval_fraction > 0 else ('train',)

  def fill(writers):
    for shard in range(num_shards):
      mask = np.repeat(held_out[shard], _load_shard(out_dir, shard, 'lengths'))  # [T]
      stream = _load_shard(out_dir, shard, 'tokens')
      for split in splits:
        writers[split].write(stream[mask == (split == 'valid')])

  counts = _write_splits(out_dir, seq_len, {s: tokens[s] // seq_len for s in splits}, fill)
  return {s: c | {'dropped_tokens': tokens[s] - c['tokens']} for s, c in counts.items()}


def _assemble_chunks(out_dir: Path, num_shards: int, seq_len: int,
                     eval_fraction: float) -> dict:
  """'chunks': the stream's rows, each group's shuffled and its first int(n·f) held out."""
  ends, total, first = [], 0, 0  # tokens up to each group's last document
  for shard in range(num_shards):
    lengths = _load_shard(out_dir, shard, 'lengths')
    cumulative = total + np.cumsum(lengths)  # [D]
    last_of_group = (first + np.arange(1, len(lengths) + 1)) % CHUNK_GROUP_DOCS == 0
    ends.extend(cumulative[last_of_group].tolist())
    total, first = int(cumulative[-1]), first + len(lengths)
  row_ends = np.array(ends + [total]) // seq_len  # [G] rows complete at each shuffle
  sizes = np.diff(row_ends, prepend=0)  # [G] rows shuffled together
  num_eval = [int(n * eval_fraction) for n in sizes.tolist()]  # as the original rounds

  def fill(writers):
    blocks = _blocks(out_dir, num_shards, (n * seq_len for n in sizes.tolist()))
    for group, (block, k) in enumerate(zip(blocks, num_eval)):
      rows = block.reshape(-1, seq_len)  # [n, L]
      order = np.random.default_rng([CHUNK_SPLIT_SEED, group]).permutation(len(rows))
      writers['valid'].write(rows[order[:k]].reshape(-1))
      writers['train'].write(rows[order[k:]].reshape(-1))

  counts = _write_splits(out_dir, seq_len, {'train': int(row_ends[-1]) - sum(num_eval),
                                            'valid': sum(num_eval)}, fill)
  counts['train']['dropped_tokens'] = total - int(row_ends[-1]) * seq_len  # the tail
  counts['valid']['dropped_tokens'] = 0
  return counts


# ----------------------------------------------------------------------- preparing


def _check_settings(split: str, eval_fraction: float, seq_len: int, shard_docs: int,
                    max_doc_tokens: int, max_documents: int | None):
  if (not 0 <= eval_fraction < 1 or (eval_fraction > 0) != (split != 'none')
      or seq_len < 1 or shard_docs < 1 or max_doc_tokens < 0
      or (max_documents is not None and max_documents < 1)):
    raise ValueError(
        'need 0 < eval_fraction < 1 with split chunks or documents (0 with none),'
        ' seq_len >= 1, shard_docs >= 1, max_doc_tokens >= 0, max_documents >= 1; got'
        f' {split}, {eval_fraction}, {seq_len}, {shard_docs}, {max_doc_tokens},'
        f' {max_documents}')


def _already_prepared(out_dir: Path, plan: dict, held_out: dict, seq_len: int) -> dict | None:
  """The metadata of `out_dir` if it holds these very splits, complete; else None."""
  meta_path = out_dir / 'metadata.json'
  if not meta_path.exists():
    return None
  metadata = json.loads(meta_path.read_text())
  if ({k: metadata.get(k) for k in plan} == plan and metadata.get('held_out') == held_out
      and metadata.get('seq_len') == seq_len
      and all((out_dir / f'{s}.npy').exists() for s in metadata['splits'])):
    return metadata
  return None


def _open_documents(source: str | None, recipe: Recipe, hf_config: str,
                    max_documents: int | None, source_name: str) -> Iterator[str]:
  """The first `max_documents` documents of the source, opened now so that a missing or
  empty source fails at once."""
  documents = local_documents(source) if source else hub_documents(recipe.hf_path, hf_config)
  documents = itertools.islice(documents, max_documents)
  first = next(documents, None)
  if first is None:
    raise ValueError(f'{source_name} holds no documents')
  return itertools.chain([first], documents)


def prepare(name: str, data_dir: str, source: str | None = None, seq_len: int = 1024,
            split: str | None = None, eval_fraction: float | None = None,
            max_doc_tokens: int | None = None, hf_config: str | None = None,
            max_documents: int | None = None, shard_docs: int = 2000,
            num_workers: int | None = None, progress: bool = True) -> dict:
  """Tokenizes, splits and writes `data_dir/<name>/`; returns its metadata.

  Unset arguments take the dataset's RECIPES entry (and `split`'s SPLIT_EVAL_FRACTION).
  Shards of `shard_docs` documents are tokenized by `num_workers` processes (default: all
  cores; 1 tokenizes in this process) and written atomically; rerunning skips the shards
  already written, and returns at once when the same data is already prepared. A new
  `split` or `seq_len` reuses the shards. The splits are written to temporary files and
  renamed into place, metadata.json last.
  """
  if name not in RECIPES:
    raise ValueError(f'unknown dataset {name!r}; choose from {sorted(RECIPES)}')
  recipe = RECIPES[name]
  split = split or recipe.split
  if split not in SPLIT_EVAL_FRACTION:
    raise ValueError(f'unknown split {split!r}; choose from {sorted(SPLIT_EVAL_FRACTION)}')
  eval_fraction = SPLIT_EVAL_FRACTION[split] if eval_fraction is None else eval_fraction
  max_doc_tokens = recipe.max_doc_tokens if max_doc_tokens is None else max_doc_tokens
  _check_settings(split, eval_fraction, seq_len, shard_docs, max_doc_tokens, max_documents)
  if source and hf_config:
    raise ValueError('--hf_config names a Hugging Face configuration to stream; it does not'
                     ' apply to a local --source')
  out_dir = Path(data_dir).expanduser() / name
  hf_config = hf_config or recipe.hf_config
  source_name = (str(Path(source).expanduser().resolve()) if source
                 else f'hf:{recipe.hf_path}/{hf_config}')
  plan = {'source': source_name, 'shard_docs': shard_docs, 'max_doc_tokens': max_doc_tokens,
          'max_documents': max_documents}
  held_out = {'split': split, 'eval_fraction': eval_fraction}
  if split == 'chunks':
    held_out |= {'group_documents': CHUNK_GROUP_DOCS, 'seed': CHUNK_SPLIT_SEED}
  metadata = _already_prepared(out_dir, plan, held_out, seq_len)
  if metadata is not None:
    return metadata
  _, tokenizer_files = tokenizer.gpt2_files()
  documents = _open_documents(source, recipe, hf_config, max_documents, source_name)
  _check_plan(out_dir, plan)
  (out_dir / 'metadata.json').unlink(missing_ok=True)  # the splits are about to change
  num_shards, num_documents = _tokenize_shards(
      documents, out_dir, shard_docs, max_doc_tokens, num_workers or os.cpu_count(),
      f'tokenizing {name}' if progress else None)
  assemble = _assemble_chunks if split == 'chunks' else _assemble_documents
  metadata = {
      'name': name, **plan, 'held_out': held_out, 'seq_len': seq_len, 'dtype': 'uint16',
      'tokenizer': 'gpt2', 'tokenizer_files': tokenizer_files,
      'vocab_size': tokenizer.GPT2_VOCAB_SIZE, 'eot_id': tokenizer.EOT_ID,
      'documents': num_documents, 'shards': num_shards,
      'splits': assemble(out_dir, num_shards, seq_len, eval_fraction),
  }
  files.atomic_write(out_dir / 'metadata.json', json.dumps(metadata, indent=1))
  return metadata
