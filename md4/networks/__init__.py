"""Backbones: a dict from `config.network.type` to the module class."""

from md4.networks.transformer import Transformer

NETWORKS = {
    'transformer': Transformer,
}


def build_network(network_config, vocab_size):
  """Builds the backbone named by `network_config.type` with its other keys."""
  kwargs = dict(network_config)
  name = kwargs.pop('type')
  if name not in NETWORKS:
    raise ValueError(f'unknown network {name!r}; choose from {sorted(NETWORKS)}')
  return NETWORKS[name](vocab_size=vocab_size, **kwargs)
