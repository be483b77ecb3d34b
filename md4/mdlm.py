"""MDLM-family checkpoints as md4 models: MDLM's OpenWebText model (Sahoo et al., 2024;
hub kuleshov-group/mdlm-owt) and the SDTT students distilled from it (Deschenaux &
Gulcehre, 2024; hub jdeschena/sdtt, one revision per student), which share its DiT.

MDLM is absorbing-state masked diffusion with a log-linear noise schedule:
α(t) = 1 − (1 − ε)·t (ε = 1e-3, t ≥ ε), whose continuous-time ELBO is MD4's with the
linear schedule α(t) = 1 − t: both integrate the masked tokens' cross-entropy against the
weight 1/t (per unit of the masking rate 1 − α). They differ only at the ends of the
interval that their ε's trim (MD4's masking rates run over [1e-4, 1 − 1e-4], MDLM's over
about [1e-3, 1 − 1e-3]), which by our estimate adds at most about 0.015 bits per token to
MD4's bound on GPT-2 text. Its tokenizer is GPT-2's,
its mask id 50257 and its vocabulary 50,258 ids with the mask: MD4's GPT-2 data with
V = 50,257 and the mask id V. An imported model therefore gets the MD4 config (`md4_config`)

  model_type 'md4', model.noise_schedule 'linear', model.cont_time True,
  data.dataset 'openwebtext' (GPT-2 ids), data.data_shape (length,) (MDLM's 1024),
  network.type 'mdlm_dit' (md4.networks.mdlm_dit) with the checkpoint's sizes and
  time_conditioning (False for the released models: the network then ignores t),

and runs through md4/evaluate.py and md4/sample.py with every sampler, as an exported
folder (md4.exported) that md4/import_mdlm.py writes.

The conversion (`convert_state_dict`) maps each tensor of MDLM's `DIT` state dict (by name,
below the prefix its wrapper adds: 'backbone.' in MDLM's checkpoints, 'backbone.backbone.'
in SDTT's) to md4.networks.mdlm_dit's parameter tree: torch Linear weights [out, in] are
transposed to kernels [in, out], the fused qkv projection is split into q, k and v, and the
output layer's mask row (whose logit MDLM sets to −∞) is dropped. A Lightning checkpoint
(.ckpt) is read with its EMA weights where it has them (MDLM evaluates with the EMA).
"""

from collections.abc import Callable
import json
import os
from pathlib import Path
import re

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from md4 import data as data_lib
from md4 import exported
from md4 import models
from md4 import publishing
from md4.configs import base
from md4.data import tokenizer

EMBEDDING = 'vocab_embed.embedding'  # the key that locates the DiT in a state dict

# MDLM's name below the prefix (a regular expression; a block index is group 1) -> our
# parameter path ({0}: the block index, {part}: a piece of a split tensor) and the
# transform (TRANSFORMS).
RULES = (
    (r'vocab_embed\.embedding', 'embed', 'copy'),
    (r'sigma_map\.mlp\.0\.weight', 'time_mlp_in/kernel', 'transpose'),
    (r'sigma_map\.mlp\.0\.bias', 'time_mlp_in/bias', 'copy'),
    (r'sigma_map\.mlp\.2\.weight', 'time_mlp_out/kernel', 'transpose'),
    (r'sigma_map\.mlp\.2\.bias', 'time_mlp_out/bias', 'copy'),
    (r'blocks\.(\d+)\.norm1\.weight', 'block_{0}/norm1/scale', 'copy'),
    (r'blocks\.(\d+)\.norm2\.weight', 'block_{0}/norm2/scale', 'copy'),
    (r'blocks\.(\d+)\.attn_qkv\.weight', 'block_{0}/w{part}/kernel', 'qkv'),
    (r'blocks\.(\d+)\.attn_out\.weight', 'block_{0}/wo/kernel', 'transpose'),
    (r'blocks\.(\d+)\.mlp\.0\.weight', 'block_{0}/fc1/kernel', 'transpose'),
    (r'blocks\.(\d+)\.mlp\.0\.bias', 'block_{0}/fc1/bias', 'copy'),
    (r'blocks\.(\d+)\.mlp\.2\.weight', 'block_{0}/fc2/kernel', 'transpose'),
    (r'blocks\.(\d+)\.mlp\.2\.bias', 'block_{0}/fc2/bias', 'copy'),
    (r'blocks\.(\d+)\.adaLN_modulation\.weight', 'block_{0}/adaln/kernel', 'transpose'),
    (r'blocks\.(\d+)\.adaLN_modulation\.bias', 'block_{0}/adaln/bias', 'copy'),
    (r'output_layer\.norm_final\.weight', 'final_norm/scale', 'copy'),
    (r'output_layer\.linear\.weight', 'logits/kernel', 'drop_mask_transpose'),
    (r'output_layer\.linear\.bias', 'logits/bias', 'drop_mask'),
    (r'output_layer\.adaLN_modulation\.weight', 'final_adaln/kernel', 'transpose'),
    (r'output_layer\.adaLN_modulation\.bias', 'final_adaln/bias', 'copy'),
)
IGNORED = (r'rotary_emb\.inv_freq',)  # a buffer that md4.networks.mdlm_dit recomputes

