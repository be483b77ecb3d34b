r"""Prepares OpenWebText (or FineWeb-Edu) for the `openwebtext` / `fineweb_edu` datasets.

  python prepare_openwebtext_data.py --data_dir=~/md4_data            # streams from the hub
  python prepare_openwebtext_data.py --source=PATH --data_dir=DIR     # local text, offline
  python prepare_openwebtext_data.py --dataset=fineweb_edu --data_dir=~/md4_data

PATH is a folder of .txt files (one document each), a JSONL file with a "text" field, or a
folder written by `datasets.Dataset.save_to_disk`. Writes DIR/<dataset>/{train,valid}.npy
(uint16 rows of --seq_len GPT-2 tokens, each document followed by <|endoftext|>) and
metadata.json; see md4/data/openwebtext.py. Interrupted runs resume where they stopped.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

from md4.data import openwebtext

_DATASET = flags.DEFINE_enum('dataset', 'openwebtext', sorted(openwebtext.HF_SOURCES),
                             'Which dataset to prepare; names the folder in --data_dir.')
_DATA_DIR = flags.DEFINE_string('data_dir', '~/md4_data', 'Where DATASET/ is written.')
_SOURCE = flags.DEFINE_string(
    'source', None, 'Local documents instead of the Hugging Face hub: a folder of .txt'
    ' files, a JSONL file with a "text" field, or a saved HF dataset folder.')
_SEQ_LEN = flags.DEFINE_integer('seq_len', 1024, 'Tokens per packed row.')
_EVAL_FRACTION = flags.DEFINE_float(
    'eval_fraction', None, 'Fraction of documents held out for the valid split (default:'
    f' {openwebtext.EVAL_FRACTION}).')
_SHARD_DOCS = flags.DEFINE_integer('shard_docs', 2000, 'Documents per shard (unit of work'
                                   ' and of resumption).')
_NUM_WORKERS = flags.DEFINE_integer('num_workers', None, 'Processes (default: all cores).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  metadata = openwebtext.prepare(
      _DATASET.value, _DATA_DIR.value, source=_SOURCE.value, seq_len=_SEQ_LEN.value,
      eval_fraction=_EVAL_FRACTION.value, shard_docs=_SHARD_DOCS.value,
      num_workers=_NUM_WORKERS.value)
  print(json.dumps(metadata, indent=1))


if __name__ == '__main__':
  app.run(main)
