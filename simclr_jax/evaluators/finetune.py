"""Training evaluators: supervised training on top of a pretrained encoder.

Two protocols share this code:
- `--config.eval.protocol=finetune`: fine-tunes the encoder from
  `finetune.fine_tune_after_block` on (-1: all of it), on a class-balanced
  `finetune.label_fraction` of the train labels, optionally through the first projection-head
  layer (`finetune.keep_head_layers=1`, SimCLRv2).
- `--config.eval.protocol=linear_sgd`: the official linear evaluation, i.e. the same program
  with the whole encoder frozen (BatchNorm in inference mode) and a linear layer on h trained
  on all labels.
Both train with Nesterov momentum SGD on crop-and-flip views, as the reference does, save Orbax
checkpoints into their own workdir (and resume from them), and score the eval split at the end.
"""

import functools
import time

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import optax
import tensorflow as tf

from simclr_jax.core import checkpoints
from simclr_jax import config_validation
from simclr_jax import datasets
from simclr_jax import evaluators
from simclr_jax import input_pipeline
from simclr_jax.core import prefetch
from simclr_jax import label_fractions
from simclr_jax import models
from simclr_jax.core import optim
from simclr_jax.core import run_config
from simclr_jax.core import train_state
from simclr_jax.core import training_loop
from simclr_jax.evaluators import core
from simclr_jax.evaluators import features
from simclr_jax.evaluators import results as results_lib
from simclr_jax.core.sharding import batch_sharded, create_mesh, replicated


def protocol_settings(config) -> tuple[str, ml_collections.ConfigDict]:
  """(protocol name, the finetune settings it runs with) for config's protocol."""
  settings = config.finetune.copy_and_resolve_references()
  if evaluators.protocol(config) == 'finetune':
    return 'finetune', settings
  # The reference linear evaluation: everything frozen, a linear layer on h, all labels.
  with settings.unlocked():
    settings.fine_tune_after_block = models.num_encoder_parts(config.model) - 1
    settings.keep_head_layers = 0
    settings.label_fraction = 1.0
  return 'linear_sgd', settings


def with_pretrained(variables, pretrained):
  """`variables` with the encoder (and kept head layers) taken from `pretrained`."""

  def take(init, saved):
    if isinstance(init, dict):
      return {k: take(v, saved[k]) for k, v in init.items()}
    return saved

  out = {}
  for collection, tree in variables.items():
    out[collection] = {
        k: take(v, pretrained[collection][k]) if k in ('encoder', 'head') else v
        for k, v in tree.items()
    }
  return out


