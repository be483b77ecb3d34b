r"""Samples from a trained run and writes them (text, FASTA or a PNG grid).

  python md4/sample.py --workdir=W [--sampler=first_hitting] [--steps=N] \
      [--num_samples=K] [--step=N] [--params=ema|raw] \
      [--length=L] [--prefix=TEXT] [--suffix=TEXT] [--infill='text <mask:20> text'] \
      [--label=C] [--config.sampling.guidance_scale=W] [--output=FILE]

The sampler and its options are the run's config.sampling (md4/configs/base.py lists
them; md4.sampling the samplers), overridden by --config.sampling.*; --sampler and --steps
are short for --config.sampling.sampler and --config.sampling.timesteps. Prints the network
evaluations (NFE) per sample and the wall time. Prompts are tokenized with the run's
tokenizer; --length beyond the training length needs --config.sampling.block_size. W may
also be a folder written by md4/export.py or md4/import_mdlm.py.
"""

import os
import sys

# Lets `python md4/sample.py` import the package from a plain checkout.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

from md4 import cli
from md4 import configs
from md4 import inference
from md4 import run as run_lib

_WORKDIR = flags.DEFINE_string('workdir', None, 'A training run\'s directory, or an'
                               ' exported model\'s folder.')
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).')
_PARAMS = flags.DEFINE_enum('params', None, run_lib.PARAMS, 'Which parameters (default:'
                            ' ema; an exported folder\'s own).')
_SAMPLER = flags.DEFINE_string('sampler', None, 'A key of md4.sampling.SAMPLERS (default:'
                               " the run's config.sampling.sampler).")
_STEPS = flags.DEFINE_integer('steps', None, 'Reverse steps (config.sampling.timesteps).')
_NUM = flags.DEFINE_integer('num_samples', 16, 'How many samples.')
_BATCH = flags.DEFINE_integer('batch_size', 0, 'Samples drawn at once (0: all).')
_LENGTH = flags.DEFINE_integer('length', 0, 'Sequence length (0: the training length).')
_PREFIX = flags.DEFINE_string('prefix', '', 'Text the samples start with.')
_SUFFIX = flags.DEFINE_string('suffix', '', 'Text the samples end with.')
_INFILL = flags.DEFINE_string('infill', '', 'A template; each <mask:N> is N tokens to fill.')
_LABEL = flags.DEFINE_integer('label', None, 'Class of every sample (class-conditional).')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the samples.')
_OUTPUT = flags.DEFINE_string('output', '', 'File to write (default: in W/samples/).')
flags.mark_flags_as_required(['workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  config = _CONFIG.value
  if _SAMPLER.value is not None:
    config.sampling.sampler = _SAMPLER.value
  if _STEPS.value is not None:
    config.sampling.timesteps = _STEPS.value
  inference.sample(_WORKDIR.value, config, step=_STEP.value, params=_PARAMS.value,
                   num_samples=_NUM.value, batch_size=_BATCH.value, length=_LENGTH.value,
                   prefix=_PREFIX.value, suffix=_SUFFIX.value, infill=_INFILL.value,
                   label=_LABEL.value, seed=_SEED.value, output=_OUTPUT.value)


if __name__ == '__main__':
  with cli.user_errors():
    _CONFIG = configs.define_saved_config_flag(sys.argv)
  cli.run(main)
