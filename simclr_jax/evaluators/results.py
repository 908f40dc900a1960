"""eval_results.json: what was evaluated, the numbers, and which published figures they compare
with."""

import json
import os
import time

from absl import logging
import jax
import tensorflow as tf

from simclr_jax.evaluators import core

# eval_results.json's `compare_with` of the programs that are not registered evaluators
# (README: "Which number to compare with which").
COMPARE_WITH = {
    'report': (
        "its linear number is the L-BFGS protocol ('linear'), its kNN number the kNN "
        "protocol ('knn'): compare each as those."
    ),
}


def compare_with(protocol: str) -> str:
  """Which published figures the numbers of `protocol` are comparable to."""
  return COMPARE_WITH[protocol] if protocol in COMPARE_WITH else core.get(protocol).compare_with


def results_header(config, protocol: str, checkpoint_step) -> dict:
  """The fields of eval_results.json that say what was evaluated."""
  return {
      'protocol': protocol,
      'compare_with': compare_with(protocol),
      'dataset': config.dataset,
      'train_split': config.train_split,
      'eval_split': config.eval.split,
      'encoder': config.eval.encoder,
      # online or target (the run's EMA target); None for the baselines.
      'weights': config.eval.get('weights', 'online') if checkpoint_step is not None else None,
      'model': config.model.name,
      'width_multiplier': config.model.width_multiplier,
      'pretrained_workdir': (config.pretrained_workdir if checkpoint_step is not None else None),
      'checkpoint_step': checkpoint_step,
  }


def report_results(results: dict, workdir: str, start_time: float) -> dict:
  """Adds the wall time, logs and prints `results`, writes WORKDIR/eval_results.json."""
  results['wall_time_sec'] = time.perf_counter() - start_time
  logging.info(
      '%s evaluation of the %s encoder: top-1 %.2f%%, top-5 %.2f%% on %s/%s.',
      results['protocol'],
      results['encoder'],
      100 * results['top1'],
      100 * results['top5'],
      results['dataset'],
      results['eval_split'],
  )
  print(json.dumps(results, indent=2))
  if jax.process_index() == 0:
    with tf.io.gfile.GFile(os.path.join(workdir, 'eval_results.json'), 'w') as f:
      json.dump(results, f, indent=2)
  return results
