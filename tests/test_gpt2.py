"""GPT-2 in JAX against a plain-numpy GPT-2, on a tiny random Hugging Face checkpoint."""

import json
import math

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors import numpy as safetensors_numpy

from md4 import judges
from md4.networks import gpt2

HPARAMS = dict(vocab_size=13, n_positions=8, n_embd=12, n_layer=2, n_head=3,
               layer_norm_epsilon=1e-5)


def _random_checkpoint(folder, prefix='', seed=0):
  """A GPT-2 checkpoint as Hugging Face writes it: config.json, model.safetensors."""
  rng = np.random.default_rng(seed)
  d, v, p = HPARAMS['n_embd'], HPARAMS['vocab_size'], HPARAMS['n_positions']
  shapes = {'wte.weight': (v, d), 'wpe.weight': (p, d), 'ln_f.weight': (d,),
            'ln_f.bias': (d,)}
  for i in range(HPARAMS['n_layer']):
    shapes.update({
        f'h.{i}.ln_1.weight': (d,), f'h.{i}.ln_1.bias': (d,),
        f'h.{i}.ln_2.weight': (d,), f'h.{i}.ln_2.bias': (d,),
        f'h.{i}.attn.c_attn.weight': (d, 3 * d), f'h.{i}.attn.c_attn.bias': (3 * d,),
        f'h.{i}.attn.c_proj.weight': (d, d), f'h.{i}.attn.c_proj.bias': (d,),
        f'h.{i}.mlp.c_fc.weight': (d, 4 * d), f'h.{i}.mlp.c_fc.bias': (4 * d,),
        f'h.{i}.mlp.c_proj.weight': (4 * d, d), f'h.{i}.mlp.c_proj.bias': (d,),
    })
  flat = {prefix + k: rng.normal(0, 0.5, s).astype(np.float32) for k, s in shapes.items()}
  safetensors_numpy.save_file(flat, str(folder / 'model.safetensors'))
  (folder / 'config.json').write_text(json.dumps({'model_type': 'gpt2', **HPARAMS}))
  return {k.removeprefix(prefix): v.astype(np.float64) for k, v in flat.items()}


def _numpy_gpt2(w, tokens):
  """GPT-2's forward pass, written out in numpy (float64), one head and position at a time."""
  d, h = HPARAMS['n_embd'], HPARAMS['n_head']
  k = d // h

  def norm(x, name):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + HPARAMS['layer_norm_epsilon']) * w[name + '.weight'] + (
        w[name + '.bias'])

  def gelu(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))

  t = len(tokens)
  x = w['wte.weight'][tokens] + w['wpe.weight'][:t]  # [T, D]
  for i in range(HPARAMS['n_layer']):
    y = norm(x, f'h.{i}.ln_1')
    qkv = y @ w[f'h.{i}.attn.c_attn.weight'] + w[f'h.{i}.attn.c_attn.bias']
    out = np.zeros((t, d))
    for head in range(h):
      cols = slice(head * k, (head + 1) * k)
      q, kk, v = qkv[:, cols], qkv[:, d:][:, cols], qkv[:, 2 * d:][:, cols]
      for pos in range(t):
        s = q[pos] @ kk[:pos + 1].T / math.sqrt(k)
        a = np.exp(s - s.max())
        out[pos, cols] = (a / a.sum()) @ v[:pos + 1]
    x = x + out @ w[f'h.{i}.attn.c_proj.weight'] + w[f'h.{i}.attn.c_proj.bias']
    y = gelu(norm(x, f'h.{i}.ln_2') @ w[f'h.{i}.mlp.c_fc.weight'] + w[f'h.{i}.mlp.c_fc.bias'])
    x = x + y @ w[f'h.{i}.mlp.c_proj.weight'] + w[f'h.{i}.mlp.c_proj.bias']
  return norm(x, 'ln_f') @ w['wte.weight'].T


@pytest.mark.parametrize('prefix', ['', 'transformer.'])
def test_gpt2_matches_numpy_on_a_tiny_random_checkpoint(tmp_path, prefix):
  weights = _random_checkpoint(tmp_path, prefix)
  params, hparams = gpt2.load(str(tmp_path))
  assert hparams == gpt2.Hparams(**HPARAMS)
  tokens = np.random.default_rng(1).integers(0, HPARAMS['vocab_size'], (2, 7))
  got = np.asarray(gpt2.logits(params, hparams, jnp.asarray(tokens)))
  for row, toks in zip(got, tokens):
    np.testing.assert_allclose(row, _numpy_gpt2(weights, toks), rtol=2e-4, atol=2e-4)


def test_gpt2_judge_scores_each_token_after_endoftext(tmp_path):
  """judges.gpt2_log_probs: token i is scored from <|endoftext|>, ids_<i (ids < 13 here, and
  the checkpoint's vocabulary is padded up to the real end-of-text id)."""
  weights = _random_checkpoint(tmp_path)
  params, hparams = gpt2.load(str(tmp_path))
  eot = judges.tokenizer.EOT_ID
  big = dict(params, wte={'weight': jnp.zeros((eot + 1, HPARAMS['n_embd']))
                          .at[:HPARAMS['vocab_size']].set(params['wte']['weight'])
                          .at[eot].set(params['wte']['weight'][0])})
  ids = np.array([[3, 1, 4, 1, 5]])
  got = np.asarray(judges.gpt2_log_probs(big, hparams, jnp.asarray(ids)))[0]
  w = dict(weights)
  w['wte.weight'] = np.asarray(big['wte']['weight'], np.float64)
  logits = _numpy_gpt2(w, np.array([eot, 3, 1, 4, 1]))
  log_p = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1,
                                                                             keepdims=True)) - (
      logits.max(-1, keepdims=True))
  np.testing.assert_allclose(got, log_p[np.arange(5), ids[0]], rtol=1e-4, atol=1e-4)


def test_missing_weights_name_the_fix(tmp_path):
  with pytest.raises(FileNotFoundError, match='model.safetensors'):
    gpt2.load(str(tmp_path))
  with pytest.raises(FileNotFoundError, match='local Hugging Face cache'):
    gpt2.load('no-such-org/no-such-gpt2')
