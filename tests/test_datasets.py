"""datasets/: one dispatch picks the source, and a new source plugs in by registration alone."""

import json
import logging
import shutil

import numpy as np
import pytest
import tensorflow as tf

from conftest import load_config, tiny_config
from simclr_jax import datasets
from simclr_jax import evaluate
from simclr_jax import input_pipeline
from simclr_jax import train
from simclr_jax.datasets import core
from simclr_jax.datasets import flat_folder
from simclr_jax.datasets.flat_folder import FlatFolderSource
from simclr_jax.datasets.image_folder import ImageFolderSource
from simclr_jax.datasets.tfds import TfdsSource

_SIZE = 8
_NUM = 12  # Examples of the toy source's splits; image i is a constant grey of value 20 * i.


class ArraySource(core.DataSource):
  """A toy source: config.dataset='arrays:N' holds N constant 6x6 PNG images, label i % 3."""

  @staticmethod
  def accepts(dataset):
    return dataset.startswith('arrays:')

  def _count(self):
    return int(self.config.dataset.split(':')[1])

  def _pairs(self, indices):
    encoded = [
        tf.io.encode_png(tf.fill([6, 6, 3], tf.constant(20 * i, tf.uint8))).numpy() for i in indices
    ]
    return tf.data.Dataset.from_tensor_slices(
        (tf.constant(encoded), tf.constant([i % 3 for i in indices], tf.int32))
    )

  def info(self, split):
    return datasets.DatasetInfo(num_examples=self._count(), num_classes=3)

  def class_names(self):
    return ['a', 'b', 'c']

  def labels(self, split):
    return np.arange(self._count(), dtype=np.int32) % 3

  def shard(self, split, shard, num_shards, subset=None):
    indices = list(range(self._count()) if subset is None else subset)[shard::num_shards]
    return core.Shard(self._pairs(indices), len(indices), len(indices)) if indices else None

  def ordered(self, split, max_examples, subset_seed):
    indices = range(min(max_examples or self._count(), self._count()))
    return self._pairs(indices), len(indices)

  def decode(self, data, dtype=tf.float32):
    return datasets.decode_bytes(data, dtype)

  def image_shape(self, split):
    return (6, 6, 3)

  def decode_error_message(self, split, error):
    return f'toy image unreadable: {datasets.error_reason(error)}'


@pytest.fixture
def with_array_source(monkeypatch):
  monkeypatch.setattr(core, 'SOURCES', (f'{__name__}:ArraySource',) + core.SOURCES)


def _config(dataset):
  config = load_config('cifar10')
  config.dataset = dataset
  config.image_size = _SIZE
  config.augment.color_jitter_prob = 0.0  # Keeps each view a constant grey of its image.
  config.augment.grayscale_prob = 0.0
  config.augment.blur_prob = 0.0
  return config


def test_dispatch_picks_folders_then_tfds(tmp_path):
  assert type(datasets.get(_config(str(tmp_path)))) is ImageFolderSource
  assert type(datasets.get(_config('./not/yet/made'))) is ImageFolderSource
  assert type(datasets.get(_config('cifar10'))) is TfdsSource
  assert type(datasets.get(_config('cifar10/config:3.0.2'))) is TfdsSource


def test_a_registered_source_feeds_every_pipeline(with_array_source):
  del with_array_source
  config = _config(f'arrays:{_NUM}')
  assert input_pipeline.get_dataset_info(config, 'train') == datasets.DatasetInfo(_NUM, 3)
  batch = next(
      input_pipeline.create_pretrain_dataset(
          config, local_batch_size=_NUM, process_index=0, process_count=1
      ).as_numpy_iterator()
  )
  assert batch['views'].shape == (_NUM, 2, _SIZE, _SIZE, 3)
  # Crops and flips of a constant image: every view is its image's grey, paired with its label.
  grey = np.rint(batch['views'].mean(axis=(1, 2, 3, 4)) * 255 / 20).astype(int)
  assert sorted(grey) == list(range(_NUM))
  np.testing.assert_array_equal(batch['label'], grey % 3)

  dataset, count = input_pipeline.create_eval_dataset(
      config, 'test', local_batch_size=5, process_index=0, process_count=1
  )
  batches = list(dataset.as_numpy_iterator())
  assert count == _NUM and len(batches) == 3  # 12 examples and 3 padding rows.
  mask = np.concatenate([b['mask'] for b in batches])
  labels = np.concatenate([b['label'] for b in batches])
  np.testing.assert_array_equal(labels[mask], np.arange(_NUM) % 3)
  assert not mask[_NUM:].any()


