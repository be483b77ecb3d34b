"""MDLM-family checkpoints: MDLM's DiT here (md4.networks.mdlm_dit) against MDLM's own
network, the conversion of its state dicts (md4.mdlm), every sampler on it, and an
imported model through the code of md4/evaluate.py and md4/sample.py.

The reference logits below were computed once, outside this repository, by MDLM's own
PyTorch network: kuleshov-group/mdlm at c112c526d193436838c98d81455ee51f90309470,
models/dit.py's `DIT` (in eval mode) with torch 2.13.0 on a CPU in float32, its two
flash_attn calls replaced by plain equivalents (softmax attention; rotary embeddings in
flash-attn's non-interleaved layout). Configuration: hidden_size 16, n_heads 2, cond_dim 8,
n_blocks 2, dropout 0, vocab_size 12 (V = 11 and the mask id 11). Weights: every tensor of
`DIT.state_dict()`, in its order (MDLM_KEYS), drawn from numpy's default_rng(1): 2-D
N(0, 1/shape[-1]), 1-D N(0, 0.25) plus 1 for LayerNorm weights; the rotary buffer as
MDLM computes it. Inputs Z and σ = 0 ('no_time', MDLM's released models) or
σ = −log1p(−(1 − 1e-3)·T) ('time'). Pinned: logits[0, :3, :5], logits[1, -1, :V] and
Σ|logits[..., :V]| (the mask's logit, column V, is dropped by the conversion).
"""

import json
import pathlib
import subprocess
import sys
import unittest.mock

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from safetensors import numpy as st_numpy

from md4 import exported
from md4 import inference
from md4 import mdlm
from md4 import run as run_lib
from md4 import sampling
from md4 import zero_shot
from md4.models import MD4
from md4.sampling import samplers
from md4.networks.mdlm_dit import MDLMDiT

ROOT = pathlib.Path(__file__).resolve().parents[1]
V, D, HEADS, COND, BLOCKS = 11, 16, 2, 8, 2
BLOCK_KEYS = (('norm1.weight', [D]), ('attn_qkv.weight', [3 * D, D]),
              ('attn_out.weight', [D, D]), ('norm2.weight', [D]),
              ('mlp.0.weight', [4 * D, D]), ('mlp.0.bias', [4 * D]),
              ('mlp.2.weight', [D, 4 * D]), ('mlp.2.bias', [D]),
              ('adaLN_modulation.weight', [6 * D, COND]), ('adaLN_modulation.bias', [6 * D]))


