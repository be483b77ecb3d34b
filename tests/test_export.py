"""Exported models (md4.exported, md4.publishing, md4/export.py): an exported folder
evaluates and samples as the run it came from, for text and images; pushing it to the hub."""

import json
import pathlib
import subprocess
import sys
import unittest.mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from md4 import checkpoint
from md4 import configs
from md4 import data
from md4 import exported
from md4 import inference
from md4 import models
from md4 import optim
from md4 import publishing
from md4 import reporting
from md4 import run as run_lib
from md4 import sharding
from md4 import state as state_lib
from md4.configs.md4 import digits as digits_config
from test_train import tiny_config

ROOT = pathlib.Path(__file__).resolve().parents[1]


def checkpointed_run(config, workdir):
  """A run's workdir as training leaves it (config.json, a checkpoint at step 2) without
  training: random parameters (no layer left at its zero initialisation) and another
  random EMA, so that the two differ and every output depends on them."""
  mesh, rules = sharding.setup(config, sharded=False)
  info, _ = data.load_dataset(config.data)
  model = models.build(config, info)
  optimizer = optim.make_optimizer(config.opt, config.num_train_steps)
  example = jnp.zeros((1,) + info.data_shape, jnp.int32)
  with sharding.active(mesh, rules):
    abstract, shardings, _ = state_lib.abstract_state(model, optimizer, mesh, rules, example)
  rng = np.random.default_rng(0)
  draw = lambda a: jnp.asarray(rng.normal(0, 0.3, a.shape), a.dtype)
  params, ema = jax.tree.map(draw, abstract.params), jax.tree.map(draw, abstract.params)
  state = state_lib.TrainState(step=jnp.asarray(2, jnp.int32), params=params,
                               ema_params=ema, opt_state=optimizer.init(params))
  configs.save(config, workdir)
  manager = checkpoint.make_manager(workdir, config.keep_checkpoints)
  checkpoint.maybe_save(manager, state, 2, every=1, last=True, stop=False)
  manager.wait_until_finished()
  manager.close()
  return workdir