# Transform -> (MDLM's tensor -> {part: our array}).
TRANSFORMS: dict[str, Callable[[np.ndarray], dict[str, np.ndarray]]] = {
    'copy': lambda w: {'': w},
    'transpose': lambda w: {'': w.T},
    # 'b s (three h d)': rows [0, D) are q, [D, 2D) k, [2D, 3D) v, each (head, feature).
    'qkv': lambda w: dict(zip('qkv', (p.T for p in np.split(w, 3, axis=0)))),
    'drop_mask_transpose': lambda w: {'': w[:-1].T},  # the last output is the mask's
    'drop_mask': lambda w: {'': w[:-1]},
}


def find_prefix(state: dict) -> str:
  """The prefix of the DiT's keys in a state dict (e.g. 'backbone.')."""
  prefixes = sorted(k[:-len(EMBEDDING)] for k in state if k.endswith(EMBEDDING))
  if len(prefixes) != 1:
    shown = sorted(state)[:6]
    raise ValueError(f'expected one MDLM DiT in the state dict (one key ending in'
                     f' {EMBEDDING!r}), found {len(prefixes)} {prefixes}; keys start with'
                     f' {shown}; pass --prefix to choose one')
  return prefixes[0]


def _convert_key(rest: str, value: np.ndarray) -> dict[str, np.ndarray] | None:
  """Our {path: array} for one of MDLM's tensors (name below the prefix); {} if ignored,
  None if unknown."""
  if any(re.fullmatch(p, rest) for p in IGNORED):
    return {}
  for pattern, target, transform in RULES:
    match = re.fullmatch(pattern, rest)
    if match:
      parts = TRANSFORMS[transform](np.asarray(value, np.float32))
      return {target.format(*match.groups(), part=part): np.ascontiguousarray(array)
              for part, array in parts.items()}
  return None


def convert_state_dict(state: dict, prefix: str | None = None) -> tuple[dict, dict]:
  """MDLM's DiT state dict ({name: array}) -> (our flat parameters {'a/b': float32 array},
  the network's sizes {'hidden_size', 'n_blocks', 'cond_dim', 'mlp_ratio', 'vocab_size'})
  read from the shapes (vocab_size is V, without the mask id)."""
  prefix = find_prefix(state) if prefix is None else prefix
  flat, unknown = {}, []
  for key, value in state.items():
    if not key.startswith(prefix):
      continue
    converted = _convert_key(key[len(prefix):], value)
    if converted is None:
      unknown.append(key)
    else:
      flat.update(converted)
  if unknown:
    raise ValueError(f'{len(unknown)} tensors of the state dict are not MDLM DiT'
                     f' parameters this converter knows, e.g. {unknown[:4]}; is it another'
                     ' architecture?')
  embed = flat['embed']  # [V + 1, D]
  sizes = {'vocab_size': embed.shape[0] - 1, 'hidden_size': embed.shape[1],
           'cond_dim': flat['time_mlp_in/kernel'].shape[1],
           'n_blocks': len({k.split('/')[0] for k in flat if k.startswith('block_')})}
  sizes['mlp_ratio'] = flat['block_0/fc1/kernel'].shape[1] // sizes['hidden_size']
  return flat, sizes


def lookup(config: dict, *names, default=None):
  """The first of `names` (dotted paths, e.g. 'model.n_heads') that `config` holds."""
  for name in names:
    value = config
    for part in name.split('.'):
      value = value.get(part) if isinstance(value, dict) else None
    if value is not None:
      return value
  return default


