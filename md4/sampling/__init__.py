"""Generation: samplers that count their network evaluations (NFE), run whole or in chunks.

Every sampler maps a starting sequence z [B, *S] (the prior, or a partly masked input) to
samples with no mask, and returns with them the number of network evaluations each
example's chain needed, nfe [B]. Examples may have any shape [*S] (sequences, or images
[H, W, C]); class-conditional models take labels and classifier-free guidance (two
evaluations per call). The samplers (`SAMPLERS`, md4.sampling.samplers):

  ancestral      T steps of the paper's reverse step q(z_s | z_t, x = μθ): exact for the
                 model discretised to T steps. The last step (s = 0) takes α_0 as 1 and
                 draws every mask left from μθ.
  topp           ancestral with μθ cut to its top-p nucleus (Holtzman et al., 2020).
  mean           the two-stage step of the paper's App. G: x̂ ~ μθ, revealed w.p. u(x̂).
  remdm          ReMDM-cap remasking (Wang et al., 2025, arXiv:2503.00307): T steps that
                 also remask revealed tokens while keeping the forward marginals.
  first_hitting  one token per network call at the time it is revealed (Zheng et al., 2024,
                 arXiv:2409.02908): the exact continuous-time reverse process.
  confidence     MaskGIT / LLaDA parallel decoding: a heuristic, not the model's law.

Options (`Options`, config.sampling) apply to several samplers: temperature and top-k on
μθ, float64-fine categorical draws, caching, semi-autoregressive block decoding (which also
makes sequences longer than the training length). For an autoregressive model
(md4.models.ar) 'ancestral' and 'topp' draw left to right, one call per position to fill.

`Sampler` is the one entry point: called, it runs a whole chain in one compiled loop;
`Sampler.sample` runs it a few steps per compiled call and checks between calls whether to
stop, so that a long sampling run can be interrupted within seconds.
"""

import time
from typing import Callable

import jax
import jax.numpy as jnp

from md4.sampling import samplers
from md4.sampling.net import Net
from md4.sampling.options import Options

SAMPLERS = samplers.SAMPLERS


class Sampler:
  """(params, rng, z [B, *S], label=None) -> (samples [B, *S], nfe [B]) for one model and
  one set of options.

  z holds the tokens to keep and the mask id where to generate (with block decoding
  sequences may be longer than the training length); label [B] are the classes of a
  class-conditional model. nfe counts two evaluations per call with guidance.
  """

  def __init__(self, model, options: Options):
    options.check_model(model)
    self.model, self.options = model, options
    self._start = jax.jit(self.start)
    self._advance = jax.jit(self.advance)

  def chain(self, params, rng, z, label=None) -> samplers.Chain:
    model, options = self.model, self.options
    todo = z == model.mask_id
    if model.autoregressive:
      topp = options.topp if options.sampler == 'topp' else 1.0
      return samplers.autoregressive(Net(model, params, label, options, topp), rng, z,
                                     todo, options)
    net = Net(model, params, label, options)
    sampler = SAMPLERS[options.sampler]
    if options.block_size:
      return samplers.blockwise(sampler, net, rng, z, todo, options, model.data_shape[0])
    return sampler(net, rng, z, todo, options)

  def output(self, state):
    """(samples, nfe) of a finished chain's state."""
    return state['z'], state['nfe'] * (2 if self.options.guidance_scale else 1)

  def __call__(self, params, rng, z, label=None):
    chain = self.chain(params, rng, z, label)
    state = jax.lax.while_loop(lambda s: ~chain.done(s), chain.step, chain.init())
    return self.output(state)

  def start(self, params, rng, z, label=None):
    """The chain's state before its first step."""
    return self.chain(params, rng, z, label).init()

  def advance(self, params, rng, z, label, state, max_steps):
    """(state after at most max_steps more steps, whether the chain is done)."""
    chain = self.chain(params, rng, z, label)
    _, state = jax.lax.while_loop(
        lambda c: (c[0] < max_steps) & ~chain.done(c[1]),
        lambda c: (c[0] + 1, chain.step(c[1])), (jnp.int32(0), state))
    return state, chain.done(state)

  def sample(self, params, rng, z, label=None, stop: Callable[[], bool] = lambda: False,
             seconds: float = 2.0):
    """What calling the sampler gives, computed a few steps per compiled call; None if
    `stop()`, asked before each call, says to stop.

    The number of steps per call grows from 1 until a call takes about `seconds`. The
    samples equal the uncut chain's: each call continues the same state.
    """
    state = self._start(params, rng, z, label)
    steps, done = 1, False
    while not done:
      if stop():
        return None
      begin = time.monotonic()
      state, done = self._advance(params, rng, z, label, state, steps)
      done = bool(done)  # waits for the call
      took = max(time.monotonic() - begin, 1e-6)
      steps = int(max(1, min(4 * steps, steps * seconds / took)))
    return self.output(state)


def make_sampler(model, sampling_config) -> Sampler:
  """The Sampler of config.sampling (checked) for `model`."""
  return Sampler(model, Options.from_config(sampling_config))
