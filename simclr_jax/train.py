"""SimCLR pretraining: one jitted, sharded train step and the loop around it."""

import functools
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
from clu import periodic_actions

from simclr_jax import config_validation
from simclr_jax import evaluate
from simclr_jax import input_pipeline
from simclr_jax import losses
from simclr_jax import models
from simclr_jax import optim
from simclr_jax.sharding import DATA_AXIS, batch_sharded, create_mesh, replicated, run_once
from simclr_jax import writers

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
  dummy = jnp.zeros((2, image_size, image_size, 3), jnp.float32)
  variables = model.init(init_rng, dummy, train=False)
  params = variables['params']
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables['batch_stats'], opt_state=tx.init(params),
                    rng=state_rng)


def loss_and_metrics(params, batch_stats, batch, *, model, temperature, mesh):
  """NT-Xent (+ probe cross-entropy) of a batch of view pairs; returns (loss, (metrics, stats)).

  `batch['views']` is [N, 2, H, W, C]; both views of an image sit in one shard, and the model
  sees all 2N images at once so BatchNorm statistics cover the global batch of both views.
  """
  views = batch['views']
  n = views.shape[0]
  images = views.reshape((2 * n,) + views.shape[2:])
  images = jax.lax.with_sharding_constraint(images, batch_sharded(mesh))
  out, updates = model.apply({'params': params, 'batch_stats': batch_stats}, images,
                             train=True, mutable=['batch_stats'])
  z = out['z'].reshape(n, 2, -1)
  contrastive = losses.nt_xent(z[:, 0], z[:, 1], temperature, mesh, DATA_AXIS)
  loss = contrastive.loss
  metrics = {'contrastive_loss': contrastive.loss,
             'contrastive_accuracy': contrastive.accuracy,
             'contrastive_entropy': contrastive.entropy}
  if 'probe_logits' in out:
    labels = jnp.repeat(batch['label'], 2)
    logits = out['probe_logits']
    probe_loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    loss = loss + probe_loss
    metrics['probe_loss'] = probe_loss
    metrics['probe_accuracy'] = jnp.mean(jnp.argmax(logits, axis=-1) == labels)
  metrics['loss'] = loss
  return loss, (metrics, updates['batch_stats'])


def train_step(state: TrainState, batch, *, model, tx, schedule, temperature, mesh):
  """One optimisation step on a global batch; returns the new state and scalar metrics."""
  grad_fn = jax.value_and_grad(
      functools.partial(loss_and_metrics, model=model, temperature=temperature, mesh=mesh),
      has_aux=True)
  (_, (metrics, batch_stats)), grads = grad_fn(state.params, state.batch_stats, batch)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics['learning_rate'] = schedule(state.step)
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                            opt_state=opt_state)
  return new_state, metrics


def make_train_step(model, tx, schedule, temperature, mesh):
  """jit-compiles `train_step` with the state replicated and the batch split over 'data'."""
  step_fn = functools.partial(train_step, model=model, tx=tx, schedule=schedule,
                              temperature=temperature, mesh=mesh)
  return jax.jit(step_fn, in_shardings=(replicated(mesh), batch_sharded(mesh)),
                 out_shardings=(replicated(mesh), replicated(mesh)), donate_argnums=(0,))


def create_checkpoint_manager(workdir: str, config) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), 'checkpoints'),
      options=ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints, create=True))


def restore_or_init_state(manager, init_fn, mesh) -> TrainState:
  """Restores the latest checkpoint onto `mesh` (replicated), or initialises a fresh state."""
  sharding = replicated(mesh)
  latest = manager.latest_step()
  if latest is None:
    return run_once(init_fn, out_shardings=sharding)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                          jax.eval_shape(init_fn))
  logging.info('Resuming from checkpoint at step %d in %s.', latest, manager.directory)
  return manager.restore(latest, args=ocp.args.StandardRestore(abstract))


