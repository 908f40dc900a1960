"""tf.data pipelines over any data source (datasets/): pretraining, fine-tuning, evaluation.

The train split is cut into data shards, one per host by default
(config.data_shards = 0) or config.data_shards of them, a contiguous range of
which each host reads. Each shard's element stream is a pure function of
(config.seed, shard, position): epoch e is the shard permuted with a seed
derived from (config.seed, e), and the k-th element of the stream is augmented
with a seed derived from (config.seed, shard, k). Resuming at a step therefore
reproduces the uninterrupted stream exactly, without replaying earlier epochs;
with a fixed config.data_shards, the global batches do not depend on the
number of hosts either.
All randomness is stateless, so TF's global seed (tf.random.set_seed) has no
effect. Image folders get a full permutation per epoch; TFDS datasets, read
sequentially, a permutation within each block of config.shuffle_buffer_size.
"""

import logging

import jax
import tensorflow as tf

from simclr_jax import augment
from simclr_jax import augment_jax
from simclr_jax import datasets

# Distinct streams so the shuffle and augmentation seeds are independent.
_SHUFFLE_STREAM = 1
_AUGMENT_STREAM = 2
_EVAL_SUBSET_STREAM = 3
EXAMPLE_VIEWS_STREAM = 4  # example_images.augmentation_examples


def _hide_gpus_from_tf():
  # tf.data runs on the host; a TF that grabs GPU memory starves JAX.
  try:
    tf.config.set_visible_devices([], 'GPU')
  except (RuntimeError, ValueError) as e:  # Already initialised elsewhere.
    logging.warning('Could not hide GPUs from TensorFlow: %s', e)


_hide_gpus_from_tf()


def _check_classes(config, classes):
  """Refuses a train split of one class when config scores predictions against its labels."""
  pretrain = config.mode == 'pretrain'
  if len(classes) != 1 or (pretrain and config.eval_every_steps <= 0):
    return
  user = (
      f'the kNN monitor (config.eval_every_steps={config.eval_every_steps})'
      if pretrain
      else f'config.mode={config.mode!r}'
  )
  off = (
      ", or set --config.eval_every_steps=0 to pretrain without labels (the online probe's "
      'probe_accuracy is then a trivial 1)'
      if pretrain
      else ''
  )
  raise ValueError(
      f'config.dataset={config.dataset!r}: split {config.train_split!r} has one class folder '
      f'({classes[0]!r}), and one class gives {user} no labels to evaluate against. Put the '
      f'images in one sub-folder per class (root/{config.train_split}/<class>/<image>){off}.'
  )


def get_dataset_info(config, split) -> datasets.DatasetInfo:
  """Counts the examples and classes of `split` without decoding any image.

  A dataset of one class is refused where config evaluates against labels (the kNN monitor,
  evaluation modes), before anything is compiled.
  """
  source = datasets.get(config)
  info = source.info(split)
  if info.num_classes == 1:
    _check_classes(config, source.class_names())
  return info


def stream_seed(config_seed, stream, *data):
  """A [2] int64 stateless seed derived from (config_seed, stream, *data)."""
  seed = tf.constant([config_seed, stream], tf.int64)
  for d in data:
    seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(d, tf.int64))
  return seed


def _process_or_default(process_index, process_count):
  if process_index is None:
    process_index = jax.process_index()
  if process_count is None:
    process_count = jax.process_count()
  if not 0 <= process_index < process_count:
    raise ValueError(
        f'process_index={process_index} is not in ' f'[0, process_count={process_count}).'
    )
  return process_index, process_count


def _shuffled_stream(source, n_local, block, config_seed, start_index):
  """Epochs of `source`, each permuted blockwise, starting at element start_index.

  Epoch e splits the shard into consecutive blocks of `block` elements and
  permutes each with a seed from (config_seed, e, block index); stateless, so
  independent of TF's global seed. Resuming skips whole blocks before reading
  them and only the remainder inside the first block.
  """
  start_epoch, offset = divmod(start_index, n_local)
  first_block, offset_in_block = divmod(offset, block)

  @tf.autograph.experimental.do_not_convert
  def epoch(e):
    is_first = tf.equal(e, start_epoch)
    block0 = tf.where(is_first, tf.constant(first_block, tf.int64), 0)
    skip = tf.where(is_first, tf.constant(offset_in_block, tf.int64), 0)
    epoch_seed = stream_seed(config_seed, _SHUFFLE_STREAM, e)

    @tf.autograph.experimental.do_not_convert
    def permute(b, elements):
      seed = tf.random.experimental.stateless_fold_in(epoch_seed, b)
      size = tf.shape(elements[0], out_type=tf.int64)[0]
      perm = tf.random.experimental.index_shuffle(tf.range(size), seed, tf.maximum(size - 1, 0))
      return tuple(tf.gather(x, perm) for x in elements)

    blocks = tf.data.Dataset.zip(
        tf.data.Dataset.counter(block0), source.skip(block0 * block).batch(block)
    )
    return blocks.map(permute).unbatch().skip(skip)

  return tf.data.Dataset.counter(start_epoch).flat_map(epoch)


