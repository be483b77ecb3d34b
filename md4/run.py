"""A trained run, loaded from its workdir for inference: config, data, model, parameters.

A run's workdir holds its resolved config (config.json, md4.configs.save) and checkpoints;
`load_run` rebuilds the model from them, so nothing but the workdir is needed. It uses the
same pieces as training (md4.models, md4.state, md4.checkpoint) but not the training loop.
It also takes an exported model's folder (md4.exported: weights, config, no checkpoints),
whose Run is the run's at the exported step. md4/evaluate.py, md4/sample.py,
md4.inference and md4.judges start here.
"""

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from md4 import checkpoint
from md4 import configs
from md4 import data
from md4 import exported
from md4 import models
from md4 import sharding
from md4 import state as state_lib
from md4.data import text
from md4.data import tokenizer

PARAMS = ('ema', 'raw')


@dataclasses.dataclass
class Run:
  """A restored run: its config, data, model and the chosen parameters at `step`."""
  workdir: str
  config: ml_collections.ConfigDict
  info: data.DatasetInfo
  splits: dict[str, Any]
  model: nn.Module
  params: Any
  step: int
  which_params: str  # 'ema' or 'raw'
  mesh: jax.sharding.Mesh
  rules: tuple
  # Why `splits` is empty: an exported model whose data are not on this machine.
  data_error: str = ''

  def context(self):
    """The mesh and logical-axis rules the networks' sharding annotations read."""
    return sharding.active(self.mesh, self.rules)

  @property
  def uses_gpt2_tokens(self) -> bool:
    return data.uses_gpt2_tokens(self.config.data.dataset)

  def text_encoder(self):
    """text -> token ids [T] with the run's tokenizer: GPT-2 BPE, or the dataset's
    characters; ValueError for data without one (images)."""
    if self.uses_gpt2_tokens:
      return tokenizer.encode
    info = self.info
    if not info.is_image:
      vocab = info.decode(np.arange(info.vocab_size))
      if isinstance(vocab, str) and len(vocab) == info.vocab_size:
        return functools.partial(text.encode, vocab=vocab)
    raise ValueError(f'dataset {self.config.data.dataset!r} has no text tokenizer here'
                     ' (GPT-2 tokens or one character per id); prompts need one')


def eval_key(config, seed: int | None = None) -> jax.Array:
  """The key of the training run's evals, or of another seed's."""
  return state_lib.run_key(config.seed if seed is None else seed, 'eval')


def load_run(workdir: str, config=None, step: int | None = None,
             params: str | None = None) -> Run:
  """Restores `workdir`'s checkpoint at `step` (None: the latest) with its saved config, or
  with `config` (the saved one with overrides); params 'ema' or 'raw' (None: 'ema').

  An exported folder (md4.exported) gives its one set of parameters, at its step.
  """
  if params is not None and params not in PARAMS:
    raise ValueError(f'unknown params {params!r}; choose from {list(PARAMS)}')
  config = configs.load(workdir) if config is None else config
  if exported.is_exported(workdir):
    return load_exported(workdir, config, step, params)
  params = params or 'ema'
  mesh, rules = sharding.setup(config, sharded=False)
  info, splits = data.load_dataset(config.data)
  model = models.build(config, info)
  state, step = checkpoint.restore_workdir(workdir, config, model, step)
  chosen = state.ema_params if params == 'ema' else state.params
  return Run(workdir, config, info, splits, model, chosen, step, params, mesh, rules)


def exported_data(folder: str, config, entry: dict):
  """(info, splits, why no splits) of an exported model: its data where they load (checked
  against the export), else the info that md4_export.json describes and no splits."""
  try:
    info, splits = data.load_dataset(config.data)
  except FileNotFoundError as e:
    return exported.info_from_entry(entry), {}, str(e)
  saved = (entry['vocab_size'], tuple(entry['data_shape']), entry['pad_id'])
  if (info.vocab_size, info.data_shape, info.pad_id) != saved:
    raise ValueError(
        f'the data of {folder}\'s config ({config.data.dataset!r} in {config.data.data_dir})'
        f' have (vocabulary, shape, padding) {(info.vocab_size, info.data_shape, info.pad_id)},'
        f' but the exported model was made for {saved}; point --config.data.data_dir at its'
        ' data')
  return info, splits, ''


def load_exported(folder: str, config, step: int | None = None,
                  params: str | None = None) -> Run:
  """The Run of an exported model (md4.exported): its config (with overrides), data where
  they load, and its parameters, checked to fit the model the config builds."""
  meta = exported.read_meta(folder)
  if step is not None and step != meta['step']:
    raise ValueError(f'{folder} is an exported model of step {meta["step"]}; --step'
                     f' {step} needs the training run\'s workdir')
  if params is not None and params != meta['params']:
    raise ValueError(f'{folder} holds the {meta["params"].upper()} parameters only;'
                     f' --params={params} needs the training run\'s workdir')
  info, splits, data_error = exported_data(folder, config, meta['data'])
  model = models.build(config, info)
  mesh, rules = sharding.setup(config, sharded=False)
  example = jnp.zeros((1,) + info.data_shape, jnp.int32)
  with sharding.active(mesh, rules):
    boxed = jax.eval_shape(lambda r: model.init({'params': r, 'sample': r, 'dropout': r},
                                                example)['params'], jax.random.key(0))
  flat = exported.read_weights(folder)
  exported.check_weights(flat, exported.flatten_abstract(nn.unbox(boxed)), folder)
  chosen = jax.tree.map(jnp.asarray, exported.unflatten_params(flat))
  return Run(folder, config, info, splits, model, chosen, meta['step'], meta['params'],
             mesh, rules, data_error)
