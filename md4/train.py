"""Training: the train step, the eval of its checkpoints, and the loop, for one device or a
mesh of many.

Data flows config -> (dataset, model, optimizer, mesh) -> `train_step` under `jax.jit` with
`NamedSharding`s (md4.sharding) -> metrics, checkpoints and samples in the workdir
(md4.reporting, md4.checkpoint). Randomness is a pure function of (seed, step), and so is
the data, so a run restarted from a checkpoint continues exactly: after SIGTERM or SIGINT
(md4.preemption: the loop saves a checkpoint after its current step and stops, also in the
middle of an eval or of sampling), after SIGKILL (saves are atomic), or past a checkpoint
that cannot be read (the newest readable one is used). A step's checkpoint is saved before
its eval and samples; a run stopped during them does them first when it resumes.
"""

import dataclasses
import functools
import os
import time
from typing import Any

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import optax

from md4 import checkpoint
from md4 import configs
from md4 import data
from md4 import distill
from md4 import evaluation
from md4 import models
from md4 import optim
from md4 import preemption
from md4 import reporting
from md4 import sampling
from md4 import sharding
from md4 import state as state_lib
from md4.data import images

# ---------------------------------------------------------------------------- steps


def loss_fn(model, params, batch, rng, train):
  """Mean over the batch of the model's per-example terms; 'loss' is the objective."""
  terms = models.loss_terms(model, params, batch, rng, train)
  metrics = {k: v.mean() for k, v in terms.items()}
  return metrics['loss'], metrics


