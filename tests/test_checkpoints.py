"""The workdir's checkpoints: refusing another config, moving damaged ones aside, read-only use.

The damage tests restore copies of the tiny pretraining run (`pretrained_workdir`, steps 2
and 4) with its own model: restoring compiles nothing.
"""

import asyncio
import dataclasses
import functools
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint._src import asyncio_utils
import pytest

from conftest import REPO_ROOT, tiny_config
from simclr_jax.core import checkpoints
from simclr_jax import evaluate
from simclr_jax import models
from simclr_jax.core import optim
from simclr_jax.methods import simclr
from simclr_jax import train
from simclr_jax.core import train_state
from simclr_jax.core import run_config
from simclr_jax.evaluators import features
from simclr_jax.core.sharding import create_mesh


def _init_fn(config):
  """The state initialiser of train_and_evaluate for `config` on CIFAR-10 (10 classes)."""
  model = models.create_model(
      config.model,
      image_size=config.image_size,
      num_classes=10,
      dtype=models.DTYPES[config.dtype],
      remat=config.remat,
  )
  tx = simclr.create_optimizer(config, optim.learning_rate_schedule(config, 260, 4))
  return functools.partial(
      train_state.init_train_state, model, tx, jax.random.PRNGKey(config.seed), config.image_size
  )


def _restore(workdir, config):
  manager = checkpoints.create_checkpoint_manager(str(workdir), config)
  return manager, checkpoints.restore_or_init_state(
      manager, _init_fn(config), create_mesh(), config
  )


def _files(folder):
  """{relative path: size} of every file under `folder`."""
  return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob('*') if p.is_file()}


