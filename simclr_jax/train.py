"""SimCLR pretraining: one jitted, sharded train step and the loop around it."""

import functools
import json
import os
import time
from typing import Any

from absl import logging
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import tensorflow as tf

from simclr_jax import augment_jax
from simclr_jax import checkpoints
from simclr_jax import config_validation
from simclr_jax import distributed
from simclr_jax import evaluators
from simclr_jax import input_pipeline
from simclr_jax import losses
from simclr_jax import models
from simclr_jax import optim
from simclr_jax import plots
from simclr_jax import progress as progress_lib
from simclr_jax import stop_request
from simclr_jax.evaluators import monitor as evaluator_monitor
from simclr_jax.sharding import DATA_AXIS, batch_sharded, create_mesh, replicated
from simclr_jax import writers

# The augmentation summary written to TensorBoard when pretraining starts: a few images (cheap
# to decode and augment) with two pairs of views each.
_SUMMARY_IMAGES = 8
_SUMMARY_VIEWS = 4


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training; saved and restored as one pytree."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array  # Base key; step t uses fold_in(rng, t), so randomness is a function of step.


def init_train_state(model, tx, rng, image_size: int) -> TrainState:
  """Initialises parameters, BatchNorm statistics and optimiser state from `rng`."""
  init_rng, state_rng = jax.random.split(rng)
  variables = models.init_variables(model, init_rng, image_size)
  params = variables['params']
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables['batch_stats'], opt_state=tx.init(params),
                    rng=state_rng)


def loss_and_metrics(params, batch_stats, batch, *, model, temperature, mesh, chunk_size=0,
                     weight_decay=0.0):
  """NT-Xent (+ probe loss) of a batch of view pairs; returns (loss, (metrics, stats)).

  `batch['views']` is [N, 2, H, W, C]; both views of an image sit in one shard, and the model
  sees all 2N images at once so BatchNorm statistics cover the global batch of both views.
  The probe's loss is its cross-entropy plus `weight_decay` * ||kernel||^2 / 2: the optimiser
  leaves the probe out of its decay, and the reference adds the probe's decay to the loss.
  """
  views = batch['views']
  n = views.shape[0]
  images = views.reshape((2 * n,) + views.shape[2:])
  images = jax.lax.with_sharding_constraint(images, batch_sharded(mesh))
  out, updates = model.apply({'params': params, 'batch_stats': batch_stats}, images,
                             train=True, mutable=['batch_stats'])
  z = out['z'].reshape(n, 2, -1)
  contrastive = losses.nt_xent(z[:, 0], z[:, 1], temperature, mesh, DATA_AXIS, chunk_size)
  loss = contrastive.loss
  metrics = {'contrastive_loss': contrastive.loss,
             'contrastive_accuracy': contrastive.accuracy,
             'contrastive_entropy': contrastive.entropy}
  if 'probe_logits' in out:
    labels = jnp.repeat(batch['label'], 2)
    logits = out['probe_logits']
    probe_loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    probe_decay = weight_decay * 0.5 * jnp.sum(jnp.square(params['probe']['kernel']))
    loss = loss + probe_loss + probe_decay
    metrics['probe_loss'] = probe_loss
    metrics['probe_weight_decay'] = probe_decay
    metrics['probe_accuracy'] = jnp.mean(jnp.argmax(logits, axis=-1) == labels)
  metrics['loss'] = loss
  return loss, (metrics, updates['batch_stats'])


def augment_batch(batch, *, config_augment, image_size, mesh):
  """{'image', 'seed', 'label'} -> {'views', 'label'}: config.augment_on_device's views.

  Each example's views depend only on its own image and seed, so the vmapped augmentation
  splits over the 'data' axis like the batch, without communication.
  """
  views = augment_jax.pretrain_views(batch['image'], batch['seed'], config_augment, image_size)
  return {'views': jax.lax.with_sharding_constraint(views, batch_sharded(mesh)),
          'label': batch['label']}


def train_step(state: TrainState, batch, *, model, tx, schedule, temperature, mesh,
               chunk_size=0, augment=None, weight_decay=0.0):
  """One optimisation step on a global batch; returns the new state and scalar metrics.

  `augment`, if given, first turns the batch into views (`augment_batch`).
  """
  if augment is not None:
    batch = augment(batch)
  grad_fn = jax.value_and_grad(
      functools.partial(loss_and_metrics, model=model, temperature=temperature, mesh=mesh,
                        chunk_size=chunk_size, weight_decay=weight_decay),
      has_aux=True)
  (loss, (metrics, batch_stats)), grads = grad_fn(state.params, state.batch_stats, batch)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics['learning_rate'] = schedule(state.step)
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                            opt_state=opt_state)
  return only_if_finite(loss, grads, new_state, state, metrics)


