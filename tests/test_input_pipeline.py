"""Tests of the pretraining input pipeline on tiny image folders and TFDS datasets."""

import os
import time

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from conftest import load_config
from simclr_jax import datasets
from simclr_jax.datasets import image_folder as folder_listing
from simclr_jax import input_pipeline
from simclr_jax.core import prefetch

SIZE = 8  # Output side: tiny keeps the tests fast.

# Image i is a constant colour whose red channel is 20 * i + 10, so every view of it,
# whatever the crop or flip, tells which image it came from (colour ops are turned off).
# (class, file name, PIL mode, (height, width)) per image; several modes and sizes.
_TRAIN_IMAGES = [
    ('cat', 'a0.png', 'RGB', (10, 12)),
    ('cat', 'a1.PNG', 'L', (7, 9)),
    ('cat', 'a2.png', 'RGBA', (16, 16)),
    ('cat', 'a3.jpg', 'RGB', (20, 14)),
    ('dog', 'b4.png', 'P', (12, 12)),
    ('dog', 'b5.gif', 'P', (9, 11)),
    ('dog', 'b6.bmp', 'RGB', (13, 8)),
    ('dog', 'b7.jpeg', 'RGB', (8, 8)),
    ('emu', 'c8.png', 'RGB', (11, 10)),
    ('emu', 'c9.png', 'RGB', (6, 15)),
    ('emu', 'c10.png', 'RGB', (9, 9)),
]
_NUM_TRAIN = len(_TRAIN_IMAGES)
_CLASSES = ['cat', 'dog', 'emu']
_LABEL_OF_ID = np.array([_CLASSES.index(c) for c, *_ in _TRAIN_IMAGES])


def _red(i):
  return 20 * i + 10


def _constant_image(i, mode, hw):
  height, width = hw
  rgb = (_red(i), 100, 50)
  if mode == 'L':
    return Image.new('L', (width, height), _red(i))
  if mode == 'RGBA':
    return Image.new('RGBA', (width, height), rgb + (90,))
  if mode == 'P':
    image = Image.new('P', (width, height), 0)
    image.putpalette(list(rgb) + [0, 0, 0] * 255)
    return image
  return Image.new('RGB', (width, height), rgb)


def _write_image(path, i, mode, hw):
  image = _constant_image(i, mode, hw)
  if path.endswith(('.jpg', '.jpeg')):
    image.save(path, quality=95)
  else:
    image.save(path)


@pytest.fixture(scope='module')
def image_folder(tmp_path_factory):
  root = tmp_path_factory.mktemp('images')
  for i, (cls, name, mode, hw) in enumerate(_TRAIN_IMAGES):
    os.makedirs(root / 'train' / cls, exist_ok=True)
    _write_image(str(root / 'train' / cls / name), i, mode, hw)
  (root / 'train' / 'cat' / 'notes.txt').write_text('not an image')
  for cls in ('cat', 'dog'):
    os.makedirs(root / 'test' / cls)
    _write_image(str(root / 'test' / cls / 'x.png'), 0, 'RGB', (5, 5))
  return root


def _config(dataset, **overrides):
  config = load_config('cifar10')
  config.dataset = str(dataset)
  config.image_size = SIZE
  config.seed = 3
  for key, value in overrides.items():
    config[key] = value
  return config


def _light_config(dataset, **overrides):
  """Every stage but colour jitter, whose big graph dominates pipeline build time.

  Enough to check the plumbing of the per-element seeds (crop, flip, grayscale and
  blur all draw from them).
  """
  config = _config(dataset, **overrides)
  config.augment.color_jitter_prob = 0.0
  config.augment.blur_prob = 0.5
  return config


def _identity_config(dataset, **overrides):
  """Crop and flip only: each view's red channel identifies its source image."""
  config = _config(dataset, **overrides)
  config.augment.color_jitter_prob = 0.0
  config.augment.grayscale_prob = 0.0
  config.augment.blur_prob = 0.0
  return config


def _ids(views):
  """Image ids from views [..., S, S, 3] of the constant images."""
  red = views[..., 0].reshape(views.shape[:-3] + (-1,)) * 255
  assert np.ptp(red, axis=-1).max() < 3  # Still a constant image.
  return np.rint((red.mean(-1) - 10) / 20).astype(int)


