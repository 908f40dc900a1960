"""Pieces shared by the CPU-budget benchmarks: timed pretraining runs sized by a calibration
run, and the evaluation of an encoder by registered protocols on the full splits."""

import json
import os
import platform
import time

from absl import logging
import jax

from simclr_jax import evaluators
from simclr_jax import input_pipeline
from simclr_jax import models
from simclr_jax import train
from simclr_jax.core.sharding import create_mesh
from simclr_jax.evaluators import features

# The CIFAR-10 image folder the benchmarks read unless told otherwise.
DEFAULT_CIFAR10 = os.environ.get(
    'SIMCLR_CIFAR10_DIR',
    os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        '..',
        'shared',
        'data',
        'cifar10-jpeg',
    ),
)


def machine() -> str:
  return (
      f'{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, '
      f'{jax.devices()[0].device_kind} x{jax.device_count()}'
  )


def last_metrics(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f][-1]


def timed_pretraining(config, workdir):
  """(wall, CPU) seconds of a whole pretraining run, start-up included. The CPU time is this
  process's, all threads: what other load on the machine changes least."""
  wall, cpu = time.perf_counter(), time.process_time()
  train.train_and_evaluate(config, workdir)
  return time.perf_counter() - wall, time.process_time() - cpu


def plan_steps(config, workdir, budget_sec, calibration_steps, clock='wall'):
  """(steps, steps/s, start-up s): the steps of `config` that fit `budget_sec` of `clock`
  (timed_pretraining), from a calibration run of the same config in WORKDIR/calibration."""
  calibration = config.copy_and_resolve_references()
  calibration.num_train_steps = calibration_steps
  calibration.log_every_steps = calibration_steps
  calibration.checkpoint_every_steps = calibration_steps
  calibration_dir = os.path.join(workdir, 'calibration')
  wall, cpu = timed_pretraining(calibration, calibration_dir)
  steps_per_sec = last_metrics(calibration_dir)['steps_per_sec']
  if clock == 'cpu':  # The logged rate is of wall time; the run's CPU/wall ratio converts it.
    steps_per_sec *= wall / cpu
    wall = cpu
  startup = wall - (calibration_steps - 1) / steps_per_sec
  steps = int((budget_sec - startup) * steps_per_sec)
  logging.info(
      'Calibration: %.2f steps/s, %.0f s start-up: %d steps fit %.0f s.',
      steps_per_sec,
      startup,
      steps,
      budget_sec,
  )
  if steps < 1:
    raise ValueError(
        f'A budget of {budget_sec:.0f} s fits no step (start-up {startup:.0f} s); raise it.'
    )
  return steps, steps_per_sec, startup


def evaluate_encoder(config, pretrained_workdir, encoder, protocols, pca_dims=()):
  """{protocol: results} of one encoder ('pretrained', 'random' or 'pixels') on the splits
  of `config`, plus {f'{protocol}_pca{d}': ...} for each d of `pca_dims` (linear and MLP)."""
  info = input_pipeline.get_dataset_info(config, config.train_split)
  model = models.create_model(
      config.model, image_size=config.image_size, num_classes=info.num_classes
  )
  eval_config = config.copy_and_resolve_references()
  eval_config.eval.encoder = encoder
  eval_config.pretrained_workdir = pretrained_workdir
  mesh = create_mesh()
  start = time.perf_counter()
  variables, step = features.encoder_variables(eval_config, model, mesh)
  train_set, test_set = features.embed_splits(eval_config, model, variables, mesh)
  results = {
      'checkpoint_step': step,
      'feature_dim': int(train_set[0].shape[1]),
      'num_train_examples': len(train_set[1]),
      'num_eval_examples': len(test_set[1]),
      'embed_sec': time.perf_counter() - start,
  }
  for name in protocols:
    start = time.perf_counter()
    results[name] = evaluators.score(name, eval_config, train_set, test_set, info.num_classes)
    results[name]['sec'] = time.perf_counter() - start
    logging.info('%s, %s: top-1 %.2f%%', encoder, name, 100 * results[name]['top1'])
  for dim in pca_dims:
    eval_config.eval.pca_dim = dim
    for name in set(protocols) & {'linear', 'mlp'}:
      key = f'{name}_pca{dim}'
      results[key] = evaluators.score(name, eval_config, train_set, test_set, info.num_classes)
      logging.info('%s, %s: top-1 %.2f%%', encoder, key, 100 * results[key]['top1'])
  return results
