"""Image-folder data source: root/<split>/<class>/<image>, listed and checked before training.

Listing finds what training would trip over later and says so at once: unreadable files
(permissions, broken or looping links), formats TensorFlow cannot decode, class folders without
images, evaluated classes the train split lacks.
"""

import collections
import concurrent.futures
import errno
import functools
import logging
import os

import numpy as np
import tensorflow as tf

from simclr_jax.datasets import core

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif')
# Image formats tf.io.decode_image cannot read (WebP only without alpha or animation): listings
# leave them out with a warning rather than fail on them mid-run.
_UNDECODABLE_EXTENSIONS = (
    '.webp',
    '.tif',
    '.tiff',
    '.heic',
    '.heif',
    '.avif',
    '.jxl',
    '.jp2',
    '.ico',
    '.svg',
)
_STAT_ERRORS = {
    errno.ENOENT: 'broken link',
    errno.ELOOP: 'symlink loop',
    errno.EACCES: 'permission denied',
}


def is_image_folder(dataset):
  """Whether `config.dataset` names an image folder rather than a TFDS dataset."""
  if dataset.startswith(('.', '~', os.sep)) or os.path.isdir(dataset):
    return True
  if os.sep in dataset or (os.altsep and os.altsep in dataset):
    # TFDS builder configs are also written 'name/config'.
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    name = dataset.split('/')[0].split(':')[0]
    return name not in tfds.list_builders(with_community_datasets=False)
  return False


def _split_dir(dataset, split):
  """root/<split> of an image-folder dataset; a ValueError with the fix if either is missing."""
  root = os.path.expanduser(dataset)
  if not os.path.isdir(root):
    raise ValueError(
        f'config.dataset={dataset!r} does not exist; point --config.dataset at '
        'a folder laid out as root/<split>/<class>/<image> or use a TFDS name.'
    )
  split_dir = os.path.join(root, split)
  if not os.path.isdir(split_dir):
    found = sorted(e.name for e in os.scandir(root) if e.is_dir())
    raise ValueError(
        f'config.dataset={dataset!r} has no split folder {split!r} '
        f'({split_dir} is missing; sub-folders found: {found}). Set the split '
        'with --config.train_split or lay the data out as '
        'root/<split>/<class>/<image>.'
    )
  return split_dir


def _links_up(entry, split_dir):
  """Whether the class folder `entry` links to split_dir or a folder above it (a loop)."""
  if not entry.is_symlink():
    return False
  target = os.path.realpath(entry.path)
  return os.path.commonpath([target, os.path.realpath(split_dir)]) == target


def _unreadable_reason(entry):
  """Why the image file `entry` cannot be read, or None; a syscall or two, no decoding."""
  try:
    if entry.is_file():
      return None if os.access(entry.path, os.R_OK) else 'permission denied'
    os.stat(entry.path)  # Raises for a broken link.
  except OSError as e:
    return _STAT_ERRORS.get(e.errno, e.strerror)
  return 'not a regular file'


def _is_class_dir(entry):
  """Whether the entry of a split folder is a folder, hence a class if it holds images."""
  try:
    return not entry.name.startswith('.') and entry.is_dir()
  except OSError:  # A symlink loop such as x -> x: not a folder.
    return False


def scan_folder(class_dir):
  """(sorted readable image paths, sorted [(path, reason)] unreadable, Counter of ignored ext)
  of the files directly in `class_dir`."""
  images, unreadable, ignored = [], [], collections.Counter()
  with os.scandir(class_dir) as entries:
    for entry in entries:
      if entry.name.startswith('.'):
        continue
      extension = os.path.splitext(entry.name)[1].lower()
      if extension in _UNDECODABLE_EXTENSIONS:
        ignored[extension] += 1
      elif extension in IMAGE_EXTENSIONS:
        reason = _unreadable_reason(entry)
        if reason is None:
          images.append(entry.path)
        else:
          unreadable.append((entry.path, reason))
  return sorted(images), sorted(unreadable), ignored


