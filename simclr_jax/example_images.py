"""A few examples of a split as numpy arrays, for figures: evaluation views of chosen examples,
pretraining views of the first ones, and the images of any folder (the report, the notebook,
TensorBoard's augmentation grid)."""

import os

import numpy as np
import tensorflow as tf

from simclr_jax import augment
from simclr_jax import augment_jax
from simclr_jax import datasets
from simclr_jax import input_pipeline
from simclr_jax.datasets import image_folder


def _numpy_examples(source, make_example, decode_error_message):
  """All of a small dataset, mapped and stacked into one dict of numpy arrays.

  A decoding failure becomes a ValueError with decode_error_message(error).
  """
  ds = source.map(make_example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  try:
    examples = list(ds.as_numpy_iterator())
  except tf.errors.InvalidArgumentError as e:
    raise ValueError(decode_error_message(e)) from None
  return {k: np.stack([e[k] for e in examples]) for k in ds.element_spec}


def eval_images(config, split, indices, max_examples: int = 0) -> np.ndarray:
  """Evaluation views [len(indices), S, S, 3] of the examples at `indices` of `split`.

  Positions count in the order of create_eval_dataset(config, split, max_examples=...), i.e.
  of the features that extraction returns, so feature rows can be shown as images. Only the
  wanted examples are decoded.
  """
  indices = np.asarray(indices, np.int64).reshape(-1)
  if not indices.size:
    return np.zeros((0, config.image_size, config.image_size, 3), np.float32)
  source, pairs, _ = input_pipeline.eval_pairs(config, split, max_examples)
  wanted = np.unique(indices)
  keep = tf.constant(wanted)
  pairs = pairs.enumerate().filter(lambda i, _: tf.reduce_any(tf.equal(keep, i)))

  @tf.autograph.experimental.do_not_convert
  def make_example(index, pair):
    image = augment.eval_view(source.decode(pair[0]), config.image_size)
    return {'index': index, 'image': image}

  found = _numpy_examples(pairs, make_example, lambda e: source.decode_error_message(split, e))
  if len(found['index']) != len(wanted):
    raise IndexError(f'{split} has no example at {sorted(set(wanted) - set(found["index"]))}.')
  return found['image'][np.searchsorted(found['index'], indices)]


def augmentation_examples(config, split, num_images: int, num_views: int):
  """What pretraining feeds the encoder: (images, views, labels) of a few examples of `split`.

  images [N, S, S, 3] are evaluation views of the first N examples of the evaluation subset
  (create_eval_dataset with max_examples=N); views [N, num_views, S, S, 3] are independent
  draws of the pretraining augmentation (config.augment), seeded by config.seed.
  """
  source, pairs, _ = input_pipeline.eval_pairs(config, split, num_images)
  seed = input_pipeline.stream_seed(config.seed, input_pipeline.EXAMPLE_VIEWS_STREAM)
  first, second = augment_jax.view_configs(config.augment)

  @tf.autograph.experimental.do_not_convert
  def make_example(index, pair):
    encoded, label = pair
    image = source.decode(encoded)
    view_seeds = tf.random.experimental.stateless_split(
        tf.random.experimental.stateless_fold_in(seed, index), num_views
    )

    # map_fn traces the augmentation once per view config, however many views (unrolled,
    # each one costs ~1 s).
    def views_of(config_augment, seeds):
      return tf.map_fn(
          lambda s: augment.pretrain_view(image, s, config_augment, config.image_size),
          seeds,
          fn_output_signature=tf.float32,
      )

    if first == second:
      views = views_of(first, view_seeds)
    else:  # Alternating as the views of a pretraining pair: first, second, first, ...
      views = tf.dynamic_stitch(
          [tf.range(0, num_views, 2), tf.range(1, num_views, 2)],
          [views_of(first, view_seeds[0::2]), views_of(second, view_seeds[1::2])],
      )
    return {'image': augment.eval_view(image, config.image_size), 'views': views, 'label': label}

  examples = _numpy_examples(
      pairs.enumerate(), make_example, lambda e: source.decode_error_message(split, e)
  )
  return examples['image'], examples['views'], examples['label']


def folder_images(folder: str, image_size: int):
  """(sorted paths, evaluation views [N, S, S, 3]) of the images directly in `folder`."""
  if not os.path.isdir(folder):
    raise ValueError(
        f'{folder} is not a folder; give a folder of images '
        f'({", ".join(image_folder.IMAGE_EXTENSIONS)}).'
    )
  paths = sorted(
      e.path
      for e in os.scandir(folder)
      if e.name.lower().endswith(image_folder.IMAGE_EXTENSIONS) and not e.name.startswith('.')
  )
  if not paths:
    raise ValueError(f'No images ({", ".join(image_folder.IMAGE_EXTENSIONS)}) in {folder}.')
  source = tf.data.Dataset.from_tensor_slices(tf.constant(paths, tf.string))

  def unreadable(error):
    bad = image_folder.find_unreadable_images(paths) or [('?', datasets.error_reason(error))]
    return (
        f'{len(bad)} image(s) in {folder} cannot be decoded: {image_folder.listed(bad)}. '
        'Remove or replace them.'
    )

  examples = _numpy_examples(
      source,
      lambda path: {
          'image': augment.eval_view(datasets.decode_bytes(tf.io.read_file(path)), image_size)
      },
      unreadable,
  )
  return paths, examples['image']
