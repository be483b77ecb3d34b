r"""Samplers x network evaluations on a trained run: sample quality against compute.

  python benchmarks/sampling_benchmark.py --workdir=W --judge=W_AR \
      [--nfe=16,32,64,128,256] [--variants=ancestral,confidence,...] [--num_samples=64] \
      [--results=FILE.jsonl]

For each sampler variant and each budget of network evaluations (NFE) it draws
--num_samples samples of the run's training length (EMA parameters) and prints a table:
the NFE per sample (measured), generative perplexity under the judge (an autoregressive
run of this codebase, or gpt2:NAME_OR_FOLDER) with the standard error of its log, the
unigram entropy of the samples (nats) and the seconds per sample (compilation excluded).
Rows are appended to --results as they finish, so a long table can be run in pieces (a
row already there is not run again) and printed with --print_only.
"""

import ast
import copy
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

from md4 import hardware
from md4 import inference
from md4 import judges
from md4 import run as run_lib

# Variant -> (sampler, config.sampling overrides for length L, reverse steps for an NFE
# budget n (None: the sampler sets its own count), the budgets it runs at (None: all)).
VARIANTS = {
    'ancestral': ('ancestral', lambda L: {}, lambda n, L: n, None),
    'ancestral_float32': ('ancestral', lambda L: {'float64_draws': False}, lambda n, L: n,
                          None),
    'topp': ('topp', lambda L: {}, lambda n, L: n, None),
    'mean': ('mean', lambda L: {}, lambda n, L: n, None),
    'confidence': ('confidence', lambda L: {}, lambda n, L: n, None),
    'confidence_noise': ('confidence', lambda L: {'confidence_noise': 2.0}, lambda n, L: n,
                         None),
    'remdm': ('remdm', lambda L: {}, lambda n, L: n, None),
    # Four blocks, each of n/4 steps.
    'blocks_4': ('ancestral', lambda L: {'block_size': L // 4}, lambda n, L: n // 4, None),
    # Four times the steps, for the NFE a network call is skipped on when nothing changed.
    'ancestral_cache': ('ancestral', lambda L: {'cache': True}, lambda n, L: 4 * n, None),
    'first_hitting': ('first_hitting', lambda L: {}, None, lambda L: (L,)),  # a call a token
}

_WORKDIR = flags.DEFINE_string('workdir', None, 'The run to sample from.')
_JUDGE = flags.DEFINE_string('judge', None, 'An autoregressive run, or gpt2:NAME_OR_FOLDER.')
_NFE = flags.DEFINE_list('nfe', ['16', '32', '64', '128', '256'], 'NFE budgets.')
_VARIANTS = flags.DEFINE_list('variants', list(VARIANTS), f'Of {list(VARIANTS)}.')
_SET = flags.DEFINE_list('set', [], 'config.sampling overrides KEY=VALUE for every variant'
                        ' (e.g. temperature=0.9); the table names them.')
_NUM = flags.DEFINE_integer('num_samples', 64, 'Samples per cell.')
_BATCH = flags.DEFINE_integer('batch_size', 32, 'Samples drawn at once.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of every cell.')
_RESULTS = flags.DEFINE_string('results', '', 'JSONL file the rows are appended to.')
_PRINT_ONLY = flags.DEFINE_bool('print_only', False, 'Print --results; sample nothing.')
flags.mark_flags_as_required(['workdir'])


def print_table(rows):
  print(f'{"variant":<32} {"steps":>5} {"NFE":>6} {"gen PPL":>8} {"± %":>5} '
        f'{"entropy":>7} {"±":>6} {"s/sample":>8}')
  for r in sorted(rows, key=lambda r: (r['budget'], r['variant'])):
    print(f'{r["variant"]:<32} {r["steps"] or "-":>5} {r["nfe"]:>6.1f} {r["gen_ppl"]:>8.3f} '
          f'{100 * r["log_gen_ppl_stderr"]:>5.1f} {r["entropy"]:>7.4f} '
          f'{r["entropy_stderr"]:>6.4f} {r["seconds_per_sample"]:>8.3f}')


def main(argv):
  del argv
  rows = []
  if _RESULTS.value and os.path.exists(_RESULTS.value):
    with open(_RESULTS.value) as f:
      rows = [json.loads(l) for l in f if l.strip()]
  if _PRINT_ONLY.value:
    print_table(rows)
    return
  unknown = set(_VARIANTS.value) - set(VARIANTS)
  if unknown:
    raise app.UsageError(f'unknown variants {sorted(unknown)}; choose from {list(VARIANTS)}')
  run = run_lib.load_run(_WORKDIR.value)
  judge = judges.load(_JUDGE.value)
  length = run.info.data_shape[0]
  print(f'{_WORKDIR.value} (step {run.step}, EMA), judge {judge.name}; {_NUM.value} samples'
        f' of {length} per cell; {hardware.describe()}', flush=True)
  done = {(r['workdir'], r['variant'], r['budget']) for r in rows}
  extra = {}
  for item in _SET.value:
    key, _, value = item.partition('=')
    try:
      extra[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      extra[key] = value
  for variant in _VARIANTS.value:
    sampler, overrides, steps_of, budgets_of = VARIANTS[variant]
    name = f'{variant} {" ".join(_SET.value)}'.strip()
    budgets = budgets_of(length) if budgets_of else [int(n) for n in _NFE.value]
    for budget in budgets:
      if (_WORKDIR.value, name, budget) in done:
        continue
      config = copy.deepcopy(run.config.sampling)
      config.sampler = sampler
      if steps_of:
        config.timesteps = steps_of(budget, length)
      for key, value in {**overrides(length), **extra}.items():
        config[key] = value
      begin = time.time()
      out = inference.draw_samples(run, config, _NUM.value, _BATCH.value, seed=_SEED.value)
      q = judges.quality(judge, [run.info.decode(s) for s in out.tokens])
      row = {'workdir': _WORKDIR.value, 'variant': name, 'budget': budget,
             'steps': config.timesteps if steps_of else 0, 'nfe': float(out.nfe.mean()),
             'seconds_per_sample': out.seconds / _NUM.value, **q,
             'machine': hardware.describe(), 'wall_seconds': time.time() - begin}
      rows.append(row)
      print_table([row])
      if _RESULTS.value:
        with open(_RESULTS.value, 'a') as f:
          f.write(json.dumps(row) + '\n')
  print()
  print_table([r for r in rows if r['workdir'] == _WORKDIR.value])
  print(f'ln of generative perplexity: ± is its standard error over samples, in %.'
        f' Entropy in nats. {hardware.describe()}')


if __name__ == '__main__':
  app.run(main)
