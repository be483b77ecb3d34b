import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from md4 import hardware
from md4.networks import build_network
from md4.networks import embeddings
from md4.networks import transformer
from md4.networks.transformer import CANON_POSITIONS
from md4.networks.transformer import Canon
from md4.networks.transformer import Transformer

V, B, L = 11, 2, 16


def _net(**kw):
  base = dict(vocab_size=V, n_layers=2, num_heads=2, feature_dim=8)
  base.update(kw)
  return Transformer(**base)


def _init(net, seed=0):
  z = jnp.zeros((B, L), jnp.int32)
  return nn.unbox(net.init(jax.random.key(seed), z, jnp.zeros((B,))))


def _perturbed(params, seed=1):
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(
      tree, [p + 0.1 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])


@pytest.mark.parametrize('mlp_type', ['glu', 'geglu', 'swiglu'])
@pytest.mark.parametrize('cond_type', ['adaln', 'adaln_zero'])
def test_shapes_and_zero_initialised_output(mlp_type, cond_type):
  net = _net(mlp_type=mlp_type, cond_type=cond_type)
  variables = _init(net)
  z = jax.random.randint(jax.random.key(0), (B, L), 0, V + 1)  # the mask id V included
  logits = net.apply(variables, z, jnp.full((B,), 0.3))
  assert logits.shape == (B, L, V) and logits.dtype == jnp.float32
  np.testing.assert_array_equal(logits, 0.0)  # zero-initialised output layer


def test_time_conditioning():
  z = jax.random.randint(jax.random.key(0), (B, L), 0, V + 1)
  for time_features, differs in (('t', True), ('none', False)):
    net = _net(time_features=time_features)
    variables = _perturbed(_init(net))
    a = net.apply(variables, z, jnp.full((B,), 0.2))
    b = net.apply(variables, z, jnp.full((B,), 0.8))
    assert bool(jnp.any(jnp.abs(a - b) > 1e-4)) == differs


def test_attention_is_bidirectional():
  net = _net()
  variables = _perturbed(_init(net))
  z = jax.random.randint(jax.random.key(0), (B, L), 0, V)
  a = net.apply(variables, z, jnp.full((B,), 0.5))
  b = net.apply(variables, z.at[:, -1].set((z[:, -1] + 1) % V), jnp.full((B,), 0.5))
  assert float(jnp.abs(a[:, 0] - b[:, 0]).max()) > 1e-5  # the first sees the last


def test_dropout_only_in_training():
  net = _net(dropout_rate=0.5)
  variables = _perturbed(_init(net))
  z = jax.random.randint(jax.random.key(0), (B, L), 0, V)
  t = jnp.full((B,), 0.5)
  np.testing.assert_array_equal(net.apply(variables, z, t), net.apply(variables, z, t))
  a = net.apply(variables, z, t, train=True, rngs={'dropout': jax.random.key(1)})
  assert float(jnp.abs(a - net.apply(variables, z, t)).max()) > 1e-4


