"""The kNN protocol on frozen features: cosine similarity, votes weighted by
exp(similarity / temperature) (Wu et al. 2018, as the SSL codebases report it)."""

from simclr_jax import knn
from simclr_jax.evaluators import core


class KnnEvaluator(core.Evaluator):
  """Weighted kNN of the evaluation features among the train features."""

  compare_with = (
      'kNN figures of other codebases (e.g. CIFAR-10 ResNet-18, 1000 epochs: '
      '91.4%), not linear-evaluation figures.'
  )

  def validate(self, config):
    ev = config.eval
    if ev.knn_k < 1:
      raise ValueError(f'config.eval.knn_k={ev.knn_k} must be >= 1 (reference: 200).')
    if ev.knn_temperature <= 0:
      raise ValueError(
          f'config.eval.knn_temperature={ev.knn_temperature} must be > 0 (reference: 0.1).'
      )

  def settings(self, config):
    return {'k': config.eval.knn_k, 'knn_temperature': config.eval.knn_temperature}

  def run(self, config, train, evaluation, num_classes):
    # A bank smaller than k (a monitor on a subset) votes with all of it.
    k = min(config.eval.knn_k, len(train[1]))
    scores = knn.knn_scores(
        *train, evaluation[0], num_classes, k=k, temperature=config.eval.knn_temperature
    )
    return core.accuracies(scores, evaluation[1], num_classes)
