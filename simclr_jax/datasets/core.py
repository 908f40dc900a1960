"""Data sources behind one dispatch: what the pipelines read, whatever stores it.

A source lists the examples of a dataset's splits as (encoded image, label) pairs, in a fixed
order, and decodes them; input_pipeline.py shards, shuffles, augments and batches them. A new
source is one module with a DataSource subclass and one entry in SOURCES.
"""

import abc
import dataclasses
import importlib

import numpy as np
import tensorflow as tf

# Sources in dispatch order, as 'module:class': the first whose `accepts(config.dataset)` is
# true reads it. A folder with images at its top is flat, any other folder an image folder;
# TFDS accepts any name, so it comes last.
SOURCES = (
    'simclr_jax.datasets.flat_folder:FlatFolderSource',
    'simclr_jax.datasets.image_folder:ImageFolderSource',
    'simclr_jax.datasets.tfds:TfdsSource',
)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  num_examples: int  # Global number of examples in the split.
  num_classes: int  # 0 when the dataset has no labels.


@dataclasses.dataclass(frozen=True)
class Shard:
  """One data shard of a split: what a training stream permutes and reads."""

  pairs: tf.data.Dataset  # (encoded image, int32 label or -1), num_examples of them.
  num_examples: int
  # The stream permutes consecutive blocks of this many pairs (the whole shard when the source
  # can hold its keys in memory, else a shuffle-buffer-sized block).
  block: int


class DataSource(abc.ABC):
  """A dataset named by config.dataset; reads config.train_split, .skip_bad_images and the
  source's own keys."""

  def __init__(self, config):
    self.config = config

  @staticmethod
  @abc.abstractmethod
  def accepts(dataset: str) -> bool:
    """Whether this source reads config.dataset=`dataset` (cheap: no listing, no reading)."""

  @abc.abstractmethod
  def info(self, split: str) -> DatasetInfo:
    """Counts the examples of `split` and the classes, decoding nothing; raises ValueError
    naming the fix when the dataset or split is missing."""

  @abc.abstractmethod
  def class_names(self) -> list[str]:
    """Names of the classes that labels index (those of the train split); [] if unlabelled."""

  @abc.abstractmethod
  def labels(self, split: str) -> np.ndarray:
    """int32 labels of every example of `split` in order (-1 when unlabelled)."""

  @abc.abstractmethod
  def shard(self, split: str, shard: int, num_shards: int, subset=None) -> Shard | None:
    """Shard `shard` of `num_shards` of `split` (or of its examples at the sorted indices
    `subset`), each holding len // num_shards of them; None when that is 0."""

  @abc.abstractmethod
  def ordered(self, split: str, max_examples: int, subset_seed) -> tuple[tf.data.Dataset, int]:
    """(pairs, count) of `split` in evaluation order: all of it, or with max_examples > 0 a
    fixed subset of that many (seeded by `subset_seed` where the order is by class)."""

  @abc.abstractmethod
  def decode(self, data, dtype=tf.float32) -> tf.Tensor:
    """The [H, W, 3] image of an encoded element, converted to `dtype` ([0, 1] for floats)."""

  @abc.abstractmethod
  def image_shape(self, split: str) -> tuple[int, int, int]:
    """(H, W, 3) of the images of `split`, None where a size varies (a folder: the first
    image's size, unchecked)."""

  @abc.abstractmethod
  def decode_error_message(self, split: str, error) -> str:
    """Names what behind a decoding `error` of `split` is broken, and the fixes."""


def read_options():
  """Deterministic order, and no autotuning model thread.

  Deleting an iterator waits for that thread, which can sleep for up to a minute first (seen
  at the end of multi-process runs, holding every process at shutdown). Without it, parallel
  maps use all cores; the CIFAR-10 pretraining stream was no slower on this project's CPU.
  """
  options = tf.data.Options()
  options.deterministic = True
  options.autotune.enabled = False
  return options


def error_reason(error) -> str:
  """The informative last line of a TensorFlow error, shortened."""
  return error.message.strip().splitlines()[-1][:200]


def decode_bytes(data, dtype=tf.float32):
  image = tf.io.decode_image(data, channels=3, expand_animations=False)
  return tf.image.convert_image_dtype(image, dtype)


def get(config) -> DataSource:
  """The source of config.dataset: the first of SOURCES that accepts it."""
  for entry in SOURCES:
    module, name = entry.split(':')
    source = getattr(importlib.import_module(module), name)
    if source.accepts(config.dataset):
      return source(config)
  raise ValueError(f'No data source reads config.dataset={config.dataset!r}.')
