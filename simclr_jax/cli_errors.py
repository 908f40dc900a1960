"""How the command-line programs end on a known error: its sentence alone, exit status 2."""

import contextlib
import errno
import sys

# Exit status of a program ended by a known error (as for a usage error).
ERROR_STATUS = 2


def fail(message: str):
  """Ends the program with `message` (a known error) and exit status 2."""
  sys.stderr.write(f'\nError: {message}\n')
  sys.stderr.flush()
  sys.exit(ERROR_STATUS)


def explained(error) -> str | None:
  """The message for a known error, or None for one that is not (a bug: show its traceback)."""
  if isinstance(error, OSError) and error.errno == errno.ENOSPC:
    what = error.strerror if error.filename else f'{error}'
  elif 'No space left on device' in str(error):  # From Orbax's writer threads.
    what = f'a write failed: {str(error).splitlines()[0][:300]}'
  else:
    what = None
  if what:
    return (
        f'not enough disk space: {what}. The checkpoints and metrics written so far are '
        'intact; free some space (or lower config.keep_checkpoints) and rerun the same '
        'command to resume.'
    )
  # Here, not at the top: the programs import this module before JAX and TensorFlow load.
  from simclr_jax.core import workdir_lock  # pylint: disable=g-import-not-at-top

  if isinstance(error, (ValueError, FloatingPointError, workdir_lock.WorkdirLocked)):
    return str(error)
  return None


@contextlib.contextmanager
def as_sentences(verbose: bool):
  """Turns a known error raised inside into `fail` with its sentence (unless `verbose`)."""
  try:
    yield
  except Exception as e:  # pylint: disable=broad-exception-caught
    message = explained(e)
    if message is None or verbose:
      raise
    fail(f'{message}\n(--verbose shows the traceback.)')
