"""Evaluation program end to end on a tiny pretraining run over real CIFAR-10 images."""

import json

import pytest

from conftest import tiny_config
from simclr_jax import evaluate

_FIELDS = {'protocol', 'dataset', 'encoder', 'checkpoint_step', 'top1', 'top5',
           'wall_time_sec', 'num_train_examples', 'num_eval_examples', 'feature_dim'}


def _eval_config(dataset, mode, workdir='', **eval_overrides):
  config = tiny_config(dataset)
  config.mode, config.pretrained_workdir = mode, str(workdir)
  config.eval.max_iterations = 50
  for key, value in eval_overrides.items():
    config.eval[key] = value
  return config


def test_linear_eval_writes_documented_results(cifar10_subset, pretrained_workdir, tmp_path):
  config = _eval_config(cifar10_subset, 'linear_eval', pretrained_workdir, max_examples=0)
  results = evaluate.evaluate(config, str(tmp_path))
  saved = json.loads((tmp_path / 'eval_results.json').read_text())
  assert saved == json.loads(json.dumps(results))
  assert _FIELDS | {'l2', 'holdout_accuracy'} <= set(saved)
  assert saved['protocol'] == 'linear' and saved['checkpoint_step'] == 4
  assert saved['num_train_examples'] == 260 and saved['num_eval_examples'] == 100
  assert saved['feature_dim'] == 64  # ResNet-18 at width 1/8.
  assert 0 <= saved['top1'] <= saved['top5'] <= 1


@pytest.mark.parametrize('encoder,dim', [('pixels', 32 * 32 * 3), ('random', 64)])
def test_knn_eval_of_baselines(cifar10_subset, tmp_path, encoder, dim):
  config = _eval_config(cifar10_subset, 'knn_eval', encoder=encoder, max_examples=120)
  results = evaluate.evaluate(config, str(tmp_path))
  assert results['protocol'] == 'knn' and results['encoder'] == encoder
  assert results['checkpoint_step'] is None and results['feature_dim'] == dim
  assert results['num_train_examples'] == 120 and results['num_eval_examples'] == 100
  # Raw pixels carry real signal on CIFAR-10: well above the 10% chance level.
  if encoder == 'pixels':
    assert results['top1'] > 0.15


def test_workdir_without_checkpoint_is_reported(cifar10_subset, tmp_path):
  config = _eval_config(cifar10_subset, 'linear_eval', tmp_path / 'empty')
  with pytest.raises(ValueError, match='No checkpoint in .*empty/checkpoints; set '
                                       'config.pretrained_workdir'):
    evaluate.evaluate(config, str(tmp_path / 'out'))


def test_checkpoint_of_other_architecture_is_reported(cifar10_subset, pretrained_workdir,
                                                      tmp_path):
  config = _eval_config(cifar10_subset, 'knn_eval', pretrained_workdir)
  config.model.width_multiplier = 0.25
  with pytest.raises(ValueError, match=r'holds another architecture than config.model '
                                       r'\(resnet18, width 0.25.*saved with model .*0.125'):
    evaluate.evaluate(config, str(tmp_path))


def test_pretraining_logs_the_knn_monitor(pretrained_workdir):
  lines = [json.loads(line) for line in open(pretrained_workdir / 'metrics.jsonl')]
  assert [m['step'] for m in lines] == [2, 4]
  assert 'knn_top1' not in lines[0]
  assert 0 <= lines[1]['knn_top1'] <= lines[1]['knn_top5'] <= 1