def network_config(sizes: dict, hf_config: dict, n_heads=None, time_conditioning=None,
                   dropout=None) -> dict:
  """config.network of the imported model: the shapes' sizes, and from the checkpoint's
  config.json (MDLM's hub config, or SDTT's Hydra config) or the arguments, the heads,
  the time conditioning and dropout."""
  heads = n_heads or lookup(hf_config, 'n_heads', 'model.n_heads', 'num_attention_heads')
  if not heads:
    raise ValueError('the number of attention heads is not in the checkpoint\'s config.json'
                     ' (n_heads); pass --n_heads (12 for MDLM\'s small model)')
  if time_conditioning is None:
    time_conditioning = bool(lookup(hf_config, 'time_conditioning', default=False))
  dropout = dropout if dropout is not None else lookup(hf_config, 'dropout', 'model.dropout',
                                                       default=0.1)
  return {'type': 'mdlm_dit', 'hidden_size': sizes['hidden_size'],
          'n_blocks': sizes['n_blocks'], 'n_heads': int(heads), 'cond_dim': sizes['cond_dim'],
          'mlp_ratio': sizes['mlp_ratio'], 'dropout_rate': float(dropout),
          'time_conditioning': bool(time_conditioning), 'dtype': 'float32'}


def md4_config(network: dict, length: int) -> ml_collections.ConfigDict:
  """The MD4 config of an imported MDLM model (see the module docstring)."""
  config = base.get_config()
  config.data.dataset = 'openwebtext'
  config.data.data_shape = (length,)
  config.model.noise_schedule = 'linear'
  config.model.cont_time = True
  config.network = ml_collections.ConfigDict(network)
  # MDLM's sampler steps on a uniform time grid; 1,000 steps as its paper's samples.
  config.sampling.sampler = 'ancestral'
  config.sampling.sampling_grid = 'uniform'
  config.sampling.timesteps = 1000
  config.eval_batch_size = 16  # rows of 1024 tokens with 50,257 logits each
  return config


# ------------------------------------------------------------------- reading checkpoints


def lightning_state(checkpoint: dict, ema: bool = True) -> dict:
  """The state dict of a checkpoint dict: a Lightning checkpoint's 'state_dict', with its
  EMA's shadow parameters in place of the backbone's parameters (MDLM's ExponentialMovingAverage
  keeps them in the order of backbone.parameters(), i.e. the state dict's order without
  buffers) when `ema` and it has them; or the dict itself (a plain state dict)."""
  if 'state_dict' not in checkpoint:
    return checkpoint
  state = dict(checkpoint['state_dict'])
  shadow = (checkpoint.get('ema') or {}).get('shadow_params') if ema else None
  if shadow:
    prefix = find_prefix(state)
    names = [k for k in state if k.startswith(prefix)
             and not any(re.fullmatch(p, k[len(prefix):]) for p in IGNORED)]
    if len(shadow) < len(names):
      raise ValueError(f'the checkpoint\'s EMA has {len(shadow)} tensors, fewer than the'
                       f' {len(names)} parameters of its DiT; pass --noema for the raw weights')
    state.update(zip(names, shadow))
  return state


def _torch_checkpoint(path: Path) -> dict:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f'{path} is a PyTorch checkpoint, which needs `pip install torch` (the'
                      ' CPU build is enough) to read; or give the model.safetensors of a'
                      ' hub repository') from e
  checkpoint = torch.load(path, map_location='cpu', weights_only=False)
  as_numpy = lambda v: v.float().numpy() if isinstance(v, torch.Tensor) else v
  if 'ema' in checkpoint and checkpoint['ema']:
    checkpoint['ema'] = dict(checkpoint['ema'])
    checkpoint['ema']['shadow_params'] = [as_numpy(v) for v in
                                          checkpoint['ema'].get('shadow_params', [])]
  if 'state_dict' in checkpoint:
    checkpoint['state_dict'] = {k: as_numpy(v) for k, v in checkpoint['state_dict'].items()}
    return checkpoint
  return {k: as_numpy(v) for k, v in checkpoint.items()}


CHECKPOINT_FILES = ('model.safetensors', 'pytorch_model.bin', 'last.ckpt')


