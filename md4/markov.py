r"""An order-1 Markov chain as a data source whose likelihood is known exactly.

Generative perplexity under a learned judge rewards dull samples, and the judge is itself
only an estimate. Here the source is known: a chain on V symbols with transition matrix
P [V, V] (seeded; a few strong transitions from each symbol on a uniform floor, so that
every transition is possible and the entropy rate lies well below log V). A model
trained on the chain's samples (md4/configs/md4/markov.py) is judged by how its samples
score under P itself (md4.judges, `--judge=markov:DATA_DIR`):

  - NLL per token under the chain, the first token under its stationary distribution π,
    in nats, against what the chain's own samples of the same length have in expectation
    ((H(π) + (L − 1) H) / L, with H the entropy rate) — below it means duller samples;
  - the KL between the samples' transitions and the chain's, KL(P̂ ‖ P) in nats per
    transition: Σ_ij c_ij log(P̂_ij / P_ij) / Σ c, with c the transition counts pooled over
    samples and P̂_ij = c_ij / c_i. It is weighted by the samples' own visits to each symbol
    and needs no smoothing (every P_ij > 0). The plug-in estimate is biased upwards by
    about (cells seen − rows seen) / 2N for N transitions; the Miller–Madow correction
    removes that, so that the chain's own samples give ≈ 0. Zero only when the samples move
    as the chain does; a sampler that favours likely transitions lowers the NLL but not this.

The standard errors are over samples: of the per-sample NLL per token, and the jackknife
(one sample left out at a time) of the pooled KL and conditional entropy.

  python -m md4.markov --data_dir=expt/markov_data [--vocab_size=16] [--seed=0]

writes the `array` dataset (train.npy, valid.npy, test.npy: one stationary stream each)
and the chain (markov_chain.json) there.
"""

import bisect
import dataclasses
import json
import math
import os

import numpy as np

from md4 import files

CHAIN_FILE = 'markov_chain.json'  # beside the data: the judge reads it
DATA_DIR = 'expt/markov_data'
VOCAB_SIZE = 16
STRONG = 3  # strong transitions from each symbol
FLOOR = 0.1  # probability spread uniformly over all V successors
SPLIT_TOKENS = {'train': 1 << 20, 'valid': 1 << 16, 'test': 1 << 16}


def make_transition(vocab_size: int = VOCAB_SIZE, seed: int = 0, strong: int = STRONG,
                    floor: float = FLOOR) -> np.ndarray:
  """P [V, V]: from each symbol `strong` distinct successors with Dirichlet(1) weights,
  taking 1 − floor of the mass, and floor / V on every successor."""
  if not (0 < floor <= 1 and 1 <= strong <= vocab_size):
    raise ValueError(f'need 0 < floor <= 1 and 1 <= strong <= vocab_size; got floor {floor},'
                     f' strong {strong}, vocab_size {vocab_size}')
  rng = np.random.default_rng(seed)
  p = np.full((vocab_size, vocab_size), floor / vocab_size)
  for i in range(vocab_size):
    targets = rng.choice(vocab_size, strong, replace=False)
    p[i, targets] += (1 - floor) * rng.dirichlet(np.ones(strong))
  return p


def stationary(p: np.ndarray) -> np.ndarray:
  """π [V] with π P = π, Σ π = 1: the left eigenvector of eigenvalue 1."""
  values, vectors = np.linalg.eig(p.T)
  pi = np.real(vectors[:, np.argmin(np.abs(values - 1))])
  return pi / pi.sum()


def entropy(p: np.ndarray) -> np.ndarray:
  """Entropy in nats of each distribution along the last axis (0 log 0 = 0)."""
  return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0), axis=-1)


def entropy_rate(p: np.ndarray) -> float:
  """H = Σ_i π_i H(P_i·), nats per token: the NLL per token of a long sample of the chain."""
  return float(stationary(p) @ entropy(p))


