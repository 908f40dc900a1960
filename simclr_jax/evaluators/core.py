"""Evaluators of a pretrained encoder, behind one registry.

An Evaluator scores features of the train and evaluation splits (extracted once by
features.py): `run(config, train, evaluation, num_classes)` returns its metrics (`top1` and
`top5` at least). It serves as a protocol of the evaluation program (--config.mode=evaluate
--config.eval.protocol=NAME) and as a monitor during pretraining (config.eval.monitors, every
config.eval_every_steps). A TrainingEvaluator (fine-tuning, the reference's SGD linear
protocol) trains a classifier on images instead, as a protocol only. A new one is one module
with a subclass of either and one entry in EVALUATORS.
"""

import abc
import importlib

import numpy as np

from simclr_jax import linear_classifier

# name -> 'module:class'.
EVALUATORS = {
    'linear': 'simclr_jax.evaluators.linear:LinearEvaluator',
    'knn': 'simclr_jax.evaluators.knn:KnnEvaluator',
    'mlp': 'simclr_jax.evaluators.mlp:MlpEvaluator',
    'linear_sgd': 'simclr_jax.evaluators.finetune:LinearSgdEvaluator',
    'finetune': 'simclr_jax.evaluators.finetune:FinetuneEvaluator',
}
# Older spellings of the evaluation modes, accepted for one more release: mode -> protocol
# (linear_eval: linear, or linear_sgd with eval.linear_protocol=sgd).
_LEGACY_MODES = {'knn_eval': 'knn', 'finetune': 'finetune'}
LEGACY_MODES = ('linear_eval', *_LEGACY_MODES)


class Evaluator(abc.ABC):
  """Scores features [N, D] with int labels [N] of the train and evaluation splits."""

  # Which published figures its numbers compare with (eval_results.json's `compare_with`).
  compare_with = ''

  def validate(self, config):
    """Raises ValueError naming the fix when config.eval holds a bad value of its own."""
    del config

  def settings(self, config) -> dict:
    """The config values its results depend on, recorded with them in eval_results.json."""
    del config
    return {}

  @abc.abstractmethod
  def run(self, config, train, evaluation, num_classes: int) -> dict:
    """Metrics (numbers) of `evaluation`'s features given `train`'s; each is a (features,
    labels) pair."""


class TrainingEvaluator(abc.ABC):
  """Trains a classifier on the train split's images, from the pretrained encoder, and scores
  it: a program of its own (checkpoints in its workdir, resume), not a pretraining monitor."""

  # Which published figures its numbers compare with (eval_results.json's `compare_with`).
  compare_with = ''

  @abc.abstractmethod
  def evaluate(self, config, workdir: str):
    """Trains, scores and writes WORKDIR/eval_results.json; returns the results, or None when
    a stop request ended training early (the same command resumes)."""


def trains(name: str) -> bool:
  """Whether the registered evaluator `name` trains a classifier (a TrainingEvaluator)."""
  return isinstance(get(name), TrainingEvaluator)


def get(name: str) -> Evaluator | TrainingEvaluator:
  """The registered evaluator `name`; a ValueError listing the known ones otherwise."""
  if name not in EVALUATORS:
    raise ValueError(f'No evaluator {name!r}; registered: {", ".join(EVALUATORS)}.')
  module, cls = EVALUATORS[name].split(':')
  return getattr(importlib.import_module(module), cls)()


def protocol(config) -> str:
  """The evaluation protocol config asks for (config.eval.protocol, or an older mode's)."""
  if config.mode == 'linear_eval':
    return 'linear_sgd' if config.eval.linear_protocol == 'sgd' else 'linear'
  return _LEGACY_MODES.get(config.mode, config.eval.protocol)


def legacy_mode_notice(config) -> str:
  """The sentence naming the current spelling of an older config.mode; '' for current ones."""
  if config.mode not in LEGACY_MODES:
    return ''
  return (
      f'--config.mode={config.mode} is the older spelling of --config.mode=evaluate '
      f'--config.eval.protocol={protocol(config)}, which it runs; the older one will be '
      'removed in the next release.'
  )


def monitors(config) -> list[str]:
  """The evaluators pretraining runs every config.eval_every_steps (config.eval.monitors)."""
  return [name.strip() for name in config.eval.monitors.split(',') if name.strip()]


def evaluation_config(config):
  """`config` reading config.eval.dataset in place of config.dataset when it is set: the
  labelled data of evaluations and monitors (pretraining may read unlabelled images)."""
  if not config.eval.get('dataset'):
    return config
  out = config.copy_and_resolve_references()
  out.dataset = config.eval.dataset
  return out


def score(name: str, config, train, evaluation, num_classes: int) -> dict:
  """Evaluator `name`'s settings and metrics on (features, labels) of both splits."""
  evaluator = get(name)
  return {**evaluator.settings(config), **evaluator.run(config, train, evaluation, num_classes)}


def pca_reduced(config, train, evaluation):
  """(train, evaluation) with features projected on the config.eval.pca_dim principal
  components of the train features (centred on their mean); unchanged when pca_dim is 0."""
  dim = config.eval.pca_dim
  if not dim:
    return train, evaluation
  x = np.asarray(train[0], np.float64)
  mean = x.mean(axis=0)
  # Rows of vt: the principal directions, by decreasing variance.
  _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
  basis = vt[:dim].T
  project = lambda f: ((np.asarray(f, np.float64) - mean) @ basis).astype(np.float32)
  return (project(train[0]), train[1]), (project(evaluation[0]), evaluation[1])


def accuracies(scores, labels, num_classes):
  """Top-1 and top-5 (or top-num_classes) accuracy of class scores [N, C]."""
  return {
      'top1': linear_classifier.topk_accuracy(scores, labels, 1),
      'top5': linear_classifier.topk_accuracy(scores, labels, min(5, num_classes)),
  }
