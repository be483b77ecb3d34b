"""Self-distillation through time (SDTT; Deschenaux & Gulcehre, 2024, arXiv:2410.21035):
a student that takes in one reverse step what its teacher takes in `substeps`.

On a time grid of T_s student steps (sampling.sampling_grid), student step k goes from
t = g((T_s − k)/T_s) to s = g((T_s − k − 1)/T_s); the teacher's grid has T_t = substeps·T_s
points, so its steps from t to s are `substeps` consecutive ones of size Δ. For a data
example x, an index k ~ U{0, ..., T_s − 1} and z_t ~ q(z_t | x), the teacher runs its
ancestral steps (the paper's reverse step, md4.sampling.steps.ancestral_step) from z_t to s,
and each position masked in z_t gets a target distribution over the V tokens (`TARGETS`):

  'sdtt'      SDTT's: the teacher's μ at the step that revealed the position, or at its last
              step if none did (a proper distribution; any divergence).
  'two_step'  the teacher's distribution of the position's token given that it is revealed
              between t and s, estimated without bias from the one trajectory:
                p̂ = Σ_j (u_j / u) · 1[masked before step j] · μ_j,
              u_j the chance of a reveal at teacher step j, u = 1 − Π_j (1 − u_j) the
              student's chance between t and s (each term's indicator has expectation
              Π_{i<j}(1 − u_i)). p̂ is unnormalised in a single draw, so only the
              divergence linear in the target ('kl_forward') may use it: its gradient is
              then the exact one for the teacher's distribution.

The student's μθ(z_t, t) is compared with the target at every masked position by a
divergence (`DIVERGENCES`; SDTT's comparison, where the reverse KL did best), averaged over
the example's masked positions. Dropout is off for the student and the teacher: the target
and the prediction see the same network. MD4 only (one schedule for every token); GenMD4's
per-token schedules would need u_j per token value, the AR model has no reverse steps.
"""

from typing import Callable

from absl import logging
import jax
import jax.numpy as jnp

from md4 import checkpoint
from md4 import configs
from md4 import state as state_lib
from md4.sampling import samplers
from md4.sampling import steps as steps_lib

TINY = 1e-30


def _kl_reverse(log_q, p, log_p):
  """KL(student ‖ target) = Σ q (log q − log p)."""
  del p
  return jnp.sum(jnp.exp(log_q) * (log_q - log_p), axis=-1)


def _kl_forward(log_q, p, log_p):
  """KL(target ‖ student) = Σ p (log p − log q); linear in p, so an unbiased unnormalised
  target gives an unbiased gradient."""
  return jnp.sum(p * (jax.lax.stop_gradient(log_p) - log_q), axis=-1)


def _tvd(log_q, p, log_p):
  """Total variation ½ Σ |q − p|."""
  del log_p
  return 0.5 * jnp.sum(jnp.abs(jnp.exp(log_q) - p), axis=-1)


def _mse(log_q, p, log_p):
  """Mean squared difference of the log-probabilities (SDTT's 'mse')."""
  del p
  return jnp.mean(jnp.square(log_q - log_p), axis=-1)


# Divergence name -> (student log μ [..., V], target p [..., V], log p) -> [...].
DIVERGENCES: dict[str, Callable] = {
    'kl_reverse': _kl_reverse,
    'kl_forward': _kl_forward,
    'tvd': _tvd,
    'mse': _mse,
}
# Targets, and the divergences each may be used with.
TARGETS = {'sdtt': tuple(DIVERGENCES), 'two_step': ('kl_forward',)}


def check(config):
  """Raises ValueError for a distillation config that cannot run, naming the key."""
  d = config.distill
  if config.model_type != 'md4':
    raise ValueError(f"distillation needs model_type 'md4' (one masking schedule for every"
                     f' token); got {config.model_type!r}')
  if d.target not in TARGETS:
    raise ValueError(f'unknown distill.target {d.target!r}; choose from {sorted(TARGETS)}')
  if d.divergence not in TARGETS[d.target]:
    raise ValueError(f'distill.divergence {d.divergence!r} cannot be used with target'
                     f' {d.target!r}; choose from {list(TARGETS[d.target])}')
  final = d.teacher_steps // d.substeps**d.rounds
  if d.rounds < 1 or d.substeps < 2 or final < 1 or final * d.substeps**d.rounds != (
      d.teacher_steps):
    raise ValueError(f'distill.teacher_steps {d.teacher_steps} must be a multiple of'
                     f' distill.substeps^rounds = {d.substeps}^{d.rounds}')
  if config.num_train_steps != d.rounds * d.steps_per_round:
    raise ValueError(f'num_train_steps {config.num_train_steps} should be distill.rounds'
                     f' x distill.steps_per_round = {d.rounds * d.steps_per_round}')
  if config.sampling.timesteps != final:
    raise ValueError(f'sampling.timesteps {config.sampling.timesteps} should be the last'
                     f" student's steps, distill.teacher_steps / substeps^rounds = {final}")


# The config sections (and data keys) a student shares with its teacher.
SHARED = ('model_type', 'model', 'network', 'data.dataset', 'data.data_shape',
          'data.vocab_size', 'data.class_conditional')


def _lookup(config, key):
  for part in key.split('.'):
    config = config.get(part) if config is not None else None
  return config.to_dict() if hasattr(config, 'to_dict') else config


