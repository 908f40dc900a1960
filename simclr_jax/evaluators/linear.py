"""The linear protocol on frozen features: L-BFGS logistic regression, L2 chosen on held-out
train examples (the SimCLR paper's transfer-learning protocol)."""

import numpy as np

from simclr_jax import linear_classifier
from simclr_jax.evaluators import core


def linear_probe_scores(config, train, eval_features, num_classes: int):
  """(class scores [N, C] of eval_features, {'l2', 'holdout_accuracy'}) of the L-BFGS
  logistic regression fitted on train features (L2 chosen on held-out train examples)."""
  classifier, info = linear_classifier.select_l2_and_fit(
      *train,
      num_classes,
      l2_grid=linear_classifier.DEFAULT_L2_GRID,
      holdout_fraction=config.eval.holdout_fraction,
      seed=config.seed,
      max_iterations=config.eval.max_iterations,
  )
  return np.asarray(linear_classifier.logits(classifier, eval_features)), info


class LinearEvaluator(core.Evaluator):
  """L-BFGS logistic regression on the train features, scored on the evaluation ones."""

  compare_with = (
      "the SimCLR paper's transfer-learning figures (logistic regression on frozen features of "
      "unaugmented images, L2 tuned on held-out train examples). Not the reference's CIFAR-10 "
      '(~91%) or ImageNet (64.5%, 69.1%) linear-evaluation figures: those come from the SGD '
      'protocol (eval.protocol=linear_sgd, configs/*_linear_eval.py).'
  )

  def validate(self, config):
    ev = config.eval
    if not 0 < ev.holdout_fraction < 1:
      raise ValueError(f'config.eval.holdout_fraction={ev.holdout_fraction} must be in (0, 1).')
    if ev.max_iterations < 1:
      raise ValueError(f'config.eval.max_iterations={ev.max_iterations} must be >= 1.')

  def run(self, config, train, evaluation, num_classes):
    train, evaluation = core.pca_reduced(config, train, evaluation)
    scores, info = linear_probe_scores(config, train, evaluation[0], num_classes)
    return {
        'l2': info['l2'],
        'holdout_accuracy': info['holdout_accuracy'],
        **core.accuracies(scores, evaluation[1], num_classes),
    }
