"""Evaluation program end to end on a tiny pretraining run over real CIFAR-10 images, and its
data flow (fit on the train split, score the evaluated one) on synthetic data."""

import json

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from conftest import load_config, tiny_config
from test_knn import brute_force_accuracies
from simclr_jax import evaluate
from simclr_jax import evaluators
from simclr_jax import linear_classifier

_FIELDS = {
    'protocol',
    'dataset',
    'encoder',
    'weights',
    'checkpoint_step',
    'top1',
    'top5',
    'wall_time_sec',
    'num_train_examples',
    'num_eval_examples',
    'feature_dim',
}


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
  assert saved['weights'] == 'online'
  assert saved['num_train_examples'] == 260 and saved['num_eval_examples'] == 100
  assert saved['feature_dim'] == 64  # ResNet-18 at width 1/8.
  assert 0 <= saved['top1'] <= saved['top5'] <= 1


def decoded_split(folder, split):
  """(pixels [N, 32 * 32 * 3], labels [N]) of folder/<split>/<class>/*, classes sorted.

  Decoded by TensorFlow, the pipeline's decoder (PIL's JPEG decoder differs by up to 4/255).
  """
  pixels, labels = [], []
  for label, class_dir in enumerate(sorted((folder / split).iterdir())):
    for path in sorted(class_dir.iterdir()):
      image = tf.io.decode_image(tf.io.read_file(str(path)), channels=3)
      pixels.append(np.asarray(image, np.float32).ravel() / 255)
      labels.append(label)
  return np.stack(pixels), np.asarray(labels)


def test_pixel_knn_eval_matches_numpy_knn_on_the_decoded_splits(cifar10_subset, tmp_path):
  config = _eval_config(cifar10_subset, 'knn_eval', encoder='pixels', max_examples=0)
  results = evaluate.evaluate(config, str(tmp_path))
  assert results['protocol'] == 'knn' and results['encoder'] == 'pixels'
  assert results['checkpoint_step'] is None and results['feature_dim'] == 32 * 32 * 3
  assert results['weights'] is None
  # Bank: the train split; queries: the test split (embedding the train split twice, or
  # using the test images as the bank, would find each query itself: top-1 1.0).
  expected = brute_force_accuracies(
      *decoded_split(cifar10_subset, 'train'),
      *decoded_split(cifar10_subset, 'test'),
      10,
      config.eval.knn_k,
      config.eval.knn_temperature,
  )
  assert results['top1'] == pytest.approx(expected['top1'], abs=1e-9)
  assert results['top5'] == pytest.approx(expected['top5'], abs=1e-9)
  # Raw pixels carry real signal on CIFAR-10: 3 standard deviations above the 10% chance.
  assert results['top1'] > 0.1 + 3 * np.sqrt(0.1 * 0.9 / 100)


# Colours of the 4 classes of the synthetic image folder (distinct directions in RGB, so that
# cosine similarity separates them too).
_COLOURS = np.array([[220, 40, 40], [40, 220, 40], [40, 40, 220], [220, 220, 40]])
# The colour that the test split's class folders hold: classes 2 and 3 swapped.
_TEST_COLOUR = (0, 1, 3, 2)


@pytest.fixture(scope='module')
def swapped_colours(tmp_path_factory):
  """An image folder of noisy solid colours; test/c2 and test/c3 hold each other's colour.

  A classifier or kNN bank built on the train split scores exactly 0.5 on the test split: it is
  right on classes 0 and 1 and wrong on 2 and 3. Built on the test split's own features, or
  scoring the train split as if it were the test split, it would score 1.0.
  """
  root = tmp_path_factory.mktemp('swapped_colours')
  rng = np.random.default_rng(0)
  for split, per_class, colours in (('train', 12, range(4)), ('test', 5, _TEST_COLOUR)):
    for label, colour in enumerate(colours):
      (root / split / f'c{label}').mkdir(parents=True)
      for i in range(per_class):
        pixels = _COLOURS[colour] + rng.integers(-30, 31, size=(32, 32, 3))
        Image.fromarray(pixels.astype(np.uint8)).save(root / split / f'c{label}' / f'{i}.png')
  return root


