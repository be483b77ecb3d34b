"""Using a trained run: restore any checkpoint, evaluate its ELBO, sample from it.

A run's workdir holds its resolved config (config.json, md4.configs.save) and checkpoints;
`load_run` rebuilds the model from them with md4.train's own functions, so nothing but
the workdir is needed. md4/evaluate.py and md4/sample.py are thin entry points to
`evaluate` and `sample` here; md4.judges scores samples.
"""

import contextlib
import dataclasses
import functools
import os
import re
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from md4 import configs
from md4 import data
from md4 import optim
from md4 import sampling
from md4 import train
from md4.data import images
from md4.data import openwebtext
from md4.data import text
from md4.data import tokenizer

PARAMS = ('ema', 'raw')
# The line between samples in a text samples file (md4.data.format_samples writes it).
SAMPLE_SEPARATOR = '\n' + '=' * 40 + '\n'
# A gap in a --infill template: <mask:N> is N positions to generate.
GAP = re.compile(r'<mask:(\d+)>')


@dataclasses.dataclass
class Run:
  """A restored run: its config, data, model and the chosen parameters at `step`."""
  workdir: str
  config: ml_collections.ConfigDict
  info: data.DatasetInfo
  splits: dict[str, Any]
  model: nn.Module
  params: Any
  step: int
  which_params: str  # 'ema' or 'raw'
  mesh: jax.sharding.Mesh
  rules: tuple

  @contextlib.contextmanager
  def context(self):
    """The mesh and logical-axis rules the networks' sharding annotations read."""
    with jax.sharding.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      yield


def load_run(workdir: str, config=None, step: int | None = None,
             params: str = 'ema') -> Run:
  """Restores `workdir`'s checkpoint at `step` (None: the latest) with its saved config, or
  with `config` (the saved one with overrides); params 'ema' or 'raw'."""
  if params not in PARAMS:
    raise ValueError(f'unknown params {params!r}; choose from {list(PARAMS)}')
  config = configs.load(workdir) if config is None else config
  if not os.path.isdir(os.path.join(workdir, 'checkpoints')):
    raise FileNotFoundError(f'{workdir} has no checkpoints/ folder; train there first')
  manager = train.make_checkpoint_manager(workdir, config)
  steps = sorted(manager.all_steps())
  if not steps:
    raise FileNotFoundError(f'{manager.directory} holds no checkpoint yet')
  step = steps[-1] if step is None else step
  if step not in steps:
    raise ValueError(f'no checkpoint at step {step} in {manager.directory}; it has {steps}')
  mesh, rules = train.sharding_setup(config, sharded=False)
  info, splits = data.load_dataset(config.data)
  model = train.build_model(config, info)
  optimizer = optim.make_optimizer(config.opt, config.num_train_steps)
  example = jnp.zeros((1,) + info.data_shape, jnp.int32)
  with jax.sharding.set_mesh(mesh), nn.logical_axis_rules(rules):
    abstract, shardings, init_params = train.state_shardings(model, optimizer, mesh, rules,
                                                             example)
    state = train.restore_or_init(manager, optimizer, abstract, shardings, init_params,
                                  jax.random.key(0), steps=[step])
  manager.close()
  chosen = state.ema_params if params == 'ema' else state.params
  return Run(workdir, config, info, splits, model, chosen, step, params, mesh, rules)


# --------------------------------------------------------------------------- the ELBO


def eval_key(config, seed: int | None = None):
  """The key of the training run's evals (train.py: fold_in(key(seed), 2)), or one of
  another seed."""
  return jax.random.fold_in(jax.random.key(config.seed if seed is None else seed), 2)


