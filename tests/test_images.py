"""Images end to end: digits and TFDS loaders, labelled batches, PNG grids, guided
class-conditional sampling, and a short digits training run."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from md4 import data
from md4 import sampling
from md4.sampling import net as sampling_net
from md4 import train
from md4.configs.md4 import digits as digits_config
from md4.data import images
from md4.models.md4 import MD4
from md4.networks import unet
import toys


def data_config(dataset, data_shape, class_conditional=False, data_dir=''):
  return ml_collections.ConfigDict(dict(
      dataset=dataset, data_dir=str(data_dir), data_shape=data_shape, vocab_size=None,
      class_conditional=class_conditional))


# Digits.


def test_digits_splits_vocab_and_pixels():
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  info, splits = data.load_dataset(data_config('digits', (8, 8, 1)))
  assert (info.vocab_size, info.data_shape, info.eval_splits) == (17, (8, 8, 1), ('valid',))
  assert info.is_image and info.num_classes == 0
  assert splits['train'].shape == (1497, 8, 8, 1) and splits['valid'].shape == (300, 8, 8, 1)
  want = datasets.load_digits().images  # the fixed split: the last 300 are held out
  np.testing.assert_array_equal(splits['train'][..., 0], want[:1497])
  np.testing.assert_array_equal(splits['valid'][..., 0], want[1497:])
  assert splits['train'].max() == 16 and splits['train'].min() == 0
  pixels = info.decode(np.array([[[0], [8], [16]]]))
  np.testing.assert_array_equal(pixels[..., 0], [[0, 128, 255]])
  assert pixels.dtype == np.uint8


def test_digits_class_conditional_batches_keep_labels_with_their_images():
  info, splits = data.load_dataset(data_config('digits', (8, 8, 1), True))
  assert info.num_classes == 10
  train_split = splits['train']
  assert set(train_split) == {'x', 'label'} and train_split['label'].shape == (1497,)
  batch = data.train_batch(train_split, 7, 16, seed=3)
  again = data.train_batch(train_split, 7, 16, seed=3)
  np.testing.assert_array_equal(batch['x'], again['x'])
  assert batch['x'].dtype == batch['label'].dtype == np.int32
  # Each row's label is the label of that very image in the split.
  for x, label in zip(batch['x'], batch['label']):
    rows = np.flatnonzero((train_split['x'] == x).all(axis=(1, 2, 3)))
    assert label in train_split['label'][rows]
  halves = [data.train_batch(train_split, 7, 16, 3, p, 2) for p in range(2)]
  np.testing.assert_array_equal(np.concatenate([h['label'] for h in halves]),
                                batch['label'])
  evals = list(data.eval_batches(splits['valid'], 100))
  np.testing.assert_array_equal(np.concatenate([e['label'] for e in evals]),
                                splits['valid']['label'])


def test_image_dataset_errors(tmp_path):
  with pytest.raises(ValueError, match=r'set config.data.data_shape to \(8, 8, 1\)'):
    data.load_dataset(data_config('digits', (64,)))
  with pytest.raises(ValueError, match='has no labels'):
    data.load_dataset(data_config('shakespeare', (64,), True))
  with pytest.raises(FileNotFoundError,
                     match=f'tfds build cifar10 --data_dir={tmp_path}'):
    data.load_dataset(data_config('cifar10', (32, 32, 3), data_dir=tmp_path))
  with pytest.raises(FileNotFoundError, match='tfds build imagenet_resized/64x64'):
    data.load_dataset(data_config('imagenet64', (64, 64, 3), True, tmp_path))


# CIFAR-10 through a tiny TFDS dataset built here.


@pytest.fixture(scope='module')
def tiny_cifar10(tmp_path_factory):
  """A 12 + 5 example `cifar10` in TFDS's own format, and the examples written."""
  data_dir = tmp_path_factory.mktemp('tfds')
  rng = np.random.default_rng(0)
  written = {}
  for split, n in (('train', 12), ('test', 5)):
    written[split] = (rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                      rng.integers(0, 10, n))
  features = tfds.builder('cifar10').info.features
  tfds.dataset_builders.store_as_tfds_dataset(
      name='cifar10', version=str(tfds.builder('cifar10').version), features=features,
      data_dir=str(data_dir), split_datasets={
          s: tf.data.Dataset.from_tensor_slices(
              {'id': [f'{s}_{i}' for i in range(len(x))], 'image': x, 'label': y})
          for s, (x, y) in written.items()})
  return data_dir, written


