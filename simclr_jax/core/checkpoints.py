"""The workdir's checkpoints: the manager, resuming from the newest readable one, read-only use.

A checkpoint that cannot be read (an empty step folder, a truncated metadata or array file)
is moved aside to WORKDIR/checkpoints/N.damaged, never deleted, and the next older one is
tried; one whose metadata reads but does not fit the config is refused instead, since an
older checkpoint of the same run would not fit either. Evaluation reads another run's
workdir and moves nothing (`restore_read_only`).
"""

import asyncio
import contextlib
import dataclasses
import itertools
import json
import os
import re

from absl import logging
from etils import epath
import jax
import numpy as np
import orbax.checkpoint as ocp

# Private, but the only place to make a failed restore wait for its other reads
# (_reads_completed); without it, at worst the noise it removes comes back.
from orbax.checkpoint._src import asyncio_utils
import tensorflow as tf

from simclr_jax.core import distributed
from simclr_jax.core import workdirs
from simclr_jax.core.sharding import replicated, run_once

# Orbax's folder for the one item every checkpoint here holds (a TrainState).
_ITEM = 'default'
# Status codes (XLA's and TensorStore's messages start with theirs) of failures of the
# machine or the storage service rather than of the files: raised, never taken as damage
# (moving a good checkpoint aside would set the run back).
_NOT_DAMAGE = re.compile(
    r'\s*(RESOURCE_EXHAUSTED|UNAVAILABLE|DEADLINE_EXCEEDED|'
    r'PERMISSION_DENIED|UNAUTHENTICATED|CANCELLED|ABORTED):'
)
# The fix for a run saved before config.model.shortcut existed: it has the torchvision
# layout, today's default is the reference's (resuming and evaluating say it alike).
OLD_LAYOUT_HINT = (
    ' Runs saved before config.model.shortcut existed have the torchvision '
    'layout: add --config.model.shortcut=torchvision.'
)
# Makes the names of the multi-process agreements unique within a run.
_agreements = itertools.count()


def create_checkpoint_manager(workdir: str, config) -> ocp.CheckpointManager:
  """The manager of WORKDIR/checkpoints, keeping the last config.keep_checkpoints."""
  return ocp.CheckpointManager(
      workdirs.path(workdir, 'checkpoints'),
      options=ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints, create=True),
  )


def read_only_manager(workdir: str) -> ocp.CheckpointManager:
  """A manager of WORKDIR/checkpoints that writes, deletes and moves nothing."""
  return ocp.CheckpointManager(
      workdirs.path(workdir, 'checkpoints'),
      options=ocp.CheckpointManagerOptions(read_only=True, create=False),
  )


def checkpoint_steps(workdir: str) -> list[int]:
  """Steps of the checkpoints in WORKDIR/checkpoints (empty if none, or no such folder)."""
  return sorted(read_only_manager(workdir).all_steps())