def _batches(config, num, **kwargs):
  kwargs.setdefault('process_index', 0)
  kwargs.setdefault('process_count', 1)
  dataset = input_pipeline.create_pretrain_dataset(config, **kwargs)
  return list(dataset.take(num).as_numpy_iterator())


def test_dataset_info_counts_images_and_classes(image_folder):
  config = _config(image_folder)
  assert input_pipeline.get_dataset_info(config, 'train') == datasets.DatasetInfo(
      num_examples=_NUM_TRAIN, num_classes=3
  )
  # The test split has 2 class folders, but labels index the train split's 3 classes.
  assert input_pipeline.get_dataset_info(config, 'test') == datasets.DatasetInfo(
      num_examples=2, num_classes=3
  )


def test_missing_folder_is_reported(tmp_path):
  missing = tmp_path / 'nope'
  with pytest.raises(ValueError, match='does not exist; point --config.dataset'):
    input_pipeline.get_dataset_info(_config(missing), 'train')


def test_missing_split_is_reported(image_folder):
  with pytest.raises(ValueError, match="no split folder 'validation'"):
    input_pipeline.get_dataset_info(_config(image_folder), 'validation')


def test_empty_split_is_reported(tmp_path):
  os.makedirs(tmp_path / 'train' / 'cat')
  (tmp_path / 'train' / 'cat' / 'readme.txt').write_text('x')
  with pytest.raises(ValueError, match='no images in'):
    input_pipeline.get_dataset_info(_config(tmp_path), 'train')
  with pytest.raises(ValueError, match='no images in'):
    input_pipeline.create_pretrain_dataset(
        _config(tmp_path), local_batch_size=2, process_index=0, process_count=1
    )


def test_empty_dataset_folder_is_reported(tmp_path):
  with pytest.raises(ValueError, match=r"has no split folder 'train' .*sub-folders found: \[\]"):
    input_pipeline.get_dataset_info(_config(tmp_path), 'train')


def test_unknown_tfds_name_is_reported():
  with pytest.raises(ValueError, match="config.dataset='no_such_dataset_xyz'"):
    input_pipeline.get_dataset_info(_config('no_such_dataset_xyz'), 'train')


def test_unprepared_tfds_dataset_fails_fast(tmp_path):
  config = _config('cifar10', tfds_data_dir=str(tmp_path))
  start = time.perf_counter()
  with pytest.raises(ValueError, match='not prepared') as error:
    input_pipeline.get_dataset_info(config, 'train')
  message = str(error.value)
  assert 'tfds build' in message and 'cifar10-jpeg' in message
  with pytest.raises(ValueError, match='not prepared'):
    input_pipeline.create_pretrain_dataset(
        config, local_batch_size=2, process_index=0, process_count=1
    )
  assert time.perf_counter() - start < 10


def test_batches_have_shapes_dtypes_and_labels(image_folder):
  batches = _batches(_identity_config(image_folder), 3, local_batch_size=4)
  for batch in batches:
    assert set(batch) == {'views', 'label'}
    assert batch['views'].shape == (4, 2, SIZE, SIZE, 3)
    assert batch['views'].dtype == np.float32
    assert batch['label'].shape == (4,) and batch['label'].dtype == np.int32
    assert batch['views'].min() >= 0 and batch['views'].max() <= 1
    ids = _ids(batch['views'])
    np.testing.assert_array_equal(ids[:, 0], ids[:, 1])  # Two views of one image.
    np.testing.assert_array_equal(batch['label'], _LABEL_OF_ID[ids[:, 0]])


def test_pretrain_image_size_sets_the_side_of_the_views(image_folder):
  config = _identity_config(image_folder, pretrain_image_size=SIZE - 2)
  (batch,) = _batches(config, 1, local_batch_size=4)
  assert batch['views'].shape == (4, 2, SIZE - 2, SIZE - 2, 3)
  ids = _ids(batch['views'])
  np.testing.assert_array_equal(ids[:, 0], ids[:, 1])


def test_weak_policy_makes_seeded_views(image_folder):
  config = _config(image_folder)
  config.augment.policy = 'weak'
  a, b = (_batches(config, 1, local_batch_size=4)[0]['views'] for _ in range(2))
  assert a.shape == (4, 2, SIZE, SIZE, 3) and a.dtype == np.float32
  assert a.min() >= 0 and a.max() <= 1
  np.testing.assert_array_equal(a, b)
  assert np.abs(a[:, 0] - a[:, 1]).mean() > 1e-3


