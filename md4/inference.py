"""Using a trained run (md4.run): its ELBO with a standard error (md4/evaluate.py), and
samples from it, prompted or not, with their NFE and wall time (md4/sample.py)."""

import dataclasses
import os
import re
import time

import jax
import jax.numpy as jnp
import numpy as np

from md4 import evaluation
from md4 import exported
from md4 import models
from md4 import run as run_lib
from md4 import samples as samples_lib
from md4 import sampling
from md4 import sharding
from md4.data import images
from md4.data import zero_shot as zero_shot_data

# A gap in a --infill template: <mask:N> is N positions to generate.
GAP = re.compile(r'<mask:(\d+)>')


def evaluate_elbo(run: run_lib.Run, split_names=None, seed: int | None = None,
                  max_examples: int = 0) -> dict[str, dict[str, float]]:
  """Negative ELBO of each split, as the training loop computes it, with its standard error.

  With the run's key (seed None) these are the numbers its training logged at that step.
  Returns {split: {'loss': mean bits per token (per dimension for images), 'stderr': the
  Monte-Carlo standard error (None with a single draw per example; 0 for an
  autoregressive model, whose loss is exact), 'examples': N, 'draws': draws of t and
  masks per example (0: exact), and the other terms' means}}. max_examples > 0 evaluates
  only the first that many rows.
  """
  if not run.splits and run.data_error:
    raise FileNotFoundError(f'{run.workdir} is an exported model whose data are not here, so'
                            f' it has no split to evaluate: {run.data_error}')
  split_names = split_names or run.info.eval_splits
  unknown = set(split_names) - set(run.splits)
  if unknown:
    raise ValueError(f'unknown split(s) {sorted(unknown)}; {run.config.data.dataset!r} has'
                     f' {sorted(run.splits)}')
  exact = run.model.autoregressive
  config = run.config
  evaluator = evaluation.Evaluator(run.model, run.mesh, config.eval_batch_size,
                                   config.eval_repeats)
  results = {}
  with run.context():
    for name in split_names:
      split = run.splits[name]
      if max_examples:
        split = jax.tree.map(lambda a: a[:max_examples], split)
      r = evaluator.split(run.params, split, run_lib.eval_key(config, seed))
      results[name] = {**r.means, 'stderr': 0.0 if exact else r.stderr,
                       'examples': r.examples, 'draws': 0 if exact else config.eval_repeats}
  return results


def describe(run: run_lib.Run) -> str:
  """'checkpoint at step N, EMA parameters', or for an exported folder 'exported model of
  step N, ...'."""
  what = 'exported model of step' if exported.is_exported(run.workdir) else 'checkpoint at step'
  return f'{what} {run.step}, {run.which_params.upper()} parameters'


def format_elbo(run: run_lib.Run, results) -> str:
  """The lines md4/evaluate.py prints for `evaluate_elbo`'s results."""
  unit = 'bits per dimension' if run.info.is_image else 'bits per token'
  what = 'NLL' if run.model.autoregressive else 'negative ELBO'
  lines = [f'{run.workdir}: {describe(run)}; {what} in {unit}']
  for name, r in results.items():
    error = '' if r['stderr'] is None or not r['draws'] else f' ± {r["stderr"]:.4f}'
    draws = 'exact' if r['draws'] == 0 else f'{r["draws"]} draws of t and masks each'
    line = f'  {name}: {r["loss"]:.4f}{error} ({r["examples"]} examples, {draws})'
    if run.uses_gpt2_tokens:
      line += f'; perplexity {2.0**r["loss"]:.2f}'
    lines.append(line)
  if any(r['stderr'] is None for r in results.values()):
    lines.append('  (one draw per example: set --config.eval_repeats=4 for a standard error)')
  return '\n'.join(lines)


def zero_shot_model(run: run_lib.Run, zs: zero_shot_data.ZeroShotSet):
  """The run's model for a zero-shot set: for padded rows, the same model with the set's
  padding id (never masked, never counted; md4.models.md4.MD4.pad_id)."""
  if zs.pad_id is None:
    return run.model
  if run.config.model_type != 'md4':
    raise ValueError(f'the {zs.name} rows are padded (layout pad), which only model_type'
                     " 'md4' scores; prepare the set again with --layout=wrap")
  info = dataclasses.replace(run.info, pad_id=zs.pad_id, length_probs=zs.length_probs())
  return models.build(run.config, info)


