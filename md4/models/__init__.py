"""Models: a dict from `config.model_type` to the module class."""

from md4.models.ar import AR
from md4.models.genmd4 import GenMD4
from md4.models.md4 import MD4

MODELS = {
    'md4': MD4,
    'genmd4': GenMD4,
    'ar': AR,  # the autoregressive baseline (network.causal=True)
}