def stream(p: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
  """One run of the chain [length], its first symbol drawn from π (so stationary)."""
  cum = np.cumsum(p, axis=1)
  cum[:, -1] = 1.0  # every uniform draw below 1 falls in a symbol
  rows, start = cum.tolist(), np.cumsum(stationary(p)).tolist()
  start[-1] = 1.0
  u = rng.random(length).tolist()
  x = bisect.bisect_right(start, u[0])
  out = [x]
  for v in u[1:]:
    x = bisect.bisect_right(rows[x], v)
    out.append(x)
  return np.asarray(out, np.int32)


def sequences(p: np.ndarray, num: int, length: int, rng: np.random.Generator) -> np.ndarray:
  """num independent stationary runs of the chain [num, length], drawn side by side."""
  cum = np.cumsum(p, axis=1)
  x = np.empty((num, length), np.int32)
  x[:, 0] = rng.choice(len(p), num, p=stationary(p))
  u = rng.random((num, length))
  for t in range(1, length):
    x[:, t] = np.minimum((u[:, t, None] >= cum[x[:, t - 1]]).sum(-1), len(p) - 1)
  return x


def transition_counts(samples, vocab_size: int) -> np.ndarray:
  """c [N, V, V]: c[s, i, j] = how often j follows i in sample s."""
  out = np.zeros((len(samples), vocab_size * vocab_size), np.int64)
  for s, x in enumerate(samples):
    x = np.asarray(x, np.int64)
    out[s] = np.bincount(x[:-1] * vocab_size + x[1:], minlength=vocab_size**2)
  return out.reshape(-1, vocab_size, vocab_size)


def conditional_kl(counts: np.ndarray, log_p: np.ndarray) -> dict[str, np.ndarray]:
  """For pooled transition counts c [..., V, V] (N transitions): the plug-in KL(P̂ ‖ P),
  its Miller–Madow correction, and the samples' own conditional entropy Ĥ (corrected by
  the same amount), all in nats per transition; plug-in Ĥ + KL = the NLL per transition."""
  n = counts.sum((-1, -2))
  visits = counts.sum(-1, keepdims=True)
  p_hat = counts / np.maximum(visits, 1)
  log_p_hat = np.log(np.where(counts > 0, p_hat, 1))
  cross = -np.sum(counts * log_p, (-1, -2)) / n
  h_plugin = -np.sum(counts * log_p_hat, (-1, -2)) / n
  cells = np.maximum((counts > 0).sum(-1) - 1, 0).sum(-1)  # Σ_i (successors seen − 1)
  bias = cells / (2 * n)
  return {'kl_plugin': cross - h_plugin, 'kl': cross - h_plugin - bias,
          'cond_entropy': h_plugin + bias}


def jackknife(total: np.ndarray, per_sample: np.ndarray, stat) -> float:
  """Standard error of stat(pooled counts) over samples, one sample left out at a time."""
  n = len(per_sample)
  if n < 2:
    return float('nan')
  left_out = stat(total[None] - per_sample)  # [N]
  return float(math.sqrt((n - 1) / n * np.sum((left_out - left_out.mean())**2)))


@dataclasses.dataclass
class Chain:
  """A chain with its exact quantities; `metrics` scores samples under it (md4.judges)."""
  transition: np.ndarray  # [V, V], rows summing to 1, every entry > 0
  recipe: dict  # how it was made: vocab_size, seed, strong, floor

  def __post_init__(self):
    p = self.transition = np.asarray(self.transition, np.float64)
    if p.ndim != 2 or p.shape[0] != p.shape[1] or (p <= 0).any() or not np.allclose(
        p.sum(1), 1):
      raise ValueError(f'a transition matrix is [V, V] with positive rows summing to 1;'
                       f' got shape {p.shape}')
    self.log_p = np.log(p)
    self.pi = stationary(p)
    self.entropy_rate = float(self.pi @ entropy(p))
    self.stationary_entropy = float(entropy(self.pi))

  @property
  def vocab_size(self) -> int:
    return len(self.transition)

  def check(self, ids) -> np.ndarray:
    """ids as an array, or a ValueError if one lies outside the chain's symbols."""
    x = np.asarray(ids)
    if x.size and (x.min() < 0 or x.max() >= self.vocab_size):
      raise ValueError(f'a sample holds token ids in [{x.min()}, {x.max()}], outside the'
                       f' chain\'s {self.vocab_size} symbols; judge samples of a run trained'
                       ' on this chain\'s data')
    return x

  def encode(self, text: str) -> np.ndarray:
    """A sample of the `array` dataset as md4 writes it ('12 7 3') -> ids [T], checked."""
    return self.check(parse(text))

  def log_probs(self, ids) -> np.ndarray:
    """ids [B, W] -> log p(id_i | id_{i−1}) [B, W], the first from π; in nats."""
    ids = np.asarray(ids)
    first = np.log(self.pi)[ids[:, :1]]
    return np.concatenate([first, self.log_p[ids[:, :-1], ids[:, 1:]]], axis=1)

  def sample_nll(self, samples) -> np.ndarray:
    """Each sample's NLL under the chain [N], nats."""
    return np.array([-self.log_probs(np.asarray(x)[None])[0].sum() for x in samples])

  def metrics(self, samples) -> dict[str, float]:
    """The chain's exact measures of samples (int arrays [L_s]): see the module docstring."""
    for x in samples:
      self.check(x)
    tokens = np.array([len(x) for x in samples])
    per_token = self.sample_nll(samples) / np.maximum(tokens, 1)
    counts = transition_counts(samples, self.vocab_size)
    total = counts.sum(0)
    pooled = conditional_kl(total, self.log_p)
    n = len(samples)
    stat = lambda key: lambda c: conditional_kl(c, self.log_p)[key]
    return {
        'markov_nll': float(per_token @ tokens / tokens.sum()),
        'markov_nll_stderr': float(per_token.std(ddof=1) / math.sqrt(n)) if n > 1 else
                             float('nan'),
        'markov_nll_target': float((self.stationary_entropy * n + self.entropy_rate
                                    * (tokens.sum() - n)) / tokens.sum()),
        'markov_entropy_rate': self.entropy_rate,
        'markov_kl': float(pooled['kl']),
        'markov_kl_stderr': jackknife(total, counts, stat('kl')),
        'markov_kl_plugin': float(pooled['kl_plugin']),
        'markov_cond_entropy': float(pooled['cond_entropy']),
        'markov_cond_entropy_stderr': jackknife(total, counts, stat('cond_entropy')),
        'markov_transitions': int(total.sum()),
    }

  def format_metrics(self, q) -> str:
    """`metrics` as the lines md4/evaluate.py prints."""
    return (f'  NLL under the chain {q["markov_nll"]:.4f} ± {q["markov_nll_stderr"]:.4f} nats'
            f' per token (the chain\'s own samples: {q["markov_nll_target"]:.4f}; entropy'
            f' rate {q["markov_entropy_rate"]:.4f})\n'
            f'  KL(samples\' transitions ‖ chain\'s) {q["markov_kl"]:.4f} ±'
            f' {q["markov_kl_stderr"]:.4f} nats per transition (Miller–Madow; plug-in'
            f' {q["markov_kl_plugin"]:.4f}); their conditional entropy'
            f' {q["markov_cond_entropy"]:.4f} ± {q["markov_cond_entropy_stderr"]:.4f};'
            f' {q["markov_transitions"]} transitions')

  def save(self, data_dir: str) -> str:
    """Writes the chain to data_dir/markov_chain.json; returns the path."""
    path = os.path.join(data_dir, CHAIN_FILE)
    files.atomic_write(path, json.dumps({
        **self.recipe, 'entropy_rate_nats': self.entropy_rate,
        'stationary': self.pi.tolist(), 'transition': self.transition.tolist()}, indent=1))
    return path


def make_chain(vocab_size: int = VOCAB_SIZE, seed: int = 0, strong: int = STRONG,
               floor: float = FLOOR) -> Chain:
  recipe = {'vocab_size': vocab_size, 'seed': seed, 'strong': strong, 'floor': floor}
  return Chain(make_transition(vocab_size, seed, strong, floor), recipe)


def load(data_dir: str) -> Chain:
  """The chain that `prepare` saved in data_dir."""
  path = os.path.join(os.path.expanduser(data_dir), CHAIN_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} not found: a Markov judge reads the chain that'
                            f' `python -m md4.markov --data_dir={data_dir}` saves with its data')
  with open(path) as f:
    saved = json.load(f)
  recipe = {k: saved[k] for k in ('vocab_size', 'seed', 'strong', 'floor') if k in saved}
  return Chain(np.asarray(saved['transition']), recipe)


