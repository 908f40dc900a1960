"""One run per workdir: a second run is refused naming the first; dead runs' locks are taken."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from multidevice import REPO_ROOT
from simclr_jax.core import workdir_lock

_HOLDER = """
import sys, threading
from simclr_jax.core import workdir_lock
with workdir_lock.hold(sys.argv[1]):
  print('holding', flush=True)
  threading.Event().wait(120)
"""


def _start_holder(workdir):
  proc = subprocess.Popen(
      [sys.executable, '-c', _HOLDER, str(workdir)],
      cwd=REPO_ROOT,
      stdout=subprocess.PIPE,
      text=True,
      env=dict(os.environ, JAX_PLATFORMS='cpu'),
  )
  assert proc.stdout.readline() == 'holding\n'
  return proc


def test_a_live_run_refuses_others_and_a_killed_one_is_taken_over(tmp_path):
  holder = _start_holder(tmp_path)
  try:
    with pytest.raises(workdir_lock.WorkdirLocked) as error:
      with workdir_lock.hold(str(tmp_path)):
        pass
    message = str(error.value)
    assert f'pid {holder.pid} on host' in message and 'in use by another run' in message
    assert '--workdir' in message
    # The flock, not the note, says who is alive: a note naming a dead pid (another pid
    # namespace, a container sharing the volume) must not let a second run in.
    lock_file = tmp_path / workdir_lock.LOCK_NAME
    note = json.loads(lock_file.read_text())
    lock_file.write_text(json.dumps({**note, 'pid': 2**22 + 12345}))
    with pytest.raises(workdir_lock.WorkdirLocked, match='in use by another run'):
      with workdir_lock.hold(str(tmp_path)):
        pass
    lock_file.write_text(json.dumps(note))
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  lock_file = tmp_path / workdir_lock.LOCK_NAME
  assert json.loads(lock_file.read_text())['pid'] == holder.pid  # Left behind by the kill.
  with workdir_lock.hold(str(tmp_path)):  # Its flock died with it: taken over.
    assert json.loads(lock_file.read_text())['pid'] == os.getpid()
  assert not lock_file.exists()


def _lock_from_another_machine(workdir, heartbeat_age):
  (workdir / workdir_lock.LOCK_NAME).write_text(
      json.dumps(
          {
              'host': 'another-machine',
              'pid': 4242,
              'started': '2026-01-01T00:00:00+00:00',
              'command': ['main.py'],
              'heartbeat': time.time() - heartbeat_age,
          }
      )
  )


def test_another_machines_lock_holds_while_its_heartbeat_is_recent(tmp_path):
  _lock_from_another_machine(tmp_path, heartbeat_age=10)
  with pytest.raises(
      workdir_lock.WorkdirLocked,
      match=r"another machine \(pid 4242 on host 'another-machine'.*delete",
  ):
    with workdir_lock.hold(str(tmp_path)):
      pass
  _lock_from_another_machine(tmp_path, heartbeat_age=workdir_lock.STALE_SECS + 10)
  with workdir_lock.hold(str(tmp_path)):
    pass


def test_a_torn_lock_file_is_taken_over(tmp_path):
  (tmp_path / workdir_lock.LOCK_NAME).write_text('{"host": "vm", "pi')
  with workdir_lock.hold(str(tmp_path)):
    pass
  with workdir_lock.hold(str(tmp_path / 'new' / 'workdir')):  # Created if missing.
    pass
