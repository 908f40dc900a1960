"""One run per workdir: WORKDIR/lock names the run that holds it.

On a local or shared file system the lock is an flock(2) on that file, which the kernel drops
when its process dies, so a lock left by a dead run on this machine is taken over at once. A
holder on another machine cannot be asked whether it is alive (not every shared file system
carries flock between machines, and gs:// has no locks): its lock counts as held while the
holder's heartbeat, rewritten every minute, is recent.
"""

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
import sys
import threading
import time

from absl import logging
import jax
import tensorflow as tf

from simclr_jax.core import distributed
from simclr_jax.core import workdirs

LOCK_NAME = 'lock'
HEARTBEAT_SECS = 60
# A lock from another machine whose heartbeat is older than this is taken to be dead.
STALE_SECS = 5 * HEARTBEAT_SECS
_KEY = 'simclr_jax_workdir_lock'


class WorkdirLocked(RuntimeError):
  """Another run holds the workdir."""


def _describe(holder: dict) -> str:
  return (
      f"pid {holder.get('pid')} on host {holder.get('host')!r}, started "
      f"{holder.get('started')} ({' '.join(holder.get('command', []))})"
  )


class _Lock:
  """The lock file of one workdir, held by this process."""

  def __init__(self, workdir: str):
    self.path = workdirs.path(workdir, LOCK_NAME)
    self._local = '://' not in self.path
    self._fd = None
    self._record = {
        'host': socket.gethostname(),
        'pid': os.getpid(),
        'started': datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
        'command': sys.argv,
    }
    self._stop = threading.Event()
    self._heartbeat = threading.Thread(target=self._beat, name='workdir_lock', daemon=True)

  def acquire(self):
    tf.io.gfile.makedirs(os.path.dirname(self.path))
    if self._local:
      self._flock()
    try:
      holder = self._read()
      if holder:
        self._check_dead(holder)
        logging.warning(
            'Taking over %s from a run that ended without releasing it (%s).',
            self.path,
            _describe(holder),
        )
      self._write()
    except BaseException:
      self._close()
      raise
    self._heartbeat.start()

  def _close(self):
    if self._fd is not None:
      os.close(self._fd)  # Drops the flock.
      self._fd = None

  def release(self):
    self._stop.set()
    if self._heartbeat.is_alive():
      self._heartbeat.join()
    with contextlib.suppress(OSError, tf.errors.NotFoundError):
      tf.io.gfile.remove(self.path)  # Before unlocking: a waiting run then sees a new file.
    self._close()

  def _flock(self):
    while True:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError as e:
        os.close(fd)
        if e.errno not in (errno.EAGAIN, errno.EACCES):
          logging.warning('Cannot flock %s (%s): relying on its heartbeat alone.', self.path, e)
          return
        raise WorkdirLocked(self._held_message(self._read(), alive=True)) from None
      try:
        same_file = os.stat(self.path).st_ino == os.fstat(fd).st_ino
      except FileNotFoundError:
        same_file = False
      if same_file:  # Else the holder removed the file as we opened it: open the new one.
        self._fd = fd
        return
      os.close(fd)

  def _check_dead(self, holder: dict):
    if holder.get('host') == self._record['host']:
      if self._fd is not None or not _pid_alive(holder.get('pid')):
        return  # Our flock succeeded, or its process is gone: it is dead.
      raise WorkdirLocked(self._held_message(holder, alive=True))
    age = time.time() - float(holder.get('heartbeat', 0))
    if age <= STALE_SECS:
      raise WorkdirLocked(self._held_message(holder, alive=False, age=age))

  def _held_message(self, holder: dict | None, alive: bool, age: float = 0.0) -> str:
    who = _describe(holder) if holder else 'another process'
    if alive:
      return (
          f'{os.path.dirname(self.path)} is in use by another run ({who}); two runs in '
          "one workdir would overwrite each other's checkpoints and metrics. Wait for it "
          'to finish or stop it (Ctrl-C or kill saves a checkpoint), or use another '
          '--workdir.'
      )
    return (
        f'{os.path.dirname(self.path)} is held by a run on another machine ({who}), '
        f'alive {age:.0f} s ago by its heartbeat in {self.path}. If that run is dead, '
        f'delete {self.path} and rerun (the lock is also taken over {STALE_SECS // 60} '
        'minutes after its last heartbeat); otherwise use another --workdir.'
    )

  def _read(self) -> dict | None:
    try:
      if self._fd is not None:
        os.lseek(self._fd, 0, os.SEEK_SET)
        text = os.read(self._fd, 1 << 16).decode()
      else:
        with tf.io.gfile.GFile(self.path) as f:
          text = f.read()
      return json.loads(text) if text.strip() else None
    except (OSError, ValueError, tf.errors.NotFoundError):
      return None  # Missing, or torn by a crash mid-write: no live holder to name.

  def _write(self):
    text = json.dumps({**self._record, 'heartbeat': time.time()}) + '\n'
    if self._fd is not None:
      os.ftruncate(self._fd, 0)
      os.pwrite(self._fd, text.encode(), 0)
    else:
      workdirs.write_atomically(self.path, text)

  def _beat(self):
    while not self._stop.wait(HEARTBEAT_SECS):
      try:
        self._write()
      except (OSError, tf.errors.OpError) as e:
        logging.warning('Could not refresh %s: %s', self.path, e)


def _pid_alive(pid) -> bool:
  try:
    os.kill(int(pid), 0)
  except (ProcessLookupError, TypeError, ValueError):
    return False
  except PermissionError:
    pass  # Another user's live process.
  return True


@contextlib.contextmanager
def hold(workdir: str):
  """Holds WORKDIR's lock for the duration, or raises WorkdirLocked naming the holder.

  In a multi-process run, process 0 takes the lock and every process raises its error.
  """
  lock = _Lock(workdir) if jax.process_index() == 0 else None
  error = ''
  if lock:
    try:
      lock.acquire()
    except WorkdirLocked as e:
      error = str(e)
  if jax.process_count() > 1:  # Process 0's outcome, for every process.
    outcome = distributed.all_gather_text(_KEY, error or 'ok')[0]
    error = '' if outcome == 'ok' else outcome
  if error:
    raise WorkdirLocked(error)
  try:
    yield
  finally:
    if lock:
      lock.release()