def start_state(config, model, optimizer, shardings):
  """The DistillState a distillation run starts from: the teacher run's EMA parameters as
  the student's, its EMA's and the teacher's, and a fresh optimizer state, in `shardings`.

  The teacher's saved config must build the same model (SHARED keys); else ValueError.
  """
  workdir = config.distill.teacher_workdir
  teacher_config = configs.load(workdir)
  differ = [k for k in SHARED if _lookup(config, k) != _lookup(teacher_config, k)]
  if differ:
    raise ValueError(
        f'the teacher run {workdir} was trained with other {differ} than this distillation'
        ' config; set them to the teacher\'s (its config.json) so the student can start from'
        ' its parameters')
  teacher, step = checkpoint.restore_workdir(workdir, teacher_config, model)
  logging.info('Distilling the EMA parameters of %s at step %d.', workdir, step)

  def start(params):  # under jit: each field its own buffers, in its shardings
    return state_lib.DistillState(
        step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
        opt_state=optimizer.init(params), teacher_params=params)

  return jax.jit(start, out_shardings=shardings)(teacher.ema_params)


def student_steps(dconfig, round_index):
  """T_s of round `round_index` (0-based; may be traced): teacher_steps / substeps^(r+1)."""
  return dconfig.teacher_steps // dconfig.substeps**(round_index + 1)


def step_times(grid, student_steps_, substeps, k):
  """Times [substeps + 1, B] from t (row 0) to s (last row) of student step k [B] on a grid
  of student_steps_ steps, and whether each time is the data (s = 0 of the last step)."""
  total = student_steps_ * substeps
  j = jnp.arange(substeps + 1)[:, None] + substeps * k[None]  # teacher grid indices
  times = samplers.GRIDS[grid]((total - j) / total)
  return times, j == total


def log_mu(model, params, z, t, label):
  """log μθ(z, t) of `params` (no dropout): [B, *S] -> [B, *S, V]."""
  logits = model.apply({'params': params}, z, t, label=label, method=model.predict_logits)
  return jax.nn.log_softmax(logits, axis=-1)


def unmask_prob(model, s, t, s_is_data):
  """u from t to s [B, 1, ...], 1 where s is the data (the samplers' last step)."""
  u = model.apply({}, s, t, method=model.unmask_prob)
  return jnp.where(s_is_data.reshape(u.shape[:1] + (1,) * (u.ndim - 1)), 1.0, u)


def teacher_targets(model, teacher_params, z_t, label, times, is_data, rng, target):
  """The target p [B, *S, V] and its log at every position (meaningful where z_t is masked):
  the teacher's ancestral steps along `times` [n + 1, B] from z_t (`TARGETS`)."""
  n = times.shape[0] - 1
  mask_id = model.mask_id
  z = z_t
  still = z_t == mask_id  # sdtt: positions whose target is not chosen yet
  u_all = unmask_prob(model, times[-1], times[0], is_data[-1])  # the student's u
  p = log_p = None
  for j in range(n):
    log_mu_j = jax.lax.stop_gradient(log_mu(model, teacher_params, z, times[j], label))
    u_j = unmask_prob(model, times[j + 1], times[j], is_data[j + 1])
    ctx = steps_lib.StepContext(mask_id, unmask_prob=u_j, fine=False)
    z_next = steps_lib.ancestral_step(jax.random.fold_in(rng, j), z, log_mu_j, ctx)
    if target == 'sdtt':  # μ of the step that revealed it; the last step's for the rest
      revealed = still & (z_next != mask_id)
      take = revealed if j < n - 1 else still
      log_p = log_mu_j if log_p is None else jnp.where(take[..., None], log_mu_j, log_p)
      still = still & ~revealed
    else:  # 'two_step'
      term = (u_j / u_all) * (z == mask_id)[..., None] * jnp.exp(log_mu_j)
      p = term if p is None else p + term
    z = z_next
  if target == 'sdtt':
    return jnp.exp(log_p), log_p
  return p, jnp.log(jnp.maximum(p, TINY))


def loss_terms(model, params, teacher_params, batch, rng, dconfig, grid, round_index):
  """Per-example distillation terms {'loss': [B], 'masked': [B]}: the divergence between
  the student's μθ(z_t, t) and the teacher's target, averaged over the masked positions."""
  x, label = (batch['x'], batch['label']) if isinstance(batch, dict) else (batch, None)
  batch_size = x.shape[0]
  rng_k, rng_z, rng_teacher = jax.random.split(rng, 3)
  steps = student_steps(dconfig, round_index)
  k = jax.random.randint(rng_k, (batch_size,), 0, steps)
  times, is_data = step_times(grid, steps, dconfig.substeps, k)
  z_t = model.apply({}, x, times[0], method=model.forward_sample, rngs={'sample': rng_z})
  p, log_p = teacher_targets(model, teacher_params, z_t, label, times, is_data, rng_teacher,
                             dconfig.target)
  log_q = log_mu(model, params, z_t, times[0], label)
  divergence = DIVERGENCES[dconfig.divergence](log_q, p, log_p)  # [B, *S]
  masked = (z_t == model.mask_id).reshape(batch_size, -1)
  per_position = divergence.reshape(batch_size, -1)
  count = jnp.sum(masked, axis=1)
  loss = jnp.sum(jnp.where(masked, per_position, 0.0), axis=1) / jnp.maximum(count, 1)
  return {'loss': loss, 'masked': count / masked.shape[1]}


def loss_fn(model, dconfig, grid, teacher_params, round_index, params, batch, rng):
  """(mean loss, mean metrics) of a batch, as md4.train's loss_fn for the ELBO."""
  terms = loss_terms(model, params, teacher_params, batch, rng, dconfig, grid, round_index)
  metrics = {k: v.mean() for k, v in terms.items()}
  return metrics['loss'], metrics