def only_if_finite(loss, grads, new_state, state, metrics):
  """(new_state, metrics) if loss and gradients are finite, else (state, metrics).

  metrics['finite'] tells the loop, which stops with an error: a non-finite update never
  reaches the parameters, so no checkpoint can hold one.
  """
  finite = jnp.isfinite(loss)
  for g in jax.tree.leaves(grads):
    finite &= jnp.all(jnp.isfinite(g))
  kept = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
  return kept, {**metrics, 'finite': finite}


def make_train_step(model, tx, schedule, temperature, mesh, chunk_size=0, augment=None,
                    weight_decay=0.0):
  """jit-compiles `train_step` with the state replicated and the batch split over 'data'.

  `weight_decay` is the probe's, added to the loss (loss_and_metrics).
  """
  step_fn = functools.partial(train_step, model=model, tx=tx, schedule=schedule,
                              temperature=temperature, mesh=mesh, chunk_size=chunk_size,
                              augment=augment, weight_decay=weight_decay)
  return jax.jit(step_fn, in_shardings=(replicated(mesh), batch_sharded(mesh)),
                 out_shardings=(replicated(mesh), replicated(mesh)), donate_argnums=(0,))


def save_config(config, workdir: str):
  """Writes WORKDIR/config.json from process 0 (the workdir is shared by all hosts).

  Atomically: the other hosts may be reading it (checkpoints.config_differences) while
  resuming.
  """
  if jax.process_index() == 0:
    writers.write_atomically(os.path.join(workdir, 'config.json'),
                             config.to_json_best_effort(indent=2) + '\n')


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run saved in WORKDIR/config.json (save_config), as a ConfigDict."""
  path = writers.workdir_path(workdir, 'config.json')
  if not tf.io.gfile.exists(path):
    raise ValueError(
        f'No config.json in {workdir}: the model is rebuilt from the config its run saved '
        'there. Pretraining writes it when it starts (python -m simclr_jax.main --config=... '
        f'--workdir={workdir}); if the checkpoints were copied here without it, copy the '
        "run's config.json along.")
  try:
    with tf.io.gfile.GFile(path) as f:
      return ml_collections.ConfigDict(json.load(f))
  except json.JSONDecodeError as e:
    raise ValueError(
        f'{path} is not valid JSON ({e}); the model is rebuilt from it. Restore it from a '
        f'copy, or rerun the pretraining command on {workdir}: it rewrites config.json when '
        'it starts (with the same config file and flags, it resumes).') from None


def augmentation_images(config) -> dict:
  """{'augmentations': [1, H, W, 3]}: a few train images and their pretraining views."""
  images, views, _ = input_pipeline.augmentation_examples(
      config, config.train_split, num_images=_SUMMARY_IMAGES, num_views=_SUMMARY_VIEWS)
  return {'augmentations': plots.augmentation_grid(images, views)[None]}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Pretrains SimCLR as `config` says, writing checkpoints and metrics into `workdir`.

  Running it again on the same workdir resumes from the latest checkpoint.
  """
  # Everything that can be wrong with the inputs is checked before anything is compiled.
  config_validation.validate_config(config, num_devices=jax.device_count(),
                                    num_processes=jax.process_count())
  info = input_pipeline.get_dataset_info(config, config.train_split)
  if info.num_examples < config.batch_size:
    raise ValueError(f'{config.dataset}/{config.train_split} has {info.num_examples} examples, '
                     f'fewer than config.batch_size={config.batch_size}; lower the batch size.')

  # One class (a folder of unlabelled images) gives the probe and kNN monitor nothing to learn.
  num_classes = info.num_classes if info.num_classes > 1 else 0
  tf.io.gfile.makedirs(workdir)
  mesh = create_mesh()
  model = models.create_model(config.model, image_size=config.image_size,
                              num_classes=num_classes, dtype=models.DTYPES[config.dtype],
                              remat=config.remat)
  total_steps = optim.total_train_steps(config, info.num_examples)
  schedule = optim.learning_rate_schedule(config, info.num_examples, total_steps)
  tx = optim.create_optimizer(config, schedule)
  init_fn = functools.partial(init_train_state, model, tx, jax.random.PRNGKey(config.seed),
                              config.image_size)

  manager = checkpoints.create_checkpoint_manager(workdir, config)
  state = checkpoints.restore_or_init_state(manager, init_fn, mesh, config)
  start_step = int(state.step)
  save_config(config, workdir)
  num_params = sum(x.size for x in jax.tree.leaves(state.params['encoder']))
  logging.info('%s: %.2fM encoder parameters, %d devices, %d examples, steps %d -> %d.',
               config.model.name, num_params / 1e6, jax.device_count(), info.num_examples,
               start_step, total_steps)

  local_batch_size = config.batch_size // jax.process_count()
  dataset = input_pipeline.create_pretrain_dataset(
      config, local_batch_size=local_batch_size, start_step=start_step)
  batches = input_pipeline.device_batches(dataset, batch_sharded(mesh),
                                          prefetch=config.prefetch_batches, config=config,
                                          split=config.train_split)
  augment = (functools.partial(augment_batch, config_augment=config.augment,
                               image_size=config.image_size, mesh=mesh)
             if config.augment_on_device else None)
  step_fn = make_train_step(model, tx, schedule, config.temperature, mesh,
                            config.contrastive_chunk_size, augment, config.weight_decay)

  monitor = (evaluator_monitor.Monitor(config, model, mesh, num_classes)
             if config.eval_every_steps > 0 and num_classes and evaluators.monitors(config)
             else None)

  def knn_metrics(step, state):
    if monitor and step % config.eval_every_steps == 0:
      return monitor(state.params, state.batch_stats)
    return {}

  # What the encoder is fed, shown once in TensorBoard when a run starts (not on resume).
  images = (augmentation_images(config) if start_step == 0 and jax.process_index() == 0
            else None)
  return run_training_loop(config, workdir, state, step_fn, batches, manager=manager,
                           batch_size=config.batch_size, start_step=start_step,
                           total_steps=total_steps, extra_metrics=knn_metrics, images=images,
                           next_command=f'python -m simclr_jax.report --workdir={workdir} '
                           '(linear and kNN accuracy of the encoder, with figures).',
                           cpu_config_hint=' On a CPU, configs/cifar10_cpu.py trains '
                           'CIFAR-10 in about 20 minutes.')