def _sorted_rows(x, y):
  order = np.lexsort(x.reshape(len(x), -1).T)
  return x[order], y[order]


@pytest.mark.parametrize('class_conditional', [False, True])
def test_cifar10_reads_the_prepared_tfds_dataset(tiny_cifar10, class_conditional):
  data_dir, written = tiny_cifar10
  info, splits = data.load_dataset(
      data_config('cifar10', (32, 32, 3), class_conditional, data_dir))
  assert (info.vocab_size, info.eval_splits) == (256, ('test',))
  assert info.num_classes == (10 if class_conditional else 0)
  for split, (x, y) in written.items():
    got = splits[split]
    got_x = got['x'] if class_conditional else got
    assert got_x.shape == x.shape and got_x.dtype == np.uint8
    # TFDS stores examples in its own order; compare them sorted by pixels.
    got_x, got_y = _sorted_rows(got_x, got['label'] if class_conditional else y)
    want_x, want_y = _sorted_rows(x, y)
    np.testing.assert_array_equal(got_x, want_x)
    if class_conditional:
      np.testing.assert_array_equal(got_y, want_y)
  np.testing.assert_array_equal(info.decode(written['test'][0][0]), written['test'][0][0])


def test_loss_is_in_bits_per_dimension_for_any_data_shape():
  """The same pixels as an image [4, 4, 2] or a sequence [32] give the same per-example terms
  (the normaliser is H·W·C), and with an oracle μθ = p the mean matches the data's bits."""
  probs = (0.5, 0.25, 0.125, 0.125)
  x = jax.random.choice(jax.random.key(0), 4, (4096, 4, 4, 2), p=jnp.asarray(probs))
  rngs = {'sample': jax.random.key(1)}
  terms = {}
  for shape in ((4, 4, 2), (32,)):
    model = MD4(network=toys.Oracle(probs), vocab_size=4, data_shape=shape)
    terms[shape] = model.apply({}, x.reshape((4096,) + shape), rngs=rngs)
  for k, v in terms[(32,)].items():
    # Two programs sum the 32 per-dimension terms in different orders: up to 32 ulps.
    np.testing.assert_allclose(terms[(4, 4, 2)][k], v, rtol=1e-5)
  # The oracle's negative ELBO equals −log2 p(x) per dimension in expectation over t; one t
  # per example, so the batch mean is only close.
  nll_bits = -np.mean(np.log2(np.asarray(probs)[np.asarray(x)]))
  assert abs(float(terms[(32,)]['loss'].mean()) - nll_bits) < 0.03, nll_bits


# Sample grids.


