"""The autoregressive baseline on Shakespeare characters: the judge of the sampler table.

Run:  python md4/main.py --config=md4/configs/ar/shakespeare.py --workdir=expt/ar_shakespeare
Everything but the model is the MD4 Shakespeare default (md4/configs/md4/shakespeare.py),
its `:amx` variant included, so its held-out bits per character are the autoregressive row
beside MD4's, and md4/evaluate.py --judge=expt/ar_shakespeare scores samples with it
(generative perplexity). Hardware and time as the MD4 default (a step costs about the same:
no Canon layer, no time conditioning). Expected: 2.2185 valid / 2.1877 test bits per
character after 3,000 steps (README).
"""

from md4.configs.ar import as_ar
from md4.configs.md4 import shakespeare


def get_config(variant='default'):
  return as_ar(shakespeare.get_config(variant))
