r"""Exports a trained run as a self-contained folder, optionally pushed to the hub.

  python md4/export.py --workdir=W --output=DIR [--params=ema|raw] [--step=N] \
      [--push_to_hub=USER/NAME [--private]]

DIR gets the chosen parameters as safetensors (model.safetensors), the run's config
(config.json), md4_export.json (the data's shape and vocabulary, the tokenizer, the step)
and a model card (README.md) with the held-out numbers training logged at that step; no
optimizer state and no checkpoints (md4.exported describes the folder). md4/evaluate.py
and md4/sample.py take DIR as --workdir and give the numbers and samples the run gives.
--push_to_hub uploads DIR to that Hugging Face model repository (huggingface_hub; log in
first with `hf auth login`).
"""

import os
import sys

# Lets `python md4/export.py` import the package from a plain checkout.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

from md4 import cli
from md4 import publishing
from md4 import run as run_lib

_WORKDIR = flags.DEFINE_string('workdir', None, 'A training run\'s directory.')
_OUTPUT = flags.DEFINE_string('output', None, 'The folder to write.')
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).')
_PARAMS = flags.DEFINE_enum('params', 'ema', run_lib.PARAMS, 'Which parameters.')
_HUB = flags.DEFINE_string('push_to_hub', None, 'A Hugging Face model repository'
                           ' (USER/NAME) to upload the folder to.')
_PRIVATE = flags.DEFINE_bool('private', False, 'Create the hub repository as private.')
flags.mark_flags_as_required(['workdir', 'output'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  run = run_lib.load_run(_WORKDIR.value, step=_STEP.value, params=_PARAMS.value)
  output = publishing.export_run(run, _OUTPUT.value)
  print(f'Exported {run.workdir} (step {run.step}, {run.which_params.upper()} parameters)'
        f' to {output}', flush=True)
  if _HUB.value:
    url = publishing.push_to_hub(output, _HUB.value, private=_PRIVATE.value)
    print(f'Pushed {output} to {url}', flush=True)


if __name__ == '__main__':
  cli.run(main)
