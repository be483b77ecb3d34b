"""The Markov-chain source (md4.markov) and its judge: exact quantities against independent
computations, the judge's measures of the chain's own samples and of wrong ones, its data
as the `array` dataset, and sampling_benchmark.py's table and PNG from a results file."""

import json
import math
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from md4 import data
from md4 import judges
from md4 import markov
from md4.configs.md4 import markov as markov_config

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def chain():
  return markov.make_chain()


def test_the_default_chain_is_sparse_ish_with_a_low_entropy_rate(chain):
  p = chain.transition
  assert p.shape == (16, 16) and (p > 0).all() and np.allclose(p.sum(1), 1)
  assert ((p > 0.1).sum(1) <= markov.STRONG).all()  # a few strong transitions per symbol
  assert chain.entropy_rate == pytest.approx(1.3283, abs=1e-4)  # the config's docstring
  assert chain.entropy_rate < 0.5 * math.log(16)
  assert np.array_equal(markov.make_transition(seed=0), p)  # seeded
  assert not np.array_equal(markov.make_transition(seed=1), p)


def test_stationary_distribution_and_entropy_rate_against_independent_computations(chain):
  p = chain.transition
  power = np.full(16, 1 / 16)
  for _ in range(2000):
    power = power @ p
  np.testing.assert_allclose(chain.pi, power, rtol=0, atol=1e-12)
  # H = H(X_t, X_t+1) − H(X_t) from the joint law π_i P_ij.
  joint = chain.pi[:, None] * p
  assert chain.entropy_rate == pytest.approx(
      markov.entropy(joint.ravel()) - markov.entropy(chain.pi), abs=1e-12)
  # A long run of the chain: its symbol frequencies and NLL per transition.
  x = markov.stream(p, 1 << 18, np.random.default_rng(7))
  np.testing.assert_allclose(np.bincount(x, minlength=16) / len(x), chain.pi, atol=0.004)
  assert -np.mean(chain.log_p[x[:-1], x[1:]]) == pytest.approx(chain.entropy_rate, abs=0.015)


def test_the_chains_own_samples_score_its_entropy_rate_and_no_kl(chain):
  x = markov.sequences(chain.transition, 256, 512, np.random.default_rng(1))
  m = chain.metrics(list(x))
  se = m['markov_nll_stderr']
  assert 0 < se < 0.01
  expected = (chain.stationary_entropy + 511 * chain.entropy_rate) / 512  # first from π
  assert m['markov_nll_target'] == pytest.approx(expected)
  assert abs(m['markov_nll'] - m['markov_nll_target']) < 4 * se
  assert abs(m['markov_nll'] - chain.entropy_rate) < 5 * se
  assert abs(m['markov_kl']) < 4 * m['markov_kl_stderr'] + 1e-3
  assert m['markov_kl_plugin'] > m['markov_kl']  # the plug-in's upward bias, removed
  assert abs(m['markov_cond_entropy'] - chain.entropy_rate) < 4 * m['markov_cond_entropy_stderr']
  # Plug-in conditional entropy + plug-in KL = the NLL per transition.
  n = m['markov_transitions']
  nll_transitions = -sum(chain.log_p[s[:-1], s[1:]].sum() for s in x) / n
  bias = m['markov_kl_plugin'] - m['markov_kl']
  assert m['markov_cond_entropy'] - bias + m['markov_kl_plugin'] == pytest.approx(
      nll_transitions, abs=1e-12)


def test_wrong_or_dull_samples_are_measurably_off(chain):
  rng = np.random.default_rng(2)
  wrong = markov.sequences(markov.make_transition(seed=3), 256, 128, rng)
  m = chain.metrics(list(wrong))
  assert m['markov_nll'] > m['markov_nll_target'] + 10 * m['markov_nll_stderr']
  assert m['markov_kl'] > 10 * m['markov_kl_stderr'] and m['markov_kl'] > 0.5
  # The chain at temperature 0.5: samples likelier than the chain's own (a lower NLL, what
  # a perplexity rewards), but with transitions that the KL tells apart.
  cold = chain.transition**2 / (chain.transition**2).sum(1, keepdims=True)
  m = chain.metrics(list(markov.sequences(cold, 256, 128, rng)))
  assert m['markov_nll'] < m['markov_nll_target'] - 10 * m['markov_nll_stderr']
  assert m['markov_kl'] > 10 * m['markov_kl_stderr'] and m['markov_kl'] > 0.05
  assert m['markov_cond_entropy'] < chain.entropy_rate - 0.2