def evaluate_elbo(run: Run, split_names=None, seed: int | None = None,
                  max_examples: int = 0) -> dict[str, dict[str, float]]:
  """Negative ELBO of each split, as train.evaluate computes it, with its standard error.

  With the run's key (seed None) these are the numbers its training logged at that step.
  Returns {split: {'loss': mean bits per token (per dimension for images), 'stderr': the
  Monte-Carlo standard error (None with a single draw per example), 'examples': N,
  'draws': draws of t and masks per example, and the other terms' means}}. The standard
  error is that of a mean of independent draws: each batch is estimated config.eval_repeats
  times with independent keys, and the spread of those repeats measures the noise the
  draws add, sqrt(Σ_batches s²_b / R) / n_batches. An autoregressive model's loss is
  exact (stderr 0, no draws). max_examples > 0 evaluates only the first that many rows.
  """
  split_names = split_names or run.info.eval_splits
  unknown = set(split_names) - set(run.splits)
  if unknown:
    raise ValueError(f'unknown split(s) {sorted(unknown)}; {run.config.data.dataset!r} has'
                     f' {sorted(run.splits)}')
  exact = getattr(run.model, 'autoregressive', False)
  config = run.config
  step = jax.jit(functools.partial(train.eval_step, run.model))
  results = {}
  with run.context():
    for name in split_names:
      split = run.splits[name]
      if max_examples:
        split = jax.tree.map(lambda a: a[:max_examples], split)
      losses = []

      def eval_fn(params, batch, rng):
        metrics = step(params, batch, rng)
        losses.append(metrics['loss'])
        return metrics

      info = dataclasses.replace(run.info, eval_splits=(name,))
      metrics = train.evaluate(eval_fn, run.params, {name: split}, info, config, run.mesh,
                               eval_key(config, seed))
      repeats = config.eval_repeats
      draws = np.asarray(jax.device_get(losses), np.float64).reshape(-1, repeats)
      stderr = None
      if exact:
        stderr = 0.0
      elif repeats > 1:
        stderr = float(np.sqrt(np.sum(draws.var(axis=1, ddof=1) / repeats)) / len(draws))
      results[name] = {
          **{k.removeprefix(f'{name}_'): v for k, v in metrics.items()},
          'stderr': stderr, 'examples': len(draws) * config.eval_batch_size,
          'draws': 0 if exact else repeats}
  return results


def uses_gpt2_tokens(config) -> bool:
  return config.data.dataset in openwebtext.RECIPES


def format_elbo(run: Run, results) -> str:
  """The lines evaluate.py prints for `evaluate_elbo`'s results."""
  unit = 'bits per dimension' if run.info.is_image else 'bits per token'
  what = 'NLL' if getattr(run.model, 'autoregressive', False) else 'negative ELBO'
  lines = [f'{run.workdir}: checkpoint at step {run.step}, {run.which_params.upper()}'
           f' parameters; {what} in {unit}']
  for name, r in results.items():
    error = '' if r['stderr'] is None or not r['draws'] else f' ± {r["stderr"]:.4f}'
    draws = 'exact' if r['draws'] == 0 else f'{r["draws"]} draws of t and masks each'
    line = f'  {name}: {r["loss"]:.4f}{error} ({r["examples"]} examples, {draws})'
    if uses_gpt2_tokens(run.config):
      line += f'; perplexity {2.0**r["loss"]:.2f}'
    lines.append(line)
  if any(r['stderr'] is None for r in results.values()):
    lines.append('  (one draw per example: set --config.eval_repeats=4 for a standard error)')
  return '\n'.join(lines)


# --------------------------------------------------------------------------- prompts


def text_encoder(config, info):
  """text -> token ids [T] with the run's tokenizer: GPT-2 BPE, or the dataset's characters."""
  if uses_gpt2_tokens(config):
    return lambda s: np.asarray(tokenizer.gpt2().encode(s).ids, np.int32)
  if not info.is_image:
    vocab = info.decode(np.arange(info.vocab_size))
    if isinstance(vocab, str) and len(vocab) == info.vocab_size:
      return functools.partial(text.encode, vocab=vocab)
  raise ValueError(f'dataset {config.data.dataset!r} has no text tokenizer here (GPT-2'
                   ' tokens or one character per id); prompts need one')


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


# --------------------------------------------------------------------------- sampling


@dataclasses.dataclass
class Samples:
  tokens: np.ndarray  # [N, *S]
  nfe: np.ndarray  # [N]: network evaluations of each sample's chain
  seconds: float  # sampling wall time, compilation excluded
  compile_seconds: float


