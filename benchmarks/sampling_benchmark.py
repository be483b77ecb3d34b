r"""Samplers x network evaluations on a trained run: sample quality against compute, and the
frontier of perplexity against diversity that no sampler can game by dull samples.

  python benchmarks/sampling_benchmark.py --workdir=W --judge=JUDGE \
      [--nfe=8,16,32,64,128,256] [--variants=ancestral,confidence,...] [--num_samples=256] \
      [--results=FILE.jsonl] [--plot=FILE.png] [--reference_split=valid] [--print_only] \
      [--also=OTHER_WORKDIR,...]

W is a training run's workdir, an exported or imported model's folder (md4/export.py,
md4/import_mdlm.py) or a distilled run (whose saved sampling.timesteps is its distilled
step count: the 'saved' variant draws with the run's own sampling config as it is).
JUDGE is an autoregressive run, gpt2:NAME_OR_FOLDER, or markov:DATA_DIR (md4.judges).

For each sampler variant (VARIANTS) and each budget of network evaluations (NFE) it draws
--num_samples samples of the run's training length (EMA parameters) and prints a row: the
NFE per sample (measured), generative perplexity under the judge with the standard error
of its log, the samples' unigram entropy (in the judge's tokens, nats) with its standard
error, and seconds per sample (compilation excluded). With a Markov judge (md4.markov)
the row also has the samples' NLL under the chain (nats per token; the chain's own samples
have its entropy rate, up to the first token) and the KL of their transitions from the
chain's (nats per transition, Miller–Madow-corrected: ≈ 0 for the chain's own samples),
each with its standard error over samples. The judge's reference, the same measures of
--num_samples held-out windows of the run's data, is a row too: the point a sampler
should reach (an exported model without its data has none).

Each finished cell is appended to --results (JSONL: workdir, step, judge, variant, budget,
samples, seed (the cell's key), kind ('samples' or 'reference'), steps, nfe, gen_ppl,
log_gen_ppl_stderr, entropy, entropy_stderr, tokens, seconds_per_sample, the markov_*
metrics of a Markov judge, machine, wall_seconds) and skipped when the same command runs
again, so a long table can be run in pieces; --print_only prints and plots the file.
The PNG (--plot; default --results with .png) shows generative perplexity (log scale)
against unigram entropy, one curve per variant with each point labelled by its NFE, and
the reference as a star; with a Markov judge a second panel shows the KL against NFE.
Plotting needs matplotlib, an optional dependency (`pip install -e .[bench]`).
"""

import ast
import copy
import dataclasses
import json
import math
import os
import sys
import time
from typing import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import numpy as np

from md4 import files
from md4 import hardware
from md4 import inference
from md4 import judges
from md4 import run as run_lib


@dataclasses.dataclass(frozen=True)
class Variant:
  """One row of VARIANTS: a sampler and its options, and how an NFE budget sets its steps."""
  sampler: str | None  # md4.sampling.SAMPLERS key; None: the run's config.sampling.sampler
  # config.sampling overrides for sequences of length L.
  options: Callable[[int], dict] = lambda length: {}
  # Reverse steps for an NFE budget n and length L; None: the sampler sets its own count.
  steps: Callable[[int, int], int] | None = lambda nfe, length: nfe
  # (L, the run's config.sampling) -> the budgets it runs at; None: --nfe's.
  budgets: Callable[[int, object], tuple] | None = None


