"""An exported model: a self-contained folder that md4/evaluate.py and md4/sample.py take
as --workdir in place of a training run (md4.run.load_run detects it).

md4/export.py writes one from a run's checkpoint (md4.publishing), md4/import_mdlm.py from
an MDLM-family checkpoint (md4.mdlm). The folder holds

  model.safetensors   the parameters (the EMA or the raw ones), float32, one tensor per
                      leaf of the parameter tree, named by its path joined with '/'
                      (e.g. 'block_0/attention/wq'); no optimizer state, no checkpoints
  config.json         the run's config, in md4.configs.save's format
  md4_export.json     what else rebuilds the model without the training data: the step,
                      which parameters, the data's vocabulary size, example shape,
                      padding, eval splits and sample format, the tokenizer (GPT-2 by its
                      hub name, or the characters of a character vocabulary, or image
                      levels), the held-out numbers of the run at that step, the source
  README.md           a model card (md4.publishing)

The data are read as the config says when they are there (so an exported folder evaluates
as its run did); otherwise the model is rebuilt from md4_export.json alone, which samples
but has no splits to evaluate. Every file is written atomically, md4_export.json last.
"""

import json
import os
from typing import Any

import flax
import numpy as np

from md4 import configs
from md4 import data as data_lib
from md4 import files
from md4.data import images
from md4.data import text
from md4.data import tokenizer

EXPORT_FILE = 'md4_export.json'  # its presence makes a folder an exported model
WEIGHTS_FILE = 'model.safetensors'
CARD_FILE = 'README.md'
FORMAT = 'md4-export'
VERSION = 1
SEPARATOR = '/'  # between the keys of a parameter's path


def is_exported(path: str) -> bool:
  """Whether `path` is a folder written by `write` (it holds md4_export.json)."""
  return os.path.isfile(os.path.join(path, EXPORT_FILE))


def flatten_params(params) -> dict[str, np.ndarray]:
  """The parameter tree as {'a/b/c': float32 array}, in the tree's order."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep=SEPARATOR)
  return {k: np.asarray(v, np.float32) for k, v in flat.items()}


def flatten_abstract(tree) -> dict[str, Any]:
  """A parameter tree's leaves (arrays or their shapes) as {'a/b/c': leaf}."""
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree), sep=SEPARATOR)


def unflatten_params(flat: dict[str, np.ndarray]) -> dict[str, Any]:
  """Inverse of `flatten_params`."""
  return flax.traverse_util.unflatten_dict(flat, sep=SEPARATOR)


# ---------------------------------------------------------------- the tokenizer entry


def tokenizer_entry(dataset: str, info) -> dict:
  """How ids become text or pixels, without the dataset: {'type': 'gpt2', 'name': hub
  repo}, {'type': 'characters', 'vocab': one character per id}, {'type': 'pixels',
  'levels': V}, or {'type': 'ids'} (ids written as numbers)."""
  if data_lib.uses_gpt2_tokens(dataset):
    return {'type': 'gpt2', 'name': tokenizer.HUB_REPO}
  if info.is_image:
    return {'type': 'pixels', 'levels': info.vocab_size}
  chars = info.decode(np.arange(info.vocab_size))
  if isinstance(chars, str) and len(chars) == info.vocab_size:
    return {'type': 'characters', 'vocab': chars}
  return {'type': 'ids'}


def _ids_text(ids) -> str:
  return ' '.join(str(i) for i in np.asarray(ids).reshape(-1).tolist())


# Tokenizer type -> (its entry -> decode(ids)).
DECODERS = {
    'gpt2': lambda entry: tokenizer.decode,
    'characters': lambda entry: lambda ids: text.decode(ids, entry['vocab']),
    'pixels': lambda entry: lambda ids: images.to_pixels(ids, entry['levels']),
    'ids': lambda entry: _ids_text,
}


