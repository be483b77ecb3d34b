"""The autoregressive baseline: exact likelihood, causality, left-to-right sampling."""

import itertools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from md4 import sampling
from md4.configs.ar import shakespeare as ar_shakespeare
from md4.models import AR
from md4.networks.transformer import Transformer
import toys

V, L = 3, 3


def _network(**kw):
  args = dict(vocab_size=V, n_layers=1, num_heads=2, feature_dim=4, time_features='none',
              causal=True, attention_impl='einsum')
  args.update(kw)
  return Transformer(**args)


def _model_and_params(seed=0, **kw):
  model = AR(network=_network(**kw), vocab_size=V, data_shape=(L,))
  return model, toys.random_params(model, jnp.zeros((1, L), jnp.int32), seed=seed)


def test_loss_is_the_exact_nll_on_an_enumerable_case():
  """Bits per token times L is −log2 p(x) by the chain rule, computed independently from
  prefix-only inputs [BOS, x_<i] (no later token can reach them), and p sums to 1."""
  model, params = _model_and_params()
  xs = jnp.asarray(list(itertools.product(range(V), repeat=L)))  # [27, L]
  loss = np.asarray(jax.jit(model.apply)({'params': params}, xs)['loss'], np.float64)
  net_params = {'params': params['network']}
  network = jax.jit(model.network.apply)
  want = np.zeros(len(xs))
  for i in range(L):
    inputs = jnp.concatenate([jnp.full((len(xs), 1), V), xs[:, :i]], axis=1)  # [27, i + 1]
    logits = network(net_params, inputs, jnp.zeros(len(xs)))[:, -1]
    log_p = np.asarray(jax.nn.log_softmax(logits), np.float64)
    want -= log_p[np.arange(len(xs)), np.asarray(xs[:, i])] / np.log(2)
  np.testing.assert_allclose(loss * L, want, rtol=1e-5)
  assert abs(np.sum(2.0**(-loss * L)) - 1) < 1e-5


@pytest.mark.parametrize('impl', ['einsum', 'xla'])
def test_causal_attention_ignores_later_tokens(impl):
  net = _network(attention_impl=impl, vocab_size=7)
  z = jax.random.randint(jax.random.key(0), (2, 8), 0, 7)
  params = toys.random_params(net, z, jnp.zeros(2))
  apply = jax.jit(net.apply)
  logits = apply({'params': params}, z, jnp.zeros(2))
  changed = apply({'params': params}, z.at[:, 5:].set((z[:, 5:] + 1) % 7), jnp.zeros(2))
  np.testing.assert_allclose(changed[:, :5], logits[:, :5], rtol=1e-5, atol=1e-6)
  assert np.abs(np.asarray(changed[:, 5:] - logits[:, 5:])).max() > 1e-3


def test_ar_needs_a_causal_network_without_canon_layers():
  with pytest.raises(ValueError, match='network.causal=True'):
    AR(network=_network(causal=False), vocab_size=V, data_shape=(L,))
  with pytest.raises(ValueError, match='canon_width=0'):
    AR(network=_network(canon_width=3), vocab_size=V, data_shape=(L,))


def test_ancestral_sampling_draws_from_p_and_keeps_the_prompt():
  model, params = _model_and_params(seed=1)
  xs = jnp.asarray(list(itertools.product(range(V), repeat=L)))
  loss = jax.jit(model.apply)({'params': params}, xs)['loss']
  exact = 2.0**(-np.asarray(loss, np.float64) * L)
  config = ml_collections.ConfigDict({'sampler': 'ancestral'})
  sample = jax.jit(sampling.make_sampler(model, config))
  n = 30_000
  prior = model.apply({}, jax.random.key(0), n, method=model.sample_prior)
  out, nfe = sample(params, jax.random.key(1), prior)
  assert (np.asarray(nfe) == L).all()
  codes = np.asarray(out) @ (V ** np.arange(L)[::-1])
  freq = np.bincount(codes, minlength=V**L) / n
  assert np.all(np.abs(freq - exact) < 5 * np.sqrt(exact * (1 - exact) / n) + 1e-4)
  # A prompt: positions 0 and 2 given; only position 1 is drawn, one call.
  prompt = jnp.asarray([[2, V, 0]] * 4)
  out, nfe = sample(params, jax.random.key(2), prompt)
  assert (np.asarray(out)[:, [0, 2]] == [2, 0]).all() and (np.asarray(out) < V).all()
  assert list(np.asarray(nfe)) == [1] * 4
  with pytest.raises(ValueError, match='left to right'):
    sampling.make_sampler(model, ml_collections.ConfigDict({'sampler': 'confidence'}))


def test_the_ar_config_builds_a_causal_time_free_network():
  config = ar_shakespeare.get_config()
  assert config.model_type == 'ar' and config.network.causal
  assert config.network.time_features == 'none' and config.network.canon_width == 0
  assert not config.model  # AR takes no model keywords