@pytest.mark.parametrize(
    'mode,encoder,dim',
    [
        ('knn_eval', 'pixels', 32 * 32 * 3),
        ('knn_eval', 'random', 64),
        ('linear_eval', 'pixels', 32 * 32 * 3),
    ],
)
def test_baselines_fit_the_train_split_and_score_the_evaluated_split(
    swapped_colours, tmp_path, mode, encoder, dim
):
  # A seeded subset of 40 of the 48 train images (at least 4 per class); all 20 test images.
  config = _eval_config(swapped_colours, mode, encoder=encoder, max_examples=40, knn_k=5)
  results = evaluate.evaluate(config, str(tmp_path))
  assert results['encoder'] == encoder and results['feature_dim'] == dim
  assert results['num_train_examples'] == 40 and results['num_eval_examples'] == 20
  # Both baselines separate solid colours perfectly: right on the two unswapped classes only.
  assert results['top1'] == 0.5


def _clusters(rng, per_class, num_classes=4, dim=8):
  """float32 features of well-separated Gaussian clusters, and their cluster indices."""
  labels = np.repeat(np.arange(num_classes), per_class)
  centres = 4.0 * np.eye(num_classes, dim)
  return (centres[labels] + 0.5 * rng.normal(size=(len(labels), dim))).astype(np.float32), labels


@pytest.mark.parametrize('protocol', ['linear', 'knn'])
@pytest.mark.parametrize('shift,top1', [(0, 1.0), (1, 0.0)])
def test_protocols_fit_on_train_features_and_score_the_eval_features(
    monkeypatch, protocol, shift, top1
):
  config = load_config('cifar10')
  config.eval.knn_k, config.eval.max_iterations = 5, 100
  rng = np.random.default_rng(shift)
  train_x, train_y = _clusters(rng, 20)
  eval_x, clusters = _clusters(rng, 10)
  # shift 1 relabels every eval cluster: fitted on the train split, the probe predicts each
  # point's cluster and is never right; fitted on the eval features it would always be.
  eval_y = (clusters + shift) % 4
  fitted, original_fit = [], linear_classifier.fit

  def recording_fit(features, *args, **kwargs):
    fitted.append(np.asarray(features, np.float32))
    return original_fit(features, *args, **kwargs)

  monkeypatch.setattr(linear_classifier, 'fit', recording_fit)

  results = evaluators.score(protocol, config, (train_x, train_y), (eval_x, eval_y), 4)
  assert results['top1'] == top1
  if protocol == 'linear':
    # Every fit, those choosing l2 on held-out train examples and the final one, saw train
    # rows only; the final one all of them.
    train_rows = {row.tobytes() for row in train_x}
    assert len(fitted) == len(linear_classifier.DEFAULT_L2_GRID) + 1
    assert all(row.tobytes() in train_rows for features in fitted for row in features)
    np.testing.assert_array_equal(fitted[-1], train_x)


def test_workdir_without_checkpoint_is_reported(cifar10_subset, tmp_path):
  config = _eval_config(cifar10_subset, 'linear_eval', tmp_path / 'empty')
  with pytest.raises(
      ValueError, match='No checkpoint in .*empty/checkpoints; set ' 'config.pretrained_workdir'
  ):
    evaluate.evaluate(config, str(tmp_path / 'out'))


def test_checkpoint_of_other_architecture_is_reported(cifar10_subset, pretrained_workdir, tmp_path):
  config = _eval_config(cifar10_subset, 'knn_eval', pretrained_workdir)
  config.model.width_multiplier = 0.25
  with pytest.raises(
      ValueError,
      match=r'holds another architecture than config.model '
      r'\(resnet18, width 0.25.*saved with model .*0.125',
  ):
    evaluate.evaluate(config, str(tmp_path))


def test_pretraining_logs_the_knn_monitor(pretrained_workdir):
  lines = [json.loads(line) for line in open(pretrained_workdir / 'metrics.jsonl')]
  assert [m['step'] for m in lines] == [2, 4]
  assert 'knn_top1' not in lines[0]
  assert 0 <= lines[1]['knn_top1'] <= lines[1]['knn_top5'] <= 1
