"""Sample quality: generative perplexity under a judge, unigram entropy, and for samples of
a known source the source's exact measures.

A judge re-tokenizes samples (text) with its own tokenizer and scores every token given
the ones before it, in chunks of at most its context length, each chunk started from its
beginning-of-sequence token. Three judges (`load`, by the spec's prefix):

  - an autoregressive baseline trained by this codebase (model_type 'ar'), given by its
    workdir: the same data and tokenizer as the diffusion model it judges;
  - GPT-2 from Hugging Face weights (md4.networks.gpt2), the field's standard judge of
    GPT-2-token text, given as 'gpt2:NAME_OR_FOLDER';
  - the Markov chain that generated a run's data (md4.markov), given as 'markov:DATA_DIR':
    the exact likelihood rather than a learned one, and with it the NLL against the
    chain's entropy rate and the KL between the samples' transitions and the chain's
    (`Judge.source`'s metrics).

Generative perplexity is exp(total NLL / total tokens) over all samples. Unigram entropy
is the entropy of each sample's token frequencies (in the judge's tokens, nats), averaged
over samples: it falls when samples repeat themselves, which a judge's perplexity alone
rewards.
"""

import dataclasses
import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from md4 import markov
from md4 import run as run_lib
from md4.data import tokenizer
from md4.networks import gpt2

GPT2_PREFIX = 'gpt2:'
MARKOV_PREFIX = 'markov:'
MARKOV_WINDOW = 1 << 12  # tokens a Markov judge scores per chunk (each chunk's first from π)


@dataclasses.dataclass
class Judge:
  name: str
  encode: Callable[[str], np.ndarray]  # text -> ids [T]
  window: int  # tokens scored per chunk
  # ids [B, window] -> log p(id_i | chunk's ids before i) [B, window], in nats
  log_probs: Callable[[jax.Array], jax.Array]
  # A known source of the samples (md4.markov.Chain): its `metrics` of the samples' ids
  # join `quality`'s, and its `format_metrics` the printed lines. None for learned judges.
  source: Any = None


def ar_judge(workdir: str, step: int | None = None) -> Judge:
  """The autoregressive run in workdir (EMA parameters) as a judge."""
  loaded = run_lib.load_run(workdir, step=step)
  if not loaded.model.autoregressive:
    raise ValueError(f'{workdir} holds a {loaded.config.model_type!r} run; a judge is an'
                     " autoregressive one (model_type 'ar', e.g. md4/configs/ar/shakespeare.py)")
  model, params = loaded.model, loaded.params
  apply = jax.jit(lambda ids: model.apply({'params': params}, ids, method=model.log_probs))

  def log_probs(ids):
    with loaded.context():
      return apply(ids)

  return Judge(f'AR run {workdir} (step {loaded.step})', loaded.text_encoder(),
               loaded.info.data_shape[0], log_probs)


def gpt2_judge(path_or_name: str) -> Judge:
  """GPT-2 from a folder of its Hugging Face files or the local cache, as a judge."""
  params, hparams = gpt2.load(path_or_name)
  return Judge(f'GPT-2 {path_or_name}', tokenizer.encode, hparams.n_positions - 1,
               jax.jit(functools.partial(gpt2_log_probs, params, hparams)))


def gpt2_log_probs(params, hparams, ids):
  """log p(ids_i | <|endoftext|>, ids_<i) under GPT-2: [B, T] -> [B, T]."""
  bos = jnp.full((ids.shape[0], 1), tokenizer.EOT_ID, ids.dtype)
  logits = gpt2.logits(params, hparams, jnp.concatenate([bos, ids[:, :-1]], axis=1))
  log_p = jax.nn.log_softmax(logits, axis=-1)
  return jnp.take_along_axis(log_p, ids[..., None], axis=-1)[..., 0]


