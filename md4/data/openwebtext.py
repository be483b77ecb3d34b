"""GPT-2 token data (OpenWebText, FineWeb-Edu): prepared once, then read memory-mapped.

`prepare` (run by prepare_openwebtext_data.py) writes `data_dir/<name>/`:

  train.npy, valid.npy  uint16 [N, seq_len]: the packed token stream of each split, every
                        document's GPT-2 ids followed by <|endoftext|>, cut into rows
                        (the tail shorter than seq_len is dropped)
  metadata.json         written last: token and row counts, vocab, source, seq_len, tokenizer
  shards/               each shard's token streams; an interrupted run skips the shards
                        already here (safe to delete once metadata.json exists)

Documents are numbered in source order; document i is held out for 'valid' when
floor((i + 1)·f) > floor(i·f), so exactly floor(n·f) of the first n documents are held
out, spread evenly, whatever the number of workers or shards.

The readers return the splits memory-mapped: batching (md4.data.train_batch) only selects
rows, so the data never has to fit in RAM.
"""

from collections.abc import Iterator
import concurrent.futures
import itertools
import json
import multiprocessing
import os
from pathlib import Path

import numpy as np

from md4.data import tokenizer

# Dataset name -> (Hugging Face dataset, its config) for `prepare` without a local source.
HF_SOURCES = {
    'openwebtext': ('Skylion007/openwebtext', None),
    'fineweb_edu': ('HuggingFaceFW/fineweb-edu', 'sample-10BT'),
}
# Default held-out fraction of documents: nanoGPT's OpenWebText split; FineWeb-Edu is
# evaluated on OpenWebText's eval split, as in the original code.
EVAL_FRACTION = {'openwebtext': 0.0005, 'fineweb_edu': 0.0}
SPLITS = ('train', 'valid')


# ------------------------------------------------------------------------ sources


def _hf_texts(dataset) -> Iterator[str]:
  for batch in dataset.iter(batch_size=1000):
    yield from batch['text']


def local_documents(source: str) -> Iterator[str]:
  """Documents of a local source: a saved HF dataset dir, a folder of .txt, or a JSONL."""
  path = Path(source).expanduser()
  if not path.exists():
    raise FileNotFoundError(f'--source {path} does not exist; give a folder of .txt files,'
                            ' a JSONL file with a "text" field, or a saved HF dataset')
  if path.is_dir() and ((path / 'dataset_info.json').exists()
                        or (path / 'dataset_dict.json').exists()):
    try:
      import datasets  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError(f'{path} is a saved Hugging Face dataset; reading it needs'
                        ' `pip install datasets`') from e
    ds = datasets.load_from_disk(str(path))
    yield from _hf_texts(ds['train'] if isinstance(ds, datasets.DatasetDict) else ds)
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


def hub_documents(name: str) -> Iterator[str]:
  """Documents of the dataset's Hugging Face source, streamed; fails at once offline."""
  hf_path, hf_config = HF_SOURCES[name]
  local_hint = (f'or pass --source=PATH (a folder of .txt files, a JSONL file with a "text"'
                f' field, or a `save_to_disk` copy of {hf_path})')
  try:
    import datasets  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f'streaming {hf_path} needs `pip install datasets`, {local_hint}') from e
  if not tokenizer.hub_reachable():
    raise ConnectionError(f'the Hugging Face hub is not reachable (or HF_HUB_OFFLINE is'
                          f' set), so {hf_path} cannot be streamed; connect, {local_hint}')
  yield from _hf_texts(datasets.load_dataset(hf_path, hf_config, split='train',
                                             streaming=True))


# ---------------------------------------------------------------------- preparing


def is_eval_document(index: np.ndarray, eval_fraction: float) -> np.ndarray:
  """Whether document `index` is held out: floor((i + 1)·f) > floor(i·f)."""
  return np.floor((index + 1) * eval_fraction) > np.floor(index * eval_fraction)


def _shard_path(out_dir: Path, shard: int) -> Path:
  return out_dir / 'shards' / f'{shard:06d}.npz'


def _write_atomic(path: Path, write):
  tmp = path.with_name(path.name + '.tmp')
  with open(tmp, 'wb') as f:
    write(f)
  os.replace(tmp, path)


def _init_worker():
  os.environ['TOKENIZERS_PARALLELISM'] = 'false'  # one core per worker process