def draw_samples(run: Run, sampling_config, num_samples: int, batch_size: int = 0,
                 length: int = 0, prompt: np.ndarray | None = None, label: int | None = None,
                 seed: int = 0) -> Samples:
  """num_samples samples in batches of batch_size (0: all at once) with sampling_config.

  length > 0 (sequences): that many positions (more than the training length needs
  block decoding). prompt [length]: ids to keep, the mask id where to generate. label:
  the class of every sample of a class-conditional model (None: one grid row per class).
  """
  model, info = run.model, run.info
  batch_size = batch_size or num_samples
  if num_samples % batch_size:
    raise ValueError(f'--num_samples {num_samples} must be a multiple of --batch_size'
                     f' {batch_size}')
  length = length or (info.data_shape[0] if len(info.data_shape) == 1 else 0)
  if prompt is not None:
    length = len(prompt)
  if length and len(info.data_shape) != 1:
    raise ValueError('--length and prompts are for sequences; these are images')
  options = sampling.options_from_config(sampling_config)
  if length > info.data_shape[0] and not options.block_size:
    raise ValueError(f'--length {length} exceeds the training length {info.data_shape[0]};'
                     ' set --config.sampling.block_size (semi-autoregressive blocks)')
  sample = sampling.make_sampler(model, sampling_config)
  labels = None
  if info.num_classes:
    labels = (np.full(num_samples, label, np.int32) if label is not None
              else images.sample_labels(num_samples, info.num_classes))
  elif label is not None:
    raise ValueError('--label needs a class-conditional run')

  def start(rng):  # [batch, *S]
    if prompt is not None:
      return jnp.broadcast_to(jnp.asarray(prompt), (batch_size, length))
    if length and length != info.data_shape[0]:
      return jnp.full((batch_size, length), model.mask_id, jnp.int32)
    return model.apply({'params': run.params}, rng, batch_size, method=model.sample_prior)

  @jax.jit
  def one_batch(params, rng, label):
    rng_prior, rng_sample = jax.random.split(rng)
    return sample(params, rng_sample, start(rng_prior), label)

  rng = jax.random.key(seed)
  batch_labels = [None if labels is None else jnp.asarray(labels[i:i + batch_size])
                  for i in range(0, num_samples, batch_size)]
  with run.context():
    begin = time.time()
    compiled = one_batch.lower(run.params, rng, batch_labels[0]).compile()
    compile_seconds = time.time() - begin
    tokens, nfe = [], []
    begin = time.time()
    for i, lab in enumerate(batch_labels):
      out, n = compiled(run.params, jax.random.fold_in(rng, i), lab)
      tokens.append(out)
      nfe.append(n)
    tokens, nfe = jax.device_get((tokens, nfe))
    seconds = time.time() - begin
  return Samples(np.concatenate(tokens), np.concatenate(nfe), seconds, compile_seconds)


def write_samples(path: str, tokens: np.ndarray, info: data.DatasetInfo) -> str:
  """Samples as text (or FASTA) or, for images, one PNG grid; returns the path written."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  if info.is_image:
    images.write_grid(path, np.stack([info.decode(s) for s in tokens]))
    return path
  _, contents = data.format_samples([info.decode(s) for s in tokens], info.sample_format)
  with open(path + '.tmp', 'w') as f:
    f.write(contents)
  os.replace(path + '.tmp', path)
  return path


def sample_suffix(info) -> str:
  if info.is_image:
    return 'png'
  return data.format_samples([], info.sample_format)[0]


def read_samples(path: str) -> list[str]:
  """The texts of a samples file that `write_samples` wrote (.txt or .fasta)."""
  with open(path) as f:
    contents = f.read()
  if path.endswith('.fasta'):
    records = contents.split('>')[1:]
    return [''.join(r.split('\n')[1:]) for r in records]
  if not contents.endswith('\n'):
    raise ValueError(f'{path} is not a samples file written by md4/sample.py')
  return contents[:-1].split(SAMPLE_SEPARATOR)


def sample(workdir, config, *, step=None, params='ema', num_samples=16, batch_size=0,
           length=0, prefix='', suffix='', infill='', label=None, seed=0, output=''):
  """md4/sample.py: samples from a run, written to a file; prints NFE and wall time."""
  run = load_run(workdir, config, step, params)
  prompt = None
  if prefix or suffix or infill:
    encode = text_encoder(run.config, run.info)
    prompt = prompt_tokens(encode, run.model.mask_id, length or run.info.data_shape[0],
                           prefix, suffix, infill)
  s = config.sampling
  out = draw_samples(run, s, num_samples, batch_size, length, prompt, label, seed)
  output = output or os.path.join(
      workdir, 'samples', f'{s.sampler}_T{s.timesteps}_step{run.step}_seed{seed}.'
      f'{sample_suffix(run.info)}')
  write_samples(output, out.tokens, run.info)
  print(f'Wrote {num_samples} samples to {output}\n'
        f'NFE per sample: mean {out.nfe.mean():.1f} (min {out.nfe.min()}, max'
        f' {out.nfe.max()}); wall time {out.seconds:.2f} s ({out.seconds / num_samples:.3f}'
        f' s per sample) after {out.compile_seconds:.1f} s of compilation', flush=True)
  return output, out
