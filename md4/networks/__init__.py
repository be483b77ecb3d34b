"""Backbones: a dict from `config.network.type` to the module class."""

import dataclasses

from md4.networks.mdlm_dit import MDLMDiT
from md4.networks.transformer import Transformer
from md4.networks.unet import UNet
from md4.networks.uvit import UViT

NETWORKS = {
    'transformer': Transformer,
    'unet': UNet,
    'uvit': UViT,
    'mdlm_dit': MDLMDiT,  # MDLM's DiT, to run MDLM-family checkpoints (md4/import_mdlm.py)
}


def build_network(network_config, vocab_size, num_classes=0):
  """Builds the backbone named by `network_config.type` with its other keys.

  num_classes > 0 (class-conditional data) needs a backbone with a `num_classes` field.
  """
  kwargs = dict(network_config)
  name = kwargs.pop('type')
  if name not in NETWORKS:
    raise ValueError(f'unknown network {name!r}; choose from {sorted(NETWORKS)}')
  if num_classes:
    if 'num_classes' not in {f.name for f in dataclasses.fields(NETWORKS[name])}:
      labelled = sorted(n for n, cls in NETWORKS.items()
                        if 'num_classes' in {f.name for f in dataclasses.fields(cls)})
      raise ValueError(f'network {name!r} takes no labels; class-conditional data needs '
                       f'one of {labelled}')
    kwargs['num_classes'] = num_classes
  return NETWORKS[name](vocab_size=vocab_size, **kwargs)
