"""Autoregressive-baseline configs: an MD4 config with the model swapped for md4.models.ar."""

import ml_collections


def as_ar(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """model_type 'ar': the same transformer, causal, without time conditioning or the
  centred Canon layers (which would show each position the tokens after it)."""
  config.model_type = 'ar'
  config.model = ml_collections.ConfigDict()  # AR takes no model keywords
  config.network.causal = True
  config.network.time_features = 'none'
  config.network.canon_width = 0
  config.sampling.sampler = 'ancestral'  # left to right
  config.eval_repeats = 1  # the loss is exact: no draws to repeat
  return config
