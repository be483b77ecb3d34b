"""Samplers against exact distributions, hand-made predictors and each other."""

import dataclasses
import itertools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from md4 import sampling
from md4.configs import base
from md4.sampling import draws
from md4.sampling import net
from md4.sampling import options
from md4.sampling import steps
from md4.models import MD4
import toys

V, L = 4, 6
GPT2_VOCAB = 50_257


class TimelessNet(nn.Module):
  """ToyNet without t: a network that ignores the time, as with time_features='none'."""
  vocab_size: int

  @nn.compact
  def __call__(self, z, t, train=False):
    del t
    emb = nn.Embed(self.vocab_size + 1, 8, embedding_init=nn.initializers.normal(1.0))(z)
    h = emb + emb.mean(axis=1, keepdims=True)
    return nn.Dense(self.vocab_size, kernel_init=nn.initializers.normal(1.0))(jnp.tanh(h))


class FixedLength(nn.Module):
  """Uniform predictions that refuse any input length but `length` (the window check)."""
  vocab_size: int
  length: int

  @nn.compact
  def __call__(self, z, t, train=False):
    assert z.shape[1] == self.length, z.shape
    return jnp.zeros(z.shape + (self.vocab_size,))


def _model(network=None, schedule='linear', shape=(L,)):
  network = network or toys.ToyNet(V)
  return MD4(network=network, vocab_size=V, data_shape=shape, noise_schedule=schedule)


def _config(**kw):
  return ml_collections.ConfigDict(
      {'sampler': 'ancestral', 'sampling_grid': 'uniform', 'timesteps': 8, **kw})


def _sample(model, params, z, seed=0, **kw):
  fn = jax.jit(sampling.make_sampler(model, _config(**kw)))
  out, nfe = fn(params, jax.random.key(seed), z)
  return np.asarray(out), np.asarray(nfe)