def mdlm_keys(v=V, d=D, blocks=BLOCKS):
  """MDLM's `DIT.state_dict()` names and shapes, in its order (printed by the reference
  run for the tiny configuration)."""
  scale = lambda shape: [{D: d, 3 * D: 3 * d, 4 * D: 4 * d, 6 * D: 6 * d}.get(s, s)
                         for s in shape]
  return ([('vocab_embed.embedding', [v + 1, d]), ('sigma_map.mlp.0.weight', [COND, 256]),
           ('sigma_map.mlp.0.bias', [COND]), ('sigma_map.mlp.2.weight', [COND, COND]),
           ('sigma_map.mlp.2.bias', [COND]), ('rotary_emb.inv_freq', [d // HEADS // 2])]
          + [(f'blocks.{i}.{k}', scale(s)) for i in range(blocks) for k, s in BLOCK_KEYS]
          + [('output_layer.norm_final.weight', [d]), ('output_layer.linear.weight', [v + 1, d]),
             ('output_layer.linear.bias', [v + 1]),
             ('output_layer.adaLN_modulation.weight', [2 * d, COND]),
             ('output_layer.adaLN_modulation.bias', [2 * d])])


def mdlm_state(keys, seed=1, prefix=''):
  """The reference run's weights: default_rng(seed) in state-dict order (module doc)."""
  rng = np.random.default_rng(seed)
  state = {}
  for key, shape in keys:
    if key.endswith('inv_freq'):
      w = 1.0 / 10_000**(np.arange(0, 2 * shape[0], 2) / (2 * shape[0]))
    elif len(shape) == 2:
      w = rng.normal(0.0, 1.0 / np.sqrt(shape[-1]), shape)
    else:
      w = rng.normal(0.0, 0.5, shape) + (1.0 if 'norm' in key else 0.0)
    state[prefix + key] = np.asarray(w, np.float32)
  return state


Z = [[10, 7, 6, 3, 3, 0, 0, 0, 2, 9, 7, 10, 6, 7, 11, 8],
     [7, 6, 6, 11, 3, 9, 8, 0, 4, 10, 6, 0, 9, 8, 10, 2]]
T = [0.3, 0.8]
MDLM_LOGITS = {  # (logits[0, :3, :5], logits[1, -1, :V], Σ|logits[..., :V]|) of MDLM's DIT
    'no_time': (
        [[-0.7426956, -0.7163128, 0.4950876, -0.9976827, -0.1187887],
         [-0.75572, -0.8584789, 0.4897397, -0.9913545, -0.006031979],
         [-0.9199024, -0.1563218, 0.3361035, -0.6890982, 0.467372]],
        [-0.4325118, -0.9315094, 1.315479, -0.03355426, -0.7914513, -0.6507304, -0.5396724,
         0.1939495, 0.5742497, 0.5480605, 0.6929411], 206.3357616),
    'time': (
        [[-0.7579718, -0.7019135, 0.4978482, -1.026755, -0.1435258],
         [-0.7324462, -0.8910801, 0.5311666, -1.060139, -0.07374325],
         [-0.9028486, -0.1293039, 0.2934231, -0.7239857, 0.4705091]],
        [-0.210538, -1.005568, 1.238611, -0.3022656, -0.7916335, -0.6504561, -0.5897977,
         0.1540207, 0.8095602, 0.4647223, 0.7647745], 219.5946783),
}


@pytest.mark.parametrize('name', sorted(MDLM_LOGITS))
def test_converted_weights_give_mdlms_own_logits(name):
  flat, sizes = mdlm.convert_state_dict(mdlm_state(mdlm_keys()))
  assert sizes == {'vocab_size': V, 'hidden_size': D, 'cond_dim': COND, 'n_blocks': BLOCKS,
                   'mlp_ratio': 4}
  net = MDLMDiT(vocab_size=V, hidden_size=D, n_blocks=BLOCKS, n_heads=HEADS, cond_dim=COND,
                dropout_rate=0.0, time_conditioning=name == 'time')
  logits = np.asarray(jax.jit(net.apply)({'params': exported.unflatten_params(flat)},
                                         jnp.asarray(Z), jnp.asarray(T)))
  head, last, total = MDLM_LOGITS[name]
  assert logits.shape == (2, 16, V)
  np.testing.assert_allclose(logits[0, :3, :5], head, rtol=1e-5, atol=3e-6)
  np.testing.assert_allclose(logits[1, -1], last, rtol=1e-5, atol=3e-6)
  assert np.abs(logits).sum() == pytest.approx(total, rel=1e-5)
  assert net.time_features == ('t' if name == 'time' else 'none')  # the samplers' cache


@pytest.mark.parametrize('sampler', sorted(sampling.SAMPLERS))
def test_every_sampler_runs_mdlms_network(sampler):
  """MDLM's network as MD4's backbone (what an imported model is), with each sampler."""
  flat, _ = mdlm.convert_state_dict(mdlm_state(mdlm_keys()))
  net = MDLMDiT(vocab_size=V, hidden_size=D, n_blocks=BLOCKS, n_heads=HEADS, cond_dim=COND)
  model = MD4(network=net, vocab_size=V, data_shape=(16,))
  params = {'network': exported.unflatten_params(flat)}
  config = ml_collections.ConfigDict(dict(
      sampler=sampler, sampling_grid='uniform', timesteps=4, topp=0.9, guidance_scale=0.0,
      cache=sampler in samplers.STEP_SAMPLERS))
  prior = model.apply({'params': params}, jax.random.key(0), 3, method=model.sample_prior)
  out, nfe = jax.jit(sampling.make_sampler(model, config))(params, jax.random.key(1), prior)
  assert out.shape == (3, 16) and int(out.min()) >= 0 and int(out.max()) < V
  assert (np.asarray(nfe) >= 1).all()


def test_prefixes_lightning_ema_and_unknown_tensors():
  keys = mdlm_keys()
  sdtt = mdlm.convert_state_dict(mdlm_state(keys, prefix='backbone.backbone.'))[0]
  plain = mdlm.convert_state_dict(mdlm_state(keys))[0]
  assert all(np.array_equal(sdtt[k], plain[k]) for k in plain)  # SDTT's double prefix
  both = {**mdlm_state(keys, prefix='a.'), **mdlm_state(keys, prefix='b.')}
  with pytest.raises(ValueError, match="found 2 \\['a.', 'b.'\\].*--prefix"):
    mdlm.convert_state_dict(both)
  with pytest.raises(ValueError, match='not MDLM DiT parameters.*blocks.0.extra'):
    mdlm.convert_state_dict({**mdlm_state(keys), 'blocks.0.extra': np.zeros(2)})
  # A Lightning checkpoint: its EMA's shadow parameters in backbone.parameters() order.
  raw = mdlm_state(keys, prefix='backbone.')
  params = [k for k in raw if not k.endswith('inv_freq')]
  shadow = [raw[k] + 1.0 for k in params]
  checkpoint = {'state_dict': raw, 'ema': {'shadow_params': shadow}, 'global_step': 7}
  ema = mdlm.lightning_state(checkpoint)
  assert all(np.array_equal(ema[k], raw[k] + 1.0) for k in params)
  assert np.array_equal(ema['backbone.rotary_emb.inv_freq'], raw['backbone.rotary_emb.inv_freq'])
  assert all(np.array_equal(mdlm.lightning_state(checkpoint, ema=False)[k], raw[k])
             for k in params)


@pytest.fixture(scope='module')
def imported(tmp_path_factory):
  """A random GPT-2-vocabulary MDLM checkpoint as the hub has it (model.safetensors with
  MDLM's 'backbone.' keys, config.json), imported by md4/import_mdlm.py."""
  root = tmp_path_factory.mktemp('mdlm')
  (root / 'hub').mkdir()
  state = mdlm_state(mdlm_keys(v=50257, blocks=1), prefix='backbone.')
  st_numpy.save_file(state, str(root / 'hub' / 'model.safetensors'))
  (root / 'hub' / 'config.json').write_text(json.dumps(
      {'model_type': 'mdlm', 'n_heads': HEADS, 'model_length': 32, 'time_conditioning': False,
       'vocab_size': 50258}))
  proc = subprocess.run(
      [sys.executable, 'md4/import_mdlm.py', f'--checkpoint={root / "hub"}',
       f'--output={root / "model"}'], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f'to {root / "model"}' in proc.stdout
  return root


def test_imported_model_samples_and_evaluates_zero_shot(imported, tmp_path):
  folder = str(imported / 'model')
  config = json.loads((imported / 'model' / 'config.json').read_text())
  assert (config['model_type'], config['model']['noise_schedule'], config['network']['type'],
          config['network']['time_conditioning']) == ('md4', 'linear', 'mdlm_dit', False)
  run = run_lib.load_run(folder)  # no OpenWebText here: the model from md4_export.json
  assert (run.info.vocab_size, run.info.data_shape, run.model.mask_id) == (50257, (32,), 50257)
  assert run.splits == {} and 'not found' in run.data_error
  with pytest.raises(FileNotFoundError, match='whose data are not here'):
    inference.evaluate_elbo(run)
  options = run.config.sampling
  options.timesteps, options.cache = 4, True  # exact: the network ignores t
  out = inference.draw_samples(run, options, 2)
  assert out.tokens.shape == (2, 32) and int(out.tokens.max()) < 50257
  assert isinstance(run.info.decode(out.tokens[0]), str)
  # The zero-shot evaluation of the imported model, on padded rows.
  (tmp_path / 'lambada.jsonl').write_text(
      json.dumps({'text': 'One short passage.'}) + '\n'
      + json.dumps({'text': 'And a second one, a little longer than the first.'}) + '\n')
  meta = zero_shot.prepare('lambada', str(tmp_path), str(tmp_path / 'lambada.jsonl'),
                           layout='pad', seq_len=32)
  result = inference.evaluate_zero_shot(run, ['lambada'], str(tmp_path))['lambada']
  assert result['examples'] == 2 and result['layout'] == 'pad' and np.isfinite(result['loss'])
  assert result['tokens'] == meta['splits']['test']['scored_tokens'] < 64


def test_import_reads_the_hub_cache_or_says_what_to_fetch(monkeypatch):
  monkeypatch.setenv('HF_HUB_OFFLINE', '1')
  fake = unittest.mock.Mock()
  fake.snapshot_download.side_effect = OSError('not cached')
  monkeypatch.setitem(sys.modules, 'huggingface_hub', fake)
  with pytest.raises(ConnectionError, match='model.safetensors and config.json.*--checkpoint'):
    mdlm.hub_checkpoint('kuleshov-group/mdlm-owt')
  fake.snapshot_download.assert_called_once_with(
      'kuleshov-group/mdlm-owt', revision=None,
      allow_patterns=['model.safetensors', 'config.json'], local_files_only=True)
  with pytest.raises(ValueError, match='has 12 token ids.*50258'):  # not a GPT-2 model
    mdlm.import_state(mdlm_state(mdlm_keys()), {'n_heads': 2}, 'unused', 'tiny')
