"""The training loop every program shares: steps, metrics, checkpoints, stop requests."""

import time

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

from simclr_jax.core import distributed
from simclr_jax.core import progress as progress_lib
from simclr_jax.core import stop_request
from simclr_jax.core import workdirs
from simclr_jax.core import writers


def _check_finite(steps, metrics, manager):
  """Raises FloatingPointError naming the first step whose fetched metrics are not finite."""
  bad = [step for step, m in zip(steps, metrics) if not m['finite']]
  if bad:
    manager.wait_until_finished()
    last = manager.latest_step()
    resume = (
        f'The last good checkpoint is step {last} in {manager.directory}; rerun the '
        'command and it resumes from there.'
        if last is not None
        else 'No checkpoint was saved yet; rerun the command to start again from step 0.'
    )
    raise FloatingPointError(
        f'The loss or the gradients became NaN or infinite at step {bad[0]}; training stopped '
        f'and the non-finite update was not applied or saved. Lower config.learning_rate (or '
        f'raise config.warmup_epochs). {resume}'
    )


def _compiled_on_every_process(step_fn, state, batch, start_step: int):
  """`step_fn` compiled for these arguments, once every process has compiled it.

  Compile times differ between processes by more than the 30 s that gloo (CPU collectives)
  waits for a peer in the first step's collectives; the barrier lines them up first.
  """
  compiled = step_fn.lower(state, batch).compile()
  distributed.barrier(f'simclr_jax_step_{start_step + 1}_compiled')
  return compiled


def run(
    config,
    workdir,
    state,
    step_fn,
    batches,
    *,
    manager,
    batch_size: int,
    start_step: int,
    total_steps: int,
    extra_metrics=None,
    images=None,
    next_command: str = '',
    cpu_config_hint: str = '',
):
  """Runs `step_fn` to total_steps, logging and checkpointing as config says; returns state.

  Metrics are averaged over the steps between writes (every config.log_every_steps) and
  written with throughput to WORKDIR (TensorBoard and metrics.jsonl);
  `extra_metrics(step, state)` may add evaluations, which the throughput timer excludes.
  `images` ({name: [N, H, W, C]}) are written to TensorBoard at start_step.
  Each step is dispatched once the previous one has completed, so a stop request (SIGTERM,
  SIGINT) is answered with a checkpoint within one step and a save, and the progress lines
  count completed steps. On a stop request it saves a checkpoint at the current step and
  returns early; on a non-finite loss or gradient it raises FloatingPointError without saving.
  At the end it prints a summary, with `next_command` as what to run next.
  `cpu_config_hint` ends the warning of a run that would take days on a CPU.
  """
  writer = writers.create_writer(workdir, start_step)
  if images:
    writer.write_images(start_step, images)
  progress = progress_lib.Progress(
      start_step=start_step,
      total_steps=total_steps,
      batch_size=batch_size,
      every_secs=config.progress_every_secs,
      cpu_config_hint=cpu_config_hint,
  )
  progress.starting(workdir)
  window = []  # Device metrics of the steps since the last write.
  last_scalars = {}
  checkpoint_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
  stopped_at = None
  with stop_request.StopRequest() as stop:
    batch = next(batches)
    for step in range(start_step + 1, total_steps + 1):
      if step == start_step + 1:
        step_fn = _compiled_on_every_process(step_fn, state, batch, start_step)
      state, metrics = step_fn(state, batch)
      window.append(metrics)
      if step < total_steps:
        batch = next(batches)  # The host's share of the next step, while this one computes.
      jax.block_until_ready(metrics)
      progress.step_done(step)
      if step == start_step + 1:
        # The first step includes compilation: throughput is timed from its end.
        timer_step, timer_start = step, time.perf_counter()
      stopping = stop.should_stop(step)
      log_now = step % config.log_every_steps == 0 or step == total_steps or stopping
      save_now = step % config.checkpoint_every_steps == 0 or step == total_steps or stopping
      if log_now or save_now:
        fetched = jax.device_get(window)
        _check_finite(range(step - len(window) + 1, step + 1), fetched, manager)
      scalars = {}
      if log_now:
        scalars = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0] if k != 'finite'}
        elapsed = time.perf_counter() - timer_start
        if step > timer_step:
          scalars['steps_per_sec'] = (step - timer_step) / elapsed
          scalars['images_per_sec'] = scalars['steps_per_sec'] * batch_size
        window = []
      if extra_metrics:
        scalars.update(extra_metrics(step, state))
      if scalars:
        writer.write_scalars(step, scalars)
        last_scalars.update(scalars)
        # Restarted after writing, so throughput excludes logging and evaluations.
        timer_step, timer_start = step, time.perf_counter()
      if save_now:
        manager.wait_until_finished()  # The previous save, and the deletion of old ones.
        workdirs.require_free_space(
            str(manager.directory), checkpoint_bytes, f'the checkpoint of step {step}'
        )
        manager.save(step, args=ocp.args.StandardSave(state), force=stopping)
      if stopping:
        stopped_at = step
        break
  manager.wait_until_finished()
  writer.flush()
  if stopped_at is not None:
    message = (
        f'{stop.signal_name or "Preemption notice"}: saved a checkpoint at step '
        f'{stopped_at} in {manager.directory}; run the same command to resume.'
    )
    logging.warning(message)
    print(message, flush=True)
  elif jax.process_index() == 0:
    print(_summary(start_step, progress, last_scalars, manager, next_command), flush=True)
  return state


def _summary(start_step, progress, scalars, manager, next_command) -> str:
  """The lines printed when a run completes: what ran, how it ended, where it is, what next."""
  steps = progress.last_step - start_step
  shown = ', '.join(
      f'{k} {v:.4g}' for k, v in scalars.items() if k not in ('learning_rate', 'steps_per_sec')
  )
  lines = [
      f'Done: {steps} steps (to step {progress.last_step}) in '
      f'{progress_lib.format_duration(progress.elapsed())}.',
      f'Last metrics: {shown}.',
      f'Checkpoint: {manager.directory}/{manager.latest_step()}.',
  ]
  if next_command:
    lines.append(f'Next: {next_command}')
  return '\n'.join(lines)
