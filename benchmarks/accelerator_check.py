r"""One command that checks a GPU or TPU machine and measures it, in at most 10 minutes.

  python benchmarks/accelerator_check.py [--output=check.md] [--budget_s=540]

1. The machine: devices, their kind and memory, and the versions of Python, JAX, jaxlib,
   Flax, Optax and Orbax (the accelerator images ship newer JAX than our CPU pin).
2. The sharding and lowering tests (tests/test_sharding.py, tests/test_lowering.py): the same
   sharded programs, traced and lowered under this machine's JAX.
3. MD4-S's train step (md4/configs/md4/openwebtext.py) at the largest batch whose
   compiled step fits one device's memory, in bfloat16 and in float32: tokens/s per
   device, model FLOP utilisation against the measured peak of a large product in that
   dtype, and XLA's peak memory (benchmarks/benchmark.py's measurement).
4. 300 steps of the OpenWebText config through md4/main.py with --sharded, on synthetic
   GPT-2 tokens written in the prepared format: steps/s with evals and checkpoints, and a
   finite loss.
5. One sampler: ancestral reverse steps of MD4-S, 16 samples of 1024 tokens.

It writes one Markdown table (and --output). On a CPU every item runs at a size that fits
the budget (MD4-S with 2 layers at 256 tokens under a 4 GiB limit; the OpenWebText run
2 layers of width 64 at 128 tokens; the row says so): the check of the code paths stays
whole, the numbers are the CPU's. An item that fails or does not fit the remaining budget
is reported in its row, and the check goes on.
"""

import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
import traceback

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import jax
import numpy as np

from benchmarks import benchmark
from benchmarks.tables import markdown
from benchmarks.tables import print_table
from md4 import hardware
from md4 import sharding
from md4.data import tokenizer

_OUTPUT = flags.DEFINE_string('output', '', 'Also write the table to this Markdown file.')
_BUDGET = flags.DEFINE_integer('budget_s', 540, 'Seconds for the whole check; an item that'
                               ' starts after they are spent is skipped.')
_TRAIN_STEPS = flags.DEFINE_integer('train_steps', 300, 'Steps of the OpenWebText run.')

def on_cpu() -> bool:
  return jax.default_backend() == 'cpu'


def md4_s_config(dtype):
  """MD4-S (at the CPU size on a CPU) in compute dtype `dtype`."""
  config = benchmark.shapes()['md4-s'][0]
  config.network.dtype = dtype
  if on_cpu():
    config.network.n_layers, config.data.data_shape = 2, (256,)
  return config


def machine_row():
  import flax, optax, orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top,multiple-imports
  devices = jax.devices()
  memory = (devices[0].memory_stats() or {}).get('bytes_limit')
  return {'what': 'machine', 'result': f'{len(devices)} x {devices[0].device_kind}'
          + (f', {memory / 2**30:.1f} GiB each' if memory else '')
          + f'; {hardware.describe()}; Python {sys.version.split()[0]}, jaxlib'
          f' {jax.lib.__version__}, flax {flax.__version__}, optax {optax.__version__},'
          f' orbax {ocp.__version__}'}


def tests_row():
  proc = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider',
                         'tests/test_sharding.py', 'tests/test_lowering.py'],
                        cwd=ROOT, capture_output=True, text=True, timeout=400)
  last = (proc.stdout.strip().splitlines() or ['no output'])[-1]
  return {'what': 'sharding and lowering tests', 'result': last
          + ('' if proc.returncode == 0 else f'; {proc.stdout[-600:]}')}


def train_step_rows():
  rows = []
  for dtype in ('bfloat16', 'float32'):
    config = md4_s_config(dtype)
    mesh, rules = sharding.make_mesh(), sharding.DATA_PARALLEL_RULES
    step = benchmark.Step(config, 50257, mesh, rules)
    found = benchmark.largest_batch(step, benchmark.device_memory())
    if found is None:
      rows.append({'what': f'MD4-S train step, {dtype}', 'result': 'no batch fits'})
      continue
    batch, info = found
    row = benchmark.speed_row('md4-s', step, batch, info)
    rows.append({'what': f'MD4-S train step, {dtype}' + (' (CPU size)' if on_cpu() else ''),
                 'result': f'largest batch {row["batch x len"]}: {row["tokens/s/device"]}'
                           f' tokens/s/device, MFU {row["MFU"]} of {row["peak TFLOP/s"]}'
                           f' TFLOP/s, {row["step ms"]} ms/step, peak'
                           f' {row["peak GiB/device"]} GiB/device'})
  return rows