@pytest.fixture(scope='module')
def text_run(tmp_path_factory):
  """A tiny Shakespeare run (test_train's tiny_config, two eval draws per example) at its
  checkpoint of step 2, with the eval that training logs in metrics.jsonl, exported by
  md4/export.py."""
  root = tmp_path_factory.mktemp('text')
  workdir = checkpointed_run(tiny_config(eval_repeats=2), str(root / 'run'))
  held_out = inference.evaluate_elbo(run_lib.load_run(workdir), ['valid'],
                                     max_examples=512)['valid']
  reporting.JsonlWriter(workdir).write(2, {'train_loss': 9.0, 'valid_loss': held_out['loss']})
  proc = subprocess.run(
      [sys.executable, 'md4/export.py', f'--workdir={workdir}', f'--output={root / "export"}'],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'step 2, EMA parameters' in proc.stdout
  return workdir, str(root / 'export'), {'valid_loss': held_out['loss']}


def _same_numbers_and_samples(workdir, folder, split, num_samples, max_examples):
  """The run and its export: equal parameters, ELBO (with its standard error) and samples."""
  run, export = run_lib.load_run(workdir), run_lib.load_run(folder)
  assert (export.step, export.which_params) == (run.step, run.which_params)
  mine, theirs = exported.flatten_params(run.params), exported.flatten_params(export.params)
  assert mine.keys() == theirs.keys()
  assert all(np.array_equal(mine[k], theirs[k]) for k in mine)  # the round trip is exact
  assert (inference.evaluate_elbo(run, [split], max_examples=max_examples)
          == inference.evaluate_elbo(export, [split], max_examples=max_examples))
  config = run.config.sampling
  config.timesteps = 4
  a, b = (inference.draw_samples(r, config, num_samples, seed=3) for r in (run, export))
  np.testing.assert_array_equal(a.tokens, b.tokens)
  return run, export


def test_exported_text_model_evaluates_and_samples_as_its_run(text_run):
  workdir, folder, metrics = text_run
  _, export = _same_numbers_and_samples(workdir, folder, 'valid', 4, 512)
  meta = json.loads(pathlib.Path(folder, exported.EXPORT_FILE).read_text())
  assert meta['data']['tokenizer']['type'] == 'characters' and meta['step'] == 2
  assert meta['held_out']['metrics']['valid_loss'] == pytest.approx(metrics['valid_loss'])
  card = pathlib.Path(folder, exported.CARD_FILE).read_text()
  assert f'| valid | {metrics["valid_loss"]:.4f} |' in card
  assert 'python md4/sample.py --workdir=THIS_FOLDER' in card
  prompt = inference.prompt_tokens(export.text_encoder(), export.model.mask_id, 32, 'KING.')
  assert export.info.decode(prompt[:5]) == 'KING.'
  with pytest.raises(ValueError, match='exported model of step 2; --step 3 needs'):
    run_lib.load_run(folder, step=3)
  with pytest.raises(ValueError, match='holds the EMA parameters only'):
    run_lib.load_run(folder, params='raw')
  raw = run_lib.load_run(workdir, params='raw')
  again = run_lib.load_run(publishing.export_run(raw, folder + '_raw'))
  assert (again.step, again.which_params) == (2, 'raw')
  assert not np.array_equal(exported.flatten_params(again.params)['network/embed/embedding'],
                            exported.flatten_params(export.params)['network/embed/embedding'])


def test_exported_image_model_evaluates_and_samples_as_its_run(tmp_path):
  config = digits_config.get_config()
  config.network.update(feature_dim=8, n_layers=1)
  config.update(eval_batch_size=100, eval_repeats=2)
  workdir = checkpointed_run(config, str(tmp_path / 'run'))
  run = run_lib.load_run(workdir, params='raw')
  publishing.export_run(run, str(tmp_path / 'export'))
  export = run_lib.load_run(str(tmp_path / 'export'))
  assert (export.step, export.which_params) == (2, 'raw')
  mine, theirs = exported.flatten_params(run.params), exported.flatten_params(export.params)
  assert all(np.array_equal(mine[k], theirs[k]) for k in mine) and mine.keys() == theirs.keys()
  assert (inference.evaluate_elbo(run, ['valid'], max_examples=100)
          == inference.evaluate_elbo(export, ['valid'], max_examples=100))
  config.sampling.timesteps = 4
  a, b = (inference.draw_samples(r, config.sampling, 4, seed=3) for r in (run, export))
  np.testing.assert_array_equal(a.tokens, b.tokens)
  assert len(np.unique(a.tokens)) > 2  # the samples depend on the parameters
  assert export.info.is_image and export.info.decode(np.full((8, 8, 1), 16)).max() == 255
  card = (tmp_path / 'export' / exported.CARD_FILE).read_text()
  assert 'No held-out evaluation was logged' in card  # no metrics.jsonl without training
  with pytest.raises(ValueError, match='is the run\'s workdir'):
    publishing.export_run(run, workdir)


def test_push_to_hub_creates_the_repository_and_uploads_the_folder(text_run, monkeypatch):
  folder = text_run[1]
  api = unittest.mock.Mock()
  api.create_repo.return_value = 'https://hub.example/me/md4-tiny'
  assert publishing.push_to_hub(folder, 'me/md4-tiny', private=True, api=api) == (
      'https://hub.example/me/md4-tiny')
  api.create_repo.assert_called_once_with(repo_id='me/md4-tiny', repo_type='model',
                                          private=True, exist_ok=True)
  api.upload_folder.assert_called_once_with(
      repo_id='me/md4-tiny', repo_type='model', folder_path=folder,
      commit_message='Upload a model exported by md4')
  monkeypatch.setenv('HF_HUB_OFFLINE', '1')
  with pytest.raises(ConnectionError, match='cannot be pushed to me/md4-tiny'):
    publishing.push_to_hub(folder, 'me/md4-tiny')
  with pytest.raises(FileNotFoundError, match='is not an exported model'):
    publishing.push_to_hub(text_run[0], 'me/md4-tiny', api=api)
