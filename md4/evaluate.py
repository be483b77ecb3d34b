r"""Evaluates a trained run, or scores samples.

  python md4/evaluate.py --workdir=W [--step=N] [--params=ema|raw] [--split=valid,test] \
      [--max_examples=N] [--seed=S] [--config.KEY=VALUE ...]
  python md4/evaluate.py --workdir=W --zero_shot=all|lambada,wikitext2,ptb,... \
      [--zero_shot_dir=DIR]
  python md4/evaluate.py --samples=FILE[,FILE...] --judge=W_AR|gpt2:NAME_OR_FOLDER|markov:DIR

The first form prints the negative ELBO of each split (the run's eval splits by default,
'train' too) in bits per token with its Monte-Carlo standard error, from the run's saved
config (overridden by --config.*): with the run's eval key it repeats what training
logged for that checkpoint. Other text prepared by prepare_openwebtext_data.py is read
with --config.data.data_dir=DIR. W may also be a folder written by md4/export.py or
md4/import_mdlm.py. The second form evaluates a GPT-2-token run on the zero-shot sets
prepared by prepare_zero_shot_data.py in DIR (default: the run's data_dir) and prints one
table with the MD4 paper's numbers beside (md4.data.zero_shot). The third prints
generative perplexity and unigram entropy of samples written by md4/sample.py (md4.judges);
with markov:DIR (samples of a run trained on md4.markov's data in DIR) also their exact NLL
under the chain against its entropy rate, and the KL of their transitions from the chain's.
"""

import os
import sys

# Lets `python md4/evaluate.py` import the package from a plain checkout.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

from md4 import cli
from md4 import configs
from md4 import inference
from md4 import judges
from md4 import run as run_lib
from md4 import samples

_WORKDIR = flags.DEFINE_string('workdir', None, 'A training run\'s directory, or an'
                               ' exported model\'s folder.')
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).')
_PARAMS = flags.DEFINE_enum('params', None, run_lib.PARAMS, 'Which parameters (default:'
                            ' ema; an exported folder\'s own).')
_SPLIT = flags.DEFINE_list('split', [], 'Splits to evaluate (default: the eval splits).')
_MAX_EXAMPLES = flags.DEFINE_integer('max_examples', 0, 'Evaluate only the first N rows.')
_SEED = flags.DEFINE_integer('seed', None, 'Seed of the draws (default: the run\'s eval key).')
_ZERO_SHOT = flags.DEFINE_list('zero_shot', [], 'Zero-shot sets to evaluate (all, or some'
                               ' of lambada,wikitext2,ptb,wikitext103,lm1b).')
_ZERO_SHOT_DIR = flags.DEFINE_string('zero_shot_dir', None, 'Where the zero-shot sets are'
                                     " prepared (default: the run's config.data.data_dir).")
_SAMPLES = flags.DEFINE_list('samples', [], 'Sample files (md4/sample.py) to score.')
_JUDGE = flags.DEFINE_string('judge', None, 'Workdir of an autoregressive run, '
                             'gpt2:NAME_OR_FOLDER (Hugging Face GPT-2 weights), or '
                             'markov:DATA_DIR (the chain `python -m md4.markov` wrote there).')
_BATCH = flags.DEFINE_integer('batch_size', 16, 'Chunks the judge scores at once.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if _SAMPLES.value:
    if not _JUDGE.value:
      raise app.UsageError('--samples needs --judge')
    judge = judges.load(_JUDGE.value)
    for path in _SAMPLES.value:
      q = judges.quality(judge, samples.read(path), _BATCH.value)
      print(judges.format_quality(judge, path, q), flush=True)
    return
  if not _WORKDIR.value:
    raise app.UsageError('give --workdir (a run to evaluate) or --samples and --judge')
  run = run_lib.load_run(_WORKDIR.value, _CONFIG.value, _STEP.value, _PARAMS.value)
  if _ZERO_SHOT.value:
    results = inference.evaluate_zero_shot(run, _ZERO_SHOT.value, _ZERO_SHOT_DIR.value,
                                           _SEED.value, _MAX_EXAMPLES.value)
    print(inference.format_zero_shot(run, results), flush=True)
    return
  results = inference.evaluate_elbo(run, _SPLIT.value, _SEED.value, _MAX_EXAMPLES.value)
  print(inference.format_elbo(run, results), flush=True)


if __name__ == '__main__':
  with cli.user_errors():
    _CONFIG = configs.define_saved_config_flag(sys.argv)
  cli.run(main)
