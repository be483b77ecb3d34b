"""Protein sequences from `data_dir/protein/` with an amino-acid tokenizer.

The folder is the one `gsutil cp -r gs://maskdiff/protein/ data_dir/` creates, or any
folder of FASTA files (`.fasta`, `.fa`, `.faa`) or one-sequence-per-line text files
(`.txt`), each optionally gzipped. Files whose names start with `valid` or `test` are those
eval splits and the rest train; with no such files, every 20th sequence is held out as
'valid' (the rule of md4.data.openwebtext.is_eval_document).

Ids: the 20 standard residues, then X (unknown), B (D or N), Z (E or Q), U (selenocysteine)
and O (pyrrolysine), then the padding id. Letters are read case-insensitively and a final
`*` (a stop codon in translated genes) is dropped. Training crops sequences longer than the
length at random offsets and pads the others; padding is never masked and never counted in
the ELBO (md4.models.md4.MD4.pad_id).
"""

import gzip
from pathlib import Path

import numpy as np

from md4.data import openwebtext
from md4.data import ragged
from md4.data import text

VOCAB = 'ACDEFGHIKLMNPQRSTVWY' + 'XBZUO'
PAD_ID = len(VOCAB)
VOCAB_SIZE = PAD_ID + 1  # the mask id is VOCAB_SIZE
EVAL_FRACTION = 0.05
FASTA_SUFFIXES = ('.fasta', '.fa', '.faa')
LINE_SUFFIXES = ('.txt',)


def _suffix(path: Path) -> str:
  return Path(path.name.removesuffix('.gz')).suffix


def read_sequences(path: Path) -> list[str]:
  """The sequences of one FASTA or one-per-line file (optionally .gz), upper case."""
  with (gzip.open if path.name.endswith('.gz') else open)(path, 'rt') as f:
    lines = [line.strip() for line in f]
  if _suffix(path) in LINE_SUFFIXES:
    seqs = [line for line in lines if line]
  else:
    seqs, current = [], None
    for line in lines:
      if line.startswith('>'):
        if current is not None:
          seqs.append(''.join(current))
        current = []
      elif line:
        if current is None:
          raise ValueError(f'{path} is not FASTA: sequence data before the first ">" line')
        current.append(line)
    if current is not None:
      seqs.append(''.join(current))
  return [s.upper().removesuffix('*') for s in seqs if s.removesuffix('*')]


def encode(seqs: list[str], where: str) -> tuple[np.ndarray, np.ndarray]:
  """Sequences -> (ids [T] uint8 concatenated, offsets [N + 1])."""
  try:
    ids = text.encode(''.join(seqs), VOCAB).astype(np.uint8)
  except ValueError as e:
    raise ValueError(f'{where}: {e} (a final * is allowed)') from None
  return ids, np.concatenate([[0], np.cumsum([len(s) for s in seqs])])


def decode(ids) -> str:
  """Ids -> residues; padding is dropped."""
  return ''.join(VOCAB[i] for i in np.asarray(ids).tolist() if i != PAD_ID)


def split_files(folder: Path) -> dict[str, list[Path]]:
  suffixes = FASTA_SUFFIXES + LINE_SUFFIXES
  files = sorted(f for f in folder.rglob('*') if f.is_file() and _suffix(f) in suffixes)
  if not files:
    raise FileNotFoundError(
        f'no protein files in {folder}; fetch them with `gsutil cp -r gs://maskdiff/protein/'
        f' {folder.parent}/` or put FASTA ({", ".join(FASTA_SUFFIXES)}) or one-sequence-per-'
        'line .txt files there, optionally gzipped')
  by_split = {'train': [], 'valid': [], 'test': []}
  for f in files:
    by_split[next((s for s in ('valid', 'test') if f.name.startswith(s)), 'train')].append(f)
  return {s: fs for s, fs in by_split.items() if fs}


def protein(data_dir: str, seq_len: int):
  """Train: a `Ragged` split cropped at random offsets. Eval splits: padded windows [M, L]."""
  folder = Path(data_dir).expanduser() / 'protein'
  files = split_files(folder)
  seqs = {s: [q for f in fs for q in read_sequences(f)] for s, fs in files.items()}
  if len(seqs) == 1:  # no eval files: hold out sequences
    held_out = openwebtext.is_eval_document(np.arange(len(seqs['train'])), EVAL_FRACTION)
    seqs = {'train': [q for q, h in zip(seqs['train'], held_out) if not h],
            'valid': [q for q, h in zip(seqs['train'], held_out) if h]}
  splits = {}
  for split, qs in seqs.items():
    if not qs:
      raise ValueError(f'the protein {split} split in {folder} has no sequences')
    tokens, offsets = encode(qs, f'protein {split} split in {folder}')
    splits[split] = ragged.Ragged(tokens, offsets, seq_len, PAD_ID)
  train = splits['train']
  splits = {s: r if s == 'train' else r.windows() for s, r in splits.items()}
  extra = dict(pad_id=PAD_ID, length_probs=train.length_probs(), sample_format='fasta')
  return VOCAB_SIZE, decode, splits, extra
