r"""Imports an MDLM-family checkpoint (MDLM, SDTT) as an md4 exported folder.

  python md4/import_mdlm.py --hf=kuleshov-group/mdlm-owt --output=DIR
  python md4/import_mdlm.py --hf=jdeschena/sdtt --revision=baselines_kld_step_70000 \
      --output=DIR
  python md4/import_mdlm.py --checkpoint=PATH --output=DIR [--n_heads=12] [--noema]

--hf downloads the repository's model.safetensors and config.json (huggingface_hub; the
hub cache is used when it has them); --checkpoint reads local files instead: a
.safetensors file, a Lightning .ckpt (its EMA weights unless --noema; reading it needs
torch), or a folder holding one with its config.json. DIR is then a --workdir for
md4/evaluate.py (e.g. --zero_shot=all) and md4/sample.py (any --sampler). md4.mdlm says how
MDLM's weights and schedule map onto MD4's.
"""

import os
import sys

# Lets `python md4/import_mdlm.py` import the package from a plain checkout.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

from md4 import cli
from md4 import mdlm

_HF = flags.DEFINE_string('hf', None, 'A hub model repository, e.g. kuleshov-group/mdlm-owt.')
_REVISION = flags.DEFINE_string('revision', None, 'Its revision (branch), e.g. an SDTT'
                                ' student\'s baselines_kld_step_70000.')
_CHECKPOINT = flags.DEFINE_string('checkpoint', None, 'A local checkpoint file or folder'
                                  ' instead of --hf.')
_OUTPUT = flags.DEFINE_string('output', None, 'The exported folder to write.')
_N_HEADS = flags.DEFINE_integer('n_heads', None, 'Attention heads (default: config.json\'s).')
_TIME = flags.DEFINE_bool('time_conditioning', None, 'Whether the network conditions on'
                          ' time (default: config.json\'s, else False).')
_LENGTH = flags.DEFINE_integer('length', None, 'Sequence length (default: config.json\'s,'
                               ' else 1024).')
_EMA = flags.DEFINE_bool('ema', True, 'A Lightning checkpoint\'s EMA weights.')
_PREFIX = flags.DEFINE_string('prefix', None, 'The prefix of the DiT\'s keys in the state'
                              ' dict (default: found).')
flags.mark_flags_as_required(['output'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if bool(_HF.value) == bool(_CHECKPOINT.value):
    raise app.UsageError('give either --hf=REPO or --checkpoint=PATH')
  source = _CHECKPOINT.value or mdlm.hub_checkpoint(_HF.value, _REVISION.value)
  state, hf_config, step = mdlm.read_checkpoint(source, _EMA.value)
  name = (f'hf:{_HF.value}' + (f'@{_REVISION.value}' if _REVISION.value else '')
          if _HF.value else os.path.abspath(source))
  output = mdlm.import_state(
      state, hf_config, _OUTPUT.value, name, step=step,
      params='ema' if _EMA.value else 'raw', length=_LENGTH.value, n_heads=_N_HEADS.value,
      time_conditioning=_TIME.value, prefix=_PREFIX.value)
  print(f'Imported {name} to {output}', flush=True)


if __name__ == '__main__':
  cli.run(main)
