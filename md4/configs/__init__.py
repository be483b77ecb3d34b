"""A run's resolved config, saved in its workdir so that tools rebuild the model from it.

`save` writes {workdir}/config.json when training starts; `load` reads it back into a
ConfigDict equal to the one saved. JSON has no tuples and no typed None, so a tuple is
written as {"__tuple__": [...]} and a placeholder (a None that a --config flag may later
set, e.g. data.vocab_size) as {"__placeholder__": "int"}.
"""

import json
import os

import ml_collections
from ml_collections import config_dict
from ml_collections import config_flags

from md4 import files

CONFIG_FILE = 'config.json'
_TUPLE, _PLACEHOLDER = '__tuple__', '__placeholder__'
_PLACEHOLDER_TYPES = {t.__name__: t for t in (int, float, str, bool)}


def _encode(value):
  if isinstance(value, config_dict.FieldReference):
    if value.get() is None:
      return {_PLACEHOLDER: value.get_type().__name__}
    return _encode(value.get())
  if isinstance(value, ml_collections.ConfigDict):
    return {k: _encode(v) for k, v in value.items(preserve_field_references=True)}
  if isinstance(value, tuple):
    return {_TUPLE: [_encode(v) for v in value]}
  if isinstance(value, list):
    return [_encode(v) for v in value]
  if value is None or isinstance(value, (bool, int, float, str)):
    return value
  raise TypeError(f'config value {value!r} of type {type(value).__name__} cannot be saved;'
                  ' configs hold numbers, strings, bools, None, tuples, lists and dicts')


def _decode(value):
  if isinstance(value, dict):
    if set(value) == {_TUPLE}:
      return tuple(_decode(v) for v in value[_TUPLE])
    if set(value) == {_PLACEHOLDER}:
      return config_dict.placeholder(_PLACEHOLDER_TYPES[value[_PLACEHOLDER]])
    return ml_collections.ConfigDict({k: _decode(v) for k, v in value.items()})
  if isinstance(value, list):
    return [_decode(v) for v in value]
  return value


def save(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Writes config to {workdir}/config.json (atomically); returns the path."""
  path = os.path.join(workdir, CONFIG_FILE)
  files.atomic_write(path, json.dumps(_encode(config), indent=1))
  return path


def load(workdir: str) -> ml_collections.ConfigDict:
  """The config that `save` wrote in workdir."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(
        f'{path} not found: --workdir should be a training run\'s directory (training writes'
        f' {CONFIG_FILE} there when it starts)')
  with open(path) as f:
    return _decode(json.load(f))


def define_saved_config_flag(argv, workdir_flag: str = 'workdir'):
  """Defines --config as the saved config of the run in --workdir, so that
  --config.KEY=VALUE overrides its keys as in md4/main.py; returns the flag's holder.

  Reads --workdir from argv first (its flag must be defined); without it --config is empty.
  """
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.FLAGS(argv, known_only=True)
  workdir = flags.FLAGS[workdir_flag].value
  flags.FLAGS.unparse_flags()
  config = load(workdir) if workdir else ml_collections.ConfigDict()
  return config_flags.DEFINE_config_dict(
      'config', config, "The run's saved config; --config.KEY=VALUE overrides a key.")