def listed(bad, limit=5):
  """'path (reason); ...' of the first `limit` of [(path, reason)], then ' ...' if more."""
  return '; '.join(f'{p} ({r})' for p, r in bad[:limit]) + (' ...' if len(bad) > limit else '')


def check_unreadable(dataset, split, unreadable, skip_bad_images):
  """Raises a ValueError naming the unreadable files; with skip_bad_images, logs their count."""
  if not unreadable:
    return
  if not skip_bad_images:
    raise ValueError(
        f'{len(unreadable)} image(s) in {dataset}/{split} cannot be read: {listed(unreadable)}. '
        'Fix their permissions or links, or delete them, or set '
        '--config.skip_bad_images=true to leave them out (the log counts them).'
    )
  warn_skipped(dataset, split, unreadable)


def warn_skipped(dataset, split, bad):
  """Logs how many of [(path, reason)] config.skip_bad_images leaves out, with the first."""
  logging.warning(
      'Skipping %d unreadable images of %s/%s (config.skip_bad_images), e.g. %s: ' '%s.',
      len(bad),
      dataset,
      split,
      *bad[0],
  )


def warn_left_out(split_dir, empty, ignored):
  """Logs the class folders without images and the files of undecodable formats of a split."""
  if empty:
    logging.warning(
        'Ignoring %d folder(s) of %s that hold no images, so are not classes: %s%s. '
        'Put images in them or remove them.',
        len(empty),
        split_dir,
        ', '.join(empty[:5]),
        ' ...' if len(empty) > 5 else '',
    )
  if ignored:
    counts = ', '.join(f'{n} {extension}' for extension, n in sorted(ignored.items()))
    logging.warning(
        "Ignoring %s files in %s (TensorFlow's decoder reads JPEG, PNG, BMP and "
        'GIF): convert them to one of those to use them.',
        counts,
        split_dir,
    )


@functools.lru_cache(maxsize=16)
def list_split(dataset, split, skip_bad_images):
  """(sorted paths, labels, class names) of root/<split>/<class>/<image>, listed once.

  Class folders without readable images (empty, or a link back up the tree) are not classes,
  and files of formats TensorFlow cannot decode are left out; both are logged. Unreadable
  files (no permission, broken links) raise a ValueError, or with skip_bad_images are left out.
  """
  split_dir = _split_dir(dataset, split)
  with os.scandir(split_dir) as entries:
    class_dirs = sorted(filter(_is_class_dir, entries), key=lambda e: e.name)
  paths, labels, classes, empty = [], [], [], []
  unreadable, ignored = [], collections.Counter()
  for entry in class_dirs:
    if _links_up(entry, split_dir):
      empty.append(f'{entry.name} (a link to {os.path.realpath(entry.path)})')
      continue
    images, bad, odd = scan_folder(entry.path)
    unreadable += bad
    ignored += odd
    if not images:
      empty.append(entry.name)
      continue
    paths += images
    labels += [len(classes)] * len(images)
    classes.append(entry.name)
  check_unreadable(dataset, split, unreadable, skip_bad_images)
  warn_left_out(split_dir, empty, ignored)
  if not paths:
    raise ValueError(
        f'config.dataset={dataset!r}: no images in {split_dir}/<class>/ '
        f'(class folders found: {[e.name for e in class_dirs]}; extensions searched: '
        f'{IMAGE_EXTENSIONS}). Put the images in one sub-folder per class.'
    )
  return paths, labels, classes


def _decode_failure(path):
  """None if TensorFlow (the pipeline's decoder) reads the image at `path`, else the reason."""
  try:
    tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    return None
  except tf.errors.OpError as e:
    return core.error_reason(e)


def find_unreadable_images(paths):
  """[(path, reason)] for the files among `paths` that cannot be decoded, in order."""
  with concurrent.futures.ThreadPoolExecutor(max(2, os.cpu_count() or 1)) as pool:
    reasons = list(pool.map(_decode_failure, paths))
  return [(p, r) for p, r in zip(paths, reasons) if r is not None]