def test_png_grid_layout(tmp_path):
  rng = np.random.default_rng(0)
  pics = rng.integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
  path = str(tmp_path / 'samples' / 'grid.png')
  grid = images.write_grid(path, pics)
  decoded = tf.io.decode_png(open(path, 'rb').read()).numpy()
  np.testing.assert_array_equal(decoded, grid)
  # 5 images -> 3 columns, 2 rows; 16-pixel images are doubled to 32; 1-pixel borders.
  assert grid.shape == (2 * 33 + 1, 3 * 33 + 1, 3)
  for i, pic in enumerate(pics):
    top, left = 1 + 33 * (i // 3), 1 + 33 * (i % 3)
    np.testing.assert_array_equal(grid[top : top + 32 : 2, left : left + 32 : 2], pic)
  assert (grid[0] == 255).all() and (grid[:, 33] == 255).all()
  assert (grid[34:, 67:] == 255).all()  # the empty sixth cell
  assert not os.path.exists(path + '.tmp')


def test_sample_labels_give_one_row_per_class():
  np.testing.assert_array_equal(images.sample_labels(9, 10).reshape(3, 3),
                                [[0] * 3, [1] * 3, [2] * 3])
  np.testing.assert_array_equal(images.sample_labels(16, 3)[::4], [0, 1, 2, 0])


# Class-conditional sampling with classifier-free guidance.


def _conditional_model():
  net = unet.UNet(5, feature_dim=8, n_layers=1, dropout_rate=0.0, num_classes=3)
  model = MD4(network=net, vocab_size=5, data_shape=(4, 4, 1))
  return model, toys.random_params(model, jnp.zeros((2, 4, 4, 1), jnp.int32),
                                   label=jnp.zeros(2, jnp.int32))


def test_guidance_tilts_the_conditional_by_the_unconditional():
  model, params = _conditional_model()
  variables = {'params': params}
  z = jax.random.randint(jax.random.key(4), (3, 4, 4, 1), 0, 6)
  t, label = jnp.full((3,), 0.6), jnp.array([0, 1, 2])
  w = 1.5
  guide = jax.jit(functools.partial(sampling_net.guided_logits, model),
                  static_argnames='guidance_scale')
  guided = guide(variables, z, t, label, guidance_scale=w)
  predict = jax.jit(functools.partial(model.apply, method=model.predict_logits))
  p_cond = jax.nn.softmax(predict(variables, z, t, label=label))
  p_null = jax.nn.softmax(predict(variables, z, t, label=jnp.full((3,), 3)))
  want = p_cond**(1 + w) / p_null**w  # ∝ p(x|c)·(p(x|c)/p(x))^w
  # Guided and plain logits come from different programs (float32 summation order; UNet
  # logits differed by 1.5e-5 on an AMX Xeon), and the guided ratio scales that by 1 + 2w.
  np.testing.assert_allclose(jax.nn.softmax(guided), want / want.sum(-1, keepdims=True),
                             rtol=1e-3, atol=1e-5)
  np.testing.assert_allclose(jax.nn.softmax(guide(variables, z, t, label, guidance_scale=0.0)),
                             p_cond, rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match='guidance_scale'):
    guide(variables, z, t, None, guidance_scale=w)


def test_guided_conditional_generation_leaves_no_mask():
  model, params = _conditional_model()
  config = ml_collections.ConfigDict(dict(sampler='ancestral', sampling_grid='cosine',
                                          timesteps=4, topp=0.9, guidance_scale=2.0))
  generate = jax.jit(sampling.make_sampler(model, config))
  prior = model.apply({'params': params}, jax.random.key(0), 6, method=model.sample_prior)
  out, _ = generate(params, jax.random.key(1), prior,
                    jnp.asarray(images.sample_labels(6, 3)))
  assert out.shape == (6, 4, 4, 1) and int(out.min()) >= 0 and int(out.max()) < 5
  config.guidance_scale = -1.0
  with pytest.raises(ValueError, match='guidance_scale must be >= 0'):
    sampling.make_sampler(model, config)


@pytest.mark.parametrize('sampler', sorted(sampling.SAMPLERS))
def test_every_sampler_generates_images(sampler):
  model = MD4(network=toys.Oracle((0.6, 0.3, 0.1)), vocab_size=3, data_shape=(4, 4, 3))
  config = ml_collections.ConfigDict(dict(sampler=sampler, sampling_grid='cosine',
                                          timesteps=4, topp=0.9, guidance_scale=0.0))
  prior = model.apply({}, jax.random.key(0), 5, method=model.sample_prior)
  assert prior.shape == (5, 4, 4, 3)
  out, _ = jax.jit(sampling.make_sampler(model, config))({}, jax.random.key(1), prior)
  assert out.shape == (5, 4, 4, 3) and int(out.min()) >= 0 and int(out.max()) < 3


# A short digits training run.


def test_short_class_conditional_digits_run(tmp_path):
  config = digits_config.get_config()
  config.data.class_conditional = True
  config.network.feature_dim = 16
  config.network.n_layers = 1
  config.sampling.guidance_scale = 1.0
  config.sampling.timesteps = 4
  config.sampling.num_samples = 9
  config.batch_size = 32
  config.num_train_steps = 40
  config.opt.warmup_steps = 5
  config.log_every_steps = 20
  for key in ('eval_every_steps', 'sample_every_steps', 'checkpoint_every_steps'):
    config[key] = 40
  metrics = train.train_and_evaluate(config, str(tmp_path))
  # Zero-initialised logits start at the uniform guess, log2(17) = 4.09 bits per dimension.
  assert metrics['valid_loss'] < 3.6, metrics
  logged = [json.loads(l) for l in open(tmp_path / 'metrics.jsonl')]
  assert [r['step'] for r in logged] == [20, 40]
  grid = tf.io.decode_png(open(tmp_path / 'samples' / 'step_00000040.png', 'rb').read())
  assert grid.shape == (3 * 33 + 1, 3 * 33 + 1, 1)  # 3 rows (classes 0, 1, 2) of 3
