r"""How long a preempted run takes to save its checkpoint: SIGTERM at random moments.

  python benchmarks/stop_latency.py --config=configs/cifar10.py --workdir=/tmp/stop_latency \
      [--dataset=../shared/data/cifar10-jpeg] [--trials=3] [--seed=0] [--config.KEY=VALUE ...]

Each trial starts (or resumes) the command-line program on WORKDIR, waits until a few steps
have completed, sends SIGTERM at a random moment of a step, and measures the time from the
signal to the checkpoint's appearance and to the process's exit, next to the step time that
the run's own progress lines report. README states the bound these figures check: one step
plus the save. Prints one JSON line per trial.
"""

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time

from absl import app
from absl import flags

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FLAGS = flags.FLAGS
flags.DEFINE_string('config', 'configs/cifar10.py', 'Config file of the runs.')
flags.DEFINE_string('workdir', '/tmp/stop_latency', 'Workdir of the runs (resumed by each trial).')
flags.DEFINE_string('dataset', '../shared/data/cifar10-jpeg', 'config.dataset of the runs.')
flags.DEFINE_integer('trials', 3, 'Number of SIGTERMs.')
flags.DEFINE_integer('seed', 0, 'Seeds the moments of the signals.')
flags.DEFINE_integer('steps_before', 2, 'Completed steps (per trial) before the signal.')
flags.DEFINE_multi_string('override', [], 'More --config.KEY=VALUE flags for the runs.')

_STEP_LINE = re.compile(r'progress\.py:\d+\] Step (\d+)')
_RATE = re.compile(r'([\d.e+-]+) s/step')


def _checkpoints(workdir):
  path = os.path.join(workdir, 'checkpoints')
  return {int(n) for n in os.listdir(path) if n.isdigit()} if os.path.isdir(path) else set()


def _trial(rng) -> dict:
  command = [
      sys.executable,
      '-m',
      'simclr_jax.main',
      f'--config={FLAGS.config}',
      f'--workdir={FLAGS.workdir}',
      f'--config.dataset={FLAGS.dataset}',
      '--config.progress_every_secs=0.001',
      '--config.eval_every_steps=0',
      *[f'--config.{o}' for o in FLAGS.override],
  ]
  proc = subprocess.Popen(
      command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
  )
  done, rates = [], []  # (step, time) of completed steps; reported s/step.

  def read_log():
    for line in proc.stderr:
      if match := _STEP_LINE.search(line):
        done.append((int(match.group(1)), time.monotonic()))
        if rate := _RATE.search(line):
          rates.append(float(rate.group(1)))

  reader = threading.Thread(target=read_log, daemon=True)
  reader.start()
  while len(done) < FLAGS.steps_before + 1:
    if proc.poll() is not None:
      raise RuntimeError(f'The run ended early (status {proc.returncode}).')
    time.sleep(0.01)
  step_time = rates[-1]
  time.sleep(rng.uniform(0, step_time))  # A random moment of the step in progress.
  before = _checkpoints(FLAGS.workdir)
  signalled = time.monotonic()
  proc.send_signal(signal.SIGTERM)
  saved = None
  while proc.poll() is None:
    if saved is None and _checkpoints(FLAGS.workdir) - before:
      saved = time.monotonic() - signalled
    time.sleep(0.01)
  exited = time.monotonic() - signalled
  reader.join()
  stopped = max(_checkpoints(FLAGS.workdir))
  return {
      'step_seconds': step_time,
      'signal_to_checkpoint_seconds': saved,
      'signal_to_exit_seconds': exited,
      'last_step_done_before_signal': max(s for s, t in done if t <= signalled),
      'checkpoint_step': stopped,
      'status': proc.returncode,
  }


def main(argv):
  del argv
  rng = random.Random(FLAGS.seed)
  for _ in range(FLAGS.trials):
    print(json.dumps({'config': FLAGS.config, **_trial(rng)}), flush=True)


if __name__ == '__main__':
  app.run(main)
