"""GenMD4 configs: an MD4 config with the model section swapped for GenMD4's."""

import ml_collections


def as_genmd4(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Sets model_type 'genmd4' and replaces config.model with GenMD4's keyword arguments."""
  config.model_type = 'genmd4'
  config.model = ml_collections.ConfigDict()
  config.model.power_init = 1.0  # initial w_v of α_t(v) = 1 − (1 − ε)·t^{w_v} (1: linear)
  config.model.t1 = 1e-3  # t ~ U(t1, 1); the reconstruction term covers [0, t1]
  config.model.antithetic_time_sampling = True  # stratified t over the batch
  return config