def save_config(config, workdir: str):
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    f.write(config.to_json_best_effort(indent=2) + '\n')


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Pretrains SimCLR as `config` says, writing checkpoints and metrics into `workdir`.

  Running it again on the same workdir resumes from the latest checkpoint.
  """
  # Everything that can be wrong with the inputs is checked before anything is compiled.
  config_validation.validate_config(config, num_devices=jax.device_count())
  info = input_pipeline.get_dataset_info(config, config.train_split)
  if info.num_examples < config.batch_size:
    raise ValueError(f'{config.dataset}/{config.train_split} has {info.num_examples} examples, '
                     f'fewer than config.batch_size={config.batch_size}; lower the batch size.')

  os.makedirs(workdir, exist_ok=True)
  mesh = create_mesh()
  model = models.create_model(config.model, image_size=config.image_size,
                              num_classes=info.num_classes)
  total_steps = optim.total_train_steps(config, info.num_examples)
  schedule = optim.learning_rate_schedule(config, info.num_examples, total_steps)
  tx = optim.create_optimizer(config, schedule)
  init_fn = functools.partial(init_train_state, model, tx, jax.random.PRNGKey(config.seed),
                              config.image_size)

  manager = create_checkpoint_manager(workdir, config)
  state = restore_or_init_state(manager, init_fn, mesh)
  start_step = int(state.step)
  if jax.process_index() == 0:
    save_config(config, workdir)
  num_params = sum(x.size for x in jax.tree.leaves(state.params['encoder']))
  logging.info('%s: %.2fM encoder parameters, %d devices, %d examples, steps %d -> %d.',
               config.model.name, num_params / 1e6, jax.device_count(), info.num_examples,
               start_step, total_steps)

  local_batch_size = config.batch_size // jax.process_count()
  dataset = input_pipeline.create_pretrain_dataset(
      config, local_batch_size=local_batch_size, start_step=start_step)
  batches = input_pipeline.device_batches(dataset, batch_sharded(mesh),
                                          prefetch=config.prefetch_batches)
  step_fn = make_train_step(model, tx, schedule, config.temperature, mesh)

  monitor = (evaluate.KnnMonitor(config, model, mesh, info.num_classes)
             if config.eval_every_steps > 0 and info.num_classes else None)

  def knn_metrics(step, state):
    if monitor and step % config.eval_every_steps == 0:
      return monitor(state.params, state.batch_stats)
    return {}

  return run_training_loop(config, workdir, state, step_fn, batches, manager=manager,
                           batch_size=config.batch_size, start_step=start_step,
                           total_steps=total_steps, extra_metrics=knn_metrics)


def run_training_loop(config, workdir, state, step_fn, batches, *, manager, batch_size: int,
                      start_step: int, total_steps: int, extra_metrics=None):
  """Runs `step_fn` to total_steps, logging and checkpointing as config says; returns state.

  Metrics are averaged over the steps between writes (every config.log_every_steps) and
  written with throughput to WORKDIR (TensorBoard and metrics.jsonl);
  `extra_metrics(step, state)` may add evaluations, which the throughput timer excludes.
  """
  writer = writers.create_writer(workdir)
  # The progress note (rate, ETA) goes to the log; scalars go through `writer` below.
  report_progress = periodic_actions.ReportProgress(
      num_train_steps=total_steps, every_steps=config.log_every_steps, every_secs=None)
  window = []
  for step in range(start_step + 1, total_steps + 1):
    state, metrics = step_fn(state, next(batches))
    window.append(metrics)
    report_progress(step)
    if step == start_step + 1:
      # The first step includes compilation: throughput is timed from its end.
      jax.block_until_ready(metrics)
      timer_step, timer_start = step, time.perf_counter()
    scalars = {}
    if step % config.log_every_steps == 0 or step == total_steps:
      window = jax.device_get(window)
      scalars = {k: float(np.mean([m[k] for m in window])) for k in window[0]}
      elapsed = time.perf_counter() - timer_start
      if step > timer_step:
        scalars['steps_per_sec'] = (step - timer_step) / elapsed
        scalars['images_per_sec'] = scalars['steps_per_sec'] * batch_size
      window = []
    if extra_metrics:
      scalars.update(extra_metrics(step, state))
    if scalars:
      writer.write_scalars(step, scalars)
      # Restarted after writing, so throughput excludes logging and evaluations.
      timer_step, timer_start = step, time.perf_counter()
    if step % config.checkpoint_every_steps == 0 or step == total_steps:
      manager.save(step, args=ocp.args.StandardSave(state))
  manager.wait_until_finished()
  writer.flush()
  return state