def test_init_scales_and_logical_axes():
  """The original's initialisation: LeCun-normal projections (variance 1/fan_in), MLP weights
  of variance 2/(n_layers·fan_in) with depth_scaled_init (1/fan_in without), the embedding
  N(0, 1/D), adaLN-zero and the output layer at zero."""
  n_layers, d, k = 8, 256, 64
  net = _net(n_layers=n_layers, num_heads=4, feature_dim=k)
  boxed = net.init(jax.random.key(0), jnp.zeros((B, L), jnp.int32), jnp.zeros((B,)))
  specs = nn.get_partition_spec(boxed)['params']
  assert tuple(specs['embed']['embedding']) == ('vocab', 'embed')
  assert tuple(specs['block_0']['feed_forward']['w1']) == ('embed', 'mlp')
  assert tuple(specs['block_0']['attention']['wq']) == ('embed', 'heads')
  params = nn.unbox(boxed)['params']
  block = jax.tree.map(np.asarray, params['block_3'])
  f = transformer.mlp_width(d)
  std = lambda a: float(np.std(a))
  for name in ('wq', 'wk', 'wv', 'wo'):
    assert std(block['attention'][name]) == pytest.approx(1 / math.sqrt(d), rel=0.05)
  for name, fan_in in (('w1', d), ('w3', d), ('w2', f)):
    assert std(block['feed_forward'][name]) == pytest.approx(
        math.sqrt(2 / n_layers / fan_in), rel=0.05)
  assert std(params['embed']['embedding']) == pytest.approx(1 / math.sqrt(d), rel=0.05)
  assert std(params['time_mlp_in']['kernel']) == pytest.approx(1 / math.sqrt(k), rel=0.1)
  assert std(params['time_mlp_out']['kernel']) == pytest.approx(1 / math.sqrt(4 * k), rel=0.1)
  for zero in (block['adaln'], params['final_adaln'], params['logits']):  # adaLN-zero
    assert not any(np.any(np.asarray(a)) for a in jax.tree.leaves(zero))
  plain = nn.unbox(_net(n_layers=n_layers, num_heads=4, feature_dim=k, depth_scaled_init=False,
                        cond_type='adaln').init(
      jax.random.key(0), jnp.zeros((B, L), jnp.int32), jnp.zeros((B,))))['params']
  assert std(plain['block_3']['feed_forward']['w2']) == pytest.approx(1 / math.sqrt(f), rel=0.05)
  assert std(plain['block_3']['adaln']['kernel']) == pytest.approx(1 / math.sqrt(k), rel=0.1)


def test_init_std_is_gpt2_initialisation():
  """init_std: N(0, σ²) embedding, projections, FFN and time MLP; the residual outputs wo
  and W2 N(0, σ²/(2·n_layers)) with depth_scaled_init (σ² without); zero layers stay zero."""
  n_layers, d, k, sigma = 8, 256, 64, 0.02
  std = lambda a: float(np.std(np.asarray(a)))
  for depth_scaled, out in ((True, sigma / math.sqrt(2 * n_layers)), (False, sigma)):
    params = _init(_net(n_layers=n_layers, num_heads=4, feature_dim=k, init_std=sigma,
                        depth_scaled_init=depth_scaled))['params']
    block = params['block_5']
    for name in ('wq', 'wk', 'wv'):
      assert std(block['attention'][name]) == pytest.approx(sigma, rel=0.05)
    for name in ('w1', 'w3'):
      assert std(block['feed_forward'][name]) == pytest.approx(sigma, rel=0.05)
    assert std(block['attention']['wo']) == pytest.approx(out, rel=0.05)
    assert std(block['feed_forward']['w2']) == pytest.approx(out, rel=0.05)
    for leaf in (params['embed']['embedding'], params['time_mlp_in']['kernel'],
                 params['time_mlp_out']['kernel']):
      assert std(leaf) == pytest.approx(sigma, rel=0.1)
    for zero in (block['adaln'], params['final_adaln'], params['logits']):
      assert not any(np.any(np.asarray(a)) for a in jax.tree.leaves(zero))


def test_mlp_width_rounds_as_the_original():
  assert [transformer.mlp_width(d) for d in (16, 128, 256, 768, 1024)] == [
      64, 352, 704, 2048, 2752]
  assert transformer.mlp_width(768, mlp_dim=100) == 100