def _partly_given(batch=6, length=L, seed=3):
  """[B, L]: about half the positions given (tokens < V), the rest masked."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, V, (batch, length))
  return jnp.asarray(np.where(rng.random((batch, length)) < 0.5, tokens, V))


VARIANTS = [(name, {}) for name in sorted(sampling.SAMPLERS)] + [
    ('ancestral', {'cache': True}), ('mean', {'block_size': 4}),
    ('confidence', {'block_size': 2, 'confidence_noise': 1.0}),
    ('first_hitting', {'block_size': 3}), ('remdm', {'remdm_eta': 0.5}),
    ('ancestral', {'temperature': 0.7, 'topk': 2, 'float64_draws': False}),
    ('confidence', {'confidence_score': 'drawn'}),
    ('threshold', {'block_size': 3, 'threshold': 0.5})]


@pytest.mark.parametrize('sampler,extra', VARIANTS)
def test_every_sampler_leaves_no_mask_and_keeps_given_tokens(sampler, extra):
  model = _model()
  params = toys.init(model, jnp.zeros((1, L), jnp.int32))
  z = _partly_given()
  out, nfe = _sample(model, params, z, sampler=sampler, timesteps=5, **extra)
  given = np.asarray(z) != V
  assert out.shape == z.shape and out.min() >= 0 and out.max() < V
  np.testing.assert_array_equal(out[given], np.asarray(z)[given])
  assert nfe.shape == (z.shape[0],) and nfe.min() >= 1
  if sampler == 'first_hitting':  # one call per token to fill
    np.testing.assert_array_equal(nfe, (~given).sum(1))


def test_nfe_of_the_fixed_step_samplers():
  model = _model()
  params = toys.init(model, jnp.zeros((1, L), jnp.int32))
  z = jnp.full((3, 12), V)
  model = _model(shape=(12,))
  assert list(_sample(model, params, z, timesteps=7)[1]) == [7] * 3
  assert list(_sample(model, params, z, sampler='confidence', timesteps=7)[1]) == [7] * 3
  assert list(_sample(model, params, z, timesteps=5, block_size=4)[1]) == [15] * 3


def test_caching_gives_the_uncached_samples_for_a_time_agnostic_network():
  """Same key, same samples; fewer network calls when steps outnumber the masks."""
  model = _model(TimelessNet(V))
  params = toys.init(model, jnp.zeros((1, L), jnp.int32))
  z = jnp.full((8, L), V)
  for sampler in ('ancestral', 'mean'):
    plain, nfe = _sample(model, params, z, sampler=sampler, timesteps=24)
    cached, nfe_cached = _sample(model, params, z, sampler=sampler, timesteps=24,
                                 cache=True)
    np.testing.assert_array_equal(cached, plain)
    assert list(nfe) == [24] * 8
    # The first call, then one after each step that revealed something.
    assert nfe_cached.max() <= L + 1
    assert nfe_cached.min() >= 1


def _exact_any_order_distribution(model, params, length, vocab):
  """p(x) = (1/L!) Σ_σ Π_k μθ(x_σk | x_σ<k revealed): the model's law for a network that
  ignores t, by enumerating every sequence and every reveal order."""
  apply = jax.jit(lambda z: jax.nn.softmax(model.apply(
      {'params': params}, z, jnp.zeros((z.shape[0],)), method=model.predict_logits)))
  states = list(itertools.product(range(vocab + 1), repeat=length))
  mu = dict(zip(states, np.asarray(apply(jnp.asarray(states)), np.float64)))
  probs = {}
  for x in itertools.product(range(vocab), repeat=length):
    total = 0.0
    for order in itertools.permutations(range(length)):
      z, p = [vocab] * length, 1.0
      for pos in order:
        p *= mu[tuple(z)][pos, x[pos]]
        z[pos] = x[pos]
      total += p
    probs[x] = total / math.factorial(length)
  return probs


def test_first_hitting_matches_the_exact_distribution_of_a_tiny_model():
  length, vocab, n = 3, 2, 40_000
  model = MD4(network=TimelessNet(vocab), vocab_size=vocab, data_shape=(length,))
  params = toys.init(model, jnp.zeros((1, length), jnp.int32), seed=2)
  exact = _exact_any_order_distribution(model, params, length, vocab)
  assert abs(sum(exact.values()) - 1) < 1e-6
  out, nfe = _sample(model, params, jnp.full((n, length), vocab), sampler='first_hitting')
  assert (nfe == length).all()
  codes = out @ (vocab ** np.arange(length)[::-1])
  freq = np.bincount(codes, minlength=vocab**length) / n
  want = np.array([exact[x] for x in itertools.product(range(vocab), repeat=length)])
  stderr = np.sqrt(want * (1 - want) / n)
  assert np.all(np.abs(freq - want) < 5 * stderr), (freq, want)
  # The distribution is far from uniform, so the check has power.
  assert np.abs(want - 1 / len(want)).max() > 20 * stderr.max()


def test_first_hitting_times_follow_the_schedule():
  """From m masks at t = 1, the first reveal time r has P(r ≤ x) = ((1 − α(x))/(1 − α(1)))^m;
  a network that outputs t as its logit records the time each token was revealed at."""

  class TimeAsToken(nn.Module):
    @nn.compact
    def __call__(self, z, t, train=False):
      bins = jnp.floor(t * 10).astype(jnp.int32)  # [B] in 0..9
      return jnp.broadcast_to(jnp.where(jnp.arange(10) == bins[:, None, None], 0.0, -1e9),
                              z.shape + (10,))

  m, n = 4, 20_000
  model = MD4(network=TimeAsToken(), vocab_size=10, data_shape=(m,))
  out, _ = _sample(model, {}, jnp.full((n, m), 10), sampler='first_hitting',
                   float64_draws=False)
  first = out.max(axis=1)  # the first reveal has the largest time
  alpha = model.schedule.alpha
  edges = np.arange(11) / 10
  cdf = ((1 - np.asarray(alpha(edges))) / (1 - float(alpha(1.0))))**m
  want = np.diff(cdf)
  freq = np.bincount(first, minlength=10) / n
  assert np.all(np.abs(freq - want) < 5 * np.sqrt(want * (1 - want) / n) + 1e-3), (freq, want)


class CountingOracle(nn.Module):
  """Predicts the token (number of masks in z) mod V everywhere, all but surely (logit gap
  10 + j at position j), and more surely the larger j, so confidence ranks positions by j."""
  vocab_size: int

  @nn.compact
  def __call__(self, z, t, train=False):
    masks = jnp.sum(z == self.vocab_size, axis=1)  # [B]
    target = (masks % self.vocab_size)[:, None, None]
    gap = 10.0 + jnp.arange(z.shape[1], dtype=jnp.float32)[None, :, None]
    return jnp.where(jnp.arange(self.vocab_size) == target, gap, 0.0)


def test_confidence_reveals_the_most_confident_positions_on_the_grid_schedule():
  """6 masks, 2 uniform steps: step 1 (6 masks, token 6 mod 4 = 2) reveals the 3 most
  confident positions 3, 4, 5; step 2 (3 masks, token 3) the rest."""
  model = _model(CountingOracle(V))
  out, nfe = _sample(model, {}, jnp.full((2, L), V), sampler='confidence', timesteps=2)
  np.testing.assert_array_equal(out, [[3, 3, 3, 2, 2, 2]] * 2)
  assert list(nfe) == [2, 2]


class PositionOracle(nn.Module):
  """Whatever z and t: token 0 w.p. tops[j] at position j, the rest evenly (a fixed
  confidence per position)."""
  tops: tuple[float, ...]

  @nn.compact
  def __call__(self, z, t, train=False):
    top = jnp.asarray(self.tops)[:, None]  # [L, 1]
    probs = jnp.where(jnp.arange(V) == 0, top, (1.0 - top) / (V - 1))
    return jnp.broadcast_to(jnp.log(probs), z.shape + (V,))


def test_threshold_reveals_what_passes_and_one_more_per_call_until_no_mask_is_left():
  """Confidences fixed per position, τ = 0.9: the first call reveals every masked position
  of confidence ≥ τ (at least the best one), each later call one more; with τ = 1 one per
  call, so the calls never exceed the masks. NFE exact, given tokens kept, no mask left."""
  tops = (0.95, 0.5, 0.92, 0.3, 0.99, 0.6)
  model = _model(PositionOracle(tops))
  z = _partly_given()
  masked = np.asarray(z) == V
  passing = (masked & (np.asarray(tops) >= 0.9)).sum(1)
  for tau, first in ((0.9, np.maximum(passing, 1)), (1.0, 1)):
    out, nfe = _sample(model, {}, z, sampler='threshold', threshold=tau)
    np.testing.assert_array_equal(nfe, 1 + masked.sum(1) - first)
    assert out.max() < V
    np.testing.assert_array_equal(out[~masked], np.asarray(z)[~masked])


def test_confidence_ranked_by_the_drawn_token_favours_likely_tokens():
  """μθ the same everywhere (Oracle), 6 masks, 2 steps of 3. Ranked by certainty ('max':
  all tie, so at random) the revealed tokens are draws from μθ; ranked by the drawn
  token's probability ('drawn') step 1 reveals the draws that came out likeliest, so
  token 0 (0.55) takes 0.70 of the positions: the bias that collapsed text samples."""
  probs = np.array([0.55, 0.3, 0.1, 0.05])
  model = _model(toys.Oracle(tuple(probs)))
  n = 4000
  z = jnp.full((n, L), V)
  for score in ('max', 'drawn'):
    out, _ = _sample(model, {}, z, sampler='confidence', timesteps=2, confidence_score=score)
    freq = np.bincount(out.ravel(), minlength=V) / out.size
    unbiased = np.all(np.abs(freq - probs) < 5 * np.sqrt(probs * (1 - probs) / out.size))
    assert unbiased == (score == 'max'), (score, freq)
  assert freq[0] > 0.65


def test_parallel_decoders_give_the_network_the_time_of_its_masks():
  """t with 1 − α(t) = the masked fraction: 3 of 6 masked is t = 0.5 under the linear
  schedule, 1/3 under the cosine one (1 − cos(π/2·(1 − t)) = 1/2)."""
  z = jnp.asarray([[V, V, V, V, V, V], [0, V, 1, V, 2, V]])
  for schedule, want in (('linear', [1.0, 0.5]), ('cosine', [1.0, 1 / 3])):
    got = net.Net(_model(schedule=schedule), {}, None, options.Options()).time_of_masks(z)
    np.testing.assert_allclose(got, want, atol=1e-3)


def test_remdm_without_remasking_is_the_ancestral_sampler():
  model = _model()
  params = toys.init(model, jnp.zeros((1, L), jnp.int32))
  z = _partly_given()
  ancestral, _ = _sample(model, params, z, timesteps=6)
  remdm, _ = _sample(model, params, z, sampler='remdm', timesteps=6, remdm_eta=0.0)
  np.testing.assert_array_equal(remdm, ancestral)


def test_remdm_step_keeps_the_forward_marginal():
  """From z_t ~ q(z_t | x) one ReMDM step gives P(z_s = x) = α_s per token, remasking a
  revealed token w.p. σ = min(η, (1 − α_s)/α_t)."""
  model = _model(toys.Oracle((1.0, 1e-9, 1e-9, 1e-9)), shape=(1,))  # μθ = δ_x, x = 0
  n, eta, s, t = 40_000, 0.3, 0.5, 0.75
  alpha_s, alpha_t = (float(model.schedule.alpha(v)) for v in (s, t))
  z = jnp.asarray(np.where(np.random.default_rng(0).random((n, 1)) < alpha_t, 0, V))
  log_mu = jnp.log(jnp.asarray([1.0, 1e-9, 1e-9, 1e-9]))[None, None]
  ctx = steps.StepContext(V, alpha_s=alpha_s, alpha_t=alpha_t, remdm_eta=eta, fine=True)
  step = jax.jit(lambda z: steps.remdm_step(jax.random.key(1), z, log_mu, ctx))
  out = np.asarray(step(z))
  sigma = min(eta, (1 - alpha_s) / alpha_t)
  assert 0 < sigma < 1
  assert abs((out == 0).mean() - alpha_s) < 5 * math.sqrt(0.25 / n)
  was_revealed = np.asarray(z) == 0
  assert abs((out[was_revealed] == V).mean() - sigma) < 5 * math.sqrt(0.25 / was_revealed.sum())


# ---------------------------------------------------------------------------- blocks


def test_blocks_make_sequences_longer_than_the_training_length():
  """A network that accepts only its training length still samples 3x that length."""
  model = _model(FixedLength(V, L))
  z = jnp.full((2, 3 * L), V).at[:, :2].set(1)  # a prompt of two tokens
  for sampler in ('ancestral', 'confidence', 'first_hitting'):
    out, nfe = _sample(model, {}, z, sampler=sampler, timesteps=3, block_size=4)
    assert out.shape == (2, 3 * L) and out.max() < V
    np.testing.assert_array_equal(out[:, :2], 1)
  assert list(nfe) == [3 * L - 2] * 2  # first hitting: one call per token


def test_block_decoding_refuses_images_and_blocks_wider_than_the_window():
  with pytest.raises(ValueError, match='images'):
    sampling.make_sampler(_model(shape=(2, 2, 1)), _config(block_size=2))
  with pytest.raises(ValueError, match='exceeds the training length'):
    sampling.make_sampler(_model(), _config(block_size=L + 1))


# ---------------------------------------------------------------------------- draws


def _sorted_law(values, weights):
  """(values ascending, their probabilities, the CDF at each value)."""
  order = np.argsort(values, kind='stable')
  return values[order], weights[order], np.cumsum(weights[order])


def _fine_gumbel_law(mantissa_stride=2**10):
  """The law of gumbel_from_bits(fine=True) over all its cells: both halves, every count k
  of leading zeros (P = 2^-(k+1), and 2^-64 for k = 64), and the middle mantissa of every
  `mantissa_stride` standing for them (the noise is smooth across a stride)."""
  mantissas = np.arange(mantissa_stride // 2, 2**23, mantissa_stride, dtype=np.uint32)
  half, k, m = (a.ravel() for a in np.meshgrid(np.arange(2, dtype=np.uint32),
                                               np.arange(65), mantissas, indexing='ij'))
  zeros = np.where(k < 64, np.uint64(1) << (63 - np.minimum(k, 63)).astype(np.uint64),
                   np.uint64(0))  # 64 bits with k leading zeros
  bits = np.stack([m | (half << np.uint32(31)), (zeros >> np.uint64(32)).astype(np.uint32),
                   (zeros & np.uint64(0xFFFFFFFF)).astype(np.uint32)])
  values = np.asarray(draws.gumbel_from_bits(jnp.asarray(bits), True), np.float64)
  p_k = np.where(k < 64, 2.0**-(np.minimum(k, 63) + 1.0), 2.0**-64)
  return _sorted_law(values, 0.5 * p_k / len(mantissas))


def _float32_gumbel_law(stride=2**10, top=2**13):
  """The law of gumbel_from_bits(fine=False): 2^23 equally likely uniforms j·2^-23, all of
  the `top` largest (the noise's upper tail, exactly) and below them the middle j of every
  `stride` standing for them."""
  bulk = np.arange(stride // 2, 2**23 - top, stride, dtype=np.uint32)
  j = np.concatenate([bulk, np.arange(2**23 - top, 2**23, dtype=np.uint32)])
  values = np.asarray(draws.gumbel_from_bits(jnp.asarray(j << np.uint32(9))[None], False),
                      np.float64)
  weights = np.concatenate([np.full(len(bulk), stride), np.ones(top)]) * 2.0**-23
  return _sorted_law(values, weights)


def _tail_probability(law, gap):
  """P(g_tail − gap > g_head) for independent g_tail, g_head of `law`: the chance that
  Gumbel-max picks a token `gap` nats below the other of a two-token distribution."""
  values, weights, cdf = law
  below = np.searchsorted(values, values - gap, side='left')  # #{g_head < g − gap}
  return float(np.sum(weights * np.where(below > 0, cdf[np.maximum(below - 1, 0)], 0.0)))


def test_float64_draws_sample_the_tail_that_float32_draws_miss():
  """Exact laws of both noises, from their bits. On softmax([0, −gap]) the fine draws pick
  the tail token at its probability (to 1e-6); float32 draws at 93% of it for a gap of 14,
  56% for 16, 17% for 17, 0.3% for 18, and never beyond 19."""
  fine, coarse = _fine_gumbel_law(), _float32_gumbel_law()
  assert abs(fine[1].sum() - 1) < 1e-12 and coarse[0].max() < 16.0 < 45.0 < fine[0].max()
  for gap in (2.0, 16.0, 17.0, 25.0):
    exact = math.exp(-gap) / (1 + math.exp(-gap))
    assert abs(_tail_probability(fine, gap) / exact - 1) < 1e-5, gap
  assert abs(_tail_probability(coarse, 2.0) / (math.exp(-2) / (1 + math.exp(-2))) - 1) < 1e-4
  assert _tail_probability(coarse, 16.0) < 0.6 * math.exp(-16.0)
  assert _tail_probability(coarse, 17.0) < 0.2 * math.exp(-17.0)
  assert _tail_probability(coarse, 25.0) == 0.0
  # And the Gumbel CDF itself, in the bulk and far into the upper tail.
  values, weights, _ = fine
  for x in (-2.0, 0.0, 3.0):
    assert abs(weights[values <= x].sum() - math.exp(-math.exp(-x))) < 1e-5
  for x in (16.0, 30.0, 40.0):
    assert abs(weights[values > x].sum() / -math.expm1(-math.exp(-x)) - 1) < 1e-3


@pytest.mark.parametrize('fine', [False, True])
def test_categorical_draws_have_the_right_frequencies(fine):
  probs = np.array([0.5, 0.25, 0.15, 0.07, 0.03])
  n = 50_000
  drawn = draws.categorical(jax.random.key(0), jnp.log(jnp.asarray(probs))[None]
                            .repeat(n, 0), fine)
  freq = np.bincount(np.asarray(drawn), minlength=5) / n
  assert np.all(np.abs(freq - probs) < 5 * np.sqrt(probs * (1 - probs) / n)), freq


def test_exact_draws_block_masses_match_float64():
  """The two-level draw's block log-masses (GPT-2's vocabulary: 197 blocks of 256) against
  float64: the masses to about 2·2^-24, their float32 logs within 2^-24 of their size more,
  however far in the tail a block lies."""
  rng = np.random.default_rng(0)
  logits = np.stack([rng.normal(0, 3, GPT2_VOCAB), rng.normal(-40, 3, GPT2_VOCAB),
                     rng.uniform(-80, -60, GPT2_VOCAB)])
  logits[1:, 5] = 0.0
  log_p = (logits - np.log(np.exp(logits).sum(1, keepdims=True))).astype(np.float32)
  blocked = draws.blocks(jnp.asarray(log_p))
  assert blocked.shape == (3, 197, 256)
  got = np.asarray(draws.block_log_masses(blocked), np.float64)
  padded = np.full((3, 197 * 256), -np.inf)
  padded[:, :GPT2_VOCAB] = log_p
  want = np.log(np.exp(padded.reshape(3, 197, 256)).sum(-1))
  assert want.min() < -55  # blocks of mass e^-55 and less
  assert np.all(np.abs(got - want) <= (4 + np.abs(want)) * 2.0**-24)


def test_exact_draws_give_one_in_ten_million_tokens_their_share():
  """GPT-2's vocabulary: one token of probability 0.995 and 50,256 of 1e-7 each, 16.1 nats
  below it (float32 Gumbel noise draws those about half as often). 40,000 exact draws
  give the tail n·0.005 times, spread evenly over the vocabulary, never a padding id."""
  n, tiny, head = 40_000, 1e-7, 30_000
  row = np.full(GPT2_VOCAB, np.log(tiny), np.float32)
  row[head] = np.log1p(-(GPT2_VOCAB - 1) * tiny)
  keys = jax.random.split(jax.random.key(0), n)
  out = np.asarray(jax.jit(jax.vmap(lambda k: draws.categorical(k, row, True)))(keys))
  assert out.min() >= 0 and out.max() < GPT2_VOCAB
  tail = out[out != head]
  expected = n * (GPT2_VOCAB - 1) * tiny  # 201
  assert abs(len(tail) - expected) < 5 * math.sqrt(expected), len(tail)
  below = (tail < head).sum()  # head of the 50,256 tail ids lie below it
  share = head / (GPT2_VOCAB - 1)
  assert abs(below - share * len(tail)) < 5 * math.sqrt(len(tail) * share * (1 - share))


def test_fine_bernoulli_draws_have_the_right_frequencies():
  p, n = np.array([1e-3, 0.3, 0.7, 1 - 1e-3], np.float32), 1_000_000
  drawn = np.asarray(draws.bernoulli(jax.random.key(0), p[:, None], (4, n), True))
  assert np.all(np.abs(drawn.mean(1) - p) < 5 * np.sqrt(p * (1 - p) / n)), drawn.mean(1)


# ---------------------------------------------------------------------------- steps


@pytest.mark.parametrize('step', sorted(steps.STEPS))
def test_one_step_distribution_is_exact(step):
  """A masked position becomes v w.p. μ(v)·(α_s−α_t)/(1−α_t); top-p uses the nucleus of μ."""
  probs = np.array([0.55, 0.3, 0.1, 0.05])
  model = _model(toys.Oracle(tuple(probs)))
  n, s, t = 40000, 0.3, 0.7
  log_mu = jnp.broadcast_to(jnp.log(jnp.asarray(probs)), (n, 1, V))
  u = model.apply({}, jnp.full((n,), s), jnp.full((n,), t), method=model.unmask_prob)
  z = jnp.full((n, 1), V)
  alpha = model.schedule.alpha
  ctx = lambda u: steps.StepContext(V, unmask_prob=u, alpha_s=alpha(s), alpha_t=alpha(t),
                                    topp=0.8, fine=True)  # ReMDM's η = 0: no remasking
  out = np.asarray(jax.jit(lambda z, log_mu, u: steps.STEPS[step](
      jax.random.key(1), z, log_mu, ctx(u)))(z, log_mu, u))
  reveal = float((alpha(s) - alpha(t)) / (1 - alpha(t)))
  mu = probs if step != 'topp' else np.array([0.55, 0.3, 0, 0]) / 0.85
  expected = np.append(mu * reveal, 1 - reveal)  # tokens 0..V-1, then the mask
  freq = np.bincount(out[:, 0], minlength=V + 1) / n
  stderr = np.sqrt(expected * (1 - expected) / n) + 1e-12
  assert np.all(np.abs(freq - expected) < 5 * stderr), (freq, expected)


def _nucleus_np(probs, p):
  order = np.argsort(-probs)
  k = np.searchsorted(np.cumsum(probs[order]), p - 1e-7) + 1  # smallest set with mass ≥ p
  kept = np.zeros_like(probs)
  kept[order[:k]] = probs[order[:k]]
  return kept / kept.sum()


def test_every_step_draws_what_the_earlier_gumbel_max_drew(monkeypatch):
  """GenMD4-like per-token u over 40 tokens (5 blocks of 8), some of probability 1e-4: each
  step's exact draws and the earlier ones (one fine Gumbel-max over every token and 'stay
  masked', still taken by fine=False with a fine categorical) both make a masked position v
  w.p. μ(v)·u(v) (μ's nucleus for 'topp'; for 'remdm' its own reveal chance for every v)."""
  vocab, n, s, t = 40, 40_000, 0.4, 0.7
  rng = np.random.default_rng(1)
  probs = np.maximum(rng.dirichlet(np.full(vocab, 0.3)), 1e-4)
  probs /= probs.sum()
  u = rng.uniform(0.05, 0.6, vocab)
  alpha_s, alpha_t = 1 - s, 1 - t
  log_mu = jnp.broadcast_to(jnp.log(jnp.asarray(probs, jnp.float32)), (n, 1, vocab))
  z = jnp.full((n, 1), vocab)

  def run_steps(fine):
    ctx = steps.StepContext(vocab, unmask_prob=jnp.asarray(u, jnp.float32)[None, None],
                            alpha_s=alpha_s, alpha_t=alpha_t, topp=0.8, fine=fine)
    return jax.jit(lambda z, log_mu: {name: step(jax.random.key(2), z, log_mu, ctx)
                                      for name, step in steps.STEPS.items()})(z, log_mu)

  exact = run_steps(True)
  monkeypatch.setattr(draws, 'categorical', lambda rng, logits, fine: jnp.argmax(
      logits + draws.gumbel(rng, logits.shape, True), axis=-1))
  earlier = run_steps(False)
  reveal = (alpha_s - alpha_t) / (1 - alpha_t)
  laws = {'ancestral': probs * u, 'mean': probs * u, 'topp': _nucleus_np(probs, 0.8) * u,
          'remdm': probs * reveal}
  assert set(laws) == set(steps.STEPS)
  for name, law in laws.items():
    expected = np.append(law, 1 - law.sum())  # tokens, then the mask
    stderr = np.sqrt(expected * (1 - expected) / n) + 1e-12
    for draw in (exact, earlier):
      freq = np.bincount(np.asarray(draw[name])[:, 0], minlength=vocab + 1) / n
      assert np.all(np.abs(freq - expected) < 5 * stderr), (name, freq, expected)


def test_nucleus_matches_numpy():
  rng = np.random.default_rng(0)
  probs = rng.dirichlet(np.ones(10), size=(5,))
  for p in (0.3, 0.7, 0.95, 1.0):
    got = np.asarray(net.nucleus(jnp.asarray(probs, jnp.float32), p))
    for row, out in zip(probs, got):
      order = np.argsort(-row)
      k = np.searchsorted(np.cumsum(row[order]), p - 1e-7) + 1  # smallest set with mass ≥ p
      want = np.zeros_like(row)
      want[order[:k]] = row[order[:k]]
      np.testing.assert_allclose(out, want / want.sum(), rtol=1e-5, atol=1e-6)


def test_temperature_and_topk_filter_mu():
  logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
  got = np.exp(np.asarray(net.filtered_log_probs(logits, 0.5, 2)))
  want = np.array([0.25, 0.09, 0, 0]) / 0.34
  np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-7)


