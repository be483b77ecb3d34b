"""Variable-length sequences, cropped and padded to one length (the protein dataset's train split).

Training takes each sequence longer than L at a random offset and pads shorter ones;
`crops` gets the offsets from uniforms drawn by md4.data.train_batch, so batches stay a
pure function of (seed, step). Eval splits use `windows`: every sequence cut into
consecutive length-L pieces, so each token is scored exactly once.
"""

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Ragged:
  tokens: np.ndarray  # [T] every sequence's token ids, concatenated
  offsets: np.ndarray  # [N + 1]; sequence i is tokens[offsets[i]:offsets[i + 1]]
  seq_len: int  # L
  pad_id: int

  def __len__(self):
    return len(self.offsets) - 1

  @property
  def lengths(self) -> np.ndarray:
    return np.diff(self.offsets)  # [N]

  def select(self, keep: np.ndarray) -> 'Ragged':
    """The sequences where `keep` [N] (bool) is true, in order."""
    length = self.lengths[keep]  # [n]
    offsets = np.concatenate([[0], np.cumsum(length)])  # [n + 1]
    shift = np.repeat(self.offsets[:-1][keep] - offsets[:-1], length)  # [T']
    return Ragged(self.tokens[shift + np.arange(offsets[-1])], offsets, self.seq_len,
                  self.pad_id)

  def crops(self, rows: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Sequences `rows` [n], cropped to L at offset floor(u·(length − L + 1)), padded: [n, L].

    u [n] in [0, 1); a sequence no longer than L starts at 0 and is padded after its end.
    """
    length = self.lengths[rows]  # [n]
    begin = self.offsets[rows] + np.floor(
        u * (np.maximum(length - self.seq_len, 0) + 1)).astype(np.int64)  # [n]
    pos = np.arange(self.seq_len)  # [L]
    real = pos < np.minimum(length, self.seq_len)[:, None]  # [n, L]
    ids = self.tokens[np.where(real, begin[:, None] + pos, 0)]  # [n, L]
    return np.where(real, ids, self.pad_id).astype(np.int32)

  def windows(self) -> np.ndarray:
    """Every sequence cut into consecutive length-L windows, the last one padded: [M, L]."""
    length = self.lengths
    num_windows = -(-length // self.seq_len)  # [N] ceil(length / L)
    seq = np.repeat(np.arange(len(self)), num_windows)  # [M] the sequence of each window
    first = np.cumsum(num_windows) - num_windows  # [N] index of each sequence's first window
    begin = self.offsets[seq] + (np.arange(len(seq)) - first[seq]) * self.seq_len  # [M]
    end = self.offsets[seq + 1]  # [M]
    pos = begin[:, None] + np.arange(self.seq_len)  # [M, L]
    real = pos < end[:, None]
    return np.where(real, self.tokens[np.where(real, pos, 0)], self.pad_id).astype(np.int32)

  def length_probs(self) -> tuple[float, ...]:
    """P(a training example has L' real tokens), L' = 0..L: lengths min(length, L)."""
    counts = np.bincount(np.minimum(self.lengths, self.seq_len), minlength=self.seq_len + 1)
    return tuple(float(c) for c in counts / counts.sum())