def _flat_config(config_dict, prefix=''):
  flat = {}
  for key, value in config_dict.items():
    if isinstance(value, dict):
      flat.update(_flat_config(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


def config_differences(saved_path: str, config) -> list[str]:
  """'key: saved X, now Y' for each value that differs from the config saved at saved_path."""
  if not tf.io.gfile.exists(saved_path):
    return []
  try:
    with tf.io.gfile.GFile(saved_path) as f:
      saved = _flat_config(json.load(f))
  except json.JSONDecodeError as e:
    logging.warning(
        '%s is not valid JSON (%s), so this config cannot be compared with the '
        "saved run's; the run rewrites it.",
        saved_path,
        e,
    )
    return []
  now = _flat_config(json.loads(config.to_json_best_effort()))
  return [
      f'{k}: saved {saved.get(k)!r}, now {now.get(k)!r}'
      for k in sorted(saved.keys() | now.keys())
      if saved.get(k) != now.get(k)
  ]


class UnreadableCheckpointError(Exception):
  """A checkpoint's files cannot be read: the message is the reason, on one line."""


@contextlib.contextmanager
def _reads_completed(timeout_s: float = 60.0):
  """Makes a failed Orbax read wait for its other reads before closing their event loop.

  Orbax runs each restore in a new event loop and closes it as soon as one read fails, with
  the other reads in flight: each then prints a 'RuntimeError: Event loop is closed'
  traceback when it completes, and each abandoned coroutine another at exit (hundreds of
  lines for one damaged checkpoint). Letting them finish first leaves one exception.
  """
  original = getattr(asyncio_utils, '_run_sync_via_new_loop', None)
  if original is None:
    yield
    return

  def run_then_drain(coro):
    loop = asyncio.new_event_loop()
    try:
      asyncio.set_event_loop(loop)
      return loop.run_until_complete(coro)
    finally:
      pending = asyncio.all_tasks(loop)
      if pending:
        _, stuck = loop.run_until_complete(asyncio.wait(pending, timeout=timeout_s))
        for task in stuck:
          task.cancel()
        # Collects every outcome, so that no task reports an exception nobody retrieved.
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
      asyncio.set_event_loop(None)
      loop.close()

  asyncio_utils._run_sync_via_new_loop = run_then_drain  # pylint: disable=protected-access
  try:
    yield
  finally:
    asyncio_utils._run_sync_via_new_loop = original  # pylint: disable=protected-access


def _exception_chain(error: BaseException):
  while error is not None:
    yield error
    error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)


def _one_line(error: BaseException, limit: int = 400) -> str:
  """The innermost cause of `error` on one line: TensorStore appends pages of its spec."""
  cause = list(_exception_chain(error))[-1]
  lines = str(cause).strip().splitlines()
  text = f'{type(cause).__name__}: {lines[0] if lines else ""}'
  return text if len(text) <= limit else text[: limit - 3] + '...'


def _is_damage(error: BaseException) -> bool:
  """Whether `error` says the files are bad, rather than the machine or the storage access."""
  for e in _exception_chain(error):
    if isinstance(e, (MemoryError, PermissionError, ConnectionError, TimeoutError)):
      return False
    if _NOT_DAMAGE.match(str(e)):
      return False
  return True


def _step_folder(directory, step: int) -> epath.Path:
  return epath.Path(str(directory)) / str(step)


def read_metadata(directory, step: int):
  """The saved tree's metadata (leaves with .shape) of checkpoint `step` in `directory`.

  Raises:
    UnreadableCheckpointError: when the step folder has no item or its metadata cannot be
      parsed (Orbax's own metadata call returns None then, which looks like another model).
  """
  folder = _step_folder(directory, step)
  item = folder / _ITEM
  if not tf.io.gfile.isdir(str(item)):
    held = sorted(tf.io.gfile.listdir(str(folder))) if tf.io.gfile.isdir(str(folder)) else []
    raise UnreadableCheckpointError(
        'the step folder is empty'
        if not held
        else f'the step folder has no {_ITEM}/ folder (it holds {", ".join(held)})'
    )
  index = item / '_METADATA'
  if tf.io.gfile.exists(str(index)):
    try:  # Orbax's own error for this names no file.
      with tf.io.gfile.GFile(str(index)) as f:
        json.load(f)
    except json.JSONDecodeError as e:
      raise UnreadableCheckpointError(
          f'its {_ITEM}/_METADATA is not valid JSON, as when cut short ({_one_line(e)})'
      ) from e
  try:
    with _reads_completed():
      return ocp.StandardCheckpointHandler().metadata(item)
  except Exception as e:  # pylint: disable=broad-exception-caught
    if not _is_damage(e):
      raise
    raise UnreadableCheckpointError(f'its metadata could not be read ({_one_line(e)})') from e


def _restore(manager, step: int, args=None):
  """manager.restore(step), raising UnreadableCheckpointError when the files are bad."""
  try:
    with _reads_completed():
      return manager.restore(step, args=args)
  except Exception as e:  # pylint: disable=broad-exception-caught
    if not _is_damage(e):
      raise
    raise UnreadableCheckpointError(f'its arrays could not be read ({_one_line(e)})') from e


def _restore_state(manager, step: int, abstract, saved):
  """Restores checkpoint `step` (metadata `saved`) into `abstract`'s structure.

  A state field that the checkpoint lacks and that is empty in `abstract` (method_state, in
  checkpoints made before it existed) starts empty, so that older runs still resume.
  """
  fields = {f.name: getattr(abstract, f.name) for f in dataclasses.fields(abstract)}
  absent = {k: v for k, v in fields.items() if k not in saved and not jax.tree.leaves(v)}
  if not absent:
    return _restore(manager, step, ocp.args.StandardRestore(abstract))
  kept = {k: v for k, v in fields.items() if k not in absent}
  return abstract.replace(**_restore(manager, step, ocp.args.StandardRestore(kept)), **absent)


def _check_resumable(manager, step: int, saved, abstract_state, config):
  """Refuses checkpoint `step` (metadata `saved`) when it does not fit `config`.

  Returns:
    The differences between `config` and the run's config.json (config_differences).
  """

  def describe(leaves_with_path, part):
    leaves = [
        (jax.tree_util.keystr(p), tuple(x.shape))
        for p, x in leaves_with_path
        if jax.tree_util.keystr(p[:1]) == f"['{part}']"
    ]
    return dict(leaves) if part != 'opt_state' else sorted(shape for _, shape in leaves)

  ours = jax.tree_util.tree_leaves_with_path(
      {
          'params': abstract_state.params,
          'batch_stats': abstract_state.batch_stats,
          'opt_state': abstract_state.opt_state,
          'method_state': abstract_state.method_state,
      }
  )
  theirs = jax.tree_util.tree_leaves_with_path(saved)
  mismatched = [
      part
      for part in ('params', 'batch_stats', 'opt_state', 'method_state')
      if describe(ours, part) != describe(theirs, part)
  ]
  workdir = os.path.dirname(str(manager.directory))
  differences = config_differences(os.path.join(workdir, 'config.json'), config)
  if mismatched:
    detail = '; '.join(differences[:6]) if differences else 'no config.json to compare with'
    hint = OLD_LAYOUT_HINT if "model.shortcut: saved None, now 'reference'" in differences else ''
    raise ValueError(
        f'{workdir} holds a checkpoint (step {step}) made with an incompatible config: its '
        f'{" and ".join(mismatched)} do not fit this model/optimiser. Config differences: '
        f'{detail}. Nothing was overwritten; use a new --workdir, or the saved values to '
        f'resume this run.{hint}'
    )
  return differences


def _agreed_outcome(stage: str, step: int, outcome: str) -> str:
  """The outcome all processes act on: the first failure any of them met, else 'readable'.

  Every process reads the same files, but a read can still fail on one host alone; acting
  on different outcomes would resume the processes from different steps.
  """
  name = f'simclr_jax_checkpoint_{step}_{stage}_{next(_agreements)}'
  outcomes = distributed.all_gather_text(name, outcome)
  failures = [(i, o) for i, o in enumerate(outcomes) if o != 'readable']
  if not failures:
    return 'readable'
  process, failure = next(((i, o) for i, o in failures if o.startswith('error')), failures[0])
  return failure if len(outcomes) == 1 else f'{failure} (on process {process})'


def _move_aside(directory, step: int) -> str:
  """Renames checkpoint `step` to N.damaged (N.damaged.1, ... if taken); returns the path.

  Process 0 picks the name and renames; the others wait for it, so that none reads the
  folder while it moves.

  Raises:
    RuntimeError: when the rename fails (on every process).
  """
  source = str(_step_folder(directory, step))
  outcome = ''
  if jax.process_index() == 0:
    target = f'{source}.damaged'
    for i in itertools.count(1):
      if not tf.io.gfile.exists(target):
        break
      target = f'{source}.damaged.{i}'
    try:
      tf.io.gfile.rename(source, target)
      outcome = target
    except Exception as e:  # pylint: disable=broad-exception-caught
      outcome = f'error: could not rename it to {target} ({_one_line(e)})'
  outcome = distributed.all_gather_text(
      f'simclr_jax_checkpoint_{step}_moved_{next(_agreements)}', outcome
  )[0]
  if outcome.startswith('error: '):
    raise RuntimeError(
        f'Checkpoint step {step} in {directory} is unreadable, but moving it aside failed: '
        f'{outcome[len("error: "):]}. Move or delete {source} by hand and rerun the command.'
    )
  return outcome


def _read_or_move_aside(manager, step: int, read, moved: list[str]):
  """`read()` (reading checkpoint `step`), agreed on by all processes; None if unreadable.

  An unreadable checkpoint is logged with its reason, moved aside (_move_aside) and added to
  `moved` ('step N to PATH (why)'), and the manager forgets it.

  Raises:
    RuntimeError: when reading fails because of the machine or the storage access; the
      files stay as they are.
  """
  outcome, result, error = 'readable', None, None
  try:
    result = read()
  except UnreadableCheckpointError as e:
    outcome = f'damaged: {e}'
  except Exception as e:  # pylint: disable=broad-exception-caught
    outcome, error = f'error: {_one_line(e)}', e
  outcome = _agreed_outcome(read.__name__, step, outcome)
  if outcome.startswith('error: '):
    raise RuntimeError(
        f'Reading checkpoint step {step} in {manager.directory} failed, though not because of '
        f'its files: {outcome[len("error: "):]}. Nothing was moved; fix the cause (memory, '
        'access to the storage) and rerun the command.'
    ) from error
  if outcome == 'readable':
    return result
  reason = outcome[len('damaged: ') :]
  target = _move_aside(manager.directory, step)
  manager.reload()
  logging.warning(
      'Checkpoint step %d in %s is unreadable: %s. Moved it aside to %s (kept '
      'for inspection; delete it when done).',
      step,
      manager.directory,
      reason,
      target,
  )
  moved.append(f'step {step} to {target} ({reason.split(" (")[0]})')  # Details logged.
  return None


def restore_or_init_state(manager, init_fn, mesh, config):
  """Restores the newest readable checkpoint onto `mesh` (replicated), or runs `init_fn`.

  Checkpoints are tried newest first; an unreadable one (empty step folder, truncated
  metadata or array file) is moved aside to checkpoints/N.damaged, with a warning naming it
  and why, and the next older one is tried. A checkpoint made with an incompatible config
  (another model, width or optimiser) is refused with a message naming the config
  differences, before anything is overwritten.

  Args:
    manager: the CheckpointManager of the workdir (create_checkpoint_manager); it no longer
      lists the checkpoints moved aside.
    init_fn: () -> a fresh TrainState.
    mesh: the device mesh; the state is replicated over it.
    config: the run's config, compared with the checkpoint's shapes and config.json.

  Returns:
    The restored or initialised state.

  Raises:
    ValueError: when the newest readable checkpoint does not fit `config`, or when no
      checkpoint could be read (all moved aside: rerunning starts from step 0).
    RuntimeError: when reading fails because of the machine or the storage access.
  """
  sharding = replicated(mesh)
  steps = sorted(manager.all_steps(), reverse=True)
  if not steps:
    return run_once(init_fn, out_shardings=sharding)
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), jax.eval_shape(init_fn)
  )
  moved = []
  for step in steps:

    def metadata(step=step):
      return read_metadata(manager.directory, step)

    saved = _read_or_move_aside(manager, step, metadata, moved)
    if saved is None:
      continue
    differences = _check_resumable(manager, step, saved, abstract, config)

    def restore(step=step):
      return _restore_state(manager, step, abstract, saved)

    state = _read_or_move_aside(manager, step, restore, moved)
    if state is None:
      continue
    if differences:
      logging.warning(
          'Resuming %s with config values that differ from the saved run: %s',
          os.path.dirname(str(manager.directory)),
          '; '.join(differences),
      )
    if moved:
      logging.warning(
          'Resuming from step %d, the newest readable checkpoint in %s: the steps '
          'after it are trained again.',
          step,
          manager.directory,
      )
    else:
      logging.info('Resuming from checkpoint at step %d in %s.', step, manager.directory)
    return state
  raise ValueError(
      f'No checkpoint in {manager.directory} could be read; each was moved aside, not '
      f'deleted: {"; ".join(moved)}, with the details in the warnings above. Rerun the same '
      'command to start this run again from step 0 (the moved folders stay for inspection), '
      'or first copy intact checkpoints of this run back into that folder to resume from '
      'them.'
  )


