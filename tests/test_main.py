"""The command line end to end on real CIFAR-10 images: train, checkpoint, log, resume.

Resuming is tested the hard way below: SIGTERM, SIGKILL and a torn save, then a rerun that
must reproduce an uninterrupted run's metrics exactly.
"""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time

from conftest import pretrain_in_this_process
from multidevice import REPO_ROOT
from simclr_jax import cli_errors
from simclr_jax.core import workdir_lock

_REQUIRED_SCALARS = {
    'loss',
    'contrastive_loss',
    'contrastive_accuracy',
    'contrastive_entropy',
    'learning_rate',
    'probe_loss',
    'probe_accuracy',
    'steps_per_sec',
    'images_per_sec',
}


def _cli(workdir, dataset, *overrides):
  """(command, env) of a tiny pretraining run through the command line.

  It shares the suite's compilation cache (tests/conftest.py): the run in this process and those
  through the command line compile the same steps once.
  """
  command = [
      sys.executable,
      '-m',
      'simclr_jax.main',
      '--config=configs/cifar10.py',
      f'--workdir={workdir}',
      f'--config.dataset={dataset}',
      '--config.model.width_multiplier=0.125',
      '--config.model.conv_impl=xla',
      '--config.batch_size=32',
      '--config.num_train_steps=4',
      '--config.log_every_steps=2',
      '--config.checkpoint_every_steps=2',
      '--config.shuffle_buffer_size=256',
      *overrides,
  ]
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  return command, env


def _run_cli(workdir, dataset, *overrides):
  command, env = _cli(workdir, dataset, *overrides)
  proc = subprocess.run(
      command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600
  )
  assert proc.returncode == 0, proc.stderr[-5000:]
  return proc.stdout, proc.stderr


def _read_metrics(workdir):
  with open(workdir / 'metrics.jsonl') as f:
    return [json.loads(line) for line in f]


def _wait_for(condition, proc, timeout=300):
  start = time.time()
  while not condition():
    assert proc.poll() is None, proc.communicate()[1][-5000:]
    assert time.time() - start < timeout, 'timed out'
    time.sleep(0.05)


def _checkpoints(workdir):
  path = workdir / 'checkpoints'
  return sorted(int(n) for n in os.listdir(path) if n.isdigit()) if path.exists() else []


_LONG_RUN = (
    '--config.num_train_steps=24',
    '--config.log_every_steps=1',
    '--config.checkpoint_every_steps=6',
)
_TIMING = {'steps_per_sec', 'images_per_sec'}


def test_sigterm_sigkill_and_torn_save_resume_exactly(cifar10_subset, tmp_path, capsys):
  reference = tmp_path / 'reference'
  command, _ = _cli(reference, cifar10_subset, *_LONG_RUN)
  pretrain_in_this_process(command[3:])  # The uninterrupted run, in this process.
  out = capsys.readouterr().out
  # The uninterrupted run: checkpoints, config, TensorBoard events and every scalar.
  assert _checkpoints(reference) == [12, 18, 24]  # keep_checkpoints=3.
  saved = json.loads((reference / 'config.json').read_text())
  assert saved['model']['width_multiplier'] == 0.125
  # The summary: steps, final metrics, checkpoint, what to run next.
  assert out.startswith('Done: 24 steps (to step 24) in ')
  assert f'Checkpoint: {reference}/checkpoints/24.' in out
  assert f'Next: python -m simclr_jax.report --workdir={reference}' in out
  assert any(name.startswith('events.out.tfevents') for name in os.listdir(reference))
  expected = _read_metrics(reference)
  assert [m['step'] for m in expected] == list(range(1, 25))
  assert _REQUIRED_SCALARS <= set(expected[-1])  # Step 1 (compilation) has no throughput.

  workdir = tmp_path / 'interrupted'
  # Given relative to the working directory, saved absolute (for the report and notebook).
  command, env = _cli(workdir, os.path.relpath(cifar10_subset, REPO_ROOT), *_LONG_RUN)
  # SIGTERM mid-run: a checkpoint at the current step, a one-line note, exit status 0.
  proc = subprocess.Popen(
      command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
  )
  _wait_for(lambda: (workdir / 'metrics.jsonl').exists() and len(_read_metrics(workdir)) >= 2, proc)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-5000:]
  saved = json.loads((workdir / 'config.json').read_text())
  assert saved['dataset'] == os.path.abspath(cifar10_subset)
  (note,) = out.strip().splitlines()
  assert note.startswith('SIGTERM: saved a checkpoint at step ') and 'same command' in note
  stopped = int(note.split('at step ')[1].split()[0])
  assert 2 <= stopped < 24 and stopped in _checkpoints(workdir)

  # SIGKILL just after the next regular checkpoint.
  proc = subprocess.Popen(
      command, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
  )
  _wait_for(lambda: max(_checkpoints(workdir)) > stopped, proc)
  proc.kill()
  proc.wait()
  last = max(_checkpoints(workdir))
  assert last % 6 == 0 and last < 24, 'the run ended before it could be killed'

  # A save cut short leaves only Orbax's temporary folder: a later, partial step.
  torn = workdir / 'checkpoints' / f'{last + 6}.orbax-checkpoint-tmp-1700000000'
  shutil.copytree(workdir / 'checkpoints' / str(last), torn)
  for path in sorted(torn.rglob('*'))[::2]:
    if path.is_file():
      path.write_bytes(b'')

  _, log = _run_cli(workdir, cifar10_subset, *_LONG_RUN)
  assert f'Resuming from checkpoint at step {last}' in log
  resumed = _read_metrics(workdir)
  assert [m['step'] for m in resumed] == list(range(1, 25))
  for got, want in zip(resumed, expected):
    assert {k: v for k, v in got.items() if k not in _TIMING} == {
        k: v for k, v in want.items() if k not in _TIMING
    }, got['step']