def _training_dataset(
    config,
    make_example,
    *,
    local_batch_size,
    start_step,
    process_index,
    process_count,
    subset=None,
    image_dtype=tf.float32,
):
  """Infinite, batched per-host stream of make_example(image, label, seed) of the train split.

  `image` is decoded to `image_dtype` (float32 in [0, 1], or uint8).
  The split is cut into config.data_shards shards (0: one per process), each a stream of its
  own whose examples, shuffle and augmentation seeds depend on the shard, not on the process.
  A process reads a contiguous range of shards, and its batch is the concatenation of
  local_batch_size / (its number of shards) examples of each, in shard order. The global batch
  (shard 0's examples, then shard 1's, ...) is therefore the same for any number of processes
  that divides config.data_shards.
  """
  process_index, process_count = _process_or_default(process_index, process_count)
  if local_batch_size < 1:
    raise ValueError(f'local_batch_size={local_batch_size} must be >= 1.')
  num_shards = config.data_shards or process_count
  shards_per_process = num_shards // process_count
  # local_batch_size is a multiple of shards_per_process iff the global batch is of num_shards.
  if num_shards % process_count or local_batch_size % shards_per_process:
    raise ValueError(
        f'config.data_shards={config.data_shards} must be a multiple of the {process_count} '
        f'processes and divide the global batch of {local_batch_size * process_count}.'
    )
  first = process_index * shards_per_process
  streams = [
      _shard_batches(
          config,
          make_example,
          shard,
          num_shards,
          local_batch_size // shards_per_process,
          start_step,
          subset,
          image_dtype,
      )
      for shard in range(first, first + shards_per_process)
  ]
  ds = streams[0]
  if len(streams) > 1:
    ds = tf.data.Dataset.zip(tuple(streams)).map(
        tf.autograph.experimental.do_not_convert(
            lambda *batches: tf.nest.map_structure(lambda *x: tf.concat(x, 0), *batches)
        )
    )
  return ds.prefetch(tf.data.AUTOTUNE).with_options(datasets.read_options())


def _shard_batches(
    config, make_example, shard, num_shards, batch_size, start_step, subset, image_dtype
):
  """Batches of make_example(...) of shard `shard` of `num_shards` of the train split."""
  split = config.train_split
  source = datasets.get(config)
  data = source.shard(split, shard, num_shards, subset)
  if data is None:
    raise ValueError(
        f'Split {split!r} of config.dataset={config.dataset!r} has fewer examples than the '
        f'{num_shards} data shards (config.data_shards, or one per process).'
    )

  start_index = int(start_step) * int(batch_size)
  stream = _shuffled_stream(data.pairs, data.num_examples, data.block, config.seed, start_index)
  augment_seed = stream_seed(config.seed, _AUGMENT_STREAM, shard)

  # Control flow is explicit (tf.cond, tf.switch_case), so AutoGraph has
  # nothing to convert; skipping it saves tracing time.
  @tf.autograph.experimental.do_not_convert
  def example(index, element):
    encoded, label = element
    seed = tf.random.experimental.stateless_fold_in(augment_seed, index)
    return make_example(source.decode(encoded, image_dtype), label, seed)

  ds = stream.enumerate(start=start_index)
  ds = ds.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.batch(batch_size, drop_remainder=True)


def create_pretrain_dataset(
    config, *, local_batch_size: int, start_step: int = 0, process_index=None, process_count=None
) -> tf.data.Dataset:
  """Infinite per-host dataset of {'views': [B, 2, S, S, 3], 'label': [B]}, and with
  config.augment.local_crops 'local_views' [B, number, size, size, 3] (multi-crop).

  With config.augment_on_device, of decoded images and seeds instead (see
  `_decoded_training_dataset`); the train step makes the views.

  Args:
    config: the experiment ConfigDict (dataset, tfds_data_dir, train_split,
      image_size, shuffle_buffer_size, seed, augment).
    local_batch_size: examples per batch on this host.
    start_step: first step to produce; the batches equal those an
      uninterrupted stream from step 0 yields at these steps.
    process_index: this host's index (default jax.process_index()).
    process_count: number of hosts (default jax.process_count()).

  Returns:
    A tf.data.Dataset of float32 views in [0, 1] and int32 labels (-1 when
    the dataset has no labels).
  """
  if config.augment_on_device:
    return _decoded_training_dataset(
        config,
        local_batch_size=local_batch_size,
        start_step=start_step,
        process_index=process_index,
        process_count=process_count,
    )

  view_configs = augment_jax.view_configs(config.augment)
  size = augment_jax.pretrain_size(config)
  num_local, local_size, local_config = augment_jax.local_crops(config.augment)

  def two_views(image, label, seed):
    seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 2), num=2)
    views = tf.stack(
        [augment.pretrain_view(image, s, c, size) for s, c in zip(seeds, view_configs)]
    )
    example = {'views': views, 'label': label}
    if num_local:  # Multi-crop: seeds a stream apart from the two views'.
      local_seeds = tf.random.experimental.stateless_split(
          tf.random.experimental.stateless_fold_in(seed, augment_jax.LOCAL_CROPS_STREAM),
          num_local,
      )
      example['local_views'] = tf.stack(
          [
              augment.pretrain_view(image, s, local_config, local_size)
              for s in tf.unstack(local_seeds, num=num_local)
          ]
      )
    return example

  return _training_dataset(
      config,
      two_views,
      local_batch_size=local_batch_size,
      start_step=start_step,
      process_index=process_index,
      process_count=process_count,
  )


