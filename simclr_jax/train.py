"""The pretraining program: any registered method (methods/) on the shared core.

Data, optimiser, train state, checkpoints, monitors and the loop are the same for every
method; config.method picks the model and the train step.
"""

import functools

from absl import logging
import jax
import ml_collections
import tensorflow as tf

from simclr_jax.core import checkpoints
from simclr_jax import config_validation
from simclr_jax import evaluators
from simclr_jax import image_grid
from simclr_jax import input_pipeline
from simclr_jax import example_images
from simclr_jax.core import prefetch
from simclr_jax import methods
from simclr_jax.core import optim
from simclr_jax.core import run_config
from simclr_jax.core import train_state
from simclr_jax.core import training_loop
from simclr_jax.evaluators import monitor as evaluator_monitor
from simclr_jax.core.sharding import batch_sharded, create_mesh

# The augmentation summary written to TensorBoard when pretraining starts: a few images (cheap
# to decode and augment) with two pairs of views each.
_SUMMARY_IMAGES = 8
_SUMMARY_VIEWS = 4


def augmentation_images(config) -> dict:
  """{'augmentations': [1, H, W, 3]}: a few train images and their pretraining views."""
  images, views, _ = example_images.augmentation_examples(
      config, config.train_split, num_images=_SUMMARY_IMAGES, num_views=_SUMMARY_VIEWS
  )
  return {'augmentations': image_grid.augmentation_grid(images, views)[None]}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> train_state.TrainState:
  """Pretrains config.method as `config` says, writing checkpoints and metrics into `workdir`.

  Running it again on the same workdir resumes from the latest checkpoint.
  """
  # Everything that can be wrong with the inputs is checked before anything is compiled.
  config_validation.validate_config(
      config, num_devices=jax.device_count(), num_processes=jax.process_count()
  )
  info = input_pipeline.get_dataset_info(config, config.train_split)
  if info.num_examples < config.batch_size:
    raise ValueError(
        f'{config.dataset}/{config.train_split} has {info.num_examples} examples, '
        f'fewer than config.batch_size={config.batch_size}; lower the batch size.'
    )

  # One class (a folder of unlabelled images) gives the probe and kNN monitor nothing to learn.
  num_classes = info.num_classes if info.num_classes > 1 else 0
  if not num_classes:
    logging.info(
        '%s has no labels: no online probe%s.',
        config.dataset,
        f'; the monitors read config.eval.dataset={config.eval.dataset!r}'
        if config.eval.get('dataset')
        else ', and no monitor (set config.eval.dataset to a labelled dataset for one)',
    )
  tf.io.gfile.makedirs(workdir)
  mesh = create_mesh()
  method = methods.get(config, info.num_examples)
  model = method.create_model(num_classes)
  total_steps = optim.total_train_steps(config, info.num_examples)
  schedule = optim.learning_rate_schedule(config, info.num_examples, total_steps)
  tx = method.create_optimizer(schedule)
  init_fn = functools.partial(method.init_state, model, tx, jax.random.PRNGKey(config.seed))

  manager = checkpoints.create_checkpoint_manager(workdir, config)
  state = checkpoints.restore_or_init_state(manager, init_fn, mesh, config)
  start_step = int(state.step)
  run_config.save_config(config, workdir)
  num_params = sum(x.size for x in jax.tree.leaves(state.params['encoder']))
  logging.info(
      '%s: %.2fM encoder parameters, %d devices, %d examples, steps %d -> %d.',
      config.model.name,
      num_params / 1e6,
      jax.device_count(),
      info.num_examples,
      start_step,
      total_steps,
  )

  local_batch_size = config.batch_size // jax.process_count()
  dataset = input_pipeline.create_pretrain_dataset(
      config, local_batch_size=local_batch_size, start_step=start_step
  )
  batches = prefetch.device_batches(
      dataset,
      batch_sharded(mesh),
      prefetch=config.prefetch_batches,
      config=config,
      split=config.train_split,
  )
  step_fn = method.make_train_step(model, tx, schedule, mesh, total_steps)

  monitor = None
  if config.eval_every_steps > 0 and evaluators.monitors(config):
    eval_config = evaluators.evaluation_config(config)
    monitor_classes = num_classes
    if eval_config is not config:
      monitor_classes = input_pipeline.get_dataset_info(eval_config, config.train_split).num_classes
    if monitor_classes:
      monitor = evaluator_monitor.Monitor(eval_config, model, mesh, monitor_classes)

  def knn_metrics(step, state):
    if monitor and step % config.eval_every_steps == 0:
      return monitor(state.params, state.batch_stats)
    return {}

  # What the encoder is fed, shown once in TensorBoard when a run starts (not on resume).
  images = augmentation_images(config) if start_step == 0 and jax.process_index() == 0 else None
  return training_loop.run(
      config,
      workdir,
      state,
      step_fn,
      batches,
      manager=manager,
      batch_size=config.batch_size,
      start_step=start_step,
      total_steps=total_steps,
      extra_metrics=knn_metrics,
      images=images,
      next_command=f'python -m simclr_jax.report --workdir={workdir} '
      '(linear and kNN accuracy of the encoder, with figures).',
      cpu_config_hint=' On a CPU, configs/cifar10_cpu.py trains ' 'CIFAR-10 in about 20 minutes.',
  )