def test_certain_predictor_writes_its_token_and_keeps_given_tokens():
  """Conditional completion with μθ = δ_2: masks become 2, given tokens stay."""
  model = _model(toys.Oracle((1e-9, 1e-9, 1.0, 1e-9)))
  given = jnp.asarray([[0, V, 1, V, V, 3], [V, V, V, V, V, V]])
  out, nfe = _sample(model, {}, given, timesteps=3)
  np.testing.assert_array_equal(out, [[0, 2, 1, 2, 2, 3], [2, 2, 2, 2, 2, 2]])
  assert list(nfe) == [3, 3]


def test_ancestral_loop_reveals_expected_fraction_per_step():
  """After k of T uniform steps from all-masked, a fraction 1 − (1−α(1−k/T))/(1−α(1)) is revealed."""
  model = _model()
  params = toys.init(model, jnp.zeros((1, L), jnp.int32))
  big_t, k, n = 10, 4, 4000
  variables = {'params': params}

  @jax.jit
  def step(rng, z, t, s):
    logits = model.apply(variables, z, jnp.full((n,), t), method=model.predict_logits)
    u = model.apply(variables, jnp.full((n,), s), jnp.full((n,), t),
                    method=model.unmask_prob)
    return steps.ancestral_step(rng, z, jax.nn.log_softmax(logits),
                                steps.StepContext(V, unmask_prob=u))

  z = jnp.full((n, L), V)
  for i in range(k):
    z = step(jax.random.key(i), z, 1 - i / big_t, 1 - (i + 1) / big_t)
  alpha = model.schedule.alpha
  expected = float(1 - (1 - alpha(1 - k / big_t)) / (1 - alpha(1.0)))
  frac = float(jnp.mean(z != V))
  assert abs(frac - expected) < 5 * math.sqrt(expected * (1 - expected) / z.size)


