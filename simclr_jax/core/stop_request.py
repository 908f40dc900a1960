"""SIGTERM and Ctrl-C as a request to checkpoint and stop; a second Ctrl-C quits at once."""

import os
import signal
import socket
import sys
import threading

from absl import logging
import jax
from jax.experimental import multihost_utils

# The exit status of a process ended by SIGINT, as shells report it.
_INTERRUPTED_STATUS = 130


class StopRequest:
  """Turns SIGTERM and SIGINT into a request to checkpoint and stop after the current step.

  The signals are watched by a thread (through signal.set_wakeup_fd), so they are seen at once
  even while the main thread waits in a long computation: the first one is acknowledged
  immediately, and a second Ctrl-C ends the process within a moment, keeping the checkpoints
  already saved. With several processes, all stop at the same step: JAX's preemption sync point
  decides, fed by the SIGTERM handler that jax.distributed installs (left in place: a Python
  handler would replace it) and by SIGINT, passed on to that handler as a SIGTERM.
  """

  def __init__(self):
    self.signal_name = None
    self._requested = threading.Event()
    self._previous = {}
    self._previous_wakeup_fd = None
    self._sockets = ()
    self._watcher = None

  def __enter__(self):
    if threading.current_thread() is not threading.main_thread():
      return self  # Signals reach only the main thread's handlers.
    multiprocess = jax.process_count() > 1
    signums = (signal.SIGINT,) if multiprocess else (signal.SIGTERM, signal.SIGINT)
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    self._sockets = (reader, writer)
    for signum in signums:
      # A Python handler makes the interpreter write the signal number to the wakeup fd; the
      # watcher thread acts on it.
      self._previous[signum] = signal.signal(signum, lambda *_: None)
    self._previous_wakeup_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    self._watcher = threading.Thread(
        target=self._watch, args=(reader, set(signums)), name='stop_request', daemon=True
    )
    self._watcher.start()
    return self

  def __exit__(self, *exc):
    if self._watcher is None:
      return
    signal.set_wakeup_fd(self._previous_wakeup_fd)
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    reader, writer = self._sockets
    writer.close()  # The watcher reads end-of-file and returns.
    self._watcher.join()
    reader.close()

  def _watch(self, reader, signums):
    while data := reader.recv(64):
      for signum in data:
        if signum in signums:
          self._on_signal(signal.Signals(signum))

  def _on_signal(self, signum):
    if self._requested.is_set():
      if signum == signal.SIGINT:
        sys.stderr.write(
            'Second Ctrl-C: quitting now, without a new checkpoint; the '
            'checkpoints already saved in the workdir are kept.\n'
        )
        sys.stderr.flush()
        os._exit(_INTERRUPTED_STATUS)  # pylint: disable=protected-access
      return
    self.signal_name = signum.name
    logging.warning(
        '%s received: saving a checkpoint after the step in progress, then '
        'stopping. Press Ctrl-C again to quit at once without it.',
        signum.name,
    )
    self._requested.set()
    if jax.process_count() > 1:
      os.kill(os.getpid(), signal.SIGTERM)  # To jax.distributed, which tells every process.

  def should_stop(self, step: int) -> bool:
    """Whether to checkpoint and stop after `step` (every process must ask at every step)."""
    if jax.process_count() > 1:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._requested.is_set()
