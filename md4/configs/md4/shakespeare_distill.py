"""The Shakespeare default distilled to 16 sampling steps (md4.distill: SDTT's
self-distillation through time), from the run `make train` writes.

Run:  make train                      # the teacher, in expt/shakespeare
      python md4/main.py --config=md4/configs/md4/shakespeare_distill.py \
          --workdir=expt/shakespeare_distill [--config.distill.teacher_workdir=DIR]
Hardware: 2 CPU cores. The student starts from the teacher's EMA parameters and learns,
in 4 rounds, to take in one reverse step what the teacher takes in two on the cosine time
grid of its sampler: 256 -> 128 -> 64 -> 32 -> 16 steps. The result is an ordinary run
directory: md4/sample.py samples it with 16 steps (its config's sampling.timesteps), and
md4/evaluate.py reports its ELBO. The README gives its time and its samples' quality
against the teacher's.
"""

from md4.configs.md4 import shakespeare


def get_config(variant='default'):
  return distillation(shakespeare.get_config(variant), 'expt/shakespeare',
                      steps_per_round=600)


def distillation(config, teacher_workdir, steps_per_round):
  """`config` (the teacher's) made a distillation run of `teacher_workdir`: 4 rounds of
  `steps_per_round` steps, 256 -> 16 steps, SDTT's target and reverse KL, fine-tuning
  rates."""
  config.distill.teacher_workdir = teacher_workdir
  config.distill.teacher_steps = 256
  config.distill.rounds = 4
  config.distill.substeps = 2
  config.distill.steps_per_round = steps_per_round
  config.distill.divergence = 'kl_reverse'  # SDTT's best
  config.distill.target = 'sdtt'

  # Fine-tuning from the teacher: constant, smaller rates after a short warm-up.
  config.opt.learning_rate = 1e-3
  config.opt.muon_learning_rate = 0.005
  config.opt.warmup_steps = 20
  config.opt.lr_schedule = 'constant'
  config.opt.ema_rate = 0.99

  config.sampling.timesteps = 16  # the last student's steps
  config.num_train_steps = config.distill.rounds * config.distill.steps_per_round
  config.log_every_steps = 100
  config.eval_every_steps = config.num_train_steps
  config.sample_every_steps = config.num_train_steps
  config.checkpoint_every_steps = config.distill.steps_per_round
  return config
