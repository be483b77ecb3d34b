"""Image datasets: every channel value of every pixel is one token, examples [H, W, C].

`digits` is scikit-learn's bundled `load_digits` (1,797 scanned 8×8 digits, grey levels
0..16, so 17 token ids), offline. `cifar10` and `imagenet64` are read from TFDS datasets
prepared in `data_dir` beforehand; nothing is downloaded while training. Each builder
returns `(vocab_size, decode, splits)`: `splits` maps 'train' and then each eval split to
uint8 token ids `[N, H, W, C]`, or with `class_conditional` to
`{'x': [N, H, W, C], 'label': [N]}`; `decode` turns one example into uint8 pixels.

Sample grids: `sample_labels` gives a conditional model's labels, one grid row per class,
and `write_grid` saves samples as one PNG.
"""

import dataclasses
import math
import os

import numpy as np

from md4 import files

DIGITS_NUM_VALID = 300  # the last 300 of load_digits' 1,797 images are held out
DIGITS_LEVELS = 17  # grey levels 0..16
MIN_DISPLAY_SIZE = 32  # smaller images are enlarged (nearest neighbour) in sample grids


@dataclasses.dataclass(frozen=True)
class TfdsImages:
  """A TFDS image dataset and the names of its splits, here and in TFDS."""
  name: str  # TFDS name of the unlabelled images
  labelled_name: str  # TFDS name of the same kind of images with 'label'
  shape: tuple[int, int, int]
  num_classes: int
  splits: tuple[tuple[str, str], ...]  # (our split, TFDS split), 'train' first


TFDS_IMAGES = {
    'cifar10': TfdsImages('cifar10', 'cifar10', (32, 32, 3), 10,
                          (('train', 'train'), ('test', 'test'))),
    # Unconditional: van den Oord et al.'s downsampled ImageNet, the likelihood benchmark.
    # Class-conditional: Chrabaszcz et al.'s box-resized ImageNet, which keeps the labels.
    'imagenet64': TfdsImages('downsampled_imagenet/64x64', 'imagenet_resized/64x64',
                             (64, 64, 3), 1000,
                             (('train', 'train'), ('valid', 'validation'))),
}
NUM_CLASSES = {'digits': 10, **{k: v.num_classes for k, v in TFDS_IMAGES.items()}}


def to_pixels(ids: np.ndarray, vocab_size: int) -> np.ndarray:
  """Token ids in [0, V) -> uint8 grey levels, v·255/(V − 1) rounded: same shape."""
  ids = np.asarray(ids)
  if vocab_size == 256:
    return ids.astype(np.uint8)
  return np.round(ids * (255.0 / (vocab_size - 1))).astype(np.uint8)


def _check_shape(name, data_shape, shape):
  if tuple(data_shape) != tuple(shape):
    raise ValueError(f'dataset {name!r} holds {shape} images; set config.data.data_shape'
                     f' to {shape}, got {tuple(data_shape)}')


def _with_labels(images, labels, class_conditional):
  return {'x': images, 'label': labels.astype(np.int32)} if class_conditional else images


def digits(data_config):
  """load_digits as [N, 8, 8, 1] ids in [0, 17); the last 300 images are 'valid'."""
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  _check_shape('digits', data_config.data_shape, (8, 8, 1))
  bunch = datasets.load_digits()
  images = bunch.images.astype(np.uint8)[..., None]  # [1797, 8, 8, 1]
  labels = bunch.target
  cut = len(images) - DIGITS_NUM_VALID
  conditional = data_config.get('class_conditional', False)
  splits = {'train': _with_labels(images[:cut], labels[:cut], conditional),
            'valid': _with_labels(images[cut:], labels[cut:], conditional)}
  return DIGITS_LEVELS, lambda x: to_pixels(x, DIGITS_LEVELS), splits


def tfds_images(name, data_config):
  """A prepared TFDS dataset as uint8 arrays, read in order with download=False."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  source = TFDS_IMAGES[name]
  _check_shape(name, data_config.data_shape, source.shape)
  conditional = data_config.get('class_conditional', False)
  tfds_name = source.labelled_name if conditional else source.name
  data_dir = os.path.expanduser(data_config.data_dir)
  builder = tfds.builder(tfds_name, data_dir=data_dir)
  if not builder.is_prepared():
    raise FileNotFoundError(
        f'TFDS dataset {tfds_name!r} is not prepared in {data_dir} (looked for '
        f'{builder.data_dir}). Prepare it once on a machine with network access: '
        f'`tfds build {tfds_name} --data_dir={data_dir}` (pip install tensorflow-datasets'
        f' gives the `tfds` command), then copy {data_dir}/{tfds_name.split("/")[0]} here,'
        ' or set --config.data.data_dir to where it is.')
  splits = {}
  for split, tfds_split in source.splits:
    n = builder.info.splits[tfds_split].num_examples
    images = np.empty((n,) + source.shape, np.uint8)  # filled in place: ImageNet is large
    labels = np.empty((n,), np.int64)
    i = 0
    for chunk in tfds.as_numpy(builder.as_dataset(split=tfds_split, batch_size=10_000,
                                                  shuffle_files=False)):
      k = len(chunk['image'])
      images[i : i + k] = chunk['image']
      if conditional:
        labels[i : i + k] = chunk['label']
      i += k
    splits[split] = _with_labels(images, labels, conditional)
  return 256, lambda x: to_pixels(x, 256), splits


def sample_labels(num_samples: int, num_classes: int) -> np.ndarray:
  """Labels of a conditional model's samples, one grid row per class: [N] int32.

  Sample i sits in row i // cols of a `grid_columns(N)`-wide grid and gets class row mod K.
  """
  cols = grid_columns(num_samples)
  return (np.arange(num_samples) // cols % num_classes).astype(np.int32)


def grid_columns(num_samples: int) -> int:
  return math.ceil(math.sqrt(num_samples))


def image_grid(images: np.ndarray, pad: int = 1) -> np.ndarray:
  """uint8 images [N, H, W, C] -> one uint8 image in rows of `grid_columns(N)`, with
  `pad` white pixels between cells; images under 32 pixels are enlarged first."""
  n, h, w, c = images.shape
  scale = max(1, MIN_DISPLAY_SIZE // max(h, w))
  images = images.repeat(scale, axis=1).repeat(scale, axis=2)
  h, w = h * scale, w * scale
  cols = grid_columns(n)
  rows = math.ceil(n / cols)
  grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, np.uint8)
  for i, image in enumerate(images):
    top, left = pad + (i // cols) * (h + pad), pad + (i % cols) * (w + pad)
    grid[top : top + h, left : left + w] = image
  return grid


def write_grid(path: str, images: np.ndarray) -> np.ndarray:
  """Writes `image_grid(images)` as a PNG at path (atomically); returns the grid."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  grid = image_grid(images)
  files.atomic_write(path, tf.io.encode_png(grid).numpy())
  return grid