def restore_read_only(manager, step: int, step_flag: str = '--config.pretrained_step'):
  """Restores checkpoint `step` as saved (numpy arrays), moving nothing: another run's.

  Raises:
    ValueError: when it cannot be read, naming the step, why, and the other checkpoints
      whose metadata reads, to pass as `step_flag`.
  """
  try:
    metadata = read_metadata(manager.directory, step)
    # Into host arrays: restored as saved, each array would live on the saving run's devices,
    # which another process of a multi-process job cannot address.
    as_numpy = jax.tree.map(lambda x: np.empty(x.shape, x.dtype), metadata)
    return _restore(manager, step, ocp.args.StandardRestore(as_numpy))
  except UnreadableCheckpointError as e:
    reason = str(e)
  readable = []
  for other in sorted(manager.all_steps(), reverse=True):
    if other != step:
      try:
        read_metadata(manager.directory, other)
        readable.append(other)
      except UnreadableCheckpointError:
        pass
  others = (
      f'Checkpoints there whose metadata reads: {", ".join(map(str, readable))}; pass '
      f'one as {step_flag}={readable[0]}, or'
      if readable
      else 'No other checkpoint there has readable metadata;'
  )
  raise ValueError(
      f'Checkpoint step {step} in {manager.directory} is unreadable: {reason}. Nothing was '
      f'moved. {others} rerun the pretraining command on its workdir: it moves unreadable '
      'checkpoints aside and trains again from the newest readable one.'
  )