def split_microbatches(batch, num_microbatches):
  """[B, ...] -> [M, B/M, ...]; microbatch i takes rows i, i + M, ... so each stays spread
  over the data-parallel devices."""
  def split(a):
    return a.reshape((a.shape[0] // num_microbatches, num_microbatches) + a.shape[1:]
                     ).swapaxes(0, 1)
  return jax.tree.map(split, batch)


def compute_grads(loss, params, batch, rng, num_microbatches):
  """Gradient of the mean of loss(params, batch, rng) -> (loss, metrics), accumulated over
  microbatches with keys fold_in(rng, i).

  Microbatches are equal in size, so the average of their gradients is the gradient of the
  full batch's mean loss.
  """
  grad_fn = jax.grad(loss, has_aux=True)
  if num_microbatches == 1:
    return grad_fn(params, batch, jax.random.fold_in(rng, 0))

  def body(carry, i_mb):
    i, mb = i_mb
    grads, metrics = grad_fn(params, mb, jax.random.fold_in(rng, i))
    return jax.tree.map(jax.numpy.add, carry, (grads, metrics)), None

  mbs = split_microbatches(batch, num_microbatches)
  zeros = jax.eval_shape(grad_fn, params, jax.tree.map(lambda a: a[0], mbs), rng)
  zeros = jax.tree.map(lambda s: jax.numpy.zeros(s.shape, s.dtype), zeros)
  total, _ = jax.lax.scan(body, zeros, (jax.numpy.arange(num_microbatches), mbs))
  return jax.tree.map(lambda x: x / num_microbatches, total)


def objective(model, config, state):
  """The run's loss(params, batch, rng) -> (loss, metrics): the model's ELBO terms, or for a
  distillation run (a DistillState) md4.distill's, against the teacher of the step's round.

  A distillation round begins with the teacher taking the student's parameters (from the
  second round on); the state returned carries that teacher.
  """
  if not isinstance(state, state_lib.DistillState):
    return functools.partial(loss_fn, model, train=True), state
  d = config.distill
  new_round = (state.step > 0) & (state.step % d.steps_per_round == 0)
  teacher = jax.tree.map(lambda t, p: jax.numpy.where(new_round, p, t),
                         state.teacher_params, state.params)
  loss = functools.partial(distill.loss_fn, model, d, config.sampling.sampling_grid,
                           teacher, state.step // d.steps_per_round)
  return loss, state.replace(teacher_params=teacher)


def train_step(model, optimizer, config, state, batch, rng):
  """One optimizer step: (state, batch [B, *S]) -> (state, metrics). rng is the run's train key."""
  rng = jax.random.fold_in(rng, state.step)
  loss, state = objective(model, config, state)
  grads, metrics = compute_grads(loss, state.params, batch, rng, config.num_microbatches)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema_params = optim.ema_update(state.ema_params, params,
                                optim.ema_decay(state.step, config.opt.ema_rate,
                                                config.opt.ema_warmup))
  metrics['grad_norm'] = optax.global_norm(grads)
  new_state = state.replace(step=state.step + 1, params=params,
                            ema_params=ema_params, opt_state=opt_state)
  return new_state, metrics


def jit_train_step(model, optimizer, config, shardings, data_sharding):
  """train_step under jit, state and batch in their shardings, the state's buffers donated."""
  return jax.jit(
      functools.partial(train_step, model, optimizer, config),
      in_shardings=(shardings, data_sharding, None),
      out_shardings=(shardings, None), donate_argnums=0)


def validate_config(config, num_devices):
  """Raises ValueError for values that cannot run, naming the key and the fix.

  num_devices: how many ways the batch splits (the mesh's data x fsdp size).
  """
  micro = config.batch_size // max(config.num_microbatches, 1)
  checks = [
      (config.num_train_steps > 0, 'num_train_steps must be positive'),
      (config.batch_size > 0, 'batch_size must be positive'),
      (config.num_microbatches >= 1, 'num_microbatches must be >= 1'),
      (config.batch_size % config.num_microbatches == 0,
       f'batch_size {config.batch_size} must be divisible by num_microbatches '
       f'{config.num_microbatches}'),
      (micro % num_devices == 0,
       f'each microbatch ({micro} = batch_size / num_microbatches) must split evenly '
       f'over the {num_devices} devices; change batch_size or num_microbatches'),
      (config.eval_batch_size % num_devices == 0,
       f'eval_batch_size {config.eval_batch_size} must be divisible by the '
       f'{num_devices} devices'),
      (config.sampling.num_samples % num_devices == 0,
       f'sampling.num_samples {config.sampling.num_samples} must be divisible by the '
       f'{num_devices} devices'),
  ] + [(config[key] >= 1, f'{key} must be >= 1, got {config[key]}') for key in (
      'log_every_steps', 'eval_every_steps', 'eval_repeats', 'sample_every_steps',
      'checkpoint_every_steps', 'keep_checkpoints')] + [
          (0.0 <= config.opt.ema_rate < 1.0, 'opt.ema_rate must be in [0, 1)')]
  for ok, message in checks:
    if not ok:
      raise ValueError(message)
  if state_lib.distills(config):
    distill.check(config)


# ----------------------------------------------------------------------- the run


@dataclasses.dataclass
class Setup:
  """What the loop works with, built once from the config."""
  config: ml_collections.ConfigDict
  mesh: Any
  info: data.DatasetInfo
  splits: dict
  model: Any
  evaluator: evaluation.Evaluator
  sampler: sampling.Sampler
  prior: Any  # jitted (params, rng) -> the samplers' start [num_samples, *S]
  sample_labels: Any  # [num_samples] classes of class-conditional samples, or None
  eval_key: jax.Array
  sample_key: jax.Array

  def every(self, n, step):
    """Whether `step` is a multiple of n or the last step."""
    return step % n == 0 or step == self.config.num_train_steps

  def evaluate(self, params, stop=lambda: False):
    eval_splits = {s: self.splits[s] for s in self.info.eval_splits}
    return self.evaluator(params, eval_splits, self.eval_key, stop)

  def draw_samples(self, params, step, stop=lambda: False):
    """The samples of `step` [num_samples, *S] on the host (every process), or None."""
    rng = jax.random.fold_in(self.sample_key, step)
    out = self.sampler.sample(params, rng, self.prior(params, rng), self.sample_labels,
                              stop=stop)
    if out is None:
      return None
    return np.asarray(multihost_utils.process_allgather(out[0], tiled=True))


def step_work(setup, reporter, state, step, stop):
  """The eval and samples of `step` that are due and not yet done, after its checkpoint.

  Returns the eval's metrics ({} without one), or None if `stop()` cut the work short.
  """
  due = due_work(setup, reporter, step)
  metrics = {}
  if 'eval' in due:
    metrics = setup.evaluate(state.ema_params, stop)
    if metrics is None:
      return None
    reporter.scalars(step, metrics)
  if 'samples' in due:
    tokens = setup.draw_samples(state.ema_params, step, stop)
    if tokens is None:
      return None
    reporter.samples(step, tokens, setup.info)
  return metrics


def due_work(setup, reporter, step) -> tuple[str, ...]:
  """Of 'eval' and 'samples', those due at `step` and not yet in the workdir (a run
  stopped during them left them undone). Process 0 decides for every process."""
  config, info = setup.config, setup.info
  due = {'eval': bool(info.eval_splits) and setup.every(config.eval_every_steps, step),
         'samples': setup.every(config.sample_every_steps, step)}
  if not any(due.values()):
    return ()
  if jax.process_index() == 0:
    due['eval'] &= info.eval_splits and f'{info.eval_splits[0]}_loss' not in (
        reporter.logged(step))
    due['samples'] &= not os.path.exists(reporter.sample_path(step, info))
  if jax.process_count() > 1:
    due = dict(zip(due, multihost_utils.broadcast_one_to_all(
        np.array(list(due.values()), np.int32)).tolist()))
  return tuple(name for name, yes in due.items() if yes)


def build(config, mesh) -> tuple[Setup, Any]:
  """The Setup of a run and its optimizer; checks the data and the sampling options."""
  info, splits = data.load_dataset(config.data)
  data.check_eval_splits(splits, config.eval_batch_size, jax.process_count())
  model = models.build(config, info)
  optimizer = optim.make_optimizer(config.opt, config.num_train_steps)
  sampler = sampling.make_sampler(model, config.sampling)
  num_samples = config.sampling.num_samples
  prior = jax.jit(lambda params, rng: model.apply(
      {'params': params}, rng, num_samples, method=model.sample_prior),
                  out_shardings=sharding.batch_sharding(mesh))
  labels = (images.sample_labels(num_samples, info.num_classes) if info.num_classes
            else None)
  setup = Setup(config, mesh, info, splits, model,
                evaluation.Evaluator(model, mesh, config.eval_batch_size,
                                     config.eval_repeats),
                sampler, prior, labels, state_lib.run_key(config.seed, 'eval'),
                state_lib.run_key(config.seed, 'sample'))
  return setup, optimizer


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       sharded: bool = False) -> dict[str, float]:
  """Trains config's model in workdir, resuming from its latest checkpoint.

  Returns the final eval metrics (bits per token). Raises preemption.Preempted when a
  signal stopped the run (after saving a checkpoint).
  """
  start_time = time.time()
  mesh, rules = sharding.setup(config, sharded)
  validate_config(config, sharding.batch_shards(mesh))
  checkpoint.check_workdir(workdir)
  # Tracing inside this context applies the networks' activation sharding constraints.
  with sharding.active(mesh, rules):
    setup, optimizer = build(config, mesh)
    if jax.process_index() == 0:
      configs.save(config, workdir)  # tools rebuild the model from it (md4.run)
    manager = checkpoint.make_manager(workdir, config.keep_checkpoints)
    example = jax.numpy.zeros((1,) + setup.info.data_shape, jax.numpy.int32)
    distilling = state_lib.distills(config)
    abstract, shardings, init_params = state_lib.abstract_state(
        setup.model, optimizer, mesh, rules, example, with_teacher=distilling)
    state = checkpoint.restore_or_init(
        manager, abstract, shardings,
        lambda: distill.start_state(config, setup.model, optimizer, shardings) if distilling
        else state_lib.init_state(optimizer, init_params, shardings,
                                  state_lib.run_key(config.seed, 'init')))
    logging.info('Model: %d parameters; vocab %d; data shape %s; mesh %s; start step %d',
                 sum(x.size for x in jax.tree.leaves(state.params)),
                 setup.info.vocab_size, setup.info.data_shape, dict(mesh.shape),
                 int(state.step))
    p_train_step = jit_train_step(setup.model, optimizer, config, shardings,
                                  sharding.batch_sharding(mesh))
    reporter = reporting.Reporter(workdir, config, int(state.step))
    try:
      with preemption.StopRequest(int(state.step)) as signals:
        state, step, eval_metrics, stopped = loop(setup, state, p_train_step, manager,
                                                  reporter, signals)
        if not stopped and not eval_metrics and setup.info.eval_splits:
          eval_metrics = setup.evaluate(state.ema_params, signals.requested)
          stopped = eval_metrics is None
    finally:
      reporter.close()
      manager.wait_until_finished()  # a save in flight completes, whatever stopped the loop
      manager.close()
  if stopped:
    raise preemption.Preempted(signals.name, step, config.num_train_steps,
                               f'{manager.directory}/{step}')
  summary = ', '.join(f'{k}={v:.4f}' for k, v in sorted(eval_metrics.items())
                      if k.endswith('_loss'))
  unit = 'bits per dimension' if setup.info.is_image else 'bits per token'
  if jax.process_index() == 0:
    print(f'Final eval at step {step} ({unit}, EMA parameters, '
          f'{time.time() - start_time:.0f} s): {summary}', flush=True)
  return eval_metrics


def loop(setup, state, p_train_step, manager, reporter, signals):
  """Train steps from the state's step to the last, each followed by what is due at it:
  a log record, a checkpoint, an eval, samples (in that order).

  Returns (state, the last step taken, the latest eval metrics, whether a stop request
  ended it early). A run resumed at a step whose eval or samples a stop cut short does
  them first.
  """
  config = setup.config
  start = int(state.step)
  lr_fn = optim.learning_rate_schedule(config.opt, config.num_train_steps)
  train_key = state_lib.run_key(config.seed, 'train')
  eval_metrics = step_work(setup, reporter, state, start, signals.requested) if start else {}
  if eval_metrics is None:
    return state, start, {}, True
  batches = data.prefetch(
      sharding.global_batch(sharding.batch_sharding(setup.mesh), data.train_batch(
          setup.splits['train'], step, config.batch_size, config.seed,
          jax.process_index(), jax.process_count()))
      for step in range(start, config.num_train_steps))
  history, step = [], start
  for step in range(start + 1, config.num_train_steps + 1):
    state, metrics = p_train_step(state, next(batches), train_key)
    history.append(metrics)
    stop = signals.stop(step)
    # On a stop, the metrics since the last log step are logged: each step's metrics are
    # in one record.
    log = setup.every(config.log_every_steps, step) or stop
    save = setup.every(config.checkpoint_every_steps, step) or stop
    if config.check_nans and (log or save):
      # No checkpoint holds a state reached through a non-finite loss or gradient.
      reporting.check_finite(step + 1 - len(history), history, manager)
    talk = log or any(setup.every(n, step) for n in (config.eval_every_steps,
                                                      config.sample_every_steps))
    if talk:
      reporter.before_output()
    record = {}
    if log:
      record = {**reporting.mean_metrics(history), 'learning_rate': float(lr_fn(step - 1))}
      reporter.scalars(step, record)
      history = []
    checkpoint.maybe_save(manager, state, step, config.checkpoint_every_steps,
                          step == config.num_train_steps, stop)
    work = None if stop else step_work(setup, reporter, state, step, signals.requested)
    if work is None:
      logging.warning('%s received: checkpoint saved at step %d; stopping (send it again to'
                      ' stop at once).', signals.name, step)
      return state, step, eval_metrics, True
    eval_metrics = work or eval_metrics
    reporter.update(step, record.get('loss'), flush=talk)
  return state, step, eval_metrics, False
