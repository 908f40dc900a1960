"""Flat-folder data source: a folder whose images lie directly in it, without labels.

Every split name reads the whole folder (there are no split or class folders), so pretraining
on it has no online probe and no kNN monitor unless config.eval.dataset names a labelled
dataset for them. Listing, checks and decoding are the image folder's.
"""

import functools
import os

from simclr_jax.datasets import core
from simclr_jax.datasets import image_folder


def _has_top_level_image(folder):
  with os.scandir(folder) as entries:
    return any(
        not e.name.startswith('.')
        and os.path.splitext(e.name)[1].lower() in image_folder.IMAGE_EXTENSIONS
        for e in entries
    )


@functools.lru_cache(maxsize=16)
def examples(dataset, skip_bad_images):
  """(sorted paths, labels all -1, no classes) of the images directly in `dataset`."""
  root = os.path.expanduser(dataset)
  paths, unreadable, ignored = image_folder.scan_folder(root)
  image_folder.check_unreadable(dataset, 'all', unreadable, skip_bad_images)
  image_folder.warn_left_out(root, [], ignored)
  labels = [-1] * len(paths)
  if skip_bad_images:
    paths, labels = image_folder.without_undecodable(dataset, 'all', paths, labels)
  if not paths:
    raise ValueError(f'config.dataset={dataset!r}: no readable images left in {root}.')
  return paths, labels, []


class FlatFolderSource(image_folder.ImageFolderSource):
  """config.dataset: a folder holding images directly (sub-folders are not read)."""

  @staticmethod
  def accepts(dataset):
    root = os.path.expanduser(dataset)
    return os.path.isdir(root) and _has_top_level_image(root)

  def _examples(self, split):
    del split  # Every split is the whole folder.
    return examples(self.config.dataset, bool(self.config.skip_bad_images))

  def info(self, split):
    return core.DatasetInfo(num_examples=len(self._examples(split)[0]), num_classes=0)