def test_each_epoch_is_a_fresh_permutation(image_folder):
  # One batch of the whole split is exactly one epoch.
  epochs = [
      _ids(b['views'])[:, 0]
      for b in _batches(_identity_config(image_folder), 3, local_batch_size=_NUM_TRAIN)
  ]
  for ids in epochs:
    np.testing.assert_array_equal(np.sort(ids), np.arange(_NUM_TRAIN))
  assert not np.array_equal(epochs[0], epochs[1])
  assert not np.array_equal(epochs[0], np.arange(_NUM_TRAIN))


def test_same_seed_same_batches_different_seed_different(image_folder):
  a = _batches(_config(image_folder), 2, local_batch_size=4)
  b = _batches(_config(image_folder), 2, local_batch_size=4)
  c = _batches(_config(image_folder, seed=4), 2, local_batch_size=4)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x['views'], y['views'])
    np.testing.assert_array_equal(x['label'], y['label'])
  assert not np.array_equal(a[0]['views'], c[0]['views'])
  views = a[0]['views']
  assert np.abs(views[:, 0] - views[:, 1]).mean() > 1e-3  # The two views differ.


def test_stream_ignores_tf_global_seed(image_folder):
  a = _batches(_light_config(image_folder), 1, local_batch_size=4)[0]
  tf.random.set_seed(1234)
  try:
    b = _batches(_light_config(image_folder), 1, local_batch_size=4)[0]
  finally:
    tf.random.set_seed(None)
  np.testing.assert_array_equal(a['views'], b['views'])


def test_resume_matches_uninterrupted_stream(image_folder):
  config = _light_config(image_folder)
  # 11 images, batches of 3: step 3 holds elements 9..11 and so straddles epochs 0 and 1.
  full = _batches(config, 6, local_batch_size=3)
  for step in (1, 3, 5):
    resumed = _batches(config, 1, local_batch_size=3, start_step=step)[0]
    np.testing.assert_array_equal(resumed['views'], full[step]['views'])
    np.testing.assert_array_equal(resumed['label'], full[step]['label'])


def test_resume_far_ahead_does_not_replay_epochs(image_folder):
  config = _identity_config(image_folder)
  start = time.perf_counter()
  batch = _batches(config, 1, local_batch_size=_NUM_TRAIN, start_step=10**9)[0]
  assert time.perf_counter() - start < 10
  ids = _ids(batch['views'])[:, 0]
  np.testing.assert_array_equal(np.sort(ids), np.arange(_NUM_TRAIN))


def test_processes_get_disjoint_equal_shards(image_folder):
  config = _identity_config(image_folder)
  n_local = _NUM_TRAIN // 2
  shards = []
  for index in range(2):
    epochs = _batches(config, 2, local_batch_size=n_local, process_index=index, process_count=2)
    ids = [set(_ids(b['views'])[:, 0]) for b in epochs]
    assert len(ids[0]) == n_local and ids[0] == ids[1]  # Same shard every epoch.
    shards.append(ids[0])
  assert not shards[0] & shards[1]


@pytest.mark.parametrize('data_shards', [2, 4])
def test_data_shards_make_the_global_batch_independent_of_the_process_count(
    image_folder, data_shards
):
  # 11 images in 4 shards of 2 (or 2 of 5); a global batch of 4 takes 4 / data_shards from
  # each. From step 1 on, 3 batches: resumed streams, epochs wrapping around.
  config = _light_config(image_folder, data_shards=data_shards)
  single = _batches(config, 3, local_batch_size=4, start_step=1)
  for count in (2, 4) if data_shards == 4 else (2,):
    local = [
        _batches(
            config,
            3,
            local_batch_size=4 // count,
            start_step=1,
            process_index=i,
            process_count=count,
        )
        for i in range(count)
    ]
    for step, batch in enumerate(single):
      for key in ('views', 'label'):
        np.testing.assert_array_equal(
            np.concatenate([shard[step][key] for shard in local]), batch[key]
        )
  with pytest.raises(
      ValueError,
      match=r'config.data_shards=3 must be a multiple of the 2 '
      r'processes and divide the global batch of 4',
  ):
    _batches(
        _light_config(image_folder, data_shards=3),
        1,
        local_batch_size=2,
        process_index=0,
        process_count=2,
    )