@pytest.mark.parametrize('dim', [8, 9])
def test_time_embedding_sinusoids(dim):
  """[sin(t·f), cos(t·f)] with f_i = 10000^(−i/(h − 1)), i < h = ⌊dim/2⌋; a zero column for
  odd dim."""
  t = jnp.array([0.0, 3.0, 500.0])
  got = np.asarray(embeddings.timestep_embedding(t, dim))
  f = 10_000.0**(-np.arange(4) / 3)
  want = np.concatenate([np.sin(np.outer(t, f)), np.cos(np.outer(t, f)),
                         np.zeros((3, dim % 2))], axis=1)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_rotary_rotates_interleaved_pairs_as_complex_numbers():
  """Pair i of a feature vector at position p is multiplied by e^{i·p·θ_i}, θ_i = 10000^(−2i/K),
  so that scores depend on positions only through their difference."""
  x = np.asarray(jax.random.normal(jax.random.key(0), (1, 5, 2, 8)))
  positions = np.arange(5, dtype=np.float32)
  got = np.asarray(transformer.rotary(jnp.asarray(x), positions))
  theta = 10_000.0**(-np.arange(0, 8, 2) / 8)
  c = (x[..., 0::2] + 1j * x[..., 1::2]) * np.exp(1j * positions[None, :, None, None] * theta)
  np.testing.assert_allclose(got[..., 0::2], c.real, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got[..., 1::2], c.imag, rtol=1e-5, atol=1e-5)
  q, k = (transformer.rotary(jnp.broadcast_to(jnp.asarray(x[:, :1]), x.shape), positions)
          for _ in range(2))
  scores = np.einsum('blhk,bmhk->hlm', q, k)  # the same vector at every position
  np.testing.assert_allclose(scores[:, 0, 1], scores[:, 3, 4], rtol=1e-4)


def test_causal_attention_sees_only_the_past():
  net = _net(causal=True)
  variables = _perturbed(_init(net))
  z = jax.random.randint(jax.random.key(0), (B, L), 0, V)
  t = jnp.full((B,), 0.5)
  a = net.apply(variables, z, t)
  b = net.apply(variables, z.at[:, 5].set((z[:, 5] + 1) % V), t)
  np.testing.assert_allclose(a[:, :5], b[:, :5], rtol=1e-5, atol=1e-6)
  assert float(jnp.abs(a[:, 5:] - b[:, 5:]).max()) > 1e-4
  ref = jax.nn.dot_product_attention  # the einsum kernel's mask against jax's
  q, k, v = (jax.random.normal(jax.random.key(i), (2, 7, 3, 4)) for i in range(3))
  np.testing.assert_allclose(transformer.einsum_attention(q, k, v, causal=True),
                             ref(q, k, v, is_causal=True), rtol=1e-5, atol=1e-6)


def test_attention_dropout_drops_probabilities():
  """einsum_attention's dropout is softmax-then-dropout on the probabilities (kept ones
  scaled by 1/(1 − rate)), computed directly, with the same key."""
  q, k, v = (jax.random.normal(jax.random.key(i), (2, 6, 3, 4)) for i in range(3))
  key, rate = jax.random.key(9), 0.3
  got = transformer.einsum_attention(q, k, v, dropout_rate=rate, dropout_rng=key)
  qt, kt, vt = (a.transpose(0, 2, 1, 3) for a in (q, k, v))
  p = jax.nn.softmax(jnp.einsum('bhlk,bhmk->bhlm', qt, kt) / 2.0)
  keep = jax.random.bernoulli(key, 1 - rate, p.shape)
  want = jnp.einsum('bhlm,bhmk->bhlk', jnp.where(keep, p / (1 - rate), 0.0), vt)
  np.testing.assert_allclose(got, want.transpose(0, 2, 1, 3), rtol=1e-5, atol=1e-6)


def test_channel_dropout_shares_its_mask_over_positions():
  class Drop(nn.Module):
    @nn.compact
    def __call__(self, x):
      return transformer.channel_dropout(self, x, 0.5, train=True)
  x = jnp.ones((4, 9, 32))
  y = np.asarray(Drop().apply({}, x, rngs={'dropout': jax.random.key(0)}))
  assert set(np.unique(y)) == {0.0, 2.0}
  np.testing.assert_array_equal(y, np.broadcast_to(y[:, :1], y.shape))  # same at every position
  assert 0.3 < float((y == 0).mean()) < 0.7


def test_narrow_embedding_projects_to_the_model_width():
  """embed_dim E: ids embedded in E, then a dense layer (with bias) to D, as the original's
  text8 network; no embedding dropout on that path."""
  params = _init(_net(embed_dim=4, dropout_rate=0.5))['params']
  assert params['embed']['embedding'].shape == (V + 1, 4)
  assert params['embed_proj']['kernel'].shape == (4, 16)
  assert params['embed_proj']['bias'].shape == (16,)


