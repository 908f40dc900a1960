"""Two processes on localhost equal one: jax.distributed, data shards, global BatchNorm, resume.

launch/local.sh starts 2 processes of `python -m simclr_jax.main` with 2 CPU devices each
(jax.distributed on localhost, gloo collectives); they must log the same losses as 1 process
with 1 device (this test's own, from the same flags), stop together at the same step on SIGTERM
with a checkpoint, and resume from it.
(One process with several devices equal to one device is tested in test_train.py.)
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import pretrain_in_this_process
from multidevice import REPO_ROOT
from simclr_jax.core import distributed

_STEPS = 8
_LOSSES = ('loss', 'contrastive_loss', 'contrastive_entropy', 'probe_loss')
# Step 1 runs the same parameters on the same batch: only the order of float32 sums differs
# (per-device partial sums, gloo's all-reduce, the gathered columns), a relative error of a few
# u = 2^-24 ~ 6e-8 per value, amplified by at most the loss's few reductions (seen: < 1e-6).
# A sharding bug changes it by far more (tried once by breaking the code): per-device
# BatchNorm statistics moved step 1's contrastive loss by 8% relative (6.70 -> 7.26), local
# negatives only by 46% (6.70 -> 3.62).
_RTOL_FIRST = 1e-5
# Later steps train on parameters that already differ by the rounding of every earlier update,
# and training amplifies that difference by a machine-dependent factor. Scale: a float32 sum of
# n terms errs by about sqrt(n) u (random-walk model); the step's largest sums, the stem's
# weight gradient over 2N images x H x W = 32 x 32 x 32 = 32,768 terms, give 1.1e-5 per
# update. Growth: here 7e-8 at step 4 and 6e-6 at step 7 (x3 a step at most), on an AVX-512
# machine 2.2e-5 at step 4 (the flake of issue 21, under a 1e-5 tolerance); x3 a step from
# there reaches 2.2e-5 x 3^4 = 1.8e-3 at step 8; but on the 2-core VM on 2026-12-03 step 6
# already differed by 4.8e-3 (CI), hence 1e-2. These steps check that the resumed
# run sees the same batches with the restored state: a batch moves the losses by up to several
# percent from one step to the next (asserted: the largest move exceeds 2x the tolerance).
# Exactness is tested where rounding cannot amplify: step 1 here, bit-exact single-process
# resume (test_main.py), identical global batches for 1, 2 and 4 processes
# (test_input_pipeline.py).
_RTOL_LATER = 1e-2


def _flags(workdir, dataset):
  return [
      f'--workdir={workdir}',
      '--config=configs/cifar10.py',
      f'--config.dataset={dataset}',
      '--config.model.width_multiplier=0.125',
      # XLA's convolutions compile faster at this width (test_conv.py holds matmul equal).
      '--config.model.conv_impl=xla',
      '--config.batch_size=16',
      '--config.data_shards=2',
      f'--config.num_train_steps={_STEPS}',
      '--config.log_every_steps=1',
      '--config.checkpoint_every_steps=100',
      '--config.eval_every_steps=0',
      '--config.shuffle_buffer_size=256',
      '--config.warmup_epochs=0',
  ]  # Full learning rate: the updates matter.


def _start(command, log_path, cache_dir):
  """Starts `command` in its own session (so that all its processes can be killed)."""
  # The compilation cache spares the resumed run its compile.
  env = dict(
      os.environ,
      JAX_PLATFORMS='cpu',
      PYTHON=sys.executable,
      JAX_COMPILATION_CACHE_DIR=str(cache_dir),
  )
  with open(log_path, 'w') as log:
    return subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _wait(procs, deadline):
  """Waits for every process (path of its log: process), killing all of them on failure."""
  try:
    for log_path, proc in procs.items():
      try:
        returncode = proc.wait(timeout=max(1, deadline - time.monotonic()))
      except subprocess.TimeoutExpired:
        returncode = 'timeout'
      assert returncode == 0, f'{log_path}: {returncode}\n{log_path.read_text()[-5000:]}'
  finally:
    for proc in procs.values():
      if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
  return {log_path.stem: log_path.read_text() for log_path in procs}


def _metrics(workdir):
  with open(workdir / 'metrics.jsonl') as f:
    return [json.loads(line) for line in f]


def test_two_processes_equal_one_and_stop_and_resume_together(cifar10_subset, tmp_path):
  deadline = time.monotonic() + 540
  local = [str(REPO_ROOT / 'launch' / 'local.sh'), '2', '2']
  two = tmp_path / 'two_processes'
  cache = tmp_path / 'cache'
  procs = {
      tmp_path
      / 'two.log': _start(local + _flags(two, cifar10_subset), tmp_path / 'two.log', cache),
  }

  # SIGTERM to local.sh, which passes it on to both processes, once the first step is logged.
  first = procs[tmp_path / 'two.log']
  while not ((two / 'metrics.jsonl').exists() and _metrics(two)):
    assert first.poll() is None and time.monotonic() < deadline, (tmp_path / 'two.log').read_text()
    time.sleep(0.1)
  first.send_signal(signal.SIGTERM)
  logs = _wait(procs, deadline)
  # Each process prints '<signal or Preemption notice>: saved a checkpoint at step N ...'.
  notes = re.findall(r'^\[(\d)\] [\w ]+: saved a checkpoint at step (\d+) ', logs['two'], re.M)
  assert sorted(process for process, _ in notes) == ['0', '1'], logs['two']
  (stopped,) = {int(step) for _, step in notes}  # The same step in both.
  assert 1 <= stopped < _STEPS and os.listdir(two / 'checkpoints') == [str(stopped)]
  resuming = {
      tmp_path
      / 'resumed.log': _start(local + _flags(two, cifar10_subset), tmp_path / 'resumed.log', cache)
  }
  pretrain_in_this_process(_flags(tmp_path / 'one_device', cifar10_subset))
  resumed = _wait(resuming, deadline)
  assert f'Resuming from checkpoint at step {stopped}' in resumed['resumed']
  expected = _metrics(tmp_path / 'one_device')
  got = _metrics(two)  # Process 0 alone writes it: one record per step.
  assert [r['step'] for r in got] == [r['step'] for r in expected] == list(range(1, _STEPS + 1))
  for key in ('loss', 'contrastive_loss'):  # Another batch would show: the check is not blind.
    values = np.array([r[key] for r in expected])
    assert np.max(np.abs(np.diff(values)) / values[1:]) > 2 * _RTOL_LATER, values
  for step in range(_STEPS):
    assert got[step]['learning_rate'] == expected[step]['learning_rate']
    np.testing.assert_allclose(
        [got[step][k] for k in _LOSSES],
        [expected[step][k] for k in _LOSSES],
        rtol=_RTOL_FIRST if step == 0 else _RTOL_LATER,
        err_msg=f'step {step + 1}',
    )


def test_flags_come_all_three_or_none():
  with pytest.raises(
      ValueError,
      match=r'--num_processes and --process_id missing: give '
      r'--coordinator_address, --num_processes',
  ):
    distributed.initialize('localhost:1234')
  with pytest.raises(ValueError, match=r'--local_device_ids needs --coordinator_address'):
    distributed.initialize(local_device_ids=[0])


def test_slurm_counts_with_several_tasks(monkeypatch):
  monkeypatch.setenv('SLURM_JOB_ID', '123')
  monkeypatch.setenv('SLURM_NTASKS', '16')
  assert distributed.detected_cluster() == 'SLURM'
  monkeypatch.setenv('SLURM_NTASKS', '1')  # One task: a single process, nothing to join.
  assert distributed.detected_cluster() is None