def markov_judge(data_dir: str) -> Judge:
  """The Markov chain saved beside a run's data by `python -m md4.markov` as a judge: the
  samples' exact likelihood, on the `array` dataset's ids."""
  chain = markov.load(data_dir)
  return Judge(f'Markov chain {data_dir} (V = {chain.vocab_size}, entropy rate'
               f' {chain.entropy_rate:.4f} nats per token)', chain.encode, MARKOV_WINDOW,
               chain.log_probs, chain)


# Spec prefix -> the judge of the rest of the spec; a spec with none is an AR run's workdir.
JUDGES = {GPT2_PREFIX: gpt2_judge, MARKOV_PREFIX: markov_judge}


def load(spec: str) -> Judge:
  """'gpt2:NAME_OR_FOLDER' (GPT-2 weights), 'markov:DATA_DIR' (the chain of md4.markov's
  data there), or the workdir of an autoregressive run."""
  for prefix, make in JUDGES.items():
    if spec.startswith(prefix):
      return make(spec[len(prefix):])
  return ar_judge(spec)


def score(judge: Judge, texts: list[str], batch_size: int = 16):
  """(NLL in nats [N], tokens [N]) of each text under the judge."""
  return score_ids(judge, [judge.encode(t) for t in texts], batch_size)


def score_ids(judge: Judge, encoded: list, batch_size: int = 16):
  """`score` of texts already encoded by judge.encode."""
  chunks, owners = [], []
  for i, ids in enumerate(encoded):
    for start in range(0, len(ids), judge.window):
      chunks.append(ids[start:start + judge.window])
      owners.append(i)
  nll, tokens = np.zeros(len(encoded)), np.zeros(len(encoded), np.int64)
  for b in range(0, len(chunks), batch_size):
    batch = chunks[b:b + batch_size]
    ids = np.zeros((batch_size, judge.window), np.int32)  # padded to one shape
    valid = np.zeros((batch_size, judge.window), bool)
    for row, c in enumerate(batch):
      ids[row, :len(c)], valid[row, :len(c)] = c, True
    log_p = np.asarray(judge.log_probs(jnp.asarray(ids)), np.float64)
    for row in range(len(batch)):
      owner = owners[b + row]
      nll[owner] -= log_p[row][valid[row]].sum()
      tokens[owner] += valid[row].sum()
  return nll, tokens


def unigram_entropy(ids) -> float:
  """Entropy of the frequencies of the ids in one sample [T], in nats."""
  _, counts = np.unique(np.asarray(ids), return_counts=True)
  p = counts / counts.sum()
  return float(-np.sum(p * np.log(p)))


def quality(judge: Judge, texts: list[str], batch_size: int = 16) -> dict[str, float]:
  """Generative perplexity (with the standard error of its log over samples), unigram
  entropy (mean over samples and its standard error), token counts, and a known
  source's metrics (md4.markov.Chain.metrics)."""
  ids = [judge.encode(t) for t in texts]
  nll, tokens = score_ids(judge, ids, batch_size)
  per_sample = nll / np.maximum(tokens, 1)  # nats per token of each sample
  entropy = np.array([unigram_entropy(i) for i in ids])
  n = len(texts)
  sd = lambda a: float(a.std(ddof=1) / math.sqrt(n)) if n > 1 else float('nan')
  return {'gen_ppl': math.exp(nll.sum() / tokens.sum()), 'log_gen_ppl_stderr': sd(per_sample),
          'entropy': float(entropy.mean()), 'entropy_stderr': sd(entropy),
          'samples': n, 'tokens': int(tokens.sum()),
          **(judge.source.metrics(ids) if judge.source is not None else {})}


def format_quality(judge: Judge, path: str, q) -> str:
  lines = [f'{path}: {q["samples"]} samples, {q["tokens"]} tokens of {judge.name}',
           f'  generative perplexity {q["gen_ppl"]:.3f} (log ± {q["log_gen_ppl_stderr"]:.4f})'
           f'; unigram entropy {q["entropy"]:.4f} ± {q["entropy_stderr"]:.4f} nats']
  if judge.source is not None:
    lines.append(judge.source.format_metrics(q))
  return '\n'.join(lines)
