"""Sample quality: generative perplexity under an autoregressive judge, and unigram entropy.

A judge re-tokenizes samples (text) with its own tokenizer and scores every token given
the ones before it, in chunks of at most its context length, each chunk started from its
beginning-of-sequence token. Two judges:

  - an autoregressive baseline trained by this codebase (model_type 'ar'), given by its
    workdir: the same data and tokenizer as the diffusion model it judges;
  - GPT-2 from Hugging Face weights (md4.networks.gpt2), the field's standard judge of
    GPT-2-token text, given as 'gpt2:NAME_OR_FOLDER'.

Generative perplexity is exp(total NLL / total tokens) over all samples. Unigram entropy
is the entropy of each sample's token frequencies (in the judge's tokens, nats), averaged
over samples: it falls when samples repeat themselves, which a judge's perplexity alone
rewards.
"""

import dataclasses
import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from md4 import run as run_lib
from md4.data import tokenizer
from md4.networks import gpt2

GPT2_PREFIX = 'gpt2:'


@dataclasses.dataclass
class Judge:
  name: str
  encode: Callable[[str], np.ndarray]  # text -> ids [T]
  window: int  # tokens scored per chunk
  # ids [B, window] -> log p(id_i | chunk's ids before i) [B, window], in nats
  log_probs: Callable[[jax.Array], jax.Array]


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


def load(spec: str) -> Judge:
  """'gpt2:NAME_OR_FOLDER' (GPT-2 weights), or the workdir of an autoregressive run."""
  if spec.startswith(GPT2_PREFIX):
    return gpt2_judge(spec[len(GPT2_PREFIX):])
  return ar_judge(spec)


def score(judge: Judge, texts: list[str], batch_size: int = 16):
  """(NLL in nats [N], tokens [N]) of each text under the judge."""
  chunks, owners = [], []
  for i, t in enumerate(texts):
    ids = judge.encode(t)
    for start in range(0, len(ids), judge.window):
      chunks.append(ids[start:start + judge.window])
      owners.append(i)
  nll, tokens = np.zeros(len(texts)), np.zeros(len(texts), np.int64)
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
  entropy (mean over samples and its standard error), and token counts."""
  nll, tokens = score(judge, texts, batch_size)
  per_sample = nll / np.maximum(tokens, 1)  # nats per token of each sample
  entropy = np.array([unigram_entropy(judge.encode(t)) for t in texts])
  n = len(texts)
  sd = lambda a: float(a.std(ddof=1) / math.sqrt(n)) if n > 1 else float('nan')
  return {'gen_ppl': math.exp(nll.sum() / tokens.sum()), 'log_gen_ppl_stderr': sd(per_sample),
          'entropy': float(entropy.mean()), 'entropy_stderr': sd(entropy),
          'samples': n, 'tokens': int(tokens.sum())}


def format_quality(judge: Judge, path: str, q) -> str:
  return (f'{path}: {q["samples"]} samples, {q["tokens"]} tokens of {judge.name}\n'
          f'  generative perplexity {q["gen_ppl"]:.3f} (log ± {q["log_gen_ppl_stderr"]:.4f})'
          f'; unigram entropy {q["entropy"]:.4f} ± {q["entropy_stderr"]:.4f} nats')