def _main(*args):
  return subprocess.run(
      [sys.executable, '-m', 'simclr_jax.main', *args],
      cwd=REPO_ROOT,
      env=dict(os.environ, JAX_PLATFORMS='cpu'),
      capture_output=True,
      text=True,
      timeout=300,
  )


def _error_line(proc):
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr
  lines = proc.stderr.splitlines()
  first = max(i for i, line in enumerate(lines) if line.startswith('Error: '))
  return '\n'.join(lines[first:])[len('Error: ') :].strip()


def test_known_errors_end_in_a_sentence_with_status_2(cifar10_subset, tmp_path):
  shown = _main('--help')
  assert shown.returncode == 0 and '--show_config' in shown.stdout and '--workdir' in shown.stdout
  config = '--config=configs/cifar10_cpu.py'
  assert _error_line(_main(config, f'--workdir={tmp_path}', '--config.batchsize=64')) == (
      'the config has no key \'batchsize\'. Did you mean "batch_size" instead of "batchsize"? '
      '--show_config lists the keys.'
  )
  assert _error_line(_main(config)).startswith('--workdir missing: e.g. python -m simclr_jax')
  with workdir_lock.hold(str(tmp_path / 'busy')):
    busy = _error_line(
        _main(config, f'--workdir={tmp_path / "busy"}', f'--config.dataset={cifar10_subset}')
    )
  assert busy.startswith(f'{tmp_path / "busy"} is in use by another run (pid {os.getpid()} ')
  explained = cli_errors.explained(
      OSError(errno.ENOSPC, 'the checkpoint of step 6 needs about 3.0 MB', '/w')
  )
  assert explained.startswith(
      'not enough disk space: the checkpoint of step 6 needs about 3.0 '
      'MB. The checkpoints and metrics written so far are intact'
  )
  # The report program too.
  report = subprocess.run(
      [sys.executable, '-m', 'simclr_jax.report', f'--workdir={tmp_path / "no_run"}'],
      cwd=REPO_ROOT,
      env=dict(os.environ, JAX_PLATFORMS='cpu'),
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert _error_line(report).startswith(f'No checkpoint in {tmp_path / "no_run"}/checkpoints')


def test_local_dataset_paths_are_made_absolute(tmp_path, monkeypatch):
  from conftest import load_config  # pylint: disable=g-import-not-at-top
  from simclr_jax.core import run_config  # pylint: disable=g-import-not-at-top

  (tmp_path / 'photos').mkdir()
  monkeypatch.chdir(tmp_path)
  config = load_config('cifar10')
  config.dataset, config.eval.dataset = 'photos', './photos'
  config = run_config.with_absolute_paths(config)
  assert config.dataset == config.eval.dataset == str(tmp_path / 'photos')
  config.eval.dataset = 'cifar10'  # A TFDS name stays one.
  assert run_config.with_absolute_paths(config).eval.dataset == 'cifar10'
