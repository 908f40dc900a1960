"""TensorFlow Datasets as a data source: config.dataset names a prepared TFDS dataset."""

import numpy as np
import tensorflow as tf

from simclr_jax.datasets import core

_FOLDER_EXAMPLE = '../shared/data/cifar10-jpeg'


class TfdsSource(core.DataSource):
  """A prepared TFDS dataset (config.dataset, in config.tfds_data_dir); images read as
  encoded bytes in file order, decoded in the pipeline."""

  @staticmethod
  def accepts(dataset):
    del dataset
    return True  # The last source: any name that is not a folder.

  def __init__(self, config):
    super().__init__(config)
    self._builder = None

  @property
  def builder(self):
    """The prepared builder, or a ValueError naming the fix (checked before reading: TFDS
    would otherwise try to download an unprepared dataset, minutes of retries offline)."""
    if self._builder is None:
      import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

      config = self.config
      try:
        builder = tfds.builder(config.dataset, data_dir=config.tfds_data_dir or None)
      except ValueError as e:  # DatasetNotFoundError subclasses ValueError.
        first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(
            f'config.dataset={config.dataset!r} is neither an existing image folder '
            f'nor a known TFDS dataset ({first_line}). Use a TFDS name such as '
            f"'cifar10' or a folder such as {_FOLDER_EXAMPLE}."
        ) from None
      if not builder.is_prepared():
        raise ValueError(
            f'TFDS dataset config.dataset={config.dataset!r} is not prepared in '
            f'{builder.data_dir} (config.tfds_data_dir={config.tfds_data_dir!r}). '
            f'Prepare it with `tfds build {config.dataset} --data_dir=DIR` on a '
            'machine with internet and copy DIR here (then set '
            '--config.tfds_data_dir=DIR), or set --config.dataset to an image '
            f'folder such as {_FOLDER_EXAMPLE}.'
        )
      self._builder = builder
    return self._builder

  def _num_examples(self, split):
    try:
      return self.builder.info.splits[split].num_examples
    except (KeyError, ValueError) as e:
      raise ValueError(
          f'TFDS dataset {self.config.dataset!r} has no split {split!r} '
          f'(available: {sorted(self.builder.info.splits.keys())}; error: {e}).'
      ) from None

  def _num_classes(self):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    features = self.builder.info.features
    if 'label' in features and isinstance(features['label'], tfds.features.ClassLabel):
      return features['label'].num_classes
    return 0

  def _pairs(self, split, read_config=None):
    """The split as (encoded image bytes, int32 label or -1), in file order."""
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    source = self.builder.as_dataset(
        split=split,
        shuffle_files=False,
        decoders={'image': tfds.decode.SkipDecoding()},
        read_config=read_config,
    )
    has_label = self._num_classes() > 0

    @tf.autograph.experimental.do_not_convert
    def to_pair(example):
      label = tf.cast(example['label'], tf.int32) if has_label else tf.constant(-1, tf.int32)
      return example['image'], label

    return source.map(to_pair)

  def info(self, split):
    return core.DatasetInfo(num_examples=self._num_examples(split), num_classes=self._num_classes())

  def class_names(self):
    if not self._num_classes():
      return []
    return list(self.builder.info.features['label'].names)

  def labels(self, split):
    self._num_examples(split)
    return np.concatenate(
        [labels for _, labels in self._pairs(split).batch(4096).as_numpy_iterator()]
    )

  def shard(self, split, shard, num_shards, subset=None):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    num_examples = self._num_examples(split)
    read_config = tfds.ReadConfig(options=core.read_options())
    if subset is None:
      n_local = num_examples // num_shards
      if n_local == 0:
        return None
      sub_split = tfds.even_splits(split, n=num_shards, drop_remainder=True)[shard]
      pairs = self._pairs(sub_split, read_config)
    else:
      n_local = len(subset) // num_shards
      if n_local == 0:
        return None
      keep = np.zeros(num_examples, bool)
      keep[np.asarray(subset)] = True
      keep = tf.constant(keep)
      pairs = (
          self._pairs(split, read_config)
          .enumerate()
          .filter(lambda i, _: tf.gather(keep, i))
          .map(lambda _, pair: pair)
          .shard(num_shards, shard)
      )
    # Records are read sequentially, so shuffling is per block of shuffle_buffer_size encoded
    # records (held in memory, like a shuffle buffer).
    block = max(1, min(int(self.config.shuffle_buffer_size), n_local))
    return core.Shard(pairs.take(n_local), n_local, block)

  def ordered(self, split, max_examples, subset_seed):
    del subset_seed  # The file order is not sorted by class: its first examples are a sample.
    num_examples = self._num_examples(split)
    if max_examples:
      num_examples = min(num_examples, max_examples)
      split = f'{split}[:{num_examples}]'
    return self._pairs(split), num_examples

  def decode(self, data, dtype=tf.float32):
    return core.decode_bytes(data, dtype)

  def image_shape(self, split):
    del split
    shape = self.builder.info.features['image'].shape
    return tuple(shape[:2]) + (3,)

  def decode_error_message(self, split, error):
    return (
        f'A record of TFDS dataset {self.config.dataset!r} split {split!r} could not be '
        f'decoded ({core.error_reason(error)}); rebuild the dataset.'
    )