def _check_finite(steps, metrics, manager):
  """Raises FloatingPointError naming the first step whose fetched metrics are not finite."""
  bad = [step for step, m in zip(steps, metrics) if not m['finite']]
  if bad:
    manager.wait_until_finished()
    last = manager.latest_step()
    resume = (f'The last good checkpoint is step {last} in {manager.directory}; rerun the '
              'command and it resumes from there.' if last is not None else
              'No checkpoint was saved yet; rerun the command to start again from step 0.')
    raise FloatingPointError(
        f'The loss or the gradients became NaN or infinite at step {bad[0]}; training stopped '
        f'and the non-finite update was not applied or saved. Lower config.learning_rate (or '
        f'raise config.warmup_epochs). {resume}')


def _compiled_on_every_process(step_fn, state, batch, start_step: int):
  """`step_fn` compiled for these arguments, once every process has compiled it.

  Compile times differ between processes by more than the 30 s that gloo (CPU collectives)
  waits for a peer in the first step's collectives; the barrier lines them up first.
  """
  compiled = step_fn.lower(state, batch).compile()
  distributed.barrier(f'simclr_jax_step_{start_step + 1}_compiled')
  return compiled


def run_training_loop(config, workdir, state, step_fn, batches, *, manager, batch_size: int,
                      start_step: int, total_steps: int, extra_metrics=None, images=None,
                      next_command: str = '', cpu_config_hint: str = ''):
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
      start_step=start_step, total_steps=total_steps, batch_size=batch_size,
      every_secs=config.progress_every_secs, cpu_config_hint=cpu_config_hint)
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
        scalars = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]
                   if k != 'finite'}
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
        writers.require_free_space(str(manager.directory), checkpoint_bytes,
                                   f'the checkpoint of step {step}')
        manager.save(step, args=ocp.args.StandardSave(state), force=stopping)
      if stopping:
        stopped_at = step
        break
  manager.wait_until_finished()
  writer.flush()
  if stopped_at is not None:
    message = (f'{stop.signal_name or "Preemption notice"}: saved a checkpoint at step '
               f'{stopped_at} in {manager.directory}; run the same command to resume.')
    logging.warning(message)
    print(message, flush=True)
  elif jax.process_index() == 0:
    print(_summary(start_step, progress, last_scalars, manager, next_command), flush=True)
  return state


def _summary(start_step, progress, scalars, manager, next_command) -> str:
  """The lines printed when a run completes: what ran, how it ended, where it is, what next."""
  steps = progress.last_step - start_step
  shown = ', '.join(f'{k} {v:.4g}' for k, v in scalars.items()
                    if k not in ('learning_rate', 'steps_per_sec'))
  lines = [f'Done: {steps} steps (to step {progress.last_step}) in '
           f'{progress_lib.format_duration(progress.elapsed())}.',
           f'Last metrics: {shown}.',
           f'Checkpoint: {manager.directory}/{manager.latest_step()}.']
  if next_command:
    lines.append(f'Next: {next_command}')
  return '\n'.join(lines)
