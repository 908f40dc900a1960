r"""Whole pretraining runs on 1 core and on all cores, with and without huge-page malloc.

  python benchmarks/cpu_cores.py [--config=configs/cifar10_cpu.py] [--steps=60] [--pairs=2] \
      [--dataset=../shared/data/cifar10-jpeg] [--cpus=0;0,1] [--workdir=/tmp/simclr_cores]

Runs `python -m simclr_jax.main` (input pipeline, checkpoints and logging included) pinned with
taskset to each CPU set of --cpus, each with config.huge_page_malloc on and off, all
combinations alternating --pairs times, so that a drift of the machine's speed reaches each
combination alike. For each run: steps/s over the steps after the first logged interval
(compilation excluded), the CPU time (user, kernel) and minor page faults of the whole run, and
the cores it kept busy ((user + kernel) / wall). Prints one JSON object.
"""

import json
import os
import resource
import shutil
import subprocess
import sys
import time

from absl import app
from absl import flags

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FLAGS = flags.FLAGS
flags.DEFINE_string(
    'config', os.path.join(REPO_ROOT, 'configs', 'cifar10_cpu.py'), 'Config file to pretrain with.'
)
flags.DEFINE_string(
    'dataset',
    os.environ.get(
        'SIMCLR_CIFAR10_DIR', os.path.join(REPO_ROOT, '..', 'shared', 'data', 'cifar10-jpeg')
    ),
    'CIFAR-10 image folder.',
)
flags.DEFINE_integer('steps', 60, 'Steps of each run.')
flags.DEFINE_integer('pairs', 2, 'Times each combination runs, alternating.')
flags.DEFINE_string('cpus', '0;0,1', 'CPU sets to pin to (taskset -c), separated by ";".')
flags.DEFINE_string('workdir', '/tmp/simclr_cores', 'Scratch folder (emptied before each run).')


def run_once(cpus: str, huge_pages: bool) -> dict:
  workdir = os.path.join(FLAGS.workdir, 'run')
  shutil.rmtree(workdir, ignore_errors=True)
  env = {k: v for k, v in os.environ.items() if k != 'GLIBC_TUNABLES'}
  command = [
      'taskset',
      '-c',
      cpus,
      sys.executable,
      '-m',
      'simclr_jax.main',
      f'--config={FLAGS.config}',
      f'--workdir={workdir}',
      f'--config.dataset={FLAGS.dataset}',
      f'--config.num_train_steps={FLAGS.steps}',
      '--config.log_every_steps=10',
      f'--config.huge_page_malloc={huge_pages}',
  ]
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  start = time.perf_counter()
  subprocess.run(command, cwd=REPO_ROOT, env=env, check=True, capture_output=True)
  wall = time.perf_counter() - start
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  timed = [r['steps_per_sec'] for r in records[1:] if 'steps_per_sec' in r]
  user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
  return {
      'cpus': cpus,
      'huge_page_malloc': huge_pages,
      'steps_per_sec': round(sum(timed) / len(timed), 3),
      'wall_sec': round(wall, 1),
      'user_sec': round(user, 1),
      'kernel_sec': round(system, 1),
      'cores_busy': round((user + system) / wall, 2),
      'minor_faults': after.ru_minflt - before.ru_minflt,
  }


def main(argv):
  del argv
  runs = []
  for _ in range(FLAGS.pairs):
    for cpus in FLAGS.cpus.split(';'):
      for huge_pages in (False, True):
        runs.append(run_once(cpus, huge_pages))
        print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
  print(json.dumps({'config': FLAGS.config, 'steps': FLAGS.steps, 'runs': runs}, indent=2))


if __name__ == '__main__':
  app.run(main)