def _fixed_image_shape(config, split):
  """(H, W, 3) of the images of `split`, which config.augment_on_device needs to be fixed.

  Where the source cannot tell before reading (a folder: the size of the first image), an
  image of another size fails when the pipeline reads it.
  """
  shape = datasets.get(config).image_shape(split)
  if None in shape:
    raise ValueError(
        f'config.augment_on_device=True needs images of one size, but {config.dataset!r} has '
        f'images of shape {shape}. Set --config.augment_on_device=false to augment them in '
        'tf.data.'
    )
  return shape


def _decoded_training_dataset(config, **kwargs):
  """{'image': uint8 [B, H, W, 3], 'seed': uint32 [B, 2], 'label': [B]} for augment_on_device.

  'seed' is the low 32 bits of both words of the element's stateless seed (the one the
  tf.data views would use), taken by augment_jax.pretrain_views as threefry key data: the
  views stay a function of the stream position, so resuming is still exact.
  """
  split = config.train_split
  shape = _fixed_image_shape(config, split)
  message = (
      f'config.augment_on_device=True needs images of one size, but {config.dataset}/'
      f'{split} has one that is not {shape[0]}x{shape[1]} like its first. Resize the '
      'images to one size, or set --config.augment_on_device=false to augment them '
      'in tf.data'
  )

  def image_and_seed(image, label, seed):
    check = tf.debugging.assert_equal(tf.shape(image), shape, message=message)
    with tf.control_dependencies([check]):
      image = tf.ensure_shape(image, shape)
    return {'image': image, 'seed': tf.cast(seed, tf.uint32), 'label': label}

  return _training_dataset(config, image_and_seed, image_dtype=tf.uint8, **kwargs)


def create_finetune_dataset(
    config,
    *,
    local_batch_size: int,
    subset=None,
    start_step: int = 0,
    process_index=None,
    process_count=None,
) -> tf.data.Dataset:
  """Infinite per-host dataset of {'image': [B, S, S, 3], 'label': [B]} for fine-tuning.

  One crop-and-flip view per example (the reference's fine-tuning augmentation) of the
  examples of config.train_split listed in `subset` (default: all); deterministic and
  resumable like the pretraining stream.
  """

  def crop_and_flip(image, label, seed):
    return {
        'image': augment.crop_flip_view(image, seed, config.augment, config.image_size),
        'label': label,
    }

  return _training_dataset(
      config,
      crop_and_flip,
      local_batch_size=local_batch_size,
      start_step=start_step,
      process_index=process_index,
      process_count=process_count,
      subset=subset,
  )


def eval_pairs(config, split, max_examples):
  """(source, pairs, count) of `split` in evaluation order (DataSource.ordered)."""
  source = datasets.get(config)
  pairs, count = source.ordered(split, max_examples, [config.seed, _EVAL_SUBSET_STREAM])
  return source, pairs, count


def create_eval_dataset(
    config,
    split,
    *,
    local_batch_size: int,
    max_examples: int = 0,
    process_index=None,
    process_count=None,
):
  """Finite per-host dataset of {'image', 'label', 'mask'} for evaluation, in a fixed order.

  Every example of `split` (or the first `max_examples` of a fixed seeded permutation, when >
  0) appears exactly once over all hosts. Batches are padded with mask 0 so that every host
  yields the same number of full batches, as a global jitted function requires.

  Returns:
    (dataset, num_examples): num_examples is the global count before padding.
  """
  process_index, process_count = _process_or_default(process_index, process_count)
  source, pairs, num_examples = eval_pairs(config, split, max_examples)
  # Hosts take interleaved examples; the padding below evens out their counts.
  pairs = pairs.shard(process_count, process_index)
  num_batches = -(-num_examples // (process_count * local_batch_size))
  local_count = len(range(process_index, num_examples, process_count))

  @tf.autograph.experimental.do_not_convert
  def make_example(encoded, label):
    image = augment.eval_view(source.decode(encoded), config.image_size)
    return {'image': image, 'label': label, 'mask': tf.constant(True)}

  ds = pairs.map(make_example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  padding = tf.data.Dataset.from_tensors(
      {
          'image': tf.zeros([config.image_size, config.image_size, 3], tf.float32),
          'label': tf.constant(-1, tf.int32),
          'mask': tf.constant(False),
      }
  ).repeat(num_batches * local_batch_size - local_count)
  ds = ds.concatenate(padding).batch(local_batch_size).prefetch(tf.data.AUTOTUNE)
  return ds.with_options(datasets.read_options()), num_examples