@pytest.mark.parametrize('key,value', [('mlp_type', 'relu'), ('cond_type', 'film'),
                                       ('time_features', 'sigma')])
def test_unknown_options(key, value):
  with pytest.raises(ValueError, match=f'unknown {key} {value!r}'):
    _net(**{key: value})


def test_unknown_network():
  with pytest.raises(ValueError, match="unknown network 'rnn'"):
    build_network({'type': 'rnn'}, V)


def _loss_and_grads(net, variables, z, t):
  f = lambda v: (net.apply(v, z, t, train=True, rngs={'dropout': jax.random.key(5)}) ** 2
                 ).mean()
  return jax.jit(jax.value_and_grad(f))(variables)


def _stacked(params):
  """Unscanned parameters (block_0, block_1, ...) as the scanned layout ('blocks', [n, ...])."""
  blocks = sorted(k for k in params if k.startswith('block_'))
  rest = {k: v for k, v in params.items() if k not in blocks}
  return {**rest, 'blocks': jax.tree.map(lambda *xs: jnp.stack(xs),
                                         *[params[k] for k in blocks])}


def _assert_close(tree_a, tree_b):
  for a, b in zip(jax.tree.leaves(tree_a), jax.tree.leaves(tree_b), strict=True):
    # Two programs: XLA's fusions (and the CPU's vector width) change float32 summation
    # order; 1e-5 is 7e-5 of the largest gradient here (0.15).
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_remat_and_scan_compute_the_same_function():
  """Remat changes what is stored, scan how layers are laid out; neither the numbers."""
  z = jax.random.randint(jax.random.key(0), (B, L), 0, V + 1)
  t = jnp.array([0.2, 0.9])
  canon = dict(canon_width=3, canon_positions=CANON_POSITIONS)
  params = _perturbed(_init(_net(**canon))['params'])
  ref_loss, ref_grads = _loss_and_grads(_net(**canon), {'params': params}, z, t)
  for kw in ({'remat_policy': 'dots'}, {'scan_layers': True, 'remat_policy': 'full'}):
    net = _net(**kw, **canon)
    v = {'params': params}
    expected = ref_grads
    if kw.get('scan_layers'):
      v, expected = {'params': _stacked(params)}, {'params': _stacked(ref_grads['params'])}
      assert (jax.tree.map(jnp.shape, v['params']) ==
              jax.tree.map(jnp.shape, _init(net)['params']))
    loss, grads = _loss_and_grads(net, v, z, t)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    _assert_close(grads, expected)
  # With dropout, remat replays the same dropout masks in the backward pass.
  loss, grads = _loss_and_grads(_net(dropout_rate=0.1, **canon), {'params': params}, z, t)
  loss_r, grads_r = _loss_and_grads(_net(dropout_rate=0.1, remat_policy='full', **canon),
                                    {'params': params}, z, t)
  np.testing.assert_allclose(loss_r, loss, rtol=1e-5)
  _assert_close(grads_r, grads)


def test_bfloat16_compute_keeps_float32_parameters_and_logits():
  z = jax.random.randint(jax.random.key(0), (B, L), 0, V + 1)
  t = jnp.array([0.2, 0.9])
  variables = {'params': _perturbed(_init(_net())['params'])}
  net16 = _net(dtype='bfloat16')
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(_init(net16)))
  logits16 = net16.apply(variables, z, t)
  logits32 = _net().apply(variables, z, t)
  assert logits16.dtype == jnp.float32
  scale = float(jnp.abs(logits32).max())
  np.testing.assert_allclose(logits16, logits32, atol=0.05 * scale)  # bfloat16: ~3 digits
  assert float(jnp.abs(logits16 - logits32).max()) > 0  # it did compute in bfloat16


