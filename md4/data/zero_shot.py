"""The zero-shot benchmark sets of the MD4 paper, read from prepared folders, and the
paper's numbers on them.

The MD4 paper (Shi et al., 2024, arXiv:2406.04329, Table 2) evaluates its OpenWebText
models, without training on them, on the five sets that SEDD (Lou et al., 2024) took from
GPT-2's paper: LAMBADA, WikiText-2, PTB, WikiText-103 and One Billion Words. md4.zero_shot
(run by prepare_zero_shot_data.py) prepares each into `data_dir/<name>/`, in the layout of
md4.data.openwebtext (which reads the rows):

  <split>.npy     uint16 [N, seq_len] rows of GPT-2 ids of the benchmark's evaluated split
                  ('valid' or 'test', see BENCHMARKS)
  metadata.json   as md4.data.openwebtext's, plus `zero_shot`: the benchmark, the split,
                  the detokenizer, the layout of the rows, the padding id (`pad_id`)

Layouts (md4.zero_shot.LAYOUTS): 'wrap' and 'wrap_bos' rows are full token streams
(`pad_id` null); a 'pad' row holds one record (or a piece of a long one) followed by
<|endoftext|> up to seq_len, and `pad_id` is <|endoftext|>'s id. The evaluation
(md4.inference.evaluate_zero_shot) builds the model with that padding id: padding is never
masked and never counted (md4.models.md4.MD4.pad_id), so a padded row scores its document's
text tokens given where the document ends.
"""

import dataclasses
from pathlib import Path

import numpy as np

from md4.data import openwebtext


@dataclasses.dataclass(frozen=True)
class Benchmark:
  title: str
  # The split evaluated by default, as MDLM's and SEDD's released code read them: the
  # hub's 'validation' split of WikiText and PTB, LAMBADA's test set (the only one GPT-2
  # released) and One Billion Words' held-out test set (the hub's lm1b has no validation).
  split: str
  # Perplexity bounds in the MD4 paper's Table 2 (the OpenWebText models at 1M steps,
  # rows of 1024 GPT-2 tokens); GenMD4 has no zero-shot row there.
  paper: dict[str, float]


BENCHMARKS = {
    'lambada': Benchmark('LAMBADA', 'test', {'MD4-S': 48.43, 'MD4-M': 44.12}),
    'wikitext2': Benchmark('WikiText-2', 'valid', {'MD4-S': 34.94, 'MD4-M': 25.84}),
    'ptb': Benchmark('PTB', 'valid', {'MD4-S': 102.26, 'MD4-M': 66.07}),
    'wikitext103': Benchmark('WikiText-103', 'valid', {'MD4-S': 35.90, 'MD4-M': 25.84}),
    'lm1b': Benchmark('One Billion Words', 'test', {'MD4-S': 68.10, 'MD4-M': 51.45}),
}
PAPER_MODELS = ('MD4-S', 'MD4-M')


@dataclasses.dataclass
class ZeroShotSet:
  name: str
  split: str  # 'valid' or 'test'
  rows: np.ndarray  # [N, seq_len] uint16, memory-mapped
  pad_id: int | None  # the padding id of 'pad' rows; None for full rows
  metadata: dict

  def num_tokens(self, rows: np.ndarray) -> np.ndarray:
    """[N]: the scored tokens of each row, padding excluded (at least 1, as the model)."""
    if self.pad_id is None:
      return np.full(len(rows), rows.shape[1], np.int64)
    return np.maximum((np.asarray(rows) != self.pad_id).sum(axis=1), 1)

  def length_probs(self) -> tuple[float, ...]:
    """P(row length = L), L = 0..seq_len: what the padded model's prior samples from."""
    counts = np.bincount((np.asarray(self.rows) != self.pad_id).sum(axis=1),
                         minlength=self.rows.shape[1] + 1)
    return tuple((counts / counts.sum()).tolist())


def names(requested) -> list[str]:
  """The benchmark names of `requested` (a list, or ['all'] for every one), checked."""
  chosen = list(BENCHMARKS) if list(requested) == ['all'] else list(requested)
  unknown = [n for n in chosen if n not in BENCHMARKS]
  if unknown or not chosen:
    raise ValueError(f'unknown zero-shot set(s) {unknown}; choose from {list(BENCHMARKS)}'
                     ' or all')
  return chosen


def read(data_dir: str, name: str, seq_len: int) -> ZeroShotSet:
  """The prepared rows of benchmark `name` in data_dir/<name>/, as rows of seq_len."""
  names([name])
  folder = Path(data_dir).expanduser() / name
  prepare = (f'`python prepare_zero_shot_data.py --sets={name} --data_dir={data_dir}`'
             ' (offline, add --source=PATH to the set\'s files)')
  if not (folder / 'metadata.json').exists():
    raise FileNotFoundError(f'{folder / "metadata.json"} not found: prepare the {name}'
                            f' zero-shot set first with {prepare}')
  meta = openwebtext.read_metadata(data_dir, name)
  zero_shot = meta.get('zero_shot')
  if not zero_shot or zero_shot.get('benchmark') != name:
    raise ValueError(f'{folder} is not a prepared {name} zero-shot set; prepare it with'
                     f' {prepare}')
  pad_id = zero_shot['pad_id']
  if pad_id is not None and meta['seq_len'] != seq_len:
    raise ValueError(f'{folder} holds padded rows of {meta["seq_len"]} tokens, which cannot'
                     f' be cut into rows of {seq_len}; prepare it again with'
                     f' --seq_len={seq_len}')
  split = zero_shot['split']
  rows = openwebtext.read_split(data_dir, name, split, seq_len)
  return ZeroShotSet(name, split, rows, pad_id, meta)