def _truncate_array_file(step_folder):
  """Cuts the largest array data file of a checkpoint in half (metadata intact)."""
  data = max((step_folder / 'default').rglob('ocdbt.process_*/d/*'), key=lambda p: p.stat().st_size)
  with open(data, 'r+b') as f:
    f.truncate(data.stat().st_size // 2)


def _truncate_metadata(step_folder):
  metadata = step_folder / 'default' / '_METADATA'
  with open(metadata, 'r+b') as f:
    f.truncate(1000)


@pytest.fixture
def run_copy(pretrained_workdir, tmp_path):
  """A copy of the tiny pretraining run, free to damage."""
  return shutil.copytree(pretrained_workdir, tmp_path / 'run')


@pytest.mark.parametrize(
    'damage, newest, previous, reason',
    [
        (
            _truncate_array_file,
            4,
            2,
            r'its arrays could not be read \(ValueError: OUT_OF_RANGE: '
            r'Error reading ".*" in OCDBT database',
        ),
        (
            _truncate_metadata,
            4,
            2,
            r'its default/_METADATA is not valid JSON, as when cut short ' r'\(JSONDecodeError: ',
        ),
        (lambda folder: folder.mkdir(), 6, 4, 'the step folder is empty'),
    ],
    ids=['truncated_array_file', 'truncated_metadata', 'empty_step_folder'],
)
def test_unreadable_latest_checkpoint_is_moved_aside_and_the_previous_one_restored(
    run_copy, cifar10_subset, caplog, damage, newest, previous, reason
):
  folder = run_copy / 'checkpoints'
  damage(folder / str(newest))
  damaged_files = _files(folder / str(newest))
  with caplog.at_level(logging.WARNING):
    manager, state = _restore(run_copy, tiny_config(cifar10_subset))
  assert int(state.step) == previous
  assert manager.all_steps() == sorted({2, 4} - {newest}) and manager.latest_step() == previous
  assert not (folder / str(newest)).exists()
  assert _files(folder / f'{newest}.damaged') == damaged_files  # Moved, not changed.
  assert 'incompatible config' not in caplog.text
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert any(
      f'Checkpoint step {newest} in {folder} is unreadable: ' in m
      and f'Moved it aside to {folder}/{newest}.damaged' in m
      for m in warnings
  ), warnings
  assert any(re.search(reason, m) for m in warnings), warnings
  assert any(
      f'Resuming from step {previous}, the newest readable checkpoint' in m for m in warnings
  )
  assert max(len(m.splitlines()) for m in warnings) == 1


def test_a_checkpoint_saved_before_method_state_existed_resumes(run_copy, cifar10_subset):
  config = tiny_config(cifar10_subset)
  manager, state = _restore(run_copy, config)
  # The state as runs saved it before TrainState.method_state (BYOL's target) existed.
  old_layout = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
  del old_layout['method_state']
  old_layout['step'] = jnp.int32(6)
  manager.save(6, args=ocp.args.StandardSave(old_layout))
  manager.wait_until_finished()
  assert 'method_state' not in checkpoints.read_metadata(manager.directory, 6)
  _, resumed = _restore(run_copy, config)
  assert int(resumed.step) == 6 and resumed.method_state == {}  # Not moved aside as damaged.
  jax.tree.map(np.testing.assert_array_equal, resumed.params, state.params)
  jax.tree.map(np.testing.assert_array_equal, resumed.opt_state, state.opt_state)


def test_no_readable_checkpoint_stops_with_the_fix_and_deletes_nothing(run_copy, cifar10_subset):
  folder = run_copy / 'checkpoints'
  _truncate_metadata(folder / '4')
  _truncate_array_file(folder / '2')
  before = {step: _files(folder / step) for step in ('2', '4')}
  with pytest.raises(
      ValueError,
      match=(
          rf'No checkpoint in {folder} could be read; each was moved aside, not deleted: step 4 '
          rf'to {folder}/4.damaged \(its default/_METADATA is not valid JSON, as when cut short\); '
          rf'step 2 to {folder}/2.damaged \(its arrays could not be read\).*Rerun the same command '
          'to start this run again from step 0'
      ),
  ):
    _restore(run_copy, tiny_config(cifar10_subset))
  assert {step: _files(folder / f'{step}.damaged') for step in ('2', '4')} == before
  assert checkpoints.checkpoint_steps(str(run_copy)) == []  # So the rerun starts afresh.


def test_a_taken_damaged_name_gets_a_number(run_copy, cifar10_subset):
  folder = run_copy / 'checkpoints'
  shutil.copytree(folder / '4', folder / '4.damaged')
  _truncate_metadata(folder / '4')
  _, state = _restore(run_copy, tiny_config(cifar10_subset))
  assert int(state.step) == 2
  assert (folder / '4.damaged').is_dir() and (folder / '4.damaged.1').is_dir()


def test_stray_damaged_and_temporary_folders_are_not_checkpoints(run_copy, cifar10_subset):
  folder = run_copy / 'checkpoints'
  shutil.copytree(folder / '4', folder / '6.damaged')
  # What a save killed halfway leaves behind.
  shutil.copytree(folder / '4', folder / '8.orbax-checkpoint-tmp-1234')
  strays = {'6.damaged', '8.orbax-checkpoint-tmp-1234'}
  assert checkpoints.checkpoint_steps(str(run_copy)) == [2, 4]
  config = tiny_config(cifar10_subset)
  config.keep_checkpoints = 1
  manager, state = _restore(run_copy, config)
  assert int(state.step) == 4 and manager.latest_step() == 4
  # Saving past max_to_keep deletes older steps only, never the stray folders.
  manager.save(5, args=ocp.args.StandardSave(state))
  manager.wait_until_finished()
  assert manager.all_steps() == [5]
  assert strays <= {p.name for p in folder.iterdir()}


# Process `argv[1]` of 2 resumes argv[3]; on process 1 alone, step 4's metadata cannot be read.
_TWO_PROCESS_SCRIPT = textwrap.dedent("""
    import functools, json, os, sys
    import jax
    process, port, workdir, dataset = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    from simclr_jax.core import distributed
    distributed.initialize(f'localhost:{port}', 2, process)
    sys.path.insert(0, 'tests')
    from conftest import tiny_config
    from simclr_jax import models
    from simclr_jax.core import checkpoints, optim, train_state
    from simclr_jax.methods import simclr
    from simclr_jax.core.sharding import create_mesh
    if process == 1:
      read = checkpoints.read_metadata
      def flaky(directory, step):
        if step == 4:
          raise checkpoints.UnreadableCheckpointError('a read failing on this host only')
        return read(directory, step)
      checkpoints.read_metadata = flaky
    config = tiny_config(dataset)
    model = models.create_model(config.model, image_size=config.image_size, num_classes=10)
    tx = simclr.create_optimizer(config, optim.learning_rate_schedule(config, 260, 4))
    init_fn = functools.partial(train_state.init_train_state, model, tx, jax.random.PRNGKey(0),
                                config.image_size)
    manager = checkpoints.create_checkpoint_manager(workdir, config)
    state = checkpoints.restore_or_init_state(manager, init_fn, create_mesh(), config)
    print(json.dumps({'step': int(state.step.addressable_data(0)),
                      'steps': manager.all_steps()}))
""")


def test_processes_agree_and_process_0_moves_the_checkpoint(run_copy, cifar10_subset, tmp_path):
  with socket.socket() as s:
    s.bind(('localhost', 0))
    port = s.getsockname()[1]
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  logs = [tmp_path / f'process_{i}.log' for i in range(2)]
  procs = []
  try:
    for i, log in enumerate(logs):
      with open(log, 'w') as f:
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    '-c',
                    _TWO_PROCESS_SCRIPT,
                    str(i),
                    str(port),
                    str(run_copy),
                    str(cifar10_subset),
                ],
                cwd=REPO_ROOT,
                env=env,
                stdout=f,
                stderr=subprocess.STDOUT,
            )
        )
    codes = [proc.wait(timeout=300) for proc in procs]
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
  outputs = [log.read_text() for log in logs]
  assert codes == [0, 0], outputs
  for output in outputs:
    assert json.loads(output.strip().splitlines()[-1]) == {'step': 2, 'steps': [2]}
    assert (
        f'Checkpoint step 4 in {run_copy}/checkpoints is unreadable: a read failing on this '
        f'host only (on process 1). Moved it aside to {run_copy}/checkpoints/4.damaged ' in output
    ), output
  assert sorted(p.name for p in (run_copy / 'checkpoints').iterdir()) == ['2', '4.damaged']