def parse(text: str) -> np.ndarray:
  """A sample of the `array` dataset as md4 writes it ('12 7 3') -> ids [T]."""
  try:
    return np.asarray([int(t) for t in text.split()], np.int64)
  except ValueError:
    raise ValueError(f'a Markov judge reads samples of token ids separated by spaces (the'
                     f' `array` dataset\'s); got {text[:40]!r}') from None


def prepare(data_dir: str, chain: Chain, split_tokens=None, seed: int = 0) -> dict:
  """Writes one stationary stream of the chain per split (train.npy, ...) and the chain to
  data_dir; returns {split: tokens}."""
  split_tokens = split_tokens or SPLIT_TOKENS
  data_dir = os.path.expanduser(data_dir)
  os.makedirs(data_dir, exist_ok=True)
  for k, (split, n) in enumerate(split_tokens.items()):
    ids = stream(chain.transition, n, np.random.default_rng([seed, k + 1]))
    with files.atomic_open(os.path.join(data_dir, f'{split}.npy'), 'wb') as f:
      np.save(f, ids)
  chain.save(data_dir)
  return dict(split_tokens)


def main():
  """`python -m md4.markov`: the chain's data and the chain, in --data_dir."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from md4 import cli  # pylint: disable=g-import-not-at-top
  data_dir = flags.DEFINE_string('data_dir', DATA_DIR, 'Where to write the data and chain.')
  vocab = flags.DEFINE_integer('vocab_size', VOCAB_SIZE, 'Symbols V.')
  seed = flags.DEFINE_integer('seed', 0, 'Seed of the chain and of its streams.')
  strong = flags.DEFINE_integer('strong', STRONG, 'Strong transitions per symbol.')
  floor = flags.DEFINE_float('floor', FLOOR, 'Mass spread uniformly over successors.')

  def run(argv):
    del argv
    chain = make_chain(vocab.value, seed.value, strong.value, floor.value)
    written = prepare(data_dir.value, chain, seed=seed.value)
    print(f'Wrote {", ".join(f"{s} ({n:,} tokens)" for s, n in written.items())} and'
          f' {CHAIN_FILE} to {data_dir.value}: V = {chain.vocab_size}, entropy rate'
          f' {chain.entropy_rate:.4f} nats ({chain.entropy_rate / math.log(2):.4f} bits) per'
          f' token, log V = {math.log(chain.vocab_size):.4f} nats; H(π) ='
          f' {chain.stationary_entropy:.4f} nats', flush=True)

  cli.run(run)


if __name__ == '__main__':
  main()
