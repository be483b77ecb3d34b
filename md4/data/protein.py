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


def read_records(path: Path) -> list[tuple[str, str]]:
  """(name, sequence) of each non-empty record of one FASTA or one-per-line file (optionally
  .gz), upper case, a final `*` dropped; the name is the FASTA header or 'line N'."""
  with (gzip.open if path.name.endswith('.gz') else open)(path, 'rt') as f:
    lines = [line.strip() for line in f]
  if _suffix(path) in LINE_SUFFIXES:
    records = [(f'line {i}', line) for i, line in enumerate(lines, 1) if line]
  else:
    records, name, current = [], None, None
    for line in lines:
      if line.startswith('>'):
        if current is not None:
          records.append((name, ''.join(current)))
        name, current = line, []
      elif line:
        if current is None:
          raise ValueError(f'{path} is not FASTA: sequence data before the first ">" line')
        current.append(line)
    if current is not None:
      records.append((name, ''.join(current)))
  records = [(n, s.upper().removesuffix('*')) for n, s in records]
  return [(n, s) for n, s in records if s]


def read_sequences(path: Path) -> list[str]:
  """The sequences of `read_records(path)`."""
  return [s for _, s in read_records(path)]


def encode(records: list[tuple[str, str]], where: str) -> tuple[np.ndarray, np.ndarray]:
  """(name, sequence) records -> (ids [T] uint8 concatenated, lengths [N]).

  A letter outside VOCAB raises a ValueError naming `where`, the record, the letter and its
  position in the record.
  """
  seqs = [s for _, s in records]
  lengths = np.array([len(s) for s in seqs], np.int64)
  try:
    ids = text.encode(''.join(seqs), VOCAB).astype(np.uint8)
  except text.UnknownCharacter as e:
    ends = np.cumsum(lengths)
    k = int(np.searchsorted(ends, e.position, side='right'))
    raise ValueError(
        f'{where}, record {k + 1} ({records[k][0]}): {e.character!r} at residue'
        f' {e.position - (ends[k] - lengths[k]) + 1} is not one of the letters {VOCAB}; fix'
        ' or remove the record (letters may be lower case, and a final * is allowed)'
    ) from None
  return ids, lengths


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
  splits = {}
  for split, files in split_files(folder).items():
    parts = [encode(read_records(f), str(f)) for f in files]
    lengths = np.concatenate([n for _, n in parts])  # [N]
    if not len(lengths):
      raise ValueError(f'the protein {split} files {[str(f) for f in files]} hold no'
                       ' sequences; add some or remove the files')
    splits[split] = ragged.Ragged(np.concatenate([ids for ids, _ in parts]),
                                  np.concatenate([[0], np.cumsum(lengths)]), seq_len, PAD_ID)
  if len(splits) == 1:  # no eval files: hold out sequences
    held_out = openwebtext.is_eval_document(np.arange(len(splits['train'])), EVAL_FRACTION)
    if not held_out.any():
      raise ValueError(f'{folder} holds {len(splits["train"])} sequences, too few to hold out'
                       f' every {round(1 / EVAL_FRACTION)}th for the valid split; add'
                       ' sequences or a valid.fasta file')
    splits = {'train': splits['train'].select(~held_out),
              'valid': splits['train'].select(held_out)}
  train = splits['train']
  splits = {s: r if s == 'train' else r.windows() for s, r in splits.items()}
  extra = dict(pad_id=PAD_ID, length_probs=train.length_probs(), sample_format='fasta')
  return VOCAB_SIZE, decode, splits, extra