def without_undecodable(dataset, split, paths, labels):
  """(paths, labels) less the files TensorFlow cannot decode, whose count the log gives."""
  bad = find_unreadable_images(paths)
  if not bad:
    return paths, labels
  warn_skipped(dataset, split, bad)
  dropped = {p for p, _ in bad}
  kept = [i for i, p in enumerate(paths) if p not in dropped]
  return [paths[i] for i in kept], [labels[i] for i in kept]


@functools.lru_cache(maxsize=16)
def examples(dataset, split, train_split, skip_bad_images):
  """(paths, labels, classes) of an image-folder split; labels index train_split's classes.

  With skip_bad_images, files TensorFlow cannot read or decode are left out (once per process,
  counted in the log).
  """
  paths, labels, classes = list_split(dataset, split, skip_bad_images)
  if split != train_split:
    train_classes = list_split(dataset, train_split, skip_bad_images)[2]
    missing = sorted(set(classes) - set(train_classes))
    if missing:
      raise ValueError(
          f'config.dataset={dataset!r}: split {split!r} has classes that split '
          f"{train_split!r} lacks: {missing}. Evaluation labels come from the train split's "
          'class folders; add those classes to it or remove them from the evaluated split.'
      )
    labels = [train_classes.index(classes[label]) for label in labels]
    classes = train_classes
  if skip_bad_images:
    paths, labels = without_undecodable(dataset, split, paths, labels)
  return paths, labels, classes


class ImageFolderSource(core.DataSource):
  """A folder laid out as root/<split>/<class>/<image> (config.dataset): the files of a split
  are listed (and checked) once per process, read and decoded in the pipeline."""

  @staticmethod
  def accepts(dataset):
    return is_image_folder(dataset)

  def _examples(self, split):
    config = self.config
    return examples(config.dataset, split, config.train_split, bool(config.skip_bad_images))

  def info(self, split):
    paths, _, classes = self._examples(split)
    return core.DatasetInfo(num_examples=len(paths), num_classes=len(classes))

  def class_names(self):
    return list(self._examples(self.config.train_split)[2])

  def labels(self, split):
    return np.asarray(self._examples(split)[1], np.int32)

  def _pairs(self, paths, labels):
    return tf.data.Dataset.from_tensor_slices(
        (tf.constant(paths, tf.string), tf.constant(labels, tf.int32))
    )

  def shard(self, split, shard, num_shards, subset=None):
    paths, labels, _ = self._examples(split)
    if subset is not None:
      paths, labels = [paths[i] for i in subset], [labels[i] for i in subset]
    n_local = len(paths) // num_shards
    if n_local == 0:
      return None
    # The listing is sorted by class, so anything short of a full permutation per epoch would
    # give class-skewed batches.
    return core.Shard(
        self._pairs(paths[shard::num_shards][:n_local], labels[shard::num_shards][:n_local]),
        n_local,
        n_local,
    )

  def ordered(self, split, max_examples, subset_seed):
    paths, labels, _ = self._examples(split)
    # Sorted by class: a subset is the first examples of a seeded permutation.
    order = (
        tf.random.experimental.index_shuffle(
            tf.range(len(paths), dtype=tf.int64), subset_seed, len(paths) - 1
        ).numpy()
        if max_examples
        else range(len(paths))
    )
    order = list(order)[: max_examples or None]
    return self._pairs([paths[i] for i in order], [labels[i] for i in order]), len(order)

  def decode(self, data, dtype=tf.float32):
    return core.decode_bytes(tf.io.read_file(data), dtype)

  def image_shape(self, split):
    path = self._examples(split)[0][0]
    try:
      return tuple(self.decode(path, tf.uint8).shape)
    except tf.errors.OpError as e:
      raise ValueError(self.decode_error_message(split, e)) from None

  def decode_error_message(self, split, error):
    config = self.config
    bad = find_unreadable_images(self._examples(split)[0])
    if not bad:
      return f'Reading {config.dataset}/{split} failed: {error.message.strip()[:500]}'
    return (
        f'{len(bad)} image(s) in {config.dataset}/{split} cannot be decoded: '
        f'{listed(bad)}. Replace or delete them, or set --config.skip_bad_images=true to '
        'leave them out (the log counts them).'
    )