def test_failure_of_the_machine_is_not_taken_for_damage(run_copy, cifar10_subset, monkeypatch):
  def out_of_memory(*args, **kwargs):
    raise ValueError('RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.2GiB.')

  monkeypatch.setattr(ocp.CheckpointManager, 'restore', out_of_memory)
  before = _files(run_copy / 'checkpoints')
  with pytest.raises(
      RuntimeError,
      match=r'Reading checkpoint step 4 in .* failed, though not '
      r'because of its files: ValueError: '
      r'RESOURCE_EXHAUSTED.*Nothing was moved',
  ):
    _restore(run_copy, tiny_config(cifar10_subset))
  assert _files(run_copy / 'checkpoints') == before


def test_failed_read_waits_for_its_other_reads_before_closing_the_loop():
  # Orbax closes the event loop of a failed restore at once; the reads still in flight then
  # printed 'RuntimeError: Event loop is closed' tracebacks (seen: 1,500 lines for ResNet-18).
  assert hasattr(asyncio_utils, '_run_sync_via_new_loop'), 'Orbax moved what we patch.'
  finished = []

  async def read(delay, fail):
    await asyncio.sleep(delay)
    if fail:
      raise ValueError('OUT_OF_RANGE: truncated')
    finished.append(delay)

  async def restore():
    await asyncio.gather(read(0.0, True), read(0.2, False))

  with checkpoints._reads_completed():  # pylint: disable=protected-access
    with pytest.raises(ValueError, match='OUT_OF_RANGE'):
      asyncio_utils.run_sync(restore())
  assert finished == [0.2]


