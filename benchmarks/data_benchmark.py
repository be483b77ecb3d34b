r"""The OpenWebText data pipeline's speed against MD4-S's train step, on this machine.

  python benchmarks/data_benchmark.py [--steps=3] [--rows=100000]

1. prepare: prepare_openwebtext_data's tokenization (all cores) of Shakespeare's works,
   GPT-2 tokens/s: the one-off cost of preparing a corpus.
2. pipeline: training batches of the `openwebtext` config's layout (512 x 1024 GPT-2 ids,
   uint16 memory-mapped rows) from a `--rows`-row file, alone (`md4.data.train_batch` through
   the prefetch thread, as the loop runs it) and with the copy into a device array.
3. train step: MD4-S (md4/configs/md4/openwebtext.py) at batch 1 x 1024: a 2-core CPU takes
   tens of seconds per example, so batch 512 is out of reach. The step's work is per example
   but for the AdamW and EMA updates, whose FLOPs (printed) bound how much faster per token
   batch 512 could be.
The last line gives pipeline tokens/s over train-step tokens/s.
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
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import jax
import numpy as np

import benchmark
from md4 import data
from md4 import train
from md4.configs.md4 import openwebtext as owt_config
from md4.data import text

_ROWS = flags.DEFINE_integer('rows', 100_000, 'Rows of 1024 tokens in the pipeline file.')
_BATCHES = flags.DEFINE_integer('batches', 20, 'Timed pipeline batches.')


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


def bench_pipeline(tmp, config):
  path = os.path.join(tmp, 'rows.npy')
  rows = np.lib.format.open_memmap(path, 'w+', np.uint16, (_ROWS.value, 1024))
  rows[:] = np.random.default_rng(0).integers(0, 50257, rows.shape, np.uint16)
  rows.flush()
  del rows
  arr = np.load(path, mmap_mode='r')
  b = config.batch_size
  tokens = b * 1024 * _BATCHES.value
  out = []
  sharding = train.batch_sharding(train.make_mesh())
  for name, feed in (('pipeline (train_batch + prefetch)', lambda x: x),
                     ('pipeline + device array', lambda x: jax.block_until_ready(
                         jax.make_array_from_process_local_data(sharding, x)))):
    batches = data.prefetch(data.train_batch(arr, s, b, config.seed)
                            for s in range(_BATCHES.value + 1))
    feed(next(batches))  # thread started, first batch out
    start = time.perf_counter()
    for batch in batches:
      feed(batch)
    seconds = time.perf_counter() - start
    out.append({'stage': name, 'batch': f'{b} x 1024', 'tokens/s': tokens / seconds,
                'note': f'{1e3 * seconds / _BATCHES.value:.0f} ms per batch, memory-mapped'
                        f' {_ROWS.value:,} x 1024 uint16'})
  return out


def bench_step(tmp, config, peak):
  config.data.data_dir = os.path.join(tmp, 'data')
  config.batch_size = 1
  row = benchmark.bench_train('MD4-S', config, peak)
  step_s = float(row['step ms']) / 1e3
  # FLOPs of the per-step fixed part (AdamW + EMA, ~20 per parameter) against one example's
  # forward and backward (6 per weight-token): the share by which batch 1 understates the
  # per-token speed of batch 512.
  fixed = 20 * float(row['params'].removesuffix('M')) * 1e6
  per_example = float(row['model GFLOP/step'].split()[0]) * 1e9
  return [{'stage': 'MD4-S train step', 'batch': '1 x 1024', 'tokens/s': 1024 / step_s,
           'note': f'{step_s:,.1f} s per step, {row["params"]} parameters, compile'
                   f' {row["compile s"]} s; per token, batch 512 is at most'
                   f' {100 * fixed / per_example:.1f}% faster (fixed update FLOPs)'}]


def main(argv):
  del argv
  peak = benchmark.matmul_peak()
  print(f'Machine: {jax.devices()[0].device_kind}, {os.cpu_count()} cores, jax '
        f'{jax.__version__}; float32 matmul peak {peak / 1e9:.0f} GFLOP/s\n', flush=True)
  config = owt_config.get_config()
  with tempfile.TemporaryDirectory() as tmp:
    rows = [bench_prepare(tmp), *bench_pipeline(tmp, config)]
    rows += bench_step(tmp, owt_config.get_config(), peak)
  ratio = rows[2]['tokens/s'] / rows[-1]['tokens/s']  # with the device copy / the step
  benchmark.print_table([r | {'tokens/s': f'{r["tokens/s"]:,.0f}'} for r in rows])
  print(f'Pipeline with the device copy / MD4-S train step: {ratio:,.0f}x'
        ' (target >= 10x)')


if __name__ == '__main__':
  flags.FLAGS.set_default('steps', 1)  # timed train steps (benchmark.py's flag)
  app.run(main)
