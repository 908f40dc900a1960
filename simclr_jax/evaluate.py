"""The evaluation program: a pretrained encoder evaluated by the registered evaluator of
config.eval.protocol (evaluators/).

For an evaluator of features (L-BFGS linear, kNN, ...): restores the encoder from a pretraining
workdir's Orbax checkpoint (read-only), or takes a randomly initialised one or raw pixels (the
baselines), extracts representations h of the train and evaluation splits once, and scores
them. A training evaluator (finetune, linear_sgd) runs its own training instead. Either writes
WORKDIR/eval_results.json.
"""

import time

import jax
import tensorflow as tf

from simclr_jax import config_validation
from simclr_jax import evaluators
from simclr_jax import models
from simclr_jax.evaluators import features
from simclr_jax.evaluators import results as results_lib
from simclr_jax.core.sharding import create_mesh


def evaluate(config, workdir: str) -> dict:
  """Runs the protocol config names; prints and writes WORKDIR/eval_results.json."""
  start = time.perf_counter()
  config_validation.validate_config(
      config, num_devices=jax.device_count(), num_processes=jax.process_count()
  )
  config = evaluators.evaluation_config(config)
  protocol = evaluators.protocol(config)
  if evaluators.trains(protocol):
    return evaluators.get(protocol).evaluate(config, workdir)
  train_info = features.labelled_train_info(config)
  mesh = create_mesh()
  num_classes = train_info.num_classes
  model = models.create_model(config.model, image_size=config.image_size, num_classes=num_classes)
  variables, step = features.encoder_variables(config, model, mesh)
  tf.io.gfile.makedirs(workdir)
  train, evaluation = features.embed_splits(config, model, variables, mesh)

  results = {
      **results_lib.results_header(config, protocol, step),
      'num_train_examples': len(train[1]),
      'num_eval_examples': len(evaluation[1]),
      'feature_dim': int(train[0].shape[1]),
      **evaluators.score(protocol, config, train, evaluation, num_classes),
  }
  return results_lib.report_results(results, workdir, start)