def test_device_batches_are_sharded_global_arrays(image_folder):
  dataset = input_pipeline.create_pretrain_dataset(
      _light_config(image_folder), local_batch_size=4, process_index=0, process_count=1
  ).take(3)
  sharding = NamedSharding(Mesh(jax.devices(), ('data',)), P('data'))
  expected = list(dataset.as_numpy_iterator())
  produced = list(prefetch.device_batches(dataset, sharding, prefetch=2))
  assert len(produced) == 3
  for got, want in zip(produced, expected):
    for key in ('views', 'label'):
      assert isinstance(got[key], jax.Array)
      assert got[key].sharding.is_equivalent_to(sharding, got[key].ndim)
      np.testing.assert_array_equal(np.asarray(got[key]), want[key])


# TFDS: tiny builders prepared locally (no download), registered under these names.


class SimclrTestTinyLabeled(tfds.core.GeneratorBasedBuilder):
  """11 constant-colour images of different sizes, 3 classes."""

  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict(
            {
                'image': tfds.features.Image(shape=(None, None, 3)),
                'label': tfds.features.ClassLabel(num_classes=3),
            }
        ),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    return {'train': self._generate_examples()}

  def _generate_examples(self):
    for i, (_, _, _, (height, width)) in enumerate(_TRAIN_IMAGES):
      image = np.zeros((height, width, 3), np.uint8) + np.uint8([_red(i), 100, 50])
      yield i, {'image': image, 'label': int(_LABEL_OF_ID[i])}


class SimclrTestTinyUnlabeled(tfds.core.GeneratorBasedBuilder):
  """5 images without labels."""

  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict(
            {
                'image': tfds.features.Image(shape=(None, None, 3)),
            }
        ),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    return {'train': self._generate_examples()}

  def _generate_examples(self):
    for i in range(5):
      yield i, {'image': np.full((6, 7, 3), _red(i), np.uint8)}


