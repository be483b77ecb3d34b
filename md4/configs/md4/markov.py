"""MD4 on samples of a known order-1 Markov chain, whose samples' likelihood is exact.

Prepare:  python -m md4.markov --data_dir=expt/markov_data
          (V = 16 symbols, seed 0: entropy rate 1.3283 nats = 1.9163 bits per token against
          log 16 = 2.7726 nats; 2^20 training tokens, 2^16 each held out)
Run:      python md4/main.py --config=md4/configs/md4/markov.py --workdir=expt/markov
          (other data: --config.data.data_dir=DIR --config.data.vocab_size=V)
Distil:   python md4/main.py --config=md4/configs/md4/markov.py:distill \
              --workdir=expt/markov_distill   (4 rounds x 300 steps, 256 -> 16 steps)
Judge:    python md4/evaluate.py --samples=FILE --judge=markov:expt/markov_data
          python benchmarks/sampling_benchmark.py --workdir=expt/markov \
              --judge=markov:expt/markov_data --results=expt/markov_sampling.jsonl
Hardware: 2 CPU cores, a few minutes. The Shakespeare default's network and optimizer
(md4/configs/md4/shakespeare.py, read from there) on windows of 128 tokens, the chain's
`array` dataset; a training window starts at every token of the stream. What a sampler
does to the samples is then measured against the truth (md4.markov): the NLL against the
chain's entropy rate, and the KL of the samples' transitions from the chain's.
"""

from md4 import markov
from md4.configs.md4 import shakespeare
from md4.configs.md4 import shakespeare_distill


def get_config(variant='default'):
  """'default': the teacher; 'distill': it distilled to 16 steps as the Shakespeare
  default is (md4/configs/md4/shakespeare_distill.py), from expt/markov."""
  if variant not in ('default', 'distill'):
    raise ValueError(f"unknown variant {variant!r}; choose 'default' or 'distill'")
  config = shakespeare.get_config()
  config.data.dataset = 'array'
  config.data.data_dir = markov.DATA_DIR  # what `python -m md4.markov` writes by default
  config.data.vocab_size = markov.VOCAB_SIZE
  config.data.data_shape = (128,)
  config.data.train_window_stride = 1

  config.num_train_steps = 1500  # about 5 minutes on 2 cores (0.2 s a step)
  config.eval_every_steps = 750
  config.sample_every_steps = 750
  config.checkpoint_every_steps = 750
  if variant == 'distill':
    config = shakespeare_distill.distillation(config, 'expt/markov', steps_per_round=300)
  return config