def read_checkpoint(path: str, ema: bool = True) -> tuple[dict, dict, int]:
  """(state dict of numpy arrays, config.json beside it or {}, training step or 0) of a
  .safetensors file, a PyTorch/Lightning file (.ckpt, .pt, .bin), or a folder holding one
  (CHECKPOINT_FILES)."""
  path = Path(path).expanduser()
  if path.is_dir():
    found = [path / f for f in CHECKPOINT_FILES if (path / f).exists()]
    if not found:
      raise FileNotFoundError(f'{path} holds none of {list(CHECKPOINT_FILES)}')
    path = found[0]
  if not path.exists():
    raise FileNotFoundError(f'{path} does not exist; give an MDLM checkpoint'
                            ' (.safetensors, .ckpt) or its folder')
  config_path = path.parent / 'config.json'
  hf_config = json.loads(config_path.read_text()) if config_path.exists() else {}
  if path.suffix == '.safetensors':
    from safetensors import numpy as st_numpy  # pylint: disable=g-import-not-at-top
    return st_numpy.load_file(str(path)), hf_config, 0
  checkpoint = _torch_checkpoint(path)
  return lightning_state(checkpoint, ema), hf_config, int(checkpoint.get('global_step', 0))


def hub_checkpoint(repo_id: str, revision: str | None = None) -> str:
  """The local folder of a hub model repository's model.safetensors and config.json: the
  hub cache, else downloaded; fails at once offline with what to fetch instead."""
  import huggingface_hub  # pylint: disable=g-import-not-at-top
  patterns = ['model.safetensors', 'config.json']
  try:
    return huggingface_hub.snapshot_download(repo_id, revision=revision,
                                             allow_patterns=patterns, local_files_only=True)
  except Exception:  # pylint: disable=broad-except  (not cached)
    pass
  if not tokenizer.hub_reachable():
    raise ConnectionError(
        f'{repo_id} is neither in the hub cache nor reachable (or HF_HUB_OFFLINE is set);'
        f' download its {" and ".join(patterns)}'
        + (f' (revision {revision})' if revision else '') + ' into a folder and pass'
        ' --checkpoint=FOLDER')
  return huggingface_hub.snapshot_download(repo_id, revision=revision,
                                           allow_patterns=patterns)


# ------------------------------------------------------------------------- importing


def _gpt2_info(length: int) -> data_lib.DatasetInfo:
  return data_lib.DatasetInfo(tokenizer.GPT2_VOCAB_SIZE, (length,), tokenizer.decode,
                              ('valid',))


def import_state(state: dict, hf_config: dict, output: str, source: str, *, step: int = 0,
                 params: str = 'ema', length: int | None = None, n_heads=None,
                 time_conditioning=None, prefix: str | None = None) -> str:
  """Converts an MDLM-family state dict and writes it as an exported folder at `output`
  (md4.exported), checked against the model md4_config builds; returns output."""
  flat, sizes = convert_state_dict(state, prefix)
  if sizes['vocab_size'] != tokenizer.GPT2_VOCAB_SIZE:
    raise ValueError(f'the checkpoint has {sizes["vocab_size"] + 1} token ids; an MDLM'
                     f' GPT-2 model has {tokenizer.GPT2_VOCAB_SIZE + 1} (GPT-2\'s and the'
                     ' mask)')
  length = length or int(lookup(hf_config, 'model_length', 'model.length', default=1024))
  config = md4_config(network_config(sizes, hf_config, n_heads, time_conditioning), length)
  info = _gpt2_info(length)
  model = models.build(config, info)
  example = np.zeros((1, length), np.int32)
  abstract = jax.eval_shape(lambda r: model.init({'params': r, 'sample': r}, example),
                            jax.random.key(0))['params']
  flat = {f'network/{k}': v for k, v in flat.items()}  # the model's backbone
  exported.check_weights(flat, exported.flatten_abstract(nn.unbox(abstract)), source,
                         fix='is it an MDLM DiT of another configuration (--n_heads)?')
  meta = {'step': step, 'params': params, 'source': source,
          'data': exported.data_entry('openwebtext', info), 'held_out': {}}
  meta['num_params'] = int(sum(v.size for v in flat.values()))
  summary = (f'Imported by md4 (md4/import_mdlm.py) from the MDLM-family checkpoint'
             f' {source}: MDLM\'s DiT with its weights as published, run as MD4 with the'
             ' linear schedule (the same model as MDLM\'s log-linear one).')
  card = publishing.model_card(f'MDLM DiT ({os.path.basename(source.rstrip("/"))})',
                               summary, meta, config)
  return exported.write(output, config, exported.unflatten_params(flat), meta, card)