def encode_shard(out_dir: Path, shard: int, first_doc: int, texts: list[str],
                 eval_fraction: float) -> int:
  """Tokenizes one shard's documents into its train and valid streams; returns #tokens."""
  held_out = is_eval_document(np.arange(first_doc, first_doc + len(texts)), eval_fraction)
  streams = {s: tokenizer.encode_documents([t for t, h in zip(texts, held_out)
                                            if h == (s == 'valid')]) for s in SPLITS}
  _write_atomic(_shard_path(out_dir, shard), lambda f: np.savez(f, **streams))
  return sum(len(v) for v in streams.values())


def _check_plan(out_dir: Path, plan: dict):
  """Records the shard settings; refuses to mix shards made with other settings."""
  path = out_dir / 'shards' / 'plan.json'
  if path.exists():
    old = json.loads(path.read_text())
    if old != plan:
      raise ValueError(f'{out_dir / "shards"} holds shards made with {old}, not {plan};'
                       ' rerun with the same settings, or delete that folder to start over')
  else:
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, lambda f: f.write(json.dumps(plan).encode()))


def _assemble(out_dir: Path, num_shards: int, split: str, seq_len: int) -> dict:
  """Concatenates the shards' `split` streams into rows [N, seq_len] in {split}.npy."""
  lengths = []
  for shard in range(num_shards):
    with np.load(_shard_path(out_dir, shard)) as z:
      lengths.append(len(z[split]))
  num_tokens = sum(lengths)
  rows = num_tokens // seq_len
  if rows == 0:
    raise ValueError(f'the {split} split has {num_tokens} tokens, fewer than one row of'
                     f' {seq_len}; use more documents, a larger --eval_fraction or a'
                     ' smaller --seq_len')
  path = out_dir / f'{split}.npy'
  tmp = path.with_name(path.name + '.tmp')
  out = np.lib.format.open_memmap(tmp, 'w+', np.uint16, (rows, seq_len))
  flat = out.reshape(-1)  # [rows * seq_len]
  pos = 0
  for shard in range(num_shards):
    if pos == flat.size:
      break
    with np.load(_shard_path(out_dir, shard)) as z:
      stream = z[split][: flat.size - pos]
    flat[pos : pos + len(stream)] = stream
    pos += len(stream)
  out.flush()
  del out, flat
  os.replace(tmp, path)
  return {'tokens': num_tokens, 'rows': rows, 'dropped_tokens': num_tokens - rows * seq_len}


