"""Using a trained run: saved configs, evaluate.py, sample.py, judges and sample metrics."""

import importlib
import math
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from md4 import configs
from md4 import data
from md4 import inference
from md4 import judges
from md4 import run as run_lib
from md4 import samples
from md4 import sharding
from md4 import train
from md4.configs import base
from md4.configs.ar import as_ar
from md4.data import images
from md4.data import text
from md4.models import MD4
from test_train import tiny_config
import toys

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG_FILES = sorted(p for p in (ROOT / 'md4' / 'configs').glob('*/*.py')
                      if p.name != '__init__.py')


@pytest.mark.parametrize('path', CONFIG_FILES, ids=lambda p: f'{p.parent.name}/{p.stem}')
def test_every_config_round_trips_through_its_saved_file(tmp_path, path):
  module = importlib.import_module(f'md4.configs.{path.parent.name}.{path.stem}')
  config = module.get_config()
  configs.save(config, str(tmp_path))
  loaded = configs.load(str(tmp_path))
  assert loaded == config
  assert str(loaded) == str(config)  # tuples stay tuples
  ref = loaded.data.get_ref('vocab_size')
  assert ref.get_type() is int  # a placeholder stays typed, so a flag can still set it
  loaded.data.vocab_size = 7


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """A tiny MD4 run (two eval draws per example) and a tiny autoregressive one, each
  evaluated once, at its end."""
  md4_dir = tmp_path_factory.mktemp('md4')
  md4_metrics = train.train_and_evaluate(
      tiny_config(eval_repeats=2, eval_every_steps=6), str(md4_dir))
  ar_dir = tmp_path_factory.mktemp('ar')
  ar_metrics = train.train_and_evaluate(as_ar(tiny_config(eval_every_steps=6)), str(ar_dir))
  return md4_dir, md4_metrics, ar_dir, ar_metrics


def test_evaluate_reproduces_the_final_eval_of_training(runs):
  md4_dir, md4_metrics, ar_dir, ar_metrics = runs
  run = run_lib.load_run(str(md4_dir))
  assert run.step == 6 and run.config == configs.load(str(md4_dir))
  results = inference.evaluate_elbo(run)
  for split in ('valid', 'test'):
    assert results[split]['loss'] == pytest.approx(md4_metrics[f'{split}_loss'], rel=1e-6)
    assert 0 < results[split]['stderr'] < 0.05 and results[split]['draws'] == 2
  other = inference.evaluate_elbo(run, ['valid'], seed=1)['valid']
  assert other['loss'] != results['valid']['loss']
  assert abs(other['loss'] - results['valid']['loss']) < 6 * results['valid']['stderr']
  ar = inference.evaluate_elbo(run_lib.load_run(str(ar_dir)))
  assert ar['valid']['loss'] == pytest.approx(ar_metrics['valid_loss'], rel=1e-6)
  assert ar['valid']['stderr'] == 0.0 and ar['valid']['draws'] == 0
  raw = run_lib.load_run(str(md4_dir), step=3, params='raw')
  assert raw.step == 3 and raw.which_params == 'raw'
  with pytest.raises(ValueError, match=r'no checkpoint at step 4 .* \[3, 6\]'):
    run_lib.load_run(str(md4_dir), step=4)
  with pytest.raises(ValueError, match='unknown split'):
    inference.evaluate_elbo(run, ['dev'])


def test_ar_judge_scores_text_as_the_ar_loss_does(runs):
  """Decoded valid windows, re-encoded and scored by the judge: the AR model's NLL."""
  _, _, ar_dir, _ = runs
  judge = judges.ar_judge(str(ar_dir))
  run = run_lib.load_run(str(ar_dir))
  windows = np.asarray(run.splits['valid'][:5])
  nll, tokens = judges.score(judge, [run.info.decode(w) for w in windows], batch_size=4)
  assert list(tokens) == [32] * 5
  with run.context():
    loss = jax.jit(lambda x: run.model.apply({'params': run.params}, x)['loss'])(windows)
  np.testing.assert_allclose(nll / 32, np.asarray(loss) * math.log(2), rtol=1e-5)