def synthetic_openwebtext(folder, seq_len, rows):
  """GPT-2 ids (uniform) in the prepared layout md4.data.openwebtext reads."""
  out = pathlib.Path(folder) / 'openwebtext'
  out.mkdir(parents=True)
  ids = np.random.default_rng(0).integers(0, tokenizer.GPT2_VOCAB_SIZE, (rows, seq_len))
  splits = {'train': ids[:rows * 3 // 4], 'valid': ids[rows * 3 // 4:]}
  for name, split in splits.items():
    np.save(out / f'{name}.npy', split.astype(np.uint16))
  (out / 'metadata.json').write_text(json.dumps({
      'held_out': 'synthetic', 'seq_len': seq_len, 'tokenizer': 'gpt2',
      'vocab_size': tokenizer.GPT2_VOCAB_SIZE, 'eot_id': tokenizer.EOT_ID,
      'splits': {n: {'rows': len(s)} for n, s in splits.items()}}))


def openwebtext_run_row():
  n = jax.device_count()
  seq_len, batch = (128, 4) if on_cpu() else (1024, 8 * n)
  steps = _TRAIN_STEPS.value
  with tempfile.TemporaryDirectory() as tmp:
    synthetic_openwebtext(tmp, seq_len, max(4 * batch, 64))
    overrides = {'data.data_dir': tmp, 'data.data_shape': (seq_len,),
                 'num_train_steps': steps, 'batch_size': batch, 'eval_batch_size': batch,
                 'log_every_steps': 50, 'eval_every_steps': steps,
                 'checkpoint_every_steps': steps // 2, 'sample_every_steps': steps,
                 'sampling.timesteps': 8, 'sampling.num_samples': n}
    if on_cpu():  # a width of 64 keeps 300 steps within the budget
      overrides.update({'network.n_layers': 2, 'network.num_heads': 2,
                        'network.feature_dim': 32})
    args = [sys.executable, 'md4/main.py', '--config=md4/configs/md4/openwebtext.py',
            f'--workdir={tmp}/run', '--sharded'] + [
                f'--config.{k}={v!r}' if not isinstance(v, str) else f'--config.{k}={v}'
                for k, v in overrides.items()]
    start = time.time()
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=400)
    seconds = time.time() - start
    final = [l for l in proc.stdout.splitlines() if l.startswith('Final eval')]
    records = [json.loads(l) for l in open(f'{tmp}/run/metrics.jsonl')] if final else []
  if proc.returncode or not final:
    return {'what': 'OpenWebText config, --sharded', 'result': f'failed:'
            f' {proc.stderr[-600:]}'}
  losses = [r['loss'] for r in records if 'loss' in r]
  return {'what': f'OpenWebText config, --sharded, {steps} steps'
                  + (' (CPU size)' if on_cpu() else ''),
          'result': f'batch {batch} x {seq_len} on {n} devices: {steps / seconds:.2f} steps/s'
                    f' with start-up, eval and checkpoints ({seconds:.0f} s); loss'
                    f' {losses[0]:.3f} -> {losses[-1]:.3f} bits; {final[0]}'}


def sampler_row():
  config = md4_s_config('float32')
  num, length = (4, 256) if on_cpu() else (16, 1024)
  row = benchmark.bench_sampling('md4-s', config, 50257, num, length)
  return {'what': 'ancestral sampler, MD4-S' + (' (CPU size)' if on_cpu() else ''),
          'result': f'{row["samples x len"]}: {row["ms per reverse step"]} ms per reverse'
                    ' step'}


ITEMS = [('machine', machine_row), ('tests', tests_row), ('train step', train_step_rows),
         ('OpenWebText run', openwebtext_run_row), ('sampler', sampler_row)]


def main(argv):
  del argv
  if on_cpu():  # the CPU size: a 4 GiB 'device' and 3 timed steps keep the batch small
    flags.FLAGS.memory_gb, flags.FLAGS.steps = flags.FLAGS.memory_gb or 4.0, 3
    flags.FLAGS.sample_steps = 4
  start, rows = time.time(), []
  for name, item in ITEMS:
    begin = time.time()
    if begin - start > _BUDGET.value:
      rows.append({'what': name, 'result': 'skipped: the budget was spent'})
      continue
    try:
      out = item()
    except Exception as e:  # pylint: disable=broad-except  (reported in the table)
      traceback.print_exc()
      out = {'what': name, 'result': f'failed: {type(e).__name__}: {str(e)[:300]}'}
    for row in out if isinstance(out, list) else [out]:
      rows.append({**row, 'seconds': f'{time.time() - begin:.0f}'})
    for row in rows[-len(out) if isinstance(out, list) else -1:]:
      print(f'  {row}', flush=True)
  print(f'\nAccelerator check, JAX {jax.__version__}, {time.time() - start:.0f} s:\n')
  print_table(rows)
  if _OUTPUT.value:
    with open(_OUTPUT.value, 'w') as f:
      f.write(f'JAX {jax.__version__}\n\n' + markdown(rows))


if __name__ == '__main__':
  app.run(main)