def prepare(name: str, data_dir: str, source: str | None = None, seq_len: int = 1024,
            eval_fraction: float | None = None, shard_docs: int = 2000,
            num_workers: int | None = None, progress: bool = True) -> dict:
  """Tokenizes, packs and writes `data_dir/<name>/`; returns its metadata.

  Shards of `shard_docs` documents are tokenized by `num_workers` processes (default: all
  cores; 1 tokenizes in this process) and written atomically; rerunning skips the shards
  already written, and returns at once when the same data is already prepared. The splits
  are written to temporary files and renamed into place, metadata.json last.
  """
  if name not in HF_SOURCES:
    raise ValueError(f'unknown dataset {name!r}; choose from {sorted(HF_SOURCES)}')
  if eval_fraction is None:
    eval_fraction = EVAL_FRACTION[name]
  if not 0 <= eval_fraction < 1 or seq_len < 1 or shard_docs < 1:
    raise ValueError('need 0 <= eval_fraction < 1, seq_len >= 1 and shard_docs >= 1; got'
                     f' {eval_fraction}, {seq_len}, {shard_docs}')
  out_dir = Path(data_dir).expanduser() / name
  source_name = str(Path(source).expanduser().resolve()) if source else (
      'hf:' + '/'.join(filter(None, HF_SOURCES[name])))
  plan = {'source': source_name, 'shard_docs': shard_docs, 'eval_fraction': eval_fraction}
  meta_path = out_dir / 'metadata.json'
  if meta_path.exists():
    metadata = json.loads(meta_path.read_text())
    if {k: metadata[k] for k in plan} == plan and metadata['seq_len'] == seq_len:
      return metadata  # already prepared
  _, tokenizer_source = tokenizer.gpt2_files()
  documents = local_documents(source) if source else hub_documents(name)
  documents = iter(documents)
  first = next(documents, None)  # opens the source now, so a missing one fails at once
  if first is None:
    raise ValueError(f'{source_name} holds no documents')
  documents = itertools.chain([first], documents)
  _check_plan(out_dir, plan)
  meta_path.unlink(missing_ok=True)  # the splits are about to change

  num_workers = num_workers or os.cpu_count()
  num_shards = 0
  bar = None
  if progress:
    import tqdm  # pylint: disable=g-import-not-at-top
    bar = tqdm.tqdm(desc=f'tokenizing {name}', unit='tok', unit_scale=True)
  if num_workers > 1:  # spawned, not forked: the caller may hold threads (JAX, prefetch)
    pool = concurrent.futures.ProcessPoolExecutor(
        num_workers, mp_context=multiprocessing.get_context('spawn'),
        initializer=_init_worker)
  else:
    pool = concurrent.futures.ThreadPoolExecutor(1)
  with pool:
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
      if _shard_path(out_dir, shard).exists():
        continue
      if len(pending) >= 2 * num_workers:  # bounded: the source is read as fast as it is used
        collect(concurrent.futures.FIRST_COMPLETED)
      pending.add(pool.submit(encode_shard, out_dir, shard, shard * shard_docs, texts,
                              eval_fraction))
    collect(concurrent.futures.ALL_COMPLETED)
  if bar is not None:
    bar.close()

  splits = SPLITS if eval_fraction > 0 else ('train',)
  metadata = {
      'name': name, **plan, 'seq_len': seq_len, 'dtype': 'uint16',
      'vocab_size': tokenizer.GPT2_VOCAB_SIZE, 'eot_id': tokenizer.EOT_ID,
      'tokenizer': f'GPT-2 BPE from {tokenizer_source}',
      'documents': (num_shards - 1) * shard_docs + len(texts), 'shards': num_shards,
      'splits': {s: _assemble(out_dir, num_shards, s, seq_len) for s in splits},
  }
  _write_atomic(meta_path, lambda f: f.write(json.dumps(metadata, indent=1).encode()))
  return metadata


# ------------------------------------------------------------------------ reading


def read_split(data_dir: str, name: str, split: str, seq_len: int) -> np.ndarray:
  """A prepared split, memory-mapped, as rows [N, seq_len] (uint16).

  Rows prepared at a length that `seq_len` divides are read as seq_len-long rows.
  """
  folder = Path(data_dir).expanduser() / name
  meta_path = folder / 'metadata.json'
  if not meta_path.exists():
    raise FileNotFoundError(
        f'{meta_path} not found: prepare the data first with `python'
        f' prepare_openwebtext_data.py --dataset={name} --data_dir={data_dir}` (offline, add'
        ' --source=PATH to a folder of .txt files, a JSONL file or a saved HF dataset)')
  meta = json.loads(meta_path.read_text())
  if split not in meta['splits']:
    raise ValueError(f'{folder} was prepared without a {split!r} split (eval_fraction'
                     f' {meta["eval_fraction"]}); prepare it again with --eval_fraction > 0')
  if meta['seq_len'] % seq_len:
    raise ValueError(f'{folder} holds rows of {meta["seq_len"]} tokens, which data_shape'
                     f' ({seq_len},) does not divide; prepare it again with'
                     f' --seq_len={seq_len} or use a divisor of {meta["seq_len"]}')
  return np.load(folder / f'{split}.npy', mmap_mode='r').reshape(-1, seq_len)


def openwebtext(data_dir: str, seq_len: int):
  """OpenWebText's prepared 'train' and held-out 'valid' splits, GPT-2 ids."""
  splits = {s: read_split(data_dir, 'openwebtext', s, seq_len) for s in SPLITS}
  return tokenizer.GPT2_VOCAB_SIZE, tokenizer.decode, splits


def fineweb_edu(data_dir: str, seq_len: int):
  """FineWeb-Edu's prepared 'train' split, evaluated on OpenWebText's 'valid' split."""
  splits = {'train': read_split(data_dir, 'fineweb_edu', 'train', seq_len),
            'valid': read_split(data_dir, 'openwebtext', 'valid', seq_len)}
  return tokenizer.GPT2_VOCAB_SIZE, tokenizer.decode, splits