def finetune_step(state, batch, *, model, tx, schedule, dropout_seed=0):
  """One SGD step of softmax cross-entropy on a global batch of labelled views."""

  def loss_fn(params):
    logits, updates = model.apply(
        {'params': params, 'batch_stats': state.batch_stats},
        batch['image'],
        train=True,
        mutable=['batch_stats'],
        rngs={'dropout': train_state.step_rng(dropout_seed, state.step)},
    )
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label']).mean()
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch['label'])
    return loss, (accuracy, updates['batch_stats'])

  (loss, (accuracy, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  new_state = state.replace(
      step=state.step + 1,
      params=optax.apply_updates(state.params, updates),
      batch_stats=batch_stats,
      opt_state=opt_state,
  )
  metrics = {'loss': loss, 'accuracy': accuracy, 'learning_rate': schedule(state.step)}
  return train_state.only_if_finite(loss, grads, new_state, state, metrics)


def make_finetune_step(model, tx, schedule, mesh, dropout_seed=0):
  return train_state.jit_step(
      functools.partial(
          finetune_step, model=model, tx=tx, schedule=schedule, dropout_seed=dropout_seed
      ),
      mesh,
  )


def _pretrained_variables(config, num_classes, with_head):
  """The pretraining run's variables (None for the random-encoder baseline); and its step.
  `with_head`: fine-tuning keeps projection-head layers, which must be SimCLR's."""
  if config.eval.encoder == 'random':
    return None, None
  simclr_model = models.create_model(
      config.model, image_size=config.image_size, num_classes=num_classes
  )
  return features.restore_encoder_variables(
      config,
      simclr_model,
      config.pretrained_workdir,
      config.pretrained_step,
      with_head=with_head,
  )


def finetune(config, workdir: str):
  """Trains and scores a classifier as config.mode says; writes WORKDIR/eval_results.json.

  Returns the results, or None when a signal stopped training (a rerun resumes).
  """
  start = time.perf_counter()
  config_validation.validate_config(
      config, num_devices=jax.device_count(), num_processes=jax.process_count()
  )
  protocol, settings = protocol_settings(config)
  info = features.labelled_train_info(config)
  subset = label_fractions.class_balanced_subset(
      datasets.get(config).labels(config.train_split), settings.label_fraction, settings.subset_seed
  )
  pretrained, pretrained_step = _pretrained_variables(
      config, info.num_classes, settings.keep_head_layers > 0
  )

  tf.io.gfile.makedirs(workdir)
  mesh = create_mesh()
  model = models.create_classifier(
      config.model,
      image_size=config.image_size,
      num_classes=info.num_classes,
      fine_tune_after_block=settings.fine_tune_after_block,
      keep_head_layers=settings.keep_head_layers,
  )
  total_steps = optim.steps_for_epochs(settings.epochs, len(subset), settings.batch_size)
  schedule = optim.warmup_cosine_schedule(
      optim.scaled_learning_rate(settings.learning_rate, settings.batch_size, settings.lr_scaling),
      optim.warmup_steps(settings.warmup_epochs, len(subset), settings.batch_size),
      total_steps,
  )
  tx = optim.create_finetune_optimizer(settings, schedule, models.encoder_part_of(config.model))
  init_fn = functools.partial(
      train_state.init_train_state,
      model,
      tx,
      jax.random.PRNGKey(config.seed),
      config.image_size,
      pretrained=None
      if pretrained is None
      else functools.partial(with_pretrained, pretrained=pretrained),
  )

  manager = checkpoints.create_checkpoint_manager(workdir, config)
  state = checkpoints.restore_or_init_state(manager, init_fn, mesh, config)
  start_step = int(state.step)
  run_config.save_config(config, workdir)
  logging.info(
      '%s: %d of %d labelled examples, %s encoder, frozen through part %d, ' 'steps %d -> %d.',
      protocol,
      len(subset),
      info.num_examples,
      config.eval.encoder,
      settings.fine_tune_after_block,
      start_step,
      total_steps,
  )
  dataset = input_pipeline.create_finetune_dataset(
      config,
      local_batch_size=settings.batch_size // jax.process_count(),
      subset=subset,
      start_step=start_step,
  )
  batches = prefetch.device_batches(
      dataset,
      batch_sharded(mesh),
      prefetch=config.prefetch_batches,
      config=config,
      split=config.train_split,
  )
  state = training_loop.run(
      config,
      workdir,
      state,
      make_finetune_step(model, tx, schedule, mesh, config.seed),
      batches,
      manager=manager,
      batch_size=settings.batch_size,
      start_step=start_step,
      total_steps=total_steps,
  )
  if int(state.step) < total_steps:
    return None  # Stopped early by a signal; the same command resumes and then evaluates.

  logits_fn = jax.jit(
      lambda variables, images: model.apply(variables, images, train=False),
      in_shardings=(replicated(mesh), batch_sharded(mesh)),
      out_shardings=batch_sharded(mesh),
  )
  eval_dataset, _ = input_pipeline.create_eval_dataset(
      config,
      config.eval.split,
      local_batch_size=config.eval.batch_size // jax.process_count(),
      max_examples=config.eval.max_examples,
  )
  logits, labels = features.extract_features(
      logits_fn,
      {'params': state.params, 'batch_stats': state.batch_stats},
      eval_dataset,
      mesh,
      config=config,
      split=config.eval.split,
      description=f'{config.eval.split} predictions',
  )
  results = {
      **results_lib.results_header(config, protocol, pretrained_step),
      'label_fraction': settings.label_fraction,
      'num_labelled_examples': len(subset),
      'num_eval_examples': len(labels),
      'fine_tune_after_block': settings.fine_tune_after_block,
      'keep_head_layers': settings.keep_head_layers,
      'epochs': settings.epochs,
      'steps': total_steps,
      **evaluators.accuracies(logits, labels, info.num_classes),
  }
  return results_lib.report_results(results, workdir, start)


class FinetuneEvaluator(core.TrainingEvaluator):
  """Fine-tuning on a label fraction (finetune.*): the paper's semi-supervised protocol."""

  compare_with = (
      'semi-supervised fine-tuning figures at the same label fraction (SimCLRv2, ResNet-50 1x: '
      '57.9% with 1% and 68.4% with 10% of the ImageNet labels).'
  )

  def evaluate(self, config, workdir):
    return finetune(config, workdir)


class LinearSgdEvaluator(core.TrainingEvaluator):
  """The reference's linear evaluation: the encoder frozen, a linear layer trained by SGD."""

  compare_with = (
      "the reference's linear-evaluation figures: CIFAR-10 ResNet-18 ~91% after 1000 epochs; "
      'ImageNet ResNet-50 64.5% after 100 epochs, 69.1% after 1000.'
  )

  def evaluate(self, config, workdir):
    return finetune(config, workdir)
