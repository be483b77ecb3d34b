r"""The OpenWebText data pipeline's speed on this machine, printed as a Markdown table.

  python benchmarks/data_benchmark.py [--rows=100000] [--batches=20]
  python benchmarks/data_benchmark.py --train_tokens_per_s=N   # compare with a train step

1. prepare: prepare_openwebtext_data.py's tokenization (all cores) of Shakespeare's works,
   GPT-2 tokens/s, start to end in a fresh process: the one-off cost of preparing a corpus.
2. pipeline: training batches of the `openwebtext` config's layout (512 x 1024 GPT-2 ids,
   uint16 memory-mapped rows) from a `--rows`-row file, alone (`md4.data.train_batch` through
   the prefetch thread, as the loop runs it) and with the copy into a device array
   (md4.sharding's batch sharding over all devices).

Only the data stages are timed: the train step is not built here, since the train loop's
functions are not a stable interface for a benchmark. Time MD4-S's train step with
benchmarks/benchmark.py and pass its tokens/s as --train_tokens_per_s; the last line then
gives the pipeline's tokens/s (with the device copy) over it (target >= 10x).
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import jax
import numpy as np

from benchmarks.tables import print_table
from md4 import data
from md4 import sharding
from md4.configs.md4 import openwebtext as owt_config
from md4.data import text

_ROWS = flags.DEFINE_integer('rows', 100_000, 'Rows of the pipeline file.')
_BATCHES = flags.DEFINE_integer('batches', 20, 'Timed pipeline batches.')
_BATCH = flags.DEFINE_integer('batch', None, 'Batch size (default: the config\'s, 512).')
_PREPARE = flags.DEFINE_bool('prepare', True, 'Time the preparation of Shakespeare\'s works.')
_TRAIN_TOKENS_PER_S = flags.DEFINE_float(
    'train_tokens_per_s', None, 'MD4-S train-step tokens/s measured elsewhere (e.g. by'
    ' benchmarks/benchmark.py); when given, the pipeline is compared with it.')


def bench_prepare(tmp):
  """prepare_openwebtext_data.py on Shakespeare's works, start to end (a fresh process)."""
  source = os.path.join(tmp, 'works')
  os.makedirs(source)
  for files in text.shakespeare_works().values():
    for f in files:
      shutil.copy(f, source)
  data_dir = os.path.join(tmp, 'data')
  start = time.perf_counter()
  subprocess.run([sys.executable, os.path.join(ROOT, 'prepare_openwebtext_data.py'),
                  f'--source={source}', f'--data_dir={data_dir}', '--seq_len=1024',
                  '--eval_fraction=0.1'], check=True, capture_output=True)
  seconds = time.perf_counter() - start
  with open(os.path.join(data_dir, 'openwebtext', 'metadata.json')) as f:
    tokens = sum(s['tokens'] for s in json.load(f)['splits'].values())
  return {'stage': f'prepare ({os.cpu_count()} processes, Shakespeare)',
          'batch': '-', 'tokens/s': tokens / seconds,
          'note': f'{tokens:,} tokens in {seconds:.1f} s with start-up, one-off'}


def _rows_file(tmp, rows, seq_len):
  """A [rows, seq_len] uint16 .npy of random GPT-2 ids, opened memory-mapped."""
  path = os.path.join(tmp, 'rows.npy')
  out = np.lib.format.open_memmap(path, 'w+', np.uint16, (rows, seq_len))
  out[:] = np.random.default_rng(0).integers(0, 50257, out.shape, np.uint16)
  out.flush()
  del out
  return np.load(path, mmap_mode='r')


def bench_pipeline(tmp, batch_size, seq_len, seed):
  """Rows of train_batch through the prefetch thread, alone and copied to the devices."""
  arr = _rows_file(tmp, _ROWS.value, seq_len)
  tokens = batch_size * seq_len * _BATCHES.value
  batch_sharding = sharding.batch_sharding(sharding.make_mesh())
  out = []
  for name, feed in (('pipeline (train_batch + prefetch)', lambda x: x),
                     ('pipeline + device array', lambda x: jax.block_until_ready(
                         sharding.global_batch(batch_sharding, x)))):
    batches = data.prefetch(data.train_batch(arr, s, batch_size, seed)
                            for s in range(_BATCHES.value + 1))
    feed(next(batches))  # thread started, first batch out
    start = time.perf_counter()
    for batch in batches:
      feed(batch)
    seconds = time.perf_counter() - start
    out.append({'stage': name, 'batch': f'{batch_size} x {seq_len}',
                'tokens/s': tokens / seconds,
                'note': f'{1e3 * seconds / _BATCHES.value:.1f} ms per batch, memory-mapped'
                        f' {_ROWS.value:,} x {seq_len} uint16'})
  return out


def main(argv):
  del argv
  print(f'Machine: {jax.devices()[0].device_kind} x {jax.device_count()}, {os.cpu_count()}'
        f' cores, jax {jax.__version__}\n', flush=True)
  config = owt_config.get_config()
  batch_size = _BATCH.value or config.batch_size
  with tempfile.TemporaryDirectory() as tmp:
    rows = [bench_prepare(tmp)] if _PREPARE.value else []
    rows += bench_pipeline(tmp, batch_size, config.data.data_shape[0], config.seed)
  print_table([r | {'tokens/s': f'{r["tokens/s"]:,.0f}'} for r in rows])
  if _TRAIN_TOKENS_PER_S.value:
    ratio = rows[-1]['tokens/s'] / _TRAIN_TOKENS_PER_S.value
    print(f'Pipeline with the device copy / MD4-S train step'
          f' ({_TRAIN_TOKENS_PER_S.value:,.0f} tokens/s): {ratio:,.0f}x (target >= 10x)')


if __name__ == '__main__':
  app.run(main)