def test_evaluation_names_an_unreadable_checkpoint_and_moves_nothing(run_copy, cifar10_subset):
  _truncate_array_file(run_copy / 'checkpoints' / '4')
  before = _files(run_copy)
  config = tiny_config(cifar10_subset)
  model = models.create_model(config.model, image_size=config.image_size, num_classes=10)
  with pytest.raises(
      ValueError,
      match=(
          rf'Checkpoint step 4 in {run_copy}/checkpoints is unreadable: its arrays could not be '
          r'read \(ValueError: OUT_OF_RANGE: .*\)\. Nothing was moved\. Checkpoints there whose '
          r'metadata reads: 2; pass one as --config\.pretrained_step=2, or rerun the pretraining '
          'command'
      ),
  ):
    features.restore_encoder_variables(config, model, str(run_copy))
  assert _files(run_copy) == before
  _, step = features.restore_encoder_variables(config, model, str(run_copy), step=2)
  assert step == 2


def test_incompatible_checkpoint_is_refused_before_anything_is_written(
    cifar10_subset, pretrained_workdir
):
  before = {p: p.stat().st_mtime_ns for p in pretrained_workdir.rglob('*')}
  config = tiny_config(cifar10_subset)
  config.model.width_multiplier = 0.25
  with pytest.raises(
      ValueError,
      match=r'incompatible config.*model.width_multiplier: saved '
      r'0.125, now 0.25.*Nothing was overwritten',
  ):
    train.train_and_evaluate(config, str(pretrained_workdir))
  assert before == {p: p.stat().st_mtime_ns for p in pretrained_workdir.rglob('*')}


def test_run_saved_before_the_shortcut_option_gets_the_fix(cifar10_subset, tmp_path):
  # A checkpoint of the torchvision layout whose config.json has no model.shortcut, as runs
  # saved before the option existed; today's default (reference) must be refused, before
  # anything is compiled, with the flag that fits.
  old = tiny_config(cifar10_subset)
  old.model.shortcut = 'torchvision'
  workdir = tmp_path / 'old_run'
  model = models.create_model(old.model, image_size=old.image_size, num_classes=10)
  tx = simclr.create_optimizer(old, optim.learning_rate_schedule(old, 260, 4))
  # Only the shapes matter: zeros of them, without compiling the initialisation.
  state = jax.tree.map(
      lambda x: jnp.zeros(x.shape, x.dtype),
      jax.eval_shape(
          lambda: train_state.init_train_state(model, tx, jax.random.PRNGKey(0), old.image_size)
      ),
  )
  manager = checkpoints.create_checkpoint_manager(str(workdir), old)
  manager.save(1, args=ocp.args.StandardSave(state))
  manager.wait_until_finished()
  saved = json.loads(old.to_json_best_effort())
  del saved['model']['shortcut']
  (workdir / 'config.json').write_text(json.dumps(saved))
  fix = r'torchvision layout: add --config\.model\.shortcut=torchvision\.'
  with pytest.raises(ValueError, match=fix):
    train.train_and_evaluate(tiny_config(cifar10_subset), str(workdir))
  config = tiny_config(cifar10_subset)
  config.mode, config.pretrained_workdir = 'knn_eval', str(workdir)
  with pytest.raises(ValueError, match=fix):
    evaluate.evaluate(config, str(tmp_path / 'eval'))


def test_a_damaged_config_json_is_named(tmp_path, cifar_config):
  path = tmp_path / 'config.json'
  path.write_text('{"model": {"name": "resn')
  # Resuming compares configs: a damaged config.json is not a difference (it is rewritten).
  assert checkpoints.config_differences(str(path), cifar_config) == []
  # The report and the notebook rebuild the model from it: they stop, naming it and the fix.
  with pytest.raises(ValueError, match=r'config\.json is not valid JSON .* rewrites config'):
    run_config.load_config(str(tmp_path))
