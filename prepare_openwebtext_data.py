r"""Prepares OpenWebText (or FineWeb-Edu) for the `openwebtext` / `fineweb_edu` datasets.

  python prepare_openwebtext_data.py --data_dir=~/md4_data            # streams from the hub
  python prepare_openwebtext_data.py --source=PATH --data_dir=DIR     # local text, offline
  python prepare_openwebtext_data.py --dataset=fineweb_edu --data_dir=~/md4_data
  python prepare_openwebtext_data.py --dataset=fineweb_edu --hf_config=sample-10BT ...

PATH is a folder of .txt files (one document each), a JSONL file with a "text" field, or a
folder written by `datasets.Dataset.save_to_disk`. Writes DIR/<dataset>/{train,valid}.npy
(uint16 rows of --seq_len GPT-2 tokens, each document followed by <|endoftext|>) and
metadata.json; see md4/preparation.py (the recipe) and md4/data/openwebtext.py (the
layout). Interrupted runs resume where they stopped.

By default OpenWebText holds out the original release's split (--split=chunks: 2% of the
shuffled 1024-token rows), the split of the paper's perplexities;
--split=documents holds out whole documents instead (0.05% of them). FineWeb-Edu holds
nothing out (--split=none): it is evaluated on OpenWebText's held-out split.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

from md4 import preparation

RECIPES = preparation.RECIPES
_DATASET = flags.DEFINE_enum('dataset', 'openwebtext', sorted(RECIPES),
                             'Which dataset to prepare; names the folder in --data_dir.')
_DATA_DIR = flags.DEFINE_string('data_dir', '~/md4_data', 'Where DATASET/ is written.')
_SOURCE = flags.DEFINE_string(
    'source', None, 'Local documents instead of the Hugging Face hub: a folder of .txt'
    ' files, a JSONL file with a "text" field, or a saved HF dataset folder.')
_HF_CONFIG = flags.DEFINE_string(
    'hf_config', None, 'Configuration of the Hugging Face dataset to stream (default: '
    + ', '.join(f'{k}: {r.hf_path} {r.hf_config!r}' for k, r in RECIPES.items())
    + "); 'sample-10BT' is FineWeb-Edu's 10B-token sample.")
_SPLIT = flags.DEFINE_enum(
    'split', None, sorted(preparation.SPLIT_EVAL_FRACTION),
    'Held-out split: chunks (a fraction of the shuffled rows, the original release\'s),'
    ' documents (a fraction of whole documents) or none (default: '
    + ', '.join(f'{k}: {r.split}' for k, r in RECIPES.items()) + ').')
_EVAL_FRACTION = flags.DEFINE_float(
    'eval_fraction', None, 'Fraction held out for the valid split (default by --split: '
    f'{preparation.SPLIT_EVAL_FRACTION}).')
_MAX_DOC_TOKENS = flags.DEFINE_integer(
    'max_doc_tokens', None, 'Keep only the first this many tokens of each document, before'
    ' its <|endoftext|>; 0 keeps all (default: '
    + ', '.join(f'{k}: {r.max_doc_tokens}' for k, r in RECIPES.items()) + ').')
_MAX_DOCUMENTS = flags.DEFINE_integer(
    'max_documents', None, 'Stop after this many documents of the source (default: all).')
_SEQ_LEN = flags.DEFINE_integer('seq_len', 1024, 'Tokens per row.')
_SHARD_DOCS = flags.DEFINE_integer('shard_docs', 2000, 'Documents per shard (unit of work'
                                   ' and of resumption).')
_NUM_WORKERS = flags.DEFINE_integer('num_workers', None, 'Processes (default: all cores).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  metadata = preparation.prepare(
      _DATASET.value, _DATA_DIR.value, source=_SOURCE.value, seq_len=_SEQ_LEN.value,
      split=_SPLIT.value, eval_fraction=_EVAL_FRACTION.value,
      max_doc_tokens=_MAX_DOC_TOKENS.value, hf_config=_HF_CONFIG.value,
      max_documents=_MAX_DOCUMENTS.value, shard_docs=_SHARD_DOCS.value,
      num_workers=_NUM_WORKERS.value)
  print(json.dumps(metadata, indent=1))


if __name__ == '__main__':
  app.run(main)