def _flat_folder(cifar10_subset, root, num=40):
  """`num` CIFAR train images directly in `root`, a corrupt one, and a sub-folder (not read)."""
  root.mkdir()
  sources = sorted((cifar10_subset / 'train').glob('*/*.jpg'))[::5][:num]
  for i, path in enumerate(sources):
    shutil.copy(path, root / f'{i:03d}.jpg')
  (root / 'broken.jpg').write_bytes(b'not an image')
  (root / 'extra').mkdir()
  shutil.copy(sources[0], root / 'extra' / 'inside.jpg')
  return root


def test_flat_folder_is_one_unlabelled_split(cifar10_subset, tmp_path):
  root = _flat_folder(cifar10_subset, tmp_path / 'flat', num=10)
  config = _config(str(root))
  config.skip_bad_images = True
  source = datasets.get(config)
  assert type(source) is FlatFolderSource
  assert type(datasets.get(_config(str(cifar10_subset)))) is ImageFolderSource  # Split folders.
  for split in ('train', 'anything'):
    assert source.info(split) == datasets.DatasetInfo(num_examples=10, num_classes=0)
  np.testing.assert_array_equal(source.labels('train'), [-1] * 10)
  assert source.class_names() == []
  batch = next(
      input_pipeline.create_pretrain_dataset(
          config, local_batch_size=4, process_index=0, process_count=1
      ).as_numpy_iterator()
  )
  assert batch['views'].shape == (4, 2, _SIZE, _SIZE, 3)
  np.testing.assert_array_equal(batch['label'], [-1] * 4)
  config.skip_bad_images = False
  flat_folder.examples.cache_clear()
  stream = input_pipeline.create_pretrain_dataset(
      config, local_batch_size=4, process_index=0, process_count=1
  )
  with pytest.raises(tf.errors.InvalidArgumentError):  # An epoch of 11 files holds broken.jpg.
    list(stream.take(3).as_numpy_iterator())
  assert 'broken.jpg (' in source.decode_error_message('train', None)


def test_pretraining_on_a_flat_folder_monitors_eval_dataset(
    cifar10_subset, tmp_path, caplog, toy_encoder
):
  config = tiny_config(_flat_folder(cifar10_subset, tmp_path / 'flat'))
  config.model.name = toy_encoder
  config.skip_bad_images = True
  config.num_train_steps = 2
  caplog.set_level(logging.INFO)
  config.eval.dataset = str(cifar10_subset)
  config.eval_every_steps = 2
  train.train_and_evaluate(config, str(tmp_path / 'monitored'))
  assert 'has no labels: no online probe; the monitors read config.eval.dataset=' in caplog.text
  records = [json.loads(line) for line in open(tmp_path / 'monitored' / 'metrics.jsonl')]
  assert not any('probe_accuracy' in r for r in records)
  assert 0 <= [r for r in records if 'knn_top1' in r][-1]['knn_top1'] <= 1
  # Evaluation reads the labelled eval.dataset too.
  config.mode, config.eval.protocol = 'evaluate', 'knn'
  config.pretrained_workdir = str(tmp_path / 'monitored')
  results = evaluate.evaluate(config, str(tmp_path / 'knn'))
  assert results['num_eval_examples'] == 100 and 0 <= results['top1'] <= 1
