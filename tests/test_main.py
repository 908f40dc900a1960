"""The command line end to end on real CIFAR-10 images: train, checkpoint, log, resume."""

import json
import os
import subprocess
import sys

from multidevice import REPO_ROOT

_REQUIRED_SCALARS = {'loss', 'contrastive_loss', 'contrastive_accuracy', 'contrastive_entropy',
                     'learning_rate', 'probe_loss', 'probe_accuracy', 'steps_per_sec',
                     'images_per_sec'}


def _run_cli(workdir, dataset, cache_dir):
  command = [sys.executable, '-m', 'simclr_jax.main', '--config=configs/cifar10.py',
             f'--workdir={workdir}', f'--config.dataset={dataset}',
             '--config.model.width_multiplier=0.125', '--config.batch_size=32',
             '--config.num_train_steps=4', '--config.log_every_steps=2',
             '--config.checkpoint_every_steps=2', '--config.shuffle_buffer_size=256']
  env = dict(os.environ, JAX_PLATFORMS='cpu', JAX_COMPILATION_CACHE_DIR=str(cache_dir))
  proc = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-5000:]
  return proc.stderr


def _read_metrics(workdir):
  with open(workdir / 'metrics.jsonl') as f:
    return [json.loads(line) for line in f]


def test_cli_trains_checkpoints_logs_and_resumes(cifar10_subset, tmp_path):
  dataset = cifar10_subset
  workdir = tmp_path / 'workdir'
  _run_cli(workdir, dataset, tmp_path / 'cache')

  assert sorted(os.listdir(workdir / 'checkpoints')) == ['2', '4']
  assert json.loads((workdir / 'config.json').read_text())['model']['width_multiplier'] == 0.125
  assert any(name.startswith('events.out.tfevents') for name in os.listdir(workdir))
  first = _read_metrics(workdir)
  assert [m['step'] for m in first] == [2, 4]
  assert _REQUIRED_SCALARS <= set(first[0])

  # Lose the last checkpoint, as if the run had died after step 2: the same command resumes
  # from step 2 and recomputes steps 3 and 4 exactly as before.
  subprocess.run(['rm', '-r', str(workdir / 'checkpoints' / '4')], check=True)
  log = _run_cli(workdir, dataset, tmp_path / 'cache')
  assert 'Resuming from checkpoint at step 2' in log
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['2', '4']
  resumed = _read_metrics(workdir)
  assert [m['step'] for m in resumed] == [2, 4, 4]
  for key in ('loss', 'contrastive_accuracy', 'probe_loss', 'learning_rate'):
    assert resumed[2][key] == first[1][key], key