def data_entry(dataset: str, info) -> dict:
  """The DatasetInfo fields that rebuild the model, and its tokenizer entry."""
  return {
      'dataset': dataset, 'vocab_size': info.vocab_size, 'data_shape': list(info.data_shape),
      'eval_splits': list(info.eval_splits), 'pad_id': info.pad_id,
      'length_probs': None if info.length_probs is None else list(info.length_probs),
      'sample_format': info.sample_format, 'num_classes': info.num_classes,
      'tokenizer': tokenizer_entry(dataset, info),
  }


def info_from_entry(entry: dict) -> data_lib.DatasetInfo:
  """The DatasetInfo that `data_entry` describes, its decode rebuilt from the tokenizer."""
  kind = entry['tokenizer']['type']
  if kind not in DECODERS:
    raise ValueError(f'unknown tokenizer type {kind!r} in {EXPORT_FILE}; this md4 reads'
                     f' {sorted(DECODERS)}')
  probs = entry['length_probs']
  return data_lib.DatasetInfo(
      entry['vocab_size'], tuple(entry['data_shape']), DECODERS[kind](entry['tokenizer']),
      tuple(entry['eval_splits']), pad_id=entry['pad_id'],
      length_probs=None if probs is None else tuple(probs),
      sample_format=entry['sample_format'], num_classes=entry['num_classes'])


# -------------------------------------------------------------- writing and reading


def write(output: str, config, params, meta: dict, card: str) -> str:
  """Writes an exported folder at `output`: the weights, the config, the model card, then
  md4_export.json (`meta`: step, params, data (`data_entry`), held_out, source, ...)."""
  from safetensors import numpy as st_numpy  # pylint: disable=g-import-not-at-top
  os.makedirs(output, exist_ok=True)
  if os.path.exists(os.path.join(output, EXPORT_FILE)):  # an older export: incomplete until
    os.remove(os.path.join(output, EXPORT_FILE))  # the new md4_export.json is written
  flat = flatten_params(params)
  with files.atomic_open(os.path.join(output, WEIGHTS_FILE), 'wb') as f:
    f.write(st_numpy.save(flat, metadata={'format': FORMAT}))
  configs.save(config, output)
  files.atomic_write(os.path.join(output, CARD_FILE), card)
  meta = {'format': FORMAT, 'version': VERSION, 'weights': WEIGHTS_FILE,
          'num_params': int(sum(v.size for v in flat.values())), **meta}
  files.atomic_write(os.path.join(output, EXPORT_FILE), json.dumps(meta, indent=1))
  return output


def read_meta(folder: str) -> dict:
  """md4_export.json of an exported folder, checked to be a format this md4 reads."""
  path = os.path.join(folder, EXPORT_FILE)
  with open(path) as f:
    meta = json.load(f)
  if meta.get('format') != FORMAT or meta.get('version', 0) > VERSION:
    raise ValueError(f'{path} is not an md4 export of version <= {VERSION} (format'
                     f' {meta.get("format")!r}, version {meta.get("version")}); export it'
                     ' again with this md4')
  return meta


def read_weights(folder: str) -> dict[str, np.ndarray]:
  """The flat parameters of an exported folder, {'a/b': array}."""
  from safetensors import numpy as st_numpy  # pylint: disable=g-import-not-at-top
  path = os.path.join(folder, WEIGHTS_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path} not found: the exported folder {folder} is incomplete;'
                            ' export it again')
  return st_numpy.load_file(path)


def check_weights(flat: dict[str, np.ndarray], abstract_flat: dict, folder: str,
                  fix: str = 'export it again'):
  """Raises unless `flat` has exactly the arrays (names, shapes) the model expects."""
  show = lambda a: 'absent' if a is None else f'{list(a.shape)}'
  differing = sorted(k for k in flat.keys() | abstract_flat.keys()
                     if k not in flat or k not in abstract_flat
                     or tuple(flat[k].shape) != tuple(abstract_flat[k].shape))
  if differing:
    diff = '; '.join(f'{k} is {show(flat.get(k))} there, {show(abstract_flat.get(k))} here'
                     for k in differing[:4])
    raise ValueError(f'the weights of {folder} do not fit the model of its config'
                     f' ({len(differing)} arrays differ, e.g. {diff}); {fix}')
