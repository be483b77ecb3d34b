r"""What categorical draws cost with GPT-2's vocabulary: wall time and peak memory of a
sampling run, per draw mode.

  python benchmarks/draw_benchmark.py [--n_layers=2 --length=128 --num_samples=16
      --steps=50 --sampler=ancestral --modes=exact,float32]

The network is the OpenWebText config's (md4/configs/md4/openwebtext.py: GPT-2's 50,257
ids) cut to --n_layers blocks and --length positions, with random initial parameters: what
a draw costs does not depend on training. Each mode runs in its own process (so that its
peak resident memory is its own) and draws --num_samples samples of --steps steps in one
batch:
  exact    config.sampling.float64_draws=True, the default: exact draws (md4.sampling.draws)
  float32  float64_draws=False: float32 Gumbel-max over every token
The table gives the first call's seconds (compilation included), a second call's, and the
process's peak resident memory. To compare with another version of the project, run this
file from that version's checkout (it uses only md4.sampling.Sampler and the configs).
"""

import json
import os
import resource
import subprocess
import sys
import time

from absl import app
from absl import flags

_N_LAYERS = flags.DEFINE_integer('n_layers', 2, 'Transformer blocks.')
_LENGTH = flags.DEFINE_integer('length', 128, 'Tokens per sample.')
_NUM_SAMPLES = flags.DEFINE_integer('num_samples', 16, 'Samples, drawn in one batch.')
_STEPS = flags.DEFINE_integer('steps', 50, 'Sampling steps.')
_SAMPLER = flags.DEFINE_string('sampler', 'ancestral', 'A sampler of md4.sampling.SAMPLERS.')
_MODES = flags.DEFINE_list('modes', ['exact', 'float32'], 'Draw modes (see the docstring).')
_ONE = flags.DEFINE_string('one', None, 'Internal: run this one mode and print JSON.')

GPT2_VOCAB = 50_257
MODES = {'exact': True, 'float32': False}  # mode -> config.sampling.float64_draws


def run_one(mode):
  """{'first_s', 'second_s', 'peak_gb'} of one sampling run in this process."""
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from md4 import models  # pylint: disable=g-import-not-at-top
  from md4 import sampling  # pylint: disable=g-import-not-at-top
  from md4.configs.md4 import openwebtext  # pylint: disable=g-import-not-at-top
  from md4.data import DatasetInfo  # pylint: disable=g-import-not-at-top

  config = openwebtext.get_config()
  config.network.n_layers = _N_LAYERS.value
  config.data.data_shape = (_LENGTH.value,)
  config.sampling.sampler = _SAMPLER.value
  config.sampling.timesteps = _STEPS.value
  config.sampling.float64_draws = MODES[mode]
  info = DatasetInfo(GPT2_VOCAB, (_LENGTH.value,), str, ('valid',))
  model = models.build(config, info)
  x = jnp.zeros((1, _LENGTH.value), jnp.int32)
  params = jax.jit(lambda rng: model.init({'params': rng, 'sample': rng, 'dropout': rng},
                                          x)['params'])(jax.random.key(0))
  sampler = sampling.Sampler(model, sampling.Options.from_config(config.sampling))
  run = jax.jit(sampler)
  z = jnp.full((_NUM_SAMPLES.value, _LENGTH.value), model.mask_id, jnp.int32)
  seconds = []
  for i in range(2):
    start = time.perf_counter()
    jax.block_until_ready(run(params, jax.random.key(i), z))
    seconds.append(time.perf_counter() - start)
  peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return {'first_s': seconds[0], 'second_s': seconds[1], 'peak_gb': peak_kb / 2**20}


def main(argv):
  del argv
  if _ONE.value:
    print(json.dumps(run_one(_ONE.value)))
    return
  for mode in _MODES.value:
    if mode not in MODES:
      raise app.UsageError(f'unknown mode {mode!r}; choose from {sorted(MODES)}')
  print(f'GPT-2 vocabulary (50,257 ids), {_N_LAYERS.value}-layer OpenWebText network, '
        f'{_NUM_SAMPLES.value} samples x {_LENGTH.value} tokens, {_STEPS.value} steps of '
        f'{_SAMPLER.value}')
  print(f'{"draws":10s} {"first call s":>13s} {"second call s":>14s} {"peak GB":>8s}')
  for mode in _MODES.value:
    args = [a for a in sys.argv[1:] if not a.startswith('--modes')]
    out = subprocess.run([sys.executable, os.path.abspath(__file__), f'--one={mode}', *args],
                         check=True, capture_output=True, text=True)
    row = json.loads(out.stdout.strip().splitlines()[-1])
    print(f'{mode:10s} {row["first_s"]:13.1f} {row["second_s"]:14.1f} {row["peak_gb"]:8.2f}',
          flush=True)


if __name__ == '__main__':
  app.run(main)
