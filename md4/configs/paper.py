"""The paper's experiments by name: each one's config and the data it describes.

Tools that build a paper model without its data (benchmarks/scale_plan.py,
benchmarks/accelerator_check.py, the export tests) take the vocabulary and the shape of
one example from here; `tiny` shrinks a config to seconds-sized networks of the same kind.
"""

import importlib

# Name -> (config module, token ids of its data (the dataset's; a config's
# data.vocab_size wins), the paper's number it reproduces).
PAPER = {
    'MD4-S': ('md4.configs.md4.openwebtext', 50_257, 'OWT perplexity <= 22.13'),
    'MD4-M': ('md4.configs.md4.openwebtext_medium', 50_257, 'OWT perplexity <= 16.64'),
    'GenMD4 OWT': ('md4.configs.genmd4.openwebtext', 50_257, 'OWT perplexity <= 21.80'),
    'FineWeb-Edu': ('md4.configs.md4.fineweb_edu', 50_257, 'OWT perplexity (other data)'),
    'text8': ('md4.configs.md4.text8', 27, 'text8 <= 1.37 bits/char'),
    'GenMD4 text8': ('md4.configs.genmd4.text8', 27, 'text8 <= 1.34 bits/char'),
    'CIFAR-10': ('md4.configs.md4.cifar10', 256, 'CIFAR-10 <= 2.75 bits/dim'),
    'ImageNet-64': ('md4.configs.md4.imagenet64', 256, 'ImageNet-64 <= 3.40 bits/dim'),
}


def get(name):
  """(config, vocabulary size, data shape) of the paper experiment `name`."""
  if name not in PAPER:
    raise ValueError(f'unknown paper experiment {name!r}; choose from {list(PAPER)}')
  module, vocab_size, _ = PAPER[name]
  config = importlib.import_module(module).get_config()
  vocab_size = config.data.vocab_size or vocab_size
  return config, vocab_size, tuple(config.data.data_shape)


def tiny(config):
  """config with a network of the same kind a few thousand times smaller and short
  examples (16 tokens, or 8×8 images), for checks that must run in seconds."""
  net = config.network
  if net.type == 'transformer':
    net.n_layers, net.num_heads, net.feature_dim = 1, 2, 16
    net.embed_dim = 16 if net.embed_dim else 0
    config.data.data_shape = (16,)
  else:
    net.n_layers, net.feature_dim = 1, 16
    if net.type == 'uvit':
      net.n_dit_layers, net.dit_hidden_size, net.dit_num_heads = 1, 32, 2
    config.data.data_shape = (8, 8, 3)
  return config
