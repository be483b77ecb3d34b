r"""Prepares the MD4 paper's zero-shot benchmark sets for md4/evaluate.py --zero_shot.

  python prepare_zero_shot_data.py --data_dir=~/md4_data              # every set, from the hub
  python prepare_zero_shot_data.py --sets=ptb --source=ptb.valid.txt --data_dir=DIR
  python prepare_zero_shot_data.py --source_dir=DIR_OF_SETS --data_dir=DIR   # offline

Sets: lambada, wikitext2, ptb, wikitext103, lm1b (md4.data.zero_shot). From the hub it
needs `pip install datasets==5.2.0`; offline, --source is one set's local copy in its own
format (the hub's parquet files or their folder, GPT-2's lambada_test.jsonl, PTB's
ptb.valid.txt or WikiText's wiki.valid.raw, a `datasets` save_to_disk folder), and
--source_dir a folder holding one such copy per set, named after the set (DIR/ptb.txt,
DIR/lambada.jsonl, DIR/wikitext2/, ...). Without either and without the hub it stops at once
and says what to download. The hub names are MDLM's (md4/zero_shot.py's RECIPES);
--hf_path/--hf_config read one set from another copy on the hub (e.g. a parquet copy of a
set whose original needs a loading script that `datasets` no longer runs).

Writes DIR/<set>/{valid,test}.npy (rows of --seq_len GPT-2 ids) and metadata.json;
md4/zero_shot.py describes the conventions (SEDD's and MDLM's detokenizers, <|endoftext|>
after each record, --layout).
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

from md4 import cli
from md4 import zero_shot
from md4.data import zero_shot as zero_shot_data

_SETS = flags.DEFINE_list('sets', ['all'], 'Sets to prepare: all, or some of '
                          + ','.join(zero_shot_data.BENCHMARKS) + '.')
_DATA_DIR = flags.DEFINE_string('data_dir', '~/md4_data', 'Where <set>/ is written.')
_SOURCE = flags.DEFINE_string('source', None, 'A local copy of the one set of --sets.')
_SOURCE_DIR = flags.DEFINE_string('source_dir', None, 'A folder with a local copy of each'
                                  ' set, named after it (a file <set>.<ext> or a folder).')
_LAYOUT = flags.DEFINE_enum('layout', 'wrap', sorted(zero_shot.LAYOUTS),
                            "Rows: wrap (SEDD's), wrap_bos (MDLM's) or pad (one record each).")
_SEQ_LEN = flags.DEFINE_integer('seq_len', 1024, 'Tokens per row.')
_SPLIT = flags.DEFINE_string('split', None, "The hub split to prepare ('validation' or"
                             " 'test'; default: each set's, see md4.data.zero_shot).")
_HF_PATH = flags.DEFINE_string('hf_path', None, 'Another hub dataset for the one set of'
                               ' --sets (default: md4/zero_shot.py\'s RECIPES, MDLM\'s names).')
_HF_CONFIG = flags.DEFINE_string('hf_config', None, 'Its configuration.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  names = zero_shot_data.names(_SETS.value)
  if (_SOURCE.value or _HF_PATH.value) and len(names) != 1:
    raise app.UsageError('--source and --hf_path name one set\'s data: give one --sets')
  for name in names:
    source = _SOURCE.value or (zero_shot.find_source(_SOURCE_DIR.value, name)
                               if _SOURCE_DIR.value else None)
    metadata = zero_shot.prepare(name, _DATA_DIR.value, source, _LAYOUT.value,
                                 _SEQ_LEN.value, _SPLIT.value, hf_path=_HF_PATH.value,
                                 hf_config=_HF_CONFIG.value)
    print(json.dumps({name: metadata['splits']}), flush=True)


if __name__ == '__main__':
  cli.run(main)
