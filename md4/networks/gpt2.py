"""GPT-2 (Radford et al., 2019) in JAX, from Hugging Face weights: the field's judge of samples.

Weights come from a folder holding the Hugging Face files `config.json` and
`model.safetensors` (read with safetensors' numpy loader, no PyTorch), or from the local
Hugging Face cache by repository name (e.g. 'gpt2', 'openai-community/gpt2-large'); nothing
is downloaded. The network is the original one: learned positions, pre-LayerNorm blocks
of causal multi-head attention and a 4x MLP with the tanh GELU, a final LayerNorm, and
logits from the tied token embedding. Hugging Face's Conv1D layers store their kernels as
[in, out], so every layer here is x·W + b.

Shapes: B batch, T length (≤ n_positions), D width, H heads, K = D/H, V vocabulary.
"""

import dataclasses
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Hparams:
  """The fields of a Hugging Face GPT-2 config.json that the network reads."""
  vocab_size: int = 50257
  n_positions: int = 1024
  n_embd: int = 768
  n_layer: int = 12
  n_head: int = 12
  layer_norm_epsilon: float = 1e-5


def _layer_norm(x, p, eps):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean)**2).mean(-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps) * p['weight'] + p['bias']


def _linear(x, p):
  return x @ p['weight'] + p['bias']


def logits(params, hparams: Hparams, tokens):
  """Next-token logits [B, T, V] (float32) of GPT-2 at every position of tokens [B, T]."""
  b, t = tokens.shape
  if t > hparams.n_positions:
    raise ValueError(f'GPT-2 reads at most {hparams.n_positions} tokens, got {t}')
  h, d = hparams.n_head, hparams.n_embd
  k = d // h
  eps = hparams.layer_norm_epsilon
  x = params['wte']['weight'][tokens] + params['wpe']['weight'][:t]  # [B, T, D]
  causal = jnp.tril(jnp.ones((t, t), bool))
  for layer in params['h']:
    y = _layer_norm(x, layer['ln_1'], eps)
    q, kk, v = jnp.split(_linear(y, layer['attn']['c_attn']), 3, axis=-1)  # [B, T, D] each
    q, kk, v = (a.reshape(b, t, h, k) for a in (q, kk, v))
    scores = jnp.einsum('bthk,bshk->bhts', q, kk) / math.sqrt(k)
    weights = jax.nn.softmax(jnp.where(causal, scores, -jnp.inf), axis=-1)
    y = jnp.einsum('bhts,bshk->bthk', weights, v).reshape(b, t, d)
    x = x + _linear(y, layer['attn']['c_proj'])
    y = _layer_norm(x, layer['ln_2'], eps)
    y = jax.nn.gelu(_linear(y, layer['mlp']['c_fc']), approximate=True)
    x = x + _linear(y, layer['mlp']['c_proj'])
  x = _layer_norm(x, params['ln_f'], eps)
  return x @ params['wte']['weight'].T


def params_from_flat(flat: dict[str, np.ndarray], hparams: Hparams):
  """Hugging Face's flat names ('h.0.attn.c_attn.weight', with or without a 'transformer.'
  prefix) -> the nested float32 parameters of `logits`."""
  flat = {name.removeprefix('transformer.'): value for name, value in flat.items()}

  def get(name):
    if name not in flat:
      raise KeyError(f'GPT-2 weight {name!r} is missing; is this a GPT-2 checkpoint?')
    return jnp.asarray(flat[name], jnp.float32)

  def affine(prefix):
    return {'weight': get(f'{prefix}.weight'), 'bias': get(f'{prefix}.bias')}

  layers = [{
      'ln_1': affine(f'h.{i}.ln_1'), 'ln_2': affine(f'h.{i}.ln_2'),
      'attn': {'c_attn': affine(f'h.{i}.attn.c_attn'), 'c_proj': affine(f'h.{i}.attn.c_proj')},
      'mlp': {'c_fc': affine(f'h.{i}.mlp.c_fc'), 'c_proj': affine(f'h.{i}.mlp.c_proj')},
  } for i in range(hparams.n_layer)]
  return {'wte': {'weight': get('wte.weight')}, 'wpe': {'weight': get('wpe.weight')},
          'h': layers, 'ln_f': affine('ln_f')}


def find(path_or_name: str) -> str:
  """A folder with config.json and model.safetensors: `path_or_name` itself, or the cached
  snapshot of that Hugging Face repository (local files only)."""
  path = os.path.expanduser(path_or_name)
  if os.path.isdir(path):
    folder = path
  else:
    try:
      import huggingface_hub  # pylint: disable=g-import-not-at-top
      folder = huggingface_hub.snapshot_download(
          path_or_name, local_files_only=True,
          allow_patterns=['config.json', 'model.safetensors'])
    except Exception as e:  # pylint: disable=broad-except  (not cached, bad name, offline)
      raise FileNotFoundError(
          f'no GPT-2 weights at {path_or_name!r}: give a folder holding config.json and'
          ' model.safetensors, or the name of a repository in the local Hugging Face cache'
          f' (fetch it once with `huggingface-cli download {path_or_name} config.json'
          f' model.safetensors`); {type(e).__name__}: {e}') from e
  for name in ('config.json', 'model.safetensors'):
    if not os.path.exists(os.path.join(folder, name)):
      raise FileNotFoundError(f'{folder} has no {name}; GPT-2 needs config.json and'
                              ' model.safetensors from its Hugging Face repository')
  return folder


def load(path_or_name: str):
  """(params, Hparams) of the GPT-2 at `path_or_name` (see `find`)."""
  from safetensors import numpy as safetensors_numpy  # pylint: disable=g-import-not-at-top
  folder = find(path_or_name)
  with open(os.path.join(folder, 'config.json')) as f:
    config = json.load(f)
  fields = {f.name for f in dataclasses.fields(Hparams)}
  hparams = Hparams(**{k: v for k, v in config.items() if k in fields})
  flat = safetensors_numpy.load_file(os.path.join(folder, 'model.safetensors'))
  return params_from_flat(flat, hparams), hparams
