"""evaluators/: a new evaluator is one class and one registry entry, and then serves as a
protocol of the evaluation program and as a monitor in pretraining."""

import json

import jax
import numpy as np
import pytest

from conftest import load_config, tiny_config
from simclr_jax import evaluate
from simclr_jax import evaluators
from simclr_jax import models
from simclr_jax.evaluators import core
from simclr_jax.evaluators import monitor
from simclr_jax.core.sharding import create_mesh


class NearestCentroid(core.Evaluator):
  """A toy evaluator: each evaluated example takes the class of the nearest train-class mean."""

  compare_with = 'nothing published: a test evaluator.'
  seen = []  # (train, evaluation) of each run, for the test to inspect.

  def settings(self, config):
    return {'metric': 'euclidean'}

  def run(self, config, train, evaluation, num_classes):
    NearestCentroid.seen.append((train, evaluation))
    centroids = np.stack(
        [
            train[0][train[1] == c].mean(0)
            if (train[1] == c).any()
            else np.full(train[0].shape[1], np.inf)
            for c in range(num_classes)
        ]
    )
    distances = ((evaluation[0][:, None] - centroids[None]) ** 2).sum(-1)
    return evaluators.accuracies(-distances, evaluation[1], num_classes)


@pytest.fixture
def with_centroid(monkeypatch):
  monkeypatch.setitem(core.EVALUATORS, 'centroid', f'{__name__}:NearestCentroid')
  NearestCentroid.seen.clear()


def _brute_force_top1(train, evaluation):
  """Nearest class mean by a loop over examples and classes."""
  correct = 0
  for x, y in zip(*evaluation):
    best = min(
        set(train[1].tolist()),
        key=lambda c: float(np.sum((x - train[0][train[1] == c].mean(0)) ** 2)),
    )
    correct += best == y
  return correct / len(evaluation[1])


def test_registered_evaluator_is_a_protocol_of_the_program(
    with_centroid, cifar10_subset, pretrained_workdir, tmp_path
):
  del with_centroid
  config = tiny_config(cifar10_subset)
  config.mode, config.eval.protocol = 'evaluate', 'centroid'
  config.pretrained_workdir = str(pretrained_workdir)
  results = evaluate.evaluate(config, str(tmp_path))
  saved = json.loads((tmp_path / 'eval_results.json').read_text())
  assert saved['protocol'] == 'centroid' and saved['metric'] == 'euclidean'
  assert saved['compare_with'] == NearestCentroid.compare_with
  ((train, evaluation),) = NearestCentroid.seen
  assert len(train[1]) == saved['num_train_examples'] == 100
  assert saved['top1'] == results['top1'] == pytest.approx(_brute_force_top1(train, evaluation))


def test_registered_evaluator_monitors_pretraining(with_centroid, cifar10_subset):
  del with_centroid
  config = tiny_config(cifar10_subset)
  config.eval.monitors = 'knn,centroid'
  model = models.create_model(config.model, image_size=config.image_size, num_classes=10)
  size = config.image_size
  variables = jax.jit(lambda: models.init_variables(model, jax.random.PRNGKey(0), size))()
  metrics = monitor.Monitor(config, model, create_mesh(), 10)(
      variables['params'], variables['batch_stats']
  )
  assert sorted(metrics) == ['centroid_top1', 'centroid_top5', 'knn_top1', 'knn_top5']
  ((train, evaluation),) = NearestCentroid.seen
  assert metrics['centroid_top1'] == pytest.approx(_brute_force_top1(train, evaluation))


def test_unknown_protocol_and_monitor_are_refused_before_work(cifar10_subset):
  """Also a training evaluator as a monitor: it trains a classifier, it scores no features."""
  from simclr_jax import config_validation  # pylint: disable=g-import-not-at-top

  config = tiny_config(cifar10_subset)
  config.eval.monitors = 'knn,centroid'
  with pytest.raises(
      ValueError,
      match=r"config.eval.monitors names 'centroid', which is not an "
      r'evaluator of features; use names among linear, knn,',
  ):
    config_validation.validate_config(config, num_devices=1)
  config.eval.monitors = 'finetune'
  with pytest.raises(ValueError, match=r"names 'finetune', which is not an evaluator of features"):
    config_validation.validate_config(config, num_devices=1)
  config = tiny_config(cifar10_subset)
  config.mode, config.eval.protocol, config.pretrained_workdir = 'evaluate', 'centroid', 'x'
  with pytest.raises(
      ValueError,
      match=r"config.eval.protocol='centroid' is not known; use one "
      r'of linear, knn, mlp, linear_sgd, finetune',
  ):
    config_validation.validate_config(config, num_devices=1)


@pytest.mark.parametrize(
    'mode,linear_protocol,protocol',
    [
        ('linear_eval', 'lbfgs', 'linear'),
        ('linear_eval', 'sgd', 'linear_sgd'),
        ('knn_eval', 'lbfgs', 'knn'),
        ('finetune', 'lbfgs', 'finetune'),
    ],
)
def test_older_mode_spellings_run_their_protocol_and_name_the_new_one(
    mode, linear_protocol, protocol
):
  config = load_config('cifar10')
  config.mode, config.eval.linear_protocol = mode, linear_protocol
  config.eval.protocol = 'knn' if protocol != 'knn' else 'linear'  # Ignored by older modes.
  assert evaluators.protocol(config) == protocol
  assert (
      f'--config.mode={mode} is the older spelling of --config.mode=evaluate '
      f'--config.eval.protocol={protocol}'
  ) in evaluators.legacy_mode_notice(config)


def test_shipped_evaluation_configs_use_the_current_spelling():
  for name, protocol in (
      ('cifar10_linear_eval', 'linear_sgd'),
      ('imagenet_linear_eval', 'linear_sgd'),
      ('imagenet_finetune_1pct', 'finetune'),
  ):
    config = load_config(name)
    assert config.mode == 'evaluate' and evaluators.protocol(config) == protocol, name
    assert not evaluators.legacy_mode_notice(config)


def test_older_linear_protocol_key_is_refused_with_the_current_spelling(cifar10_subset):
  from simclr_jax import config_validation  # pylint: disable=g-import-not-at-top

  config = tiny_config(cifar10_subset)
  config.mode, config.pretrained_workdir, config.eval.linear_protocol = 'evaluate', 'x', 'sgd'
  with pytest.raises(
      ValueError,
      match=r"config.eval.linear_protocol='sgd' only applies to the "
      r'older --config.mode=linear_eval; with '
      r'--config.mode=evaluate set the protocol as '
      r'--config.eval.protocol=linear_sgd',
  ):
    config_validation.validate_config(config, num_devices=1)
