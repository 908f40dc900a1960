"""Stop requests: SIGTERM/Ctrl-C checkpoint the step in progress; a second Ctrl-C quits at once."""

import os
import random
import signal
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from multidevice import REPO_ROOT
from simclr_jax.core import stop_request
from simclr_jax.core import training_loop


def _wait(condition, timeout=10.0):
  start = time.monotonic()
  while not condition():
    assert time.monotonic() - start < timeout, 'timed out'
    time.sleep(0.01)


def test_sigint_and_sigterm_become_a_stop_request():
  previous = signal.getsignal(signal.SIGINT)
  for signum in (signal.SIGINT, signal.SIGTERM):
    with stop_request.StopRequest() as stop:
      assert not stop.should_stop(1)
      os.kill(os.getpid(), signum)
      _wait(lambda: stop.should_stop(2))  # pylint: disable=cell-var-from-loop
      assert stop.signal_name == signum.name
  assert signal.getsignal(signal.SIGINT) is previous  # Handlers restored.
  assert signal.set_wakeup_fd(-1) == -1  # And the wakeup fd.


_BLOCKED_SCRIPT = """
import threading
from simclr_jax.core import stop_request
with stop_request.StopRequest():
  print('ready', flush=True)
  threading.Event().wait(120)  # Stands for a long computation the main thread waits on.
"""


def test_second_ctrl_c_quits_at_once_while_the_main_thread_waits():
  proc = subprocess.Popen(
      [sys.executable, '-c', _BLOCKED_SCRIPT],
      cwd=REPO_ROOT,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
      env=dict(os.environ, JAX_PLATFORMS='cpu'),
  )
  assert proc.stdout.readline() == 'ready\n'
  proc.send_signal(signal.SIGINT)
  time.sleep(0.5)
  assert proc.poll() is None  # The first Ctrl-C only asks for a stop.
  start = time.monotonic()
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=30)
  assert proc.returncode == 130, err
  assert time.monotonic() - start < 5
  assert 'saving a checkpoint after the step in progress' in err
  assert 'Second Ctrl-C: quitting now' in err and 'already saved' in err


def test_a_stop_request_waits_for_the_step_in_progress_only(tmp_path):
  # Steps of ~0.3 s that XLA dispatches asynchronously (the loop could queue many); SIGTERM at
  # a random moment. The loop must save within about one step, not run the queued ones.
  @jax.jit
  def step_fn(state, batch):
    x = batch['x']
    for _ in range(2):
      x = jnp.tanh(x @ x / x.shape[0])
    return (
        {'step': state['step'] + 1, 'w': state['w'] + x.mean()},
        {'loss': x.mean(), 'finite': jnp.isfinite(x.mean())},
    )

  drawn = []  # When the loop asked for each batch.

  def batches():
    x = jax.random.normal(jax.random.PRNGKey(0), (1000, 1000))
    while True:
      drawn.append(time.monotonic())
      yield {'x': x}

  signal_delay = random.Random(0).uniform(1.0, 2.5)
  signalled_at = []

  def send_sigterm():
    while len(drawn) < 3:  # Compiled, and a step or so done.
      time.sleep(0.01)
    time.sleep(signal_delay)
    signalled_at.append(time.monotonic())
    os.kill(os.getpid(), signal.SIGTERM)

  config = ml_collections.ConfigDict(
      {'log_every_steps': 500, 'checkpoint_every_steps': 500, 'progress_every_secs': 30.0}
  )
  manager = ocp.CheckpointManager(tmp_path / 'checkpoints')
  state = {'step': jnp.zeros((), jnp.int32), 'w': jnp.zeros(())}
  sender = threading.Thread(target=send_sigterm)
  sender.start()
  state = training_loop.run(
      config,
      str(tmp_path),
      state,
      step_fn,
      batches(),
      manager=manager,
      batch_size=1000,
      start_step=0,
      total_steps=500,
  )
  returned_at = time.monotonic()
  sender.join()
  stopped = int(state['step'])
  assert stopped < 500 and manager.all_steps() == [stopped]
  # The loop draws a batch once the previous step is done: the intervals are step times.
  step_time = float(np.median(np.diff(drawn[1:])))
  assert returned_at - signalled_at[0] < 2 * step_time + 2.0, (step_time, signal_delay)
