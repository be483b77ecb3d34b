"""GPT-2 token data (OpenWebText, FineWeb-Edu), read memory-mapped from a prepared folder.

md4/preparation.py (run by prepare_openwebtext_data.py) writes `data_dir/<name>/`:

  train.npy, valid.npy  uint16 [N, seq_len] rows of GPT-2 ids: documents in order, each
                        followed by <|endoftext|>, packed into one token stream per split
  metadata.json         written last: the source, the tokenizer, the document handling,
                        the held-out split (`held_out`), and each split's rows, tokens in
                        them and tokens dropped (a tail that fills no row)
  shards/               the preparation's intermediate tokens (not read here)

`held_out['split']` says what 'valid' holds: 'chunks' (a fraction of the shuffled rows,
the original release's split, on which perplexities compare with the paper's), 'documents'
(whole documents, by `is_eval_document`, never seen in training) or 'none' (no 'valid'
file: FineWeb-Edu is evaluated on OpenWebText's held-out split).

The readers return the splits memory-mapped: batching (md4.data.train_batch) only selects
rows, so the data never has to fit in RAM. Only `decode` needs the tokenizer.
"""

import json
from pathlib import Path

from absl import logging
import numpy as np

from md4.data import tokenizer

# The datasets of this module: prepared GPT-2 ids, decoded with md4.data.tokenizer.
GPT2_DATASETS = ('openwebtext', 'fineweb_edu')
SPLITS = ('train', 'valid')


def is_eval_document(index: np.ndarray, eval_fraction: float) -> np.ndarray:
  """Whether document `index` is held out: floor((i + 1)·f) > floor(i·f).

  Exactly floor(n·f) of the first n documents, spread evenly.
  """
  return np.floor((index + 1) * eval_fraction) > np.floor(index * eval_fraction)


def read_metadata(data_dir: str, name: str) -> dict:
  """`data_dir/<name>/metadata.json`, checked to describe GPT-2 ids that this code reads."""
  meta_path = Path(data_dir).expanduser() / name / 'metadata.json'
  again = (f'prepare it again with `python prepare_openwebtext_data.py --dataset={name}'
           f' --data_dir={data_dir}`')
  if not meta_path.exists():
    raise FileNotFoundError(
        f'{meta_path} not found: prepare the data first with `python'
        f' prepare_openwebtext_data.py --dataset={name} --data_dir={data_dir}` (offline, add'
        ' --source=PATH to a folder of .txt files, a JSONL file or a saved HF dataset)')
  try:
    meta = json.loads(meta_path.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f'{meta_path} is not valid JSON ({e}); {again}') from None
  missing = [k for k in ('held_out', 'seq_len', 'splits', 'tokenizer', 'vocab_size', 'eot_id')
             if k not in meta]
  if missing:
    raise ValueError(f'{meta_path} lacks {missing}, so it is not known what the folder'
                     f' holds; {again}')
  gpt2 = ('gpt2', tokenizer.GPT2_VOCAB_SIZE, tokenizer.EOT_ID)
  if (meta['tokenizer'], meta['vocab_size'], meta['eot_id']) != gpt2:
    raise ValueError(
        f'{meta_path} describes ids of tokenizer {meta["tokenizer"]!r} ({meta["vocab_size"]}'
        f' ids, end of text {meta["eot_id"]}), but dataset {name!r} reads and decodes GPT-2'
        f' ids ({gpt2[1]}, end of text {gpt2[2]}); {again}')
  return meta
def read_split(data_dir: str, name: str, split: str, seq_len: int) -> np.ndarray:
  """A prepared split, memory-mapped, as rows [N, seq_len] (uint16).

  Rows prepared at a length that `seq_len` divides are read as seq_len-long rows.
  """
  meta = read_metadata(data_dir, name)
  folder = Path(data_dir).expanduser() / name
  if split not in meta['splits']:
    raise ValueError(f'{folder} was prepared without a {split!r} split (held out:'
                     f' {meta["held_out"]}); prepare it again with --split=chunks or'
                     ' --split=documents')
  if meta['seq_len'] % seq_len:
    raise ValueError(f'{folder} holds rows of {meta["seq_len"]} tokens, which data_shape'
                     f' ({seq_len},) does not divide; prepare it again with'
                     f' --seq_len={seq_len} or use a divisor of {meta["seq_len"]}')
  path = folder / f'{split}.npy'
  expected = (meta['splits'][split]['rows'], meta['seq_len'])
  try:
    rows = np.load(path, mmap_mode='r')
  except (OSError, ValueError) as e:
    raise ValueError(f'{path} cannot be read ({e}); prepare it again') from None
  if rows.shape != expected or rows.dtype != np.uint16:
    raise ValueError(f'{path} holds {rows.dtype} {rows.shape}, but metadata.json says uint16'
                     f' {expected}: the folder is incomplete or mixed; prepare it again')
  return rows.reshape(-1, seq_len)


def openwebtext(data_dir: str, seq_len: int):
  """OpenWebText's prepared 'train' and held-out 'valid' splits, GPT-2 ids."""
  logging.info('openwebtext in %s: held out %s', data_dir,
               read_metadata(data_dir, 'openwebtext')['held_out'])
  splits = {s: read_split(data_dir, 'openwebtext', s, seq_len) for s in SPLITS}
  return tokenizer.GPT2_VOCAB_SIZE, tokenizer.decode, splits


def fineweb_edu(data_dir: str, seq_len: int):
  """FineWeb-Edu's prepared 'train' split, evaluated on OpenWebText's 'valid' split (as the
  original does), and on FineWeb-Edu's own as 'fineweb_valid' where one was prepared."""
  splits = {'train': read_split(data_dir, 'fineweb_edu', 'train', seq_len),
            'valid': read_split(data_dir, 'openwebtext', 'valid', seq_len)}
  if 'valid' in read_metadata(data_dir, 'fineweb_edu')['splits']:
    splits['fineweb_valid'] = read_split(data_dir, 'fineweb_edu', 'valid', seq_len)
  return tokenizer.GPT2_VOCAB_SIZE, tokenizer.decode, splits
