"""metrics.jsonl: one record per write; a resumed run drops the records it redoes. TensorBoard
gets the augmentation grid when pretraining starts. Workdir paths."""

import collections
import errno
import io
import json
import logging
import os

import numpy as np
from PIL import Image
import tensorflow as tf

from simclr_jax.core import workdirs
from simclr_jax.core import writers


def test_jsonl_records_and_resume_truncation(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  writer = writers.JsonlWriter(str(path))
  for step in (2, 4, 6):
    writer.write_scalars(step, {'loss': step / 10})
  writers.drop_records_after(str(path), 4)
  assert [json.loads(line) for line in path.read_text().splitlines()] == [
      {'step': 2, 'loss': 0.2},
      {'step': 4, 'loss': 0.4},
  ]
  writers.drop_records_after(str(tmp_path / 'missing.jsonl'), 4)  # Nothing to trim: no error.
  assert not (tmp_path / 'missing.jsonl').exists()
  # A kill mid-write leaves the last line cut short: dropped, the others kept, and the next
  # record starts on a line of its own.
  with open(path, 'a') as f:
    f.write('{"step": 6, "lo')
  writers.drop_records_after(str(path), 6)
  writer.write_scalars(6, {'loss': 0.6})
  assert [json.loads(line) for line in path.read_text().splitlines()] == [
      {'step': 2, 'loss': 0.2},
      {'step': 4, 'loss': 0.4},
      {'step': 6, 'loss': 0.6},
  ]


def test_pretraining_starts_with_the_augmentation_grid_in_tensorboard(pretrained_workdir):
  images = []
  for path in pretrained_workdir.glob('events.out.tfevents.*'):
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      images += [
          (event.step, value) for value in event.summary.value if value.tag == 'augmentations'
      ]
  assert len(images) == 1  # Once, at the start.
  step, value = images[0]
  assert step == 0 and value.metadata.plugin_data.plugin_name == 'images'
  width, height, png = tf.make_ndarray(value.tensor)
  # 8 train images, each with 4 views, in 32-pixel cells 2 pixels apart.
  assert (int(width), int(height)) == (5 * 34 + 2, 8 * 34 + 2)
  grid = np.asarray(Image.open(io.BytesIO(png)))
  assert grid.shape == (8 * 34 + 2, 5 * 34 + 2, 3) and grid.std() > 20


def test_workdir_paths_are_absolute_or_urls(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert workdirs.path('run', 'checkpoints') == os.path.join(tmp_path, 'run', 'checkpoints')
  # Orbax, TensorBoard and tf.io.gfile take gs:// paths as they are.
  assert workdirs.path('gs://bucket/run', 'config.json') == 'gs://bucket/run/config.json'
  workdirs.write_atomically(workdirs.path('.', 'config.json'), '{}\n')
  assert os.listdir(tmp_path) == ['config.json']  # Renamed into place: no .tmp left.


def test_a_save_that_cannot_fit_is_refused_before_writing(tmp_path, monkeypatch):
  free = 50 * 2**20
  monkeypatch.setattr(
      workdirs.shutil,
      'disk_usage',
      lambda _: collections.namedtuple('Usage', 'total used free')(10 * free, 9 * free, free),
  )
  workdirs.require_free_space(str(tmp_path), 40 * 2**20, 'the checkpoint of step 6')
  try:
    workdirs.require_free_space(str(tmp_path), 48 * 2**20, 'the checkpoint of step 6')
  except OSError as e:
    assert e.errno == errno.ENOSPC and e.filename == str(tmp_path)
    assert e.strerror == (
        f'the checkpoint of step 6 needs about 53.8 MB in {tmp_path}, ' 'which has 50.0 MB free'
    )
  else:
    raise AssertionError('not refused')
  workdirs.require_free_space('gs://bucket/run', 2**40, 'unknowable')  # URLs are not checked.
  assert not os.listdir(tmp_path)


def test_orbax_info_and_expected_read_only_warnings_are_dropped():
  def record(path, level, message):
    return logging.LogRecord('absl', level, path, 1, message, (), None)

  shown = writers._shown  # pylint: disable=protected-access
  orbax = '/site-packages/orbax/checkpoint/checkpoint_manager.py'
  assert not shown(record(orbax, logging.INFO, 'Saving checkpoint'))
  assert not shown(record(orbax, logging.WARNING, 'Given directory is read only=/w/checkpoints'))
  assert shown(record(orbax, logging.WARNING, 'Something else'))
  assert shown(record('/simclr_jax/train.py', logging.INFO, 'Step 1'))