def test_einsum_attention_is_jax_dot_product_attention():
  """The CPU kernel (normalised after the second product) against jax's, values and
  gradients, alone with large scores and inside the network."""
  from md4.networks.transformer import einsum_attention
  q, k, v = (8.0 * jax.random.normal(jax.random.key(i), (2, 7, 3, 4)) for i in range(3))
  g = jax.random.normal(jax.random.key(3), (2, 7, 3, 4))
  ref = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation='xla')
  f = lambda fn: jax.value_and_grad(lambda *a: (fn(*a) * g).sum(), argnums=(0, 1, 2))(q, k, v)
  (ours, ours_g), (theirs, theirs_g) = f(einsum_attention), f(ref)
  np.testing.assert_allclose(ours, theirs, rtol=1e-5)
  for a, b in zip(ours_g, theirs_g):  # float32 round-off on gradients of order 1
    np.testing.assert_allclose(a, b, atol=1e-5 * float(jnp.abs(b).max()))

  z = jax.random.randint(jax.random.key(0), (B, L), 0, V + 1)
  t = jnp.array([0.2, 0.9])
  variables = {'params': _perturbed(_init(_net())['params'])}
  loss, grads = _loss_and_grads(_net(attention_impl='xla'), variables, z, t)
  loss_e, grads_e = _loss_and_grads(_net(attention_impl='einsum'), variables, z, t)
  np.testing.assert_allclose(loss_e, loss, rtol=1e-5)
  _assert_close(grads_e, grads)