def test_bad_options_are_errors():
  model = _model()
  for kw, match in (({'sampler': 'greedy'}, "unknown sampler 'greedy'"),
                    ({'sampling_grid': 'log'}, 'unknown sampling grid'),
                    ({'topp': 0.0}, 'topp'), ({'temperature': 0.0}, 'temperature'),
                    ({'topk': -1}, 'topk'), ({'nfe': 3}, 'unknown key sampling.nfe'),
                    ({'sampler': 'first_hitting', 'cache': True}, 'cache=False'),
                    ({'threshold': 0.0}, 'threshold'),
                    ({'confidence_score': 'least'}, 'unknown confidence score')):
    with pytest.raises(ValueError, match=match):
      sampling.make_sampler(model, _config(**kw))


# ---------------------------------------------------------------------------- driver


@pytest.mark.parametrize('sampler,extra', [
    ('ancestral', {}), ('remdm', {'remdm_eta': 0.3}), ('first_hitting', {}),
    ('confidence', {'block_size': 2}), ('ancestral', {'cache': True, 'block_size': 4}),
    ('threshold', {'block_size': 2, 'threshold': 0.5})])
def test_chunked_sampling_gives_the_whole_chain_and_honours_stop(sampler, extra):
  """Sampler.sample, a few steps per call, gives what one compiled loop gives; a stop
  request before a call ends it with None."""
  model = _model(TimelessNet(V))
  params = toys.init(model, jnp.zeros((1, L), jnp.int32))
  z = _partly_given(length=9 if extra.get('block_size') else L)
  s = sampling.make_sampler(model, _config(sampler=sampler, timesteps=5, **extra))
  whole = jax.jit(s)(params, jax.random.key(2), z)
  chunked = s.sample(params, jax.random.key(2), z, seconds=0.0)  # one step per call
  for a, b in zip(whole, chunked):
    np.testing.assert_array_equal(a, b)
  asked = []
  assert s.sample(params, jax.random.key(2), z, seconds=0.0,
                  stop=lambda: asked.append(1) or len(asked) > 2) is None
  assert len(asked) == 3


def test_the_libraries_defaults_are_the_base_configs():
  """md4.sampling.Options holds its own defaults; base.py's config.sampling sets the same."""
  config = base.get_config().sampling
  assert sampling.Options.from_config(config) == sampling.Options()
  assert sampling.Options.from_config({}) == sampling.Options()
  assert set(config) == {f.name for f in dataclasses.fields(sampling.Options)} | set(
      options.LOOP_KEYS)
