"""The options of the samplers (config.sampling), with their defaults and checks.

md4/configs/base.py sets config.sampling to these defaults and comments each key;
`Options.from_config` takes a config section (or any mapping), fills what it leaves out
from the defaults here and checks every value, so that the library never reads a config
file.
"""

import dataclasses

from absl import logging

from md4.sampling import samplers

# Keys of config.sampling that the training loop reads, not the samplers.
LOOP_KEYS = ('num_samples',)


@dataclasses.dataclass(frozen=True)
class Options:
  """How to sample; every field is a key of config.sampling (md4/configs/base.py)."""
  sampler: str = 'ancestral'  # a key of md4.sampling.SAMPLERS
  sampling_grid: str = 'cosine'  # spacing of t: a key of md4.sampling.samplers.GRIDS
  timesteps: int = 256  # reverse steps per sample (per block with block_size)
  topp: float = 0.98  # nucleus mass of sampler 'topp'
  topk: int = 0  # draw only from the k most likely tokens; 0: all
  temperature: float = 1.0  # μθ ∝ exp(logits / temperature)
  guidance_scale: float = 0.0  # classifier-free guidance weight w (class-conditional)
  float64_draws: bool = True  # categorical draws with float64-fine Gumbel noise
  cache: bool = False  # skip the network when no token changed since its last call
  block_size: int = 0  # semi-autoregressive blocks of this many positions; 0: none
  confidence_noise: float = 0.0  # sampler 'confidence': annealed Gumbel on confidences
  # samplers 'confidence', 'threshold': how a position's confidence is scored, a key of
  # md4.sampling.samplers.CONFIDENCES
  confidence_score: str = 'max'
  threshold: float = 0.9  # sampler 'threshold': reveal every position this confident
  remdm_eta: float = 0.02  # sampler 'remdm': η of ReMDM-cap

  @classmethod
  def from_config(cls, sampling_config) -> 'Options':
    """Options from config.sampling (missing keys take the defaults), checked: raises
    ValueError naming the key."""
    fields = {f.name for f in dataclasses.fields(cls)}
    for key in sampling_config:
      if key not in fields and key not in LOOP_KEYS:
        raise ValueError(f'unknown key sampling.{key}; choose from'
                         f' {sorted(fields | set(LOOP_KEYS))}')
    options = cls(**{k: v for k, v in sampling_config.items() if k in fields})
    options.check()
    return options

  def check(self):
    """Raises ValueError for a value that cannot sample, naming the key and the range."""
    if self.sampler not in samplers.SAMPLERS:
      raise ValueError(f'unknown sampler {self.sampler!r}; choose from'
                       f' {sorted(samplers.SAMPLERS)}')
    if self.sampling_grid not in samplers.GRIDS:
      raise ValueError(f'unknown sampling grid {self.sampling_grid!r}; choose from'
                       f' {sorted(samplers.GRIDS)}')
    if self.confidence_score not in samplers.CONFIDENCES:
      raise ValueError(f'unknown confidence score {self.confidence_score!r}; choose from'
                       f' {sorted(samplers.CONFIDENCES)}')
    checks = (
        (0.0 < self.topp <= 1.0, f'sampling.topp must be in (0, 1], got {self.topp}'),
        (self.timesteps >= 1, f'sampling.timesteps must be >= 1, got {self.timesteps}'),
        (self.guidance_scale >= 0,
         f'sampling.guidance_scale must be >= 0, got {self.guidance_scale}'),
        (self.temperature > 0, f'sampling.temperature must be > 0, got {self.temperature}'),
        (self.topk >= 0, f'sampling.topk must be >= 0 (0: every token), got {self.topk}'),
        (self.block_size >= 0, 'sampling.block_size must be >= 0 (0: no blocks), got'
         f' {self.block_size}'),
        (self.confidence_noise >= 0,
         f'sampling.confidence_noise must be >= 0, got {self.confidence_noise}'),
        (0.0 < self.threshold <= 1.0,
         f'sampling.threshold must be in (0, 1], got {self.threshold}'),
        (0.0 <= self.remdm_eta <= 1.0, 'sampling.remdm_eta must be in [0, 1], got'
         f' {self.remdm_eta}'),
        (not self.cache or self.sampler in samplers.STEP_SAMPLERS,
         'sampling.cache skips network calls between reverse steps that change nothing;'
         f' sampler {self.sampler!r} changes the sequence at every call: set cache=False'),
    )
    for ok, message in checks:
      if not ok:
        raise ValueError(message)

  def check_model(self, model):
    """Raises ValueError when these options cannot sample `model` (an md4.models.Denoiser);
    warns where they approximate."""
    name = self.sampler
    if model.autoregressive:
      if name not in samplers.AR_SAMPLERS or self.block_size or self.cache:
        raise ValueError(f'an autoregressive model samples left to right with sampler one'
                         f' of {list(samplers.AR_SAMPLERS)}, without block_size or cache;'
                         f' got {name!r}')
      return
    if name in samplers.SCALAR_SCHEDULE_SAMPLERS and not hasattr(model, 'schedule'):
      raise ValueError(f'sampler {name!r} needs one masking schedule for every token'
                       f" (model_type 'md4'); {type(model).__name__} has per-token"
                       ' schedules')
    if self.block_size and len(model.data_shape) != 1:
      raise ValueError(f'sampling.block_size decodes sequences block by block; data of'
                       f' shape {model.data_shape} (images) has no order to follow: set it'
                       ' to 0')
    if self.block_size > model.data_shape[0]:
      raise ValueError(f'sampling.block_size {self.block_size} exceeds the training length'
                       f' {model.data_shape[0]}, the widest window the network sees')
    if self.cache and getattr(model.network, 'time_features', None) != 'none':
      logging.warning(
          'sampling.cache reuses μθ(z, t′) from an earlier time t′ when no token changed:'
          " exact only for a network that ignores t (network.time_features='none'); this"
          ' network conditions on t, so cached steps approximate.')