def test_accelerator_layout_computes_the_same_function(monkeypatch):
  """Off CPUs, fused kernels keep their shape in the product and attention is jax's."""
  z = jax.random.randint(jax.random.key(0), (B, L), 0, V + 1)
  t = jnp.array([0.2, 0.9])
  variables = {'params': _perturbed(_init(_net())['params'])}
  cpu = _net().apply(variables, z, t)
  monkeypatch.setattr(jax, 'default_backend', lambda: 'tpu')
  # Two programs: float32 summation order differs; logits here reach 1.3.
  np.testing.assert_allclose(_net().apply(variables, z, t), cpu, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('key,value', [('dtype', 'float16'), ('matmul_dtype', 'int8'),
                                       ('remat_policy', 'some'), ('attention_impl', 'flash')])
def test_unknown_precision_remat_and_attention_options_are_rejected(key, value):
  with pytest.raises(ValueError, match=f'unknown {key} {value!r}'):
    _net(**{key: value})


def test_float32_matmul_gradient():
  """The 16-bit product's hand-written backward pass against autodiff of a plain product."""
  from md4.networks.matmul import float32_matmul
  x = jax.random.normal(jax.random.key(0), (6, 8))
  w = jax.random.normal(jax.random.key(1), (8, 5))
  g = jax.random.normal(jax.random.key(2), (6, 5))
  grads = lambda fn, x, w: jax.grad(lambda x, w: (fn(x, w) * g).sum(), argnums=(0, 1))(x, w)
  plain = grads(lambda x, w: x @ w, x, w)
  for a, b in zip(grads(float32_matmul, x, w), plain):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  xb, wb = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
  assert float32_matmul(xb, wb).dtype == jnp.float32
  np.testing.assert_allclose(float32_matmul(xb, wb), x @ w, rtol=0.05, atol=0.1)
  dx, dw = grads(float32_matmul, xb, wb)
  assert dx.dtype == dw.dtype == jnp.bfloat16
  np.testing.assert_allclose(dx.astype(jnp.float32), plain[0], rtol=0.05, atol=0.1)
  np.testing.assert_allclose(dw.astype(jnp.float32), plain[1], rtol=0.05, atol=0.1)
  # Both backward products (the forward one is unused here) take 16-bit operands.
  hlo = jax.jit(lambda x, w: grads(float32_matmul, x, w)).lower(xb, wb).as_text()
  operands = [l.split(':')[-1].split('->')[0] for l in hlo.splitlines() if 'dot_general' in l]
  assert len(operands) == 2 and all(o.count('bf16>') == 2 for o in operands), operands


def test_bfloat16_products_with_float32_activations():
  """matmul_dtype='bfloat16' rounds only the products' inputs: the same function and
  gradient as float32 to bfloat16's precision, with float32 logits."""
  z = jax.random.randint(jax.random.key(0), (B, L), 0, V + 1)
  t = jnp.array([0.3, 0.8])
  net32, net16 = _net(), _net(matmul_dtype='bfloat16')
  params = _perturbed(_init(net32)['params'])  # non-zero output layer and adaLN
  out = lambda net: (lambda p: net.apply({'params': p}, z, t))
  y32, y16 = out(net32)(params), out(net16)(params)
  assert y16.dtype == jnp.float32
  np.testing.assert_allclose(y16, y32, atol=0.02 * float(jnp.abs(y32).max()))
  assert not np.allclose(y16, y32, rtol=0, atol=1e-7)  # it did round
  g32, g16 = (jax.grad(lambda p: jnp.sum(out(n)(p) ** 2))(params) for n in (net32, net16))
  for a, b in zip(jax.tree.leaves(g32), jax.tree.leaves(g16)):
    assert b.dtype == jnp.float32
    np.testing.assert_allclose(b, a, atol=0.05 * float(jnp.abs(a).max()) + 1e-6)


def test_cpu_has_amx_reads_the_cpu_flags(tmp_path):
  amx, avx = tmp_path / 'amx', tmp_path / 'avx'
  amx.write_text('processor\t: 0\nflags\t\t: fpu avx2 avx512f amx_bf16 amx_tile\n')
  avx.write_text('processor\t: 0\nflags\t\t: fpu avx avx2 avx512_bf16\n')
  assert hardware.cpu_has_amx(str(amx))
  assert not hardware.cpu_has_amx(str(avx))
  assert not hardware.cpu_has_amx(str(tmp_path / 'missing'))  # not Linux


def test_shakespeare_default_is_one_experiment_and_amx_a_named_variant():
  """float32 products and 3,000 steps on every CPU; ':amx' asks for bfloat16 products and
  6,500 steps, evaluated halfway and at the end either way."""
  from md4.configs.md4 import shakespeare  # pylint: disable=g-import-not-at-top
  for arg, dtype, steps in ((None, 'float32', 3000), ('default', 'float32', 3000),
                            ('amx', 'bfloat16', 6500)):
    config = shakespeare.get_config() if arg is None else shakespeare.get_config(arg)
    assert config.network.matmul_dtype == config.opt.muon_dtype == dtype
    assert config.num_train_steps == steps
    assert (config.eval_every_steps == config.sample_every_steps ==
            config.checkpoint_every_steps == steps // 2)
  with pytest.raises(ValueError, match="unknown variant 'gpu'.*amx"):
    shakespeare.get_config('gpu')


def test_shakespeare_variant_is_chosen_on_the_command_line():
  """--config=PATH:amx passes 'amx' to get_config, as ml_collections' config_flags does."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  from md4.configs.md4 import shakespeare  # pylint: disable=g-import-not-at-top
  for suffix, steps in (('', 3000), (':amx', 6500)):
    argv = ['main', f'--config={shakespeare.__file__}{suffix}', '--config.num_train_steps=2']
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file('config', flag_values=flag_values, sys_argv=argv)
    flag_values(argv)
    assert flag_values.config.num_train_steps == 2
    assert flag_values.config.eval_every_steps == steps // 2


def test_no_config_module_imports_a_network():
  """Configs describe an experiment: none asks the machine (or a network module) anything."""
  import ast  # pylint: disable=g-import-not-at-top
  import pathlib  # pylint: disable=g-import-not-at-top
  import md4.configs  # pylint: disable=g-import-not-at-top
  root = pathlib.Path(md4.configs.__file__).parent
  for path in root.rglob('*.py'):
    for node in ast.walk(ast.parse(path.read_text())):
      names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
               [f'{node.module}.{a.name}' for a in node.names]
               if isinstance(node, ast.ImportFrom) else [])
      assert not any(n.startswith(('md4.networks', 'md4.hardware')) for n in names), path


@pytest.mark.parametrize('width', [1, 3, 5])
def test_canon_layer_is_a_centred_depthwise_convolution(width):
  """h_i + Σ_j w_j ⊙ h_{i+j} for |j| ≤ r with zeros past the ends, against a loop."""
  h = np.asarray(jax.random.normal(jax.random.key(0), (2, 7, 3)))
  w = np.asarray(jax.random.normal(jax.random.key(1), (width, 3)))
  layer = Canon(width)
  params = layer.init(jax.random.key(2), h)['params']
  np.testing.assert_array_equal(layer.apply({'params': params}, h), h)  # zero init
  r = width // 2
  expected = h.copy()
  for i in range(h.shape[1]):
    for j in range(-r, r + 1):
      if 0 <= i + j < h.shape[1]:
        expected[:, i] += w[j + r] * h[:, i + j]
  out = layer.apply({'params': {'kernel': jnp.asarray(w)}}, jnp.asarray(h))
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_canon_layers_sit_where_asked():
  """A layer at each requested position, of the activation's width there, none without a
  width; non-zero Canon weights change the network's output."""
  net = _net(canon_width=3, canon_positions=('qkv', 'mlp_hidden'))
  params = _init(net)['params']
  block = params['block_0']
  assert block['attention']['canon_qkv']['kernel'].shape == (3, 3 * 2 * 8)
  assert block['feed_forward']['canon_mlp_hidden']['kernel'].shape == (
      3, 2 * transformer.mlp_width(16))
  assert not any('canon' in k for k in block)
  assert 'canon_attn_in' not in _init(_net(canon_width=0))['params']['block_0']
  z = jax.random.randint(jax.random.key(0), (B, L), 0, V + 1)
  t = jnp.full((B,), 0.5)
  variables = {'params': _perturbed(params)}
  without = {'params': jax.tree_util.tree_map_with_path(
      lambda path, p: p * 0 if 'canon' in jax.tree_util.keystr(path) else p,
      variables['params'])}
  assert float(jnp.abs(net.apply(variables, z, t) - net.apply(without, z, t)).max()) > 1e-4


def test_mlp_dim_sets_the_mlp_width():
  """mlp_dim F gives [D, F] W1 and W3 and an [F, D] W2; 0 gives the original's rounding."""
  d = 2 * 8  # _net's num_heads · feature_dim
  for mlp_dim, f in ((0, 64), (24, 24)):
    ffn = _init(_net(mlp_dim=mlp_dim))['params']['block_0']['feed_forward']
    assert ffn['w1'].shape == ffn['w3'].shape == (d, f)
    assert ffn['w2'].shape == (f, d)


def test_qk_norm_makes_attention_blind_to_the_scale_of_queries_and_keys():
  """With qk_norm, scaling the q and k projections by any positive factor leaves the
  output unchanged (up to the norm's ε); without it, the attention pattern changes."""
  z = jax.random.randint(jax.random.key(0), (B, L), 0, V + 1)
  t = jnp.full((B,), 0.5)
  for qk_norm in (True, False):
    net = _net(qk_norm=qk_norm)
    params = _perturbed(_init(net)['params'])
    scaled = jax.tree_util.tree_map_with_path(
        lambda path, p: p * 7.0 if jax.tree_util.keystr(path).endswith(
            ("['wq']", "['wk']")) else p, params)
    a, b = (net.apply({'params': p}, z, t) for p in (params, scaled))
    assert ('q_norm' in params['block_0']['attention']) == qk_norm
    if qk_norm:
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    else:
      assert float(jnp.abs(a - b).max()) > 1e-3


@pytest.mark.parametrize('kw,match', [({'canon_width': 2}, 'canon_width must be 0'),
                                      ({'canon_width': 3, 'canon_positions': ('mlp',)},
                                       "unknown canon_positions \\['mlp'\\]"),
                                      ({'mlp_dim': -1}, 'mlp_dim must be >= 0'),
                                      ({'embed_dim': -2}, 'embed_dim must be >= 0'),
                                      ({'feature_dim': 7}, 'feature_dim must be even'),
                                      ({'init_std': -0.1}, 'init_std must be >= 0')])
def test_bad_network_options_are_rejected(kw, match):
  with pytest.raises(ValueError, match=match):
    _net(**kw)