def zero_shot_elbo(run: run_lib.Run, zs: zero_shot_data.ZeroShotSet, seed=None,
                   max_examples: int = 0) -> dict:
  """Negative ELBO (an AR model: NLL) of every row of a zero-shot set, per scored token.

  Rows go in batches of config.eval_batch_size (the last one smaller: no row is dropped),
  each estimated config.eval_repeats times, batch i's draw r with the key
  fold_in(eval key, i·repeats + r) as md4.evaluation's. Each draw's bits are weighted by
  the rows' scored tokens, so that 2^loss is the perplexity bound over the set's tokens
  (padding excluded); stderr = sqrt(Σ_b w_b² s²_b / R) with w_b a batch's share of the
  tokens and s²_b the variance of its R draws (None for one draw, 0 when exact).
  """
  rows = zs.rows[:max_examples] if max_examples else zs.rows
  shards = sharding.batch_shards(run.mesh)
  size = min(run.config.eval_batch_size, len(rows)) // shards * shards
  if size == 0:
    raise ValueError(f'{zs.name} has {len(rows)} rows, fewer than the {shards} devices')
  model = zero_shot_model(run, zs)
  losses = jax.jit(lambda p, x, key: models.loss_terms(model, p, x, key, False)['loss'])
  rng, repeats = run_lib.eval_key(run.config, seed), run.config.eval_repeats
  batch_sharding = sharding.batch_sharding(run.mesh)
  bits, tokens, examples = [], [], 0  # per batch: [R] bits per token, its tokens
  with run.context():
    for i, start in enumerate(range(0, len(rows), size)):
      local = np.asarray(rows[start:start + size], np.int32)
      local = local[:len(local) // shards * shards]
      if len(local):
        n = zs.num_tokens(local)
        batch = sharding.global_batch(batch_sharding, local)
        draws = [losses(run.params, batch, jax.random.fold_in(rng, i * repeats + r))
                 for r in range(repeats)]
        bits.append(np.asarray(jax.device_get(draws), np.float64) @ n / n.sum())
        tokens.append(int(n.sum()))
        examples += len(local)
  bits, w = np.stack(bits), np.asarray(tokens) / sum(tokens)  # [batches, R], [batches]
  exact = run.model.autoregressive
  stderr = (0.0 if exact else None if repeats < 2 else
            float(np.sqrt(np.sum(w**2 * bits.var(axis=1, ddof=1)) / repeats)))
  return {'loss': float(w @ bits.mean(axis=1)), 'stderr': stderr, 'examples': examples,
          'tokens': sum(tokens), 'draws': 0 if exact else repeats, 'split': zs.split,
          'layout': zs.metadata['zero_shot']['layout']}


def evaluate_zero_shot(run: run_lib.Run, names, data_dir: str | None = None, seed=None,
                       max_examples: int = 0) -> dict[str, dict]:
  """`zero_shot_elbo` of each prepared zero-shot set of `names` (md4.data.zero_shot; ['all']:
  every one) in data_dir (None: the run's config.data.data_dir), read as rows of the run's
  length. Every set is opened before the first is evaluated, so a missing one fails at once.
  """
  if not run.uses_gpt2_tokens:
    raise ValueError(f'the zero-shot sets are GPT-2 tokens, but this run models'
                     f' {run.config.data.dataset!r}; evaluate a GPT-2-token run')
  data_dir = data_dir or run.config.data.data_dir
  sets = [zero_shot_data.read(data_dir, name, run.info.data_shape[0])
          for name in zero_shot_data.names(names)]
  return {zs.name: zero_shot_elbo(run, zs, seed, max_examples) for zs in sets}


def format_zero_shot(run: run_lib.Run, results) -> str:
  """The table md4/evaluate.py --zero_shot prints: each set's bits per token with its
  standard error, the perplexity bound, rows and tokens, and the MD4 paper's numbers."""
  ar = run.model.autoregressive
  what, bound = ('NLL', 'perplexity') if ar else ('negative ELBO', 'perplexity ≤')
  paper = zero_shot_data.PAPER_MODELS
  lines = [f'{run.workdir}: {describe(run)}; zero-shot {what} in bits per GPT-2 token,'
           f' rows of {run.info.data_shape[0]}',
           '| set | split | layout | examples | tokens | bits | ± | ' + bound + ' | '
           + ' | '.join(f'{m} (paper)' for m in paper) + ' |',
           '|' + '---|' * (8 + len(paper))]
  for name, r in results.items():
    bench = zero_shot_data.BENCHMARKS[name]
    error = '—' if r['stderr'] is None else f'{r["stderr"]:.4f}'
    lines.append(f'| {bench.title} | {r["split"]} | {r["layout"]} | {r["examples"]} |'
                 f' {r["tokens"]} | {r["loss"]:.4f} | {error} | {2.0**r["loss"]:.2f} | '
                 + ' | '.join(f'{bench.paper[m]:.2f}' for m in paper) + ' |')
  if any(r['stderr'] is None for r in results.values()):
    lines.append('(one draw per row: set --config.eval_repeats=4 for a standard error)')
  return '\n'.join(lines)


def prompt_tokens(encode, mask_id, length, prefix='', suffix='', infill=''):
  """One sequence [length] of given ids and mask_id where to generate.

  prefix and suffix are placed at the ends with masks between; infill is a template whose
  <mask:N> gaps are N masks each, followed by masks up to `length`.
  """
  if infill and (prefix or suffix):
    raise ValueError('give either --infill or --prefix/--suffix, not both')
  if infill:
    pieces = GAP.split(infill)  # text, N, text, N, ..., text
    ids = [encode(p) if i % 2 == 0 else np.full(int(p), mask_id, np.int32)
           for i, p in enumerate(pieces)]
    seq = np.concatenate([np.asarray(a, np.int32) for a in ids])
    if len(seq) > length:
      raise ValueError(f'the infill template is {len(seq)} tokens, longer than --length'
                       f' {length}')
    return np.concatenate([seq, np.full(length - len(seq), mask_id, np.int32)])
  head, tail = np.asarray(encode(prefix), np.int32), np.asarray(encode(suffix), np.int32)
  gap = length - len(head) - len(tail)
  if gap < 0:
    raise ValueError(f'prefix and suffix are {len(head) + len(tail)} tokens, more than'
                     f' --length {length}')
  return np.concatenate([head, np.full(gap, mask_id, np.int32), tail])


@dataclasses.dataclass
class Samples:
  tokens: np.ndarray  # [N, *S]
  nfe: np.ndarray  # [N]: network evaluations of each sample's chain
  seconds: float  # sampling wall time, compilation excluded
  compile_seconds: float


def _check_request(run, options, num_samples, batch_size, length, label):
  info = run.info
  if num_samples % batch_size:
    raise ValueError(f'--num_samples {num_samples} must be a multiple of --batch_size'
                     f' {batch_size}')
  if length and len(info.data_shape) != 1:
    raise ValueError('--length and prompts are for sequences; these are images')
  if length > info.data_shape[0] and not options.block_size:
    raise ValueError(f'--length {length} exceeds the training length {info.data_shape[0]};'
                     ' set --config.sampling.block_size (semi-autoregressive blocks)')
  if label is not None and not info.num_classes:
    raise ValueError('--label needs a class-conditional run')


def draw_samples(run: run_lib.Run, sampling_config, num_samples: int, batch_size: int = 0,
                 length: int = 0, prompt: np.ndarray | None = None, label: int | None = None,
                 seed: int = 0) -> Samples:
  """num_samples samples in batches of batch_size (0: all at once) with sampling_config.

  length > 0 (sequences): that many positions (more than the training length needs
  block decoding). prompt [length]: ids to keep, the mask id where to generate. label:
  the class of every sample of a class-conditional model (None: one grid row per class).
  """
  model, info = run.model, run.info
  batch_size = batch_size or num_samples
  length = len(prompt) if prompt is not None else (
      length or (info.data_shape[0] if len(info.data_shape) == 1 else 0))
  options = sampling.Options.from_config(sampling_config)
  _check_request(run, options, num_samples, batch_size, length, label)
  sampler = sampling.Sampler(model, options)
  labels = None
  if info.num_classes:
    labels = (np.full(num_samples, label, np.int32) if label is not None
              else images.sample_labels(num_samples, info.num_classes))

  def start(rng):  # [batch, *S]
    if prompt is not None:
      return jnp.broadcast_to(jnp.asarray(prompt), (batch_size, length))
    if length and length != info.data_shape[0]:
      return jnp.full((batch_size, length), model.mask_id, jnp.int32)
    return model.apply({'params': run.params}, rng, batch_size, method=model.sample_prior)

  @jax.jit
  def one_batch(params, rng, label):
    rng_prior, rng_sample = jax.random.split(rng)
    return sampler(params, rng_sample, start(rng_prior), label)

  rng = jax.random.key(seed)
  batch_labels = [None if labels is None else jnp.asarray(labels[i:i + batch_size])
                  for i in range(0, num_samples, batch_size)]
  with run.context():
    begin = time.time()
    compiled = one_batch.lower(run.params, rng, batch_labels[0]).compile()
    compile_seconds = time.time() - begin
    begin = time.time()
    out = [compiled(run.params, jax.random.fold_in(rng, i), lab)
           for i, lab in enumerate(batch_labels)]
    tokens, nfe = jax.device_get(([o[0] for o in out], [o[1] for o in out]))
    seconds = time.time() - begin
  return Samples(np.concatenate(tokens), np.concatenate(nfe), seconds, compile_seconds)


def sample(workdir, config, *, step=None, params=None, num_samples=16, batch_size=0,
           length=0, prefix='', suffix='', infill='', label=None, seed=0, output=''):
  """md4/sample.py: samples from a run, written to a file; prints NFE and wall time."""
  sampling.Options.from_config(config.sampling)  # a bad option fails before the restore
  run = run_lib.load_run(workdir, config, step, params)
  prompt = None
  if prefix or suffix or infill:
    prompt = prompt_tokens(run.text_encoder(), run.model.mask_id,
                           length or run.info.data_shape[0], prefix, suffix, infill)
  s = config.sampling
  out = draw_samples(run, s, num_samples, batch_size, length, prompt, label, seed)
  output = output or os.path.join(
      workdir, 'samples', f'{s.sampler}_T{s.timesteps}_step{run.step}_seed{seed}.'
      f'{samples_lib.suffix(run.info)}')
  samples_lib.write(output, out.tokens, run.info)
  print(f'Wrote {num_samples} samples to {output}\n'
        f'NFE per sample: mean {out.nfe.mean():.1f} (min {out.nfe.min()}, max'
        f' {out.nfe.max()}); wall time {out.seconds:.2f} s ({out.seconds / num_samples:.3f}'
        f' s per sample) after {out.compile_seconds:.1f} s of compilation', flush=True)
  return output, out