VARIANTS = {
    'ancestral': Variant('ancestral'),
    'ancestral_float32': Variant('ancestral', lambda L: {'float64_draws': False}),
    'topp': Variant('topp'),
    'mean': Variant('mean'),
    'confidence': Variant('confidence'),
    'confidence_noise': Variant('confidence', lambda L: {'confidence_noise': 2.0}),
    # Ranked by the drawn token's probability (LLaDA's, MaskGIT's): the collapse.
    'confidence_drawn': Variant('confidence', lambda L: {'confidence_score': 'drawn'}),
    # Threshold decoding (Fast-dLLM): τ sets the NFE, which the row measures.
    **{f'threshold_{tau}': Variant('threshold', lambda L, tau=tau: {'threshold': tau},
                                   steps=None, budgets=lambda L, s: (L,))
       for tau in (0.1, 0.3, 0.5, 0.7, 0.9)},
    # ... inside four semi-autoregressive blocks.
    'threshold_0.9_blocks_4': Variant(
        'threshold', lambda L: {'threshold': 0.9, 'block_size': L // 4}, steps=None,
        budgets=lambda L, s: (L,)),
    'remdm': Variant('remdm'),
    # Four blocks, each of n/4 steps.
    'blocks_4': Variant('ancestral', lambda L: {'block_size': L // 4}, lambda n, L: n // 4),
    # Four times the steps, for the NFE a network call is skipped on when nothing changed.
    'ancestral_cache': Variant('ancestral', lambda L: {'cache': True}, lambda n, L: 4 * n),
    'first_hitting': Variant('first_hitting', steps=None,  # a call a token
                             budgets=lambda L, s: (L,)),
    # The run's own sampling config, its own steps (a distilled run: its distilled count).
    'saved': Variant(None, budgets=lambda L, s: (s.timesteps,)),
}
KEY = ('workdir', 'step', 'judge', 'variant', 'budget', 'samples', 'seed')  # a cell
DEFAULT_NFE = ['8', '16', '32', '64', '128', '256']

_WORKDIR = flags.DEFINE_string('workdir', None, 'The run (or exported folder) to sample from.')
_JUDGE = flags.DEFINE_string('judge', None, 'An autoregressive run, gpt2:NAME_OR_FOLDER, or'
                             ' markov:DATA_DIR.')
_NFE = flags.DEFINE_list('nfe', DEFAULT_NFE, 'NFE budgets.')
_VARIANTS = flags.DEFINE_list('variants', list(VARIANTS), f'Of {list(VARIANTS)}.')
_SET = flags.DEFINE_list('set', [], 'config.sampling overrides KEY=VALUE for every variant'
                         ' (e.g. temperature=0.9); the table names them.')
_NUM = flags.DEFINE_integer('num_samples', 256, 'Samples per cell.')
_BATCH = flags.DEFINE_integer('batch_size', 32, 'Samples drawn at once.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of every cell.')
_RESULTS = flags.DEFINE_string('results', '', 'JSONL file the rows are appended to.')
_PLOT = flags.DEFINE_string('plot', None, 'PNG of the frontier (default: --results with'
                            ' .png; empty: none).')
_REFERENCE = flags.DEFINE_string('reference_split', 'valid', 'Held-out windows the judge\'s'
                                 ' reference is measured on (empty: none).')
_ALSO = flags.DEFINE_list('also', [], 'Other workdirs whose rows in --results (same judge,'
                          ' latest step) join the table and the plot, their variants named'
                          ' "WORKDIR: VARIANT": e.g. a run distilled from --workdir.')
_PRINT_ONLY = flags.DEFINE_bool('print_only', False, 'Print and plot --results (the rows of'
                                ' --variants); sample nothing.')
flags.mark_flags_as_required(['workdir'])


def reference(row) -> bool:
  """Whether a row is the judge's reference (held-out data) rather than samples."""
  return row.get('kind') == 'reference'


def dash_if_reference(format_row):
  """A column that a reference row, which has no sampler, leaves as '-'."""
  return lambda r: '-' if reference(r) else format_row(r)


# (header, alignment and width, row -> text): the table's columns; MARKOV_COLUMNS follow
# when the rows have a Markov judge's metrics.
COLUMNS = (
    ('variant', '<32', lambda r: r['variant']),
    ('steps', '>5', lambda r: r['steps'] or '-'),
    ('NFE', '>6', dash_if_reference(lambda r: f'{r["nfe"]:.1f}')),
    ('gen PPL', '>8', lambda r: f'{r["gen_ppl"]:.3f}'),
    ('± %', '>5', lambda r: f'{100 * r["log_gen_ppl_stderr"]:.1f}'),
    ('entropy', '>7', lambda r: f'{r["entropy"]:.4f}'),
    ('±', '>6', lambda r: f'{r["entropy_stderr"]:.4f}'),
    ('s/sample', '>8', dash_if_reference(lambda r: f'{r["seconds_per_sample"]:.3f}')),
)
MARKOV_COLUMNS = (
    ('NLL', '>7', lambda r: f'{r["markov_nll"]:.4f}'),
    ('±', '>6', lambda r: f'{r["markov_nll_stderr"]:.4f}'),
    ('KL', '>7', lambda r: f'{r["markov_kl"]:.4f}'),
    ('±', '>6', lambda r: f'{r["markov_kl_stderr"]:.4f}'),
    ('cond H', '>7', lambda r: f'{r["markov_cond_entropy"]:.4f}'),
)


def print_table(rows, header=True, markov=None):
  """The rows (reference first, then by budget), with a Markov judge's columns if markov
  (None: if the rows have them)."""
  markov = any('markov_kl' in r for r in rows) if markov is None else markov
  columns = COLUMNS + (MARKOV_COLUMNS if markov else ())
  if header:
    print(' '.join(f'{h:{w}}' for h, w, _ in columns))
  for r in sorted(rows, key=lambda r: (not reference(r), r['budget'], r['variant'])):
    print(' '.join(f'{str(cell(r)):{w}}' for _, w, cell in columns), flush=True)


def footnote(rows) -> str:
  """What the table's columns measure, in which units, and on which machine."""
  lines = ['ln of generative perplexity: ± is its standard error over samples, in %.'
           ' Entropy: unigram, in nats.']
  markov = [r for r in rows if 'markov_kl' in r]
  if markov:
    r = markov[0]
    lines.append(f'NLL: nats per token under the chain (its own samples:'
                 f' {r["markov_nll_target"]:.4f}; entropy rate {r["markov_entropy_rate"]:.4f}).'
                 ' KL: of the samples\' transitions from the chain\'s, nats per transition'
                 ' (Miller–Madow; ± by jackknife over samples). cond H: the samples\' own'
                 ' conditional entropy, nats.')
  return '\n'.join(lines + [hardware.describe()])


def pyplot():
  """matplotlib.pyplot (without a display), or an ImportError that says how to install it."""
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ImportError('the frontier\'s PNG needs matplotlib, an optional dependency:'
                      ' `pip install -e .[bench]` (or matplotlib==3.11.2), or pass --plot=\'\''
                      ) from None
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def curves(rows):
  """[(variant, its sample rows by NFE, its style)], the variants sorted by name: each
  variant with its own colour and marker in every panel."""
  by_variant = {}
  for r in sorted(rows, key=lambda r: r['nfe']):
    if not reference(r):
      by_variant.setdefault(r['variant'], []).append(r)
  import matplotlib  # pylint: disable=g-import-not-at-top
  colours = matplotlib.colormaps['tab20'].colors
  return [(name, curve, {'color': colours[2 * i % 20 + i // 10 % 2], 'marker': 'os^Dv<>p'[i % 8]})
          for i, (name, curve) in enumerate(sorted(by_variant.items()))]


def plot_frontier(ax, rows):
  """Generative perplexity (log) against unigram entropy: a curve per variant, each point
  labelled by its NFE, error bars of one standard error; the reference as a star."""
  for name, curve, style in curves(rows):
    x, y = np.array([[r['entropy'], r['gen_ppl']] for r in curve]).T
    se = np.array([r['log_gen_ppl_stderr'] for r in curve])
    ax.errorbar(x, y, xerr=[r['entropy_stderr'] for r in curve],
                yerr=[y * (1 - np.exp(-se)), y * (np.exp(se) - 1)], ms=4, capsize=2, lw=1.2,
                label=name, **style)
    for r in curve:
      ax.annotate(f'{r["nfe"]:.0f}', (r['entropy'], r['gen_ppl']), textcoords='offset points',
                  xytext=(4, 4), fontsize=7, color=style['color'])
  for r in filter(reference, rows):
    ax.plot([r['entropy']], [r['gen_ppl']], marker='*', ms=15, color='black', ls='none',
            label=f'{r["variant"]} (target)')
  ax.set_yscale('log')
  ax.set_xlabel('unigram entropy of a sample (nats)')
  ax.set_ylabel('generative perplexity (log scale)')
  ax.grid(True, which='both', alpha=0.3)
  ax.legend(fontsize=7)


def plot_markov_kl(ax, rows):
  """The KL of the samples' transitions from the chain's against NFE, per variant."""
  for name, curve, style in curves(rows):
    ax.errorbar([r['nfe'] for r in curve], [r['markov_kl'] for r in curve],
                yerr=[r['markov_kl_stderr'] for r in curve], ms=4, capsize=2, lw=1.2,
                label=name, **style)
  for r in filter(reference, rows):
    ax.axhline(r['markov_kl'], color='black', ls='--', lw=1, label=f'{r["variant"]} (target)')
  ax.set_xscale('log', base=2)
  ax.set_xlabel('NFE per sample')
  ax.set_ylabel('KL(samples\' transitions ‖ chain\'s), nats per transition')
  ax.grid(True, which='both', alpha=0.3)
  ax.legend(fontsize=7)


def write_plot(rows, path: str, title: str):
  """The PNG of the frontier (and, for a Markov judge, of the KL) at path."""
  plt = pyplot()
  markov = any('markov_kl' in r for r in rows)
  fig, axes = plt.subplots(1, 1 + markov, figsize=(7 + 6 * markov, 5.5), squeeze=False)
  plot_frontier(axes[0, 0], rows)
  if markov:
    plot_markov_kl(axes[0, 1], rows)
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  with files.atomic_open(path, 'wb') as f:
    fig.savefig(f, format='png', dpi=120)
  plt.close(fig)
  print(f'Wrote {path}')


def read_rows(path: str) -> list[dict]:
  """The rows of a JSONL results file ([] if there is none)."""
  if not path or not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(l) for l in f if l.strip()]


def append_row(path: str, row: dict):
  """Prints a finished cell's row and appends it to the JSONL file at path (if any)."""
  print_table([row], header=False)
  if path:
    with open(path, 'a') as f:
      f.write(json.dumps(row) + '\n')


def parse_set(items) -> dict:
  """--set KEY=VALUE items as {key: Python value (or the string)}."""
  extra = {}
  for item in items:
    key, _, value = item.partition('=')
    try:
      extra[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      extra[key] = value
  return extra


def sampling_config(run, variant: Variant, budget: int, length: int, extra: dict):
  """The run's config.sampling with the variant's sampler, steps and options for a budget."""
  config = copy.deepcopy(run.config.sampling)
  if variant.sampler:
    config.sampler = variant.sampler
  if variant.steps:
    config.timesteps = variant.steps(budget, length)
  for key, value in {**variant.options(length), **extra}.items():
    config[key] = value
  return config


def sample_row(run, judge, key: dict, variant: Variant, extra: dict) -> dict:
  """One cell: key['samples'] samples with the variant at key['budget'], judged."""
  length = run.info.data_shape[0]
  config = sampling_config(run, variant, key['budget'], length, extra)
  begin = time.time()
  out = inference.draw_samples(run, config, key['samples'], min(_BATCH.value, key['samples']),
                               seed=key['seed'])
  q = judges.quality(judge, [run.info.decode(s) for s in out.tokens])
  return {**key, 'kind': 'samples', 'steps': config.timesteps if variant.steps else 0,
          'nfe': float(out.nfe.mean()), 'seconds_per_sample': out.seconds / key['samples'],
          **q, 'machine': hardware.describe(), 'wall_seconds': time.time() - begin}


def reference_row(run, judge, key: dict, split: str) -> dict | None:
  """The judge's measures of key['samples'] held-out windows of the run's data: the target."""
  if split not in run.splits:
    print(f'No {split!r} split here ({run.data_error or "the data have none"}): no reference'
          ' point', flush=True)
    return None
  windows = np.asarray(run.splits[split][:key['samples']])
  q = judges.quality(judge, [run.info.decode(w) for w in windows])
  return {**key, 'kind': 'reference', 'steps': 0, 'nfe': 0.0, 'seconds_per_sample': 0.0,
          **q, 'machine': hardware.describe(), 'wall_seconds': 0.0}


def cells(run, length: int):
  """(variant name as recorded, Variant, budget) of every cell asked for, in order."""
  suffix = ' '.join(_SET.value)
  for name in _VARIANTS.value:
    variant = VARIANTS[name]
    budgets = (variant.budgets(length, run.config.sampling) if variant.budgets
               else [int(n) for n in _NFE.value])
    for budget in budgets:
      yield f'{name} {suffix}'.strip(), variant, budget


def measure(run, judge, rows: list[dict]) -> list[dict]:
  """Runs every cell not in rows (the reference first), appending each to --results;
  returns this run's and judge's rows."""
  base = {'workdir': _WORKDIR.value, 'step': run.step, 'judge': _JUDGE.value,
          'samples': _NUM.value, 'seed': _SEED.value}
  done = {tuple(r.get(k) for k in KEY) for r in rows}
  todo = []
  if _REFERENCE.value:
    todo.append((f'held-out {_REFERENCE.value}', None, 0))
  todo += list(cells(run, run.info.data_shape[0]))
  extra = parse_set(_SET.value)
  print_table([], markov=judge.source is not None)  # the header
  for name, variant, budget in todo:
    key = {**base, 'variant': name, 'budget': budget}
    if tuple(key[k] for k in KEY) in done:
      continue
    row = (reference_row(run, judge, key, _REFERENCE.value) if variant is None
           else sample_row(run, judge, key, variant, extra))
    if row:
      rows.append(row)
      append_row(_RESULTS.value, row)
  return [r for r in rows if all(r.get(k) == base[k] for k in ('workdir', 'step', 'judge'))]


def selected(rows: list[dict], workdir: str, judge: str | None) -> list[dict]:
  """The rows of workdir and of judge (default: the workdir's last row's), at the latest
  step they have."""
  rows = [r for r in rows if r['workdir'] == workdir]
  judge = judge or (rows[-1].get('judge') if rows else None)
  rows = [r for r in rows if r.get('judge') == judge]
  step = max((r.get('step') or 0 for r in rows), default=0)
  return [r for r in rows if (r.get('step') or 0) == step]


def also_rows(all_rows: list[dict], judge: str | None) -> list[dict]:
  """The sample rows of --also's workdirs under judge, each variant named by its workdir."""
  return [{**r, 'variant': f'{r["workdir"]}: {r["variant"]}'}
          for workdir in _ALSO.value for r in selected(all_rows, workdir, judge)
          if not reference(r)]


def check_flags():
  """Usage errors, before anything is loaded."""
  unknown = set(_VARIANTS.value) - set(VARIANTS)
  if unknown:
    raise app.UsageError(f'unknown variants {sorted(unknown)}; choose from {list(VARIANTS)}')
  if not _PRINT_ONLY.value and not _JUDGE.value:
    raise app.UsageError('give --judge: an autoregressive run, gpt2:NAME_OR_FOLDER or'
                         ' markov:DATA_DIR')
  if _NUM.value % min(_BATCH.value, _NUM.value):
    raise app.UsageError(f'--num_samples {_NUM.value} must be a multiple of --batch_size'
                         f' {_BATCH.value}')


def main(argv):
  del argv
  check_flags()
  plot = _PLOT.value
  if plot is None:
    plot = os.path.splitext(_RESULTS.value)[0] + '.png' if _RESULTS.value else ''
  if plot:
    try:
      pyplot()  # fail now, not after hours of sampling
    except ImportError as e:
      raise app.UsageError(str(e)) from None
  all_rows = rows = read_rows(_RESULTS.value)
  if _PRINT_ONLY.value:
    rows = [r for r in selected(rows, _WORKDIR.value, _JUDGE.value)
            if reference(r) or r['variant'].split()[0] in _VARIANTS.value]
    title = (f'{_WORKDIR.value} (step {rows[-1].get("step")}), judge {rows[-1]["judge"]};'
             f' {rows[-1]["samples"]} samples per point' if rows else '')
  else:
    run = run_lib.load_run(_WORKDIR.value)
    judge = judges.load(_JUDGE.value)
    source_vocab = getattr(judge.source, 'vocab_size', run.info.vocab_size)
    if source_vocab != run.info.vocab_size:
      raise app.UsageError(f'{_JUDGE.value} has {source_vocab} symbols, the run'
                           f' {run.info.vocab_size}: judge a run trained on its data')
    title = (f'{_WORKDIR.value} ({inference.describe(run)}), judge'
             f' {judge.name}; {_NUM.value} samples per point')
    print(f'{title}; {hardware.describe()}', flush=True)
    rows = measure(run, judge, rows)
    print()
  rows += also_rows(all_rows, rows[-1]['judge'] if rows else _JUDGE.value)
  print_table(rows)
  print(footnote(rows))
  if plot and rows:
    write_plot(rows, plot, title)


if __name__ == '__main__':
  app.run(main)
