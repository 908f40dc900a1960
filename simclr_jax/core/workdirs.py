"""A run's workdir: its paths and safe writes, local or on a filesystem that all hosts see such
as gs:// (tf.io.gfile)."""

import errno
import os
import shutil

import tensorflow as tf


def absolute(workdir: str) -> str:
  """A local WORKDIR made absolute (as Orbax needs), a URL (gs://...) as it is."""
  return workdir if '://' in workdir else os.path.abspath(workdir)


def path(workdir: str, name: str) -> str:
  """WORKDIR/name, with WORKDIR as absolute() gives it."""
  return os.path.join(absolute(workdir), name)


def write_atomically(path: str, text: str):
  """Writes `text` aside, then renames it to `path`: no reader ever sees half a file, and two
  writers at once (their own names aside) leave one whole file."""
  aside = f'{path}.tmp{os.getpid()}'
  with tf.io.gfile.GFile(aside, 'w') as f:
    f.write(text)
  tf.io.gfile.rename(aside, path, overwrite=True)


def require_free_space(directory: str, nbytes: int, what: str):
  """Raises OSError(ENOSPC) naming `what`, `directory` and the space it needs, if short.

  Checked before writing, as a save that runs out of space mid-way fails deep inside Orbax's
  threads. Local directories only: a URL's free space is not known.
  """
  if '://' in directory:
    return
  needed = int(1.1 * nbytes) + (1 << 20)  # Metadata and file-system blocks on top.
  free = shutil.disk_usage(directory).free
  if free < needed:
    raise OSError(
        errno.ENOSPC,
        f'{what} needs about {needed / 2**20:,.1f} MB in {directory}, '
        f'which has {free / 2**20:,.1f} MB free',
        directory,
    )