@pytest.fixture(scope='module')
def tfds_dir(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp('tfds')
  tfds.disable_progress_bar()
  for builder_cls in (SimclrTestTinyLabeled, SimclrTestTinyUnlabeled):
    builder_cls(data_dir=str(data_dir)).download_and_prepare()
  return data_dir


def test_tfds_info_and_batches(tfds_dir):
  config = _identity_config('simclr_test_tiny_labeled', tfds_data_dir=str(tfds_dir))
  assert input_pipeline.get_dataset_info(config, 'train') == datasets.DatasetInfo(
      num_examples=_NUM_TRAIN, num_classes=3
  )
  (batch,) = _batches(config, 1, local_batch_size=_NUM_TRAIN)
  assert batch['views'].shape == (_NUM_TRAIN, 2, SIZE, SIZE, 3)
  ids = _ids(batch['views'])[:, 0]
  np.testing.assert_array_equal(np.sort(ids), np.arange(_NUM_TRAIN))
  np.testing.assert_array_equal(batch['label'], _LABEL_OF_ID[ids])


def test_tfds_resume_and_shards(tfds_dir):
  # A 4-element shuffle block over 11 examples: blocks of 4, 4, 3 per epoch. Step 3
  # (elements 9..11) straddles the epoch boundary; step 5 (15..17) a block boundary.
  config = _light_config(
      'simclr_test_tiny_labeled', tfds_data_dir=str(tfds_dir), shuffle_buffer_size=4
  )
  full = _batches(config, 6, local_batch_size=3)
  for step in (3, 5):
    resumed = _batches(config, 1, local_batch_size=3, start_step=step)[0]
    np.testing.assert_array_equal(resumed['views'], full[step]['views'])
  config = _identity_config('simclr_test_tiny_labeled', tfds_data_dir=str(tfds_dir))
  shards = [
      set(
          _ids(
              _batches(config, 1, local_batch_size=5, process_index=i, process_count=2)[0]['views']
          )[:, 0]
      )
      for i in range(2)
  ]
  assert len(shards[0]) == len(shards[1]) == 5 and not shards[0] & shards[1]


def test_tfds_without_labels(tfds_dir):
  config = _identity_config('simclr_test_tiny_unlabeled', tfds_data_dir=str(tfds_dir))
  assert input_pipeline.get_dataset_info(config, 'train') == datasets.DatasetInfo(
      num_examples=5, num_classes=0
  )
  (batch,) = _batches(config, 1, local_batch_size=4)
  np.testing.assert_array_equal(batch['label'], -np.ones(4))


def test_real_cifar10_subset(cifar10_dir, tmp_path):
  # 64 real JPEGs linked into a fresh folder: the first 7 of each class, cut to 64.
  classes = sorted(p.name for p in (cifar10_dir / 'train').iterdir() if p.is_dir())
  assert len(classes) == 10
  links = []
  for cls in classes:
    os.makedirs(tmp_path / 'train' / cls)
    for src in sorted((cifar10_dir / 'train' / cls).iterdir())[:7]:
      links.append((src, tmp_path / 'train' / cls / src.name))
  for src, dst in links[:64]:
    os.symlink(src, dst)
  config = _config(tmp_path, image_size=32)
  assert input_pipeline.get_dataset_info(config, 'train') == datasets.DatasetInfo(
      num_examples=64, num_classes=10
  )
  (batch,) = _batches(config, 1, local_batch_size=32)
  assert batch['views'].shape == (32, 2, 32, 32, 3)
  assert batch['views'].min() >= 0 and batch['views'].max() <= 1
  assert batch['views'].std() > 0.05  # Real pictures, not blank.
  assert ((0 <= batch['label']) & (batch['label'] < 10)).all()


def _finetune_batches(config, num, **kwargs):
  kwargs.setdefault('process_index', 0)
  kwargs.setdefault('process_count', 1)
  dataset = input_pipeline.create_finetune_dataset(config, **kwargs)
  return list(dataset.take(num).as_numpy_iterator())


@pytest.mark.parametrize('source', ['folder', 'tfds'])
def test_finetune_stream_reads_only_the_subset(image_folder, tfds_dir, source):
  if source == 'folder':
    config = _identity_config(image_folder)
    # Files are listed sorted by class, then name: c10.png comes before c8.png.
    id_of_index = np.array([0, 1, 2, 3, 4, 5, 6, 7, 10, 8, 9])
  else:
    config = _identity_config('simclr_test_tiny_labeled', tfds_data_dir=str(tfds_dir))
    # TFDS stores records in key-hash order.
    records = tfds.builder('simclr_test_tiny_labeled', data_dir=str(tfds_dir)).as_dataset(
        split='train', shuffle_files=False
    )
    id_of_index = np.array(
        [(int(r['image'][0, 0, 0]) - 10) // 20 for r in records.as_numpy_iterator()]
    )
  np.testing.assert_array_equal(datasets.get(config).labels('train'), _LABEL_OF_ID[id_of_index])
  subset = np.array([1, 4, 8, 9])
  batches = _finetune_batches(config, 3, local_batch_size=4, subset=subset)
  for batch in batches:  # Each batch of 4 is one epoch over the subset: a permutation of it.
    assert batch['image'].shape == (4, SIZE, SIZE, 3)
    ids = _ids(batch['image'])
    np.testing.assert_array_equal(np.sort(ids), np.sort(id_of_index[subset]))
    np.testing.assert_array_equal(batch['label'], _LABEL_OF_ID[ids])
  resumed = _finetune_batches(config, 1, local_batch_size=4, subset=subset, start_step=2)[0]
  np.testing.assert_array_equal(resumed['image'], batches[2]['image'])
  shards = [
      set(
          _ids(
              _finetune_batches(
                  config, 1, local_batch_size=2, subset=subset, process_index=i, process_count=2
              )[0]['image']
          )
      )
      for i in range(2)
  ]
  assert shards[0] | shards[1] == set(id_of_index[subset]) and not shards[0] & shards[1]


def test_finetune_views_are_crops_and_flips_without_colour_changes(image_folder):
  config = _config(image_folder)  # Full colour augmentation configured: it must not apply.
  (batch,) = _finetune_batches(config, 1, local_batch_size=_NUM_TRAIN)
  ids = _ids(batch['image'])
  np.testing.assert_array_equal(np.sort(ids), np.arange(_NUM_TRAIN))
  # Constant images keep their exact colour (red, 100, 50): no jitter, no grayscale. Image 1
  # is a grayscale file.
  expected = np.array([[_red(1)] * 2 if i == 1 else [100, 50] for i in ids], np.float32)
  green_blue = batch['image'][..., 1:].reshape(_NUM_TRAIN, -1, 2) * 255
  np.testing.assert_allclose(
      green_blue, np.broadcast_to(expected[:, None], green_blue.shape), atol=3
  )


def _broken_folder(root):
  """Three good images and two bad ones (truncated JPEG, not an image) in one class."""
  good = [('ok0.png', 0), ('ok1.jpg', 1), ('ok2.png', 2)]
  os.makedirs(root / 'train' / 'cls')
  for name, i in good:
    _write_image(str(root / 'train' / 'cls' / name), i, 'RGB', (9, 9))
  full = (root / 'train' / 'cls' / 'ok1.jpg').read_bytes()
  (root / 'train' / 'cls' / 'truncated.jpg').write_bytes(full[: len(full) // 2])
  (root / 'train' / 'cls' / 'zzz.png').write_bytes(b'not an image')
  return root


def test_unreadable_images_are_named(tmp_path):
  config = _identity_config(_broken_folder(tmp_path))
  dataset = input_pipeline.create_pretrain_dataset(
      config, local_batch_size=5, process_index=0, process_count=1
  )
  sharding = NamedSharding(Mesh(np.array(jax.devices()[:1]), ('data',)), P('data'))
  with pytest.raises(ValueError) as error:
    next(prefetch.device_batches(dataset, sharding, config=config, split='train'))
  message = str(error.value)
  assert message.startswith('2 image(s) in ')
  assert 'truncated.jpg' in message and 'zzz.png' in message and 'ok0' not in message
  assert '--config.skip_bad_images=true' in message


def test_unreadable_images_are_skipped_and_counted_when_asked(tmp_path, caplog):
  config = _identity_config(_broken_folder(tmp_path), skip_bad_images=True, eval_every_steps=0)
  assert input_pipeline.get_dataset_info(config, 'train').num_examples == 3
  assert 'Skipping 2 unreadable images' in caplog.text
  (batch,) = _batches(config, 1, local_batch_size=3)
  np.testing.assert_array_equal(np.sort(_ids(batch['views'])[:, 0]), [0, 1, 2])


def test_cmyk_jpeg_is_read_as_rgb(tmp_path):
  os.makedirs(tmp_path / 'train' / 'cls')
  Image.new('CMYK', (12, 10), (0, 155, 205, 0)).save(
      tmp_path / 'train' / 'cls' / 'c.jpg', quality=95
  )
  config = _identity_config(tmp_path)
  (batch,) = _batches(config, 1, local_batch_size=1)
  # CMYK (0, 155, 205, 0) is RGB (255, 100, 50).
  np.testing.assert_allclose(batch['views'][0, 0, 0, 0] * 255, [255, 100, 50], atol=4)


def _clear_listing_caches():
  folder_listing.examples.cache_clear()
  folder_listing.list_split.cache_clear()


def test_eval_labels_follow_the_train_classes(tmp_path):
  for split, classes in (('train', ('ant', 'bee', 'cow')), ('test', ('bee', 'cow'))):
    for i, cls in enumerate(classes):
      os.makedirs(tmp_path / split / cls)
      _write_image(str(tmp_path / split / cls / 'x.png'), i, 'RGB', (8, 8))
  config = _identity_config(tmp_path)
  dataset, count = input_pipeline.create_eval_dataset(
      config, 'test', local_batch_size=2, process_index=0, process_count=1
  )
  (batch,) = list(dataset.as_numpy_iterator())
  assert count == 2 and list(batch['label']) == [1, 2]  # bee and cow as in train.
  os.makedirs(tmp_path / 'test' / 'dog')
  _write_image(str(tmp_path / 'test' / 'dog' / 'x.png'), 0, 'RGB', (8, 8))
  _clear_listing_caches()
  with pytest.raises(
      ValueError, match=r"split 'test' has classes that split 'train' lacks: " r"\['dog'\]"
  ):
    input_pipeline.create_eval_dataset(config, 'test', local_batch_size=2)


def test_augment_on_device_yields_decoded_images_and_seeds(tmp_path):
  for i in range(7):  # Constant PNGs of one size; the red channel tells the image.
    os.makedirs(tmp_path / 'train' / f'c{i % 2}', exist_ok=True)
    _write_image(str(tmp_path / 'train' / f'c{i % 2}' / f'{i}.png'), i, 'RGB', (6, 5))
  config = _config(tmp_path, augment_on_device=True)
  # 7 images, batches of 3: step 2 straddles the first two epochs.
  full = _batches(config, 4, local_batch_size=3)
  for batch in full:
    assert batch['image'].shape == (3, 6, 5, 3) and batch['image'].dtype == np.uint8
    assert batch['seed'].shape == (3, 2) and batch['seed'].dtype == np.uint32
    red = batch['image'][..., 0].reshape(3, -1)
    assert (red == red[:, :1]).all()  # Decoded, not augmented.
    np.testing.assert_array_equal(batch['label'], (red[:, 0] - 10) // 20 % 2)
  seeds = np.concatenate([b['seed'] for b in full])
  assert len({tuple(s) for s in seeds}) == len(seeds)  # One seed per element of the stream.
  for step in (1, 2, 3):
    resumed = _batches(config, 1, local_batch_size=3, start_step=step)[0]
    for key in ('image', 'seed', 'label'):
      np.testing.assert_array_equal(resumed[key], full[step][key])


def test_augment_on_device_needs_images_of_one_size(image_folder, tfds_dir):
  config = _config(image_folder, augment_on_device=True)
  dataset = input_pipeline.create_pretrain_dataset(
      config, local_batch_size=4, process_index=0, process_count=1
  )
  sharding = NamedSharding(Mesh(np.array(jax.devices()[:1]), ('data',)), P('data'))
  with pytest.raises(
      ValueError,
      match=r'augment_on_device=True needs images of one size, but '
      r'.* not 10x12 .*--config.augment_on_device=false',
  ):
    next(prefetch.device_batches(dataset, sharding, config=config, split='train'))
  config = _config('simclr_test_tiny_labeled', tfds_data_dir=str(tfds_dir), augment_on_device=True)
  with pytest.raises(
      ValueError,
      match=r'has images of shape \(None, None, 3\). Set ' r'--config.augment_on_device=false',
  ):
    input_pipeline.create_pretrain_dataset(config, local_batch_size=4)


def _warnings(caplog, text):
  return [
      r.getMessage() for r in caplog.records if r.levelname == 'WARNING' and text in r.getMessage()
  ]


def test_one_class_is_refused_when_labels_are_evaluated(tmp_path):
  os.makedirs(tmp_path / 'train' / 'only')
  for i in range(2):
    _write_image(str(tmp_path / 'train' / 'only' / f'{i}.png'), i, 'RGB', (8, 8))
  with pytest.raises(
      ValueError,
      match=r"split 'train' has one class folder \('only'\), and one "
      r'class gives the kNN monitor \(config.eval_every_steps='
      r'5000\) no labels to evaluate against. Put the images in '
      r'one sub-folder per class .*'
      r'--config.eval_every_steps=0 to pretrain without labels',
  ):
    input_pipeline.get_dataset_info(_config(tmp_path), 'train')
  # Without the kNN monitor, pretraining needs no labels.
  assert input_pipeline.get_dataset_info(_config(tmp_path, eval_every_steps=0), 'train') == (
      datasets.DatasetInfo(num_examples=2, num_classes=1)
  )
  from simclr_jax.evaluators import features  # pylint: disable=g-import-not-at-top

  for mode in ('linear_eval', 'knn_eval'):
    with pytest.raises(ValueError, match=rf"one class gives config.mode='{mode}' no labels") as e:
      features.labelled_train_info(_config(tmp_path, mode=mode, eval_every_steps=0))
    assert 'eval_every_steps' not in str(e.value)


def test_empty_and_looping_class_folders_are_ignored(tmp_path, caplog):
  for split, cls in (('train', 'ant'), ('train', 'cow'), ('test', 'cow')):
    os.makedirs(tmp_path / split / cls)
    _write_image(str(tmp_path / split / cls / 'x.png'), 0, 'RGB', (8, 8))
  for split in ('train', 'test'):
    os.makedirs(tmp_path / split / 'bee')  # Empty.
  (tmp_path / 'train' / 'bee' / 'notes.txt').write_text('not an image')
  os.symlink('..', tmp_path / 'train' / 'loop')  # Back to the dataset root.
  os.symlink('.', tmp_path / 'train' / 'here')  # Back to the split itself.
  os.symlink('self', tmp_path / 'train' / 'self')  # Not a folder: ignored like a file.
  config = _config(tmp_path)
  assert input_pipeline.get_dataset_info(config, 'train') == datasets.DatasetInfo(
      num_examples=2, num_classes=2
  )
  assert datasets.get(config).class_names() == ['ant', 'cow']
  np.testing.assert_array_equal(datasets.get(config).labels('test'), [1])  # cow.
  (train_warning,) = _warnings(caplog, f'{tmp_path / "train"} that hold no images')
  assert train_warning.startswith('Ignoring 3 folder(s) of ')
  assert f'bee, here (a link to {tmp_path / "train"}), loop (a link to {tmp_path})' in (
      train_warning
  )
  (test_warning,) = _warnings(caplog, f'{tmp_path / "test"} that hold no images')
  assert test_warning.endswith('so are not classes: bee. Put images in them or remove them.')


def _unreadable_folder(root):
  """Images 0-2 and unreadable image files; returns their names and reasons."""
  for cls, i in (('a', 0), ('a', 1), ('b', 2)):
    os.makedirs(root / 'train' / cls, exist_ok=True)
    _write_image(str(root / 'train' / cls / f'ok{i}.png'), i, 'RGB', (9, 9))
  os.symlink(root / 'missing.png', root / 'train' / 'a' / 'gone.png')
  os.symlink('loop.jpg', root / 'train' / 'a' / 'loop.jpg')
  os.makedirs(root / 'train' / 'b' / 'folder.png')
  expected = {
      'gone.png': 'broken link',
      'loop.jpg': 'symlink loop',
      'folder.png': 'not a regular file',
  }
  if os.geteuid() != 0:  # root reads files whatever their mode.
    _write_image(str(root / 'train' / 'b' / 'locked.png'), 3, 'RGB', (9, 9))
    os.chmod(root / 'train' / 'b' / 'locked.png', 0)
    expected['locked.png'] = 'permission denied'
  return expected


def test_unreadable_files_are_named_when_listed(tmp_path):
  expected = _unreadable_folder(tmp_path)
  with pytest.raises(ValueError) as error:
    input_pipeline.get_dataset_info(_config(tmp_path), 'train')
  message = str(error.value)
  assert message.startswith(f'{len(expected)} image(s) in {tmp_path}/train cannot be read: ')
  for name, reason in expected.items():
    assert f'{name} ({reason})' in message
  assert 'ok0' not in message
  assert message.endswith(
      'Fix their permissions or links, or delete them, or set '
      '--config.skip_bad_images=true to leave them out (the log counts '
      'them).'
  )


def test_unreadable_files_are_skipped_and_counted_when_asked(tmp_path, caplog):
  expected = _unreadable_folder(tmp_path)
  config = _identity_config(tmp_path, skip_bad_images=True)
  assert input_pipeline.get_dataset_info(config, 'train') == datasets.DatasetInfo(
      num_examples=3, num_classes=2
  )
  (warning,) = _warnings(caplog, 'unreadable')
  assert warning.startswith(
      f'Skipping {len(expected)} unreadable images of {tmp_path}/train '
      '(config.skip_bad_images), e.g. '
  )
  (batch,) = _batches(config, 1, local_batch_size=3)
  np.testing.assert_array_equal(np.sort(_ids(batch['views'])[:, 0]), [0, 1, 2])


def test_undecodable_formats_are_counted_in_one_warning(tmp_path, caplog):
  for cls in ('cat', 'dog'):
    os.makedirs(tmp_path / 'train' / cls)
    _write_image(str(tmp_path / 'train' / cls / 'x.png'), 0, 'RGB', (8, 8))
  for name in ('a.webp', 'b.WEBP', 'c.tiff', 'd.tif'):
    Image.new('RGB', (8, 8)).save(tmp_path / 'train' / 'cat' / name)
  (tmp_path / 'train' / 'dog' / 'e.heic').write_bytes(b'not decodable by TensorFlow')
  (tmp_path / 'train' / 'dog' / 'labels.json').write_text('{}')
  (tmp_path / 'train' / 'dog' / '.DS_Store').write_bytes(b'')
  (tmp_path / 'train' / 'dog' / '.hidden.webp').write_bytes(b'')
  assert input_pipeline.get_dataset_info(_config(tmp_path), 'train').num_examples == 2
  (warning,) = _warnings(caplog, 'Ignoring')
  assert warning == (
      f'Ignoring 1 .heic, 1 .tif, 1 .tiff, 2 .webp files in {tmp_path}/train '
      "(TensorFlow's decoder reads JPEG, PNG, BMP and GIF): convert them to one "
      'of those to use them.'
  )


def test_real_cifar10_lists_quickly(cifar10_dir):
  start = time.perf_counter()
  for split, count in (('train', 50_000), ('test', 10_000)):
    paths, _, classes = folder_listing.list_split(str(cifar10_dir), split, False)
    assert len(paths) == count and len(classes) == 10
  assert time.perf_counter() - start < 3