def test_sample_cli_then_scores_the_samples(runs, tmp_path):
  md4_dir, _, ar_dir, _ = runs
  out = tmp_path / 'samples.txt'
  proc = subprocess.run(
      [sys.executable, 'md4/sample.py', f'--workdir={md4_dir}', '--num_samples=4',
       '--batch_size=2', '--sampler=first_hitting', '--prefix=ROMEO:',
       '--suffix=.', f'--output={out}'], cwd=ROOT, capture_output=True, text=True,
      timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'NFE per sample: mean 25.0 (min 25, max 25)' in proc.stdout  # 32 − 6 − 1 to fill
  texts = samples.read(str(out))
  assert len(texts) == 4 and all(t.startswith('ROMEO:') and t.endswith('.') for t in texts)
  q = judges.quality(judges.ar_judge(str(ar_dir)), texts)
  assert q['samples'] == 4 and q['tokens'] == 4 * 32 and q['gen_ppl'] > 1
  assert 0 < q['entropy'] < math.log(65)


def test_long_samples_need_blocks(runs):
  md4_dir, _, _, _ = runs
  run = run_lib.load_run(str(md4_dir))
  config = run.config.sampling
  with pytest.raises(ValueError, match='block_size'):
    inference.draw_samples(run, config, 2, length=40)
  config.block_size, config.timesteps = 8, 2
  out = inference.draw_samples(run, config, 2, length=40)
  assert out.tokens.shape == (2, 40) and (out.tokens < run.info.vocab_size).all()
  assert list(out.nfe) == [10, 10]  # 5 blocks of 2 steps


def test_prompts_and_samples_files(tmp_path):
  encode = lambda s: np.array([ord(c) - ord('a') for c in s])
  m = 99
  np.testing.assert_array_equal(inference.prompt_tokens(encode, m, 6, prefix='ab', suffix='c'),
                                [0, 1, m, m, m, 2])
  np.testing.assert_array_equal(
      inference.prompt_tokens(encode, m, 8, infill='a<mask:2>bc<mask:1>d'),
      [0, m, m, 1, 2, m, 3, m])
  with pytest.raises(ValueError, match='longer than --length'):
    inference.prompt_tokens(encode, m, 3, infill='abcd')
  texts = ['one\ntwo', '', 'three ==']
  path = tmp_path / 's.txt'
  path.write_text(samples.format_texts(texts, 'text'))
  assert samples.read(str(path)) == texts


def test_score_chunks_long_texts_and_entropy_counts_tokens():
  """A judge that gives every token log p = −1 (so NLL = tokens) over windows of 3."""
  judge = judges.Judge('flat', lambda s: np.arange(len(s)) % 4, 3,
                       lambda ids: -np.ones(ids.shape))
  nll, tokens = judges.score(judge, ['abcdefg', 'ab'], batch_size=2)
  assert list(tokens) == [7, 2] and list(nll) == [7.0, 2.0]
  assert judges.unigram_entropy([1, 1, 2, 2]) == pytest.approx(math.log(2))
  assert judges.unigram_entropy([5, 5, 5]) == 0.0


def test_zero_shot_evaluation_on_other_prepared_text(tmp_path):
  """A GPT-2-token run evaluated on another folder of text prepared the same way."""
  from test_openwebtext import prepare, tiny  # pylint: disable=g-import-not-at-top
  works = sorted(f for fs in text.shakespeare_works().values() for f in fs)
  for name, chosen in (('mine', works[:4]), ('other', works[4:8])):
    (tmp_path / name).mkdir()
    for f in chosen:
      (tmp_path / name / f.name).write_text(f.read_text('utf-8')[:4000])
    prepare(tmp_path / name, tmp_path / f'{name}_data', seq_len=64, eval_fraction=0.25,
            num_workers=1)
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(tiny('md4.configs.md4.openwebtext', tmp_path / 'mine_data'),
                           workdir)
  # Raw parameters: the paper config's EMA (0.9999, no warm-up) is still the init's.
  own = run_lib.load_run(workdir, params='raw')
  config = configs.load(workdir)
  config.data.data_dir = str(tmp_path / 'other_data')
  other = run_lib.load_run(workdir, config, params='raw')
  mine, theirs = (inference.evaluate_elbo(r, ['valid'])['valid'] for r in (own, other))
  assert mine['loss'] != theirs['loss'] and np.isfinite(theirs['loss'])
  printed = inference.format_elbo(other, {'valid': theirs})
  assert f'perplexity {2.0**theirs["loss"]:.2f}' in printed


def test_images_are_sampled_to_a_png_grid(tmp_path):
  model = MD4(network=toys.Oracle((0.6, 0.3, 0.1)), vocab_size=3, data_shape=(4, 4, 1))
  info = data.DatasetInfo(3, (4, 4, 1), lambda x: images.to_pixels(x, 3), ())
  config = base.get_config()
  config.sampling.timesteps = 4
  run = run_lib.Run('w', config, info, {}, model, {}, 0, 'ema', sharding.make_mesh(),
                    sharding.DATA_PARALLEL_RULES)
  out = inference.draw_samples(run, config.sampling, 4, batch_size=2)
  assert out.tokens.shape == (4, 4, 4, 1) and list(out.nfe) == [4] * 4
  path = str(tmp_path / 'grid.png')
  samples.write(path, out.tokens, info)
  assert open(path, 'rb').read(8) == b'\x89PNG\r\n\x1a\n'
  with pytest.raises(ValueError, match='sequences'):
    inference.draw_samples(run, run.config.sampling, 2, length=8)
  with pytest.raises(ValueError, match='class-conditional'):
    inference.draw_samples(run, run.config.sampling, 2, label=1)