def test_prepared_data_train_through_the_array_dataset_and_feed_the_judge(tmp_path, chain):
  tokens = {'train': 4096, 'valid': 1024, 'test': 1024}
  assert markov.prepare(str(tmp_path), chain, tokens) == tokens
  loaded = markov.load(str(tmp_path))
  np.testing.assert_array_equal(loaded.transition, chain.transition)
  saved = json.loads((tmp_path / markov.CHAIN_FILE).read_text())
  assert saved['entropy_rate_nats'] == chain.entropy_rate and saved['seed'] == 0
  config = markov_config.get_config()
  config.data.data_dir = str(tmp_path)
  info, splits = data.load_dataset(config.data)
  assert info.vocab_size == 16 and info.data_shape == (128,)
  assert splits['valid'].shape == (8, 128) and len(splits['train']) == 4096 - 127
  judge = judges.load(f'markov:{tmp_path}')
  assert judge.source.vocab_size == 16 and 'entropy rate 1.3283' in judge.name
  q = judges.quality(judge, [info.decode(w) for w in splits['valid']], batch_size=4)
  assert math.log(q['gen_ppl']) == pytest.approx(q['markov_nll'], rel=1e-9)
  assert q['samples'] == 8 and q['markov_transitions'] == 8 * 127
  text = judges.format_quality(judge, 'valid', q)
  assert 'NLL under the chain' in text and 'KL(' in text
  with pytest.raises(ValueError, match='outside the chain'):
    judges.quality(judge, ['3 16 2'])
  with pytest.raises(ValueError, match='token ids separated by spaces'):
    judges.quality(judge, ['ab c'])
  with pytest.raises(FileNotFoundError, match='python -m md4.markov'):
    judges.load(f'markov:{tmp_path / "none"}')


def row(variant, budget, nfe, ppl, entropy, kl, kind='samples'):
  """A results row as sampling_benchmark.py writes it, with a Markov judge's metrics."""
  return {'workdir': 'W', 'step': 100, 'judge': 'markov:D', 'variant': variant,
          'budget': budget, 'samples': 16, 'seed': 0, 'kind': kind, 'steps': budget,
          'nfe': nfe, 'gen_ppl': ppl, 'log_gen_ppl_stderr': 0.03, 'entropy': entropy,
          'entropy_stderr': 0.01, 'tokens': 2048, 'seconds_per_sample': 0.1,
          'markov_nll': math.log(ppl), 'markov_nll_stderr': 0.03, 'markov_nll_target': 1.34,
          'markov_entropy_rate': 1.33, 'markov_kl': kl, 'markov_kl_stderr': 0.01,
          'markov_kl_plugin': kl + 0.05, 'markov_cond_entropy': 1.3,
          'markov_cond_entropy_stderr': 0.02, 'markov_transitions': 2032}


def test_sampling_benchmark_prints_and_plots_a_results_file(tmp_path):
  rows = [row('held-out valid', 0, 0.0, 3.8, 2.61, 0.03, 'reference'),
          row('ancestral', 8, 8.0, 9.0, 2.62, 0.22), row('ancestral', 16, 16.0, 7.0, 2.61, 0.17),
          row('confidence', 8, 8.0, 5.7, 2.37, 0.24), {**row('ancestral', 8, 8.0, 1, 1, 1),
                                                      'step': 50},
          {**row('saved', 16, 16.0, 6.5, 2.6, 0.15), 'workdir': 'S'},  # e.g. distilled
          {**row('saved', 16, 16.0, 6.5, 2.6, 0.15), 'workdir': 'S', 'judge': 'other'}]
  results = tmp_path / 'results.jsonl'
  results.write_text(''.join(json.dumps(r) + '\n' for r in rows))
  table = subprocess.run(
      [sys.executable, 'benchmarks/sampling_benchmark.py', '--workdir=W', '--print_only',
       f'--results={results}', '--plot=', '--also=S', '--variants=ancestral'], cwd=ROOT,
      capture_output=True, text=True, timeout=120)
  assert table.returncode == 0, table.stderr[-2000:]
  assert not any(l.startswith('confidence') for l in table.stdout.splitlines())
  assert sum(l.startswith('S: saved ') for l in table.stdout.splitlines()) == 1
  assert sum(l.startswith('ancestral ') for l in table.stdout.splitlines()) == 2
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top,unused-import
    plotting = True
  except ImportError:
    plotting = False
  plot = tmp_path / 'frontier.png'
  proc = subprocess.run(
      [sys.executable, 'benchmarks/sampling_benchmark.py', '--workdir=W', '--print_only',
       f'--results={results}', f'--plot={plot}'], cwd=ROOT, capture_output=True, text=True,
      timeout=120)
  if not plotting:  # the optional dependency: a clear error before anything runs
    assert proc.returncode != 0 and 'pip install -e .[bench]' in proc.stderr
    return
  assert proc.returncode == 0, proc.stderr[-2000:]
  lines = proc.stdout.splitlines()
  assert lines[0].split()[:4] == ['variant', 'steps', 'NFE', 'gen'] and 'KL' in lines[0]
  assert lines[1].startswith('held-out valid') and len(lines) >= 5
  assert sum(l.startswith('ancestral ') for l in lines) == 2  # step 50's row left out
  assert 'nats per token under the chain' in proc.stdout
  assert plot.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
