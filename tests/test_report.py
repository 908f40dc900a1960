"""The visual report and the notebook on the tiny pretraining run, and their pieces."""

import base64
import io
import json
import os
import re
import shutil

from absl import flags
import nbclient
import nbformat
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
from threadpoolctl import threadpool_limits

from conftest import REPO_ROOT
from test_evaluate import decoded_split
from test_knn import brute_force_accuracies
from simclr_jax import linear_classifier
from simclr_jax import plots
from simclr_jax import report

NOTEBOOK = REPO_ROOT / 'notebooks' / 'explore_checkpoint.ipynb'
CELL = int(plots.CELL_INCHES * plots.DPI)  # Pixels of an image cell.
TSNE_SIZE = tuple(int(x * plots.DPI) for x in plots.TSNE_INCHES)
CONFUSION_SIZE = tuple(int(x * plots.DPI) for x in plots.CONFUSION_INCHES)
# On a busy 2-core machine, OpenMP threads that wait for each other slow t-SNE down 10-50x.
OPENMP_THREADS = 1
MAX_ITERATIONS = 20  # Of the report's L-BFGS linear probe.


def assert_picture(image, width: int, height: int):
  """`image` (a PNG's path or bytes, or an array) is width x height pixels and not blank."""
  if not isinstance(image, np.ndarray):
    image = np.asarray(Image.open(image).convert('RGB'))
  assert image.shape == (height, width, 3)
  assert image.std() > 15
  colours = image.reshape(-1, 3).astype(np.int32) @ np.array([1 << 16, 1 << 8, 1])
  assert len(np.unique(colours)) > 300


def red_pixels(image) -> int:
  rgb = np.asarray(Image.open(image).convert('RGB')).astype(int)
  return int(np.sum(np.all(rgb == (255, 0, 0), axis=-1)))


@pytest.fixture(scope='module')
def report_run(pretrained_workdir, tmp_path_factory):
  """(output folder, report.json, probed) of the report command, run in-process with its flags.

  `probed` records what the report's probes were given and the confusion matrix they returned:
  {'run', 'train': (features, labels), 'evaluation': (features, labels), 'matrix'}.
  It writes to a URL, TensorFlow's in-memory ram:// file system, as it would to gs://; the
  files are then copied to a local folder for the checks.
  """
  url = 'ram://report_test/report'
  flag_values = flags.FlagValues()
  report.define_flags(flag_values)
  flag_values(
      [
          'report',
          f'--workdir={pretrained_workdir}',
          f'--output_dir={url}',
          f'--max_iterations={MAX_ITERATIONS}',
          '--num_images=4',
          '--num_queries=4',
          '--k=5',
      ]
  )
  probed, probe_results = {}, report.probe_results

  def recording_probe_results(run, train_data, eval_data):
    results, matrix = probe_results(run, train_data, eval_data)
    probed.update(run=run, train=train_data, evaluation=eval_data, matrix=matrix)
    return results, matrix

  with pytest.MonkeyPatch.context() as patch, threadpool_limits(OPENMP_THREADS, 'openmp'):
    patch.setattr(report, 'probe_results', recording_probe_results)
    report.main(['report'], flag_values)
  output_dir = tmp_path_factory.mktemp('report')
  for name in tf.io.gfile.listdir(url):
    tf.io.gfile.copy(f'{url}/{name}', str(output_dir / name))
  summary = json.loads((output_dir / 'report.json').read_text())
  assert summary['output_dir'] == url
  return output_dir, summary, probed


def test_report_writes_the_figures(report_run):
  output_dir, _, _ = report_run
  assert_picture(output_dir / 'augmentations.png', 5 * CELL, 4 * CELL)  # 4 x (1 + 2 pairs).
  assert_picture(output_dir / 'neighbors.png', 6 * CELL, 4 * CELL)  # 4 queries x (1 + 5).
  assert_picture(output_dir / 'tsne.png', *TSNE_SIZE)
  assert_picture(output_dir / 'confusion.png', *CONFUSION_SIZE)
  # A 4-step encoder has neighbours of the wrong class: outlined in red.
  assert red_pixels(output_dir / 'neighbors.png') > 100
  # Every class of the 100 test points shows in the scatter, in its own colour (alpha 0.8).
  tsne = np.asarray(Image.open(output_dir / 'tsne.png').convert('RGB')).astype(float)
  scatter = tsne[:, : int(0.75 * tsne.shape[1])]  # Left of the legend.
  for colour in plots.class_colours(10)[:, :3] * 255 * 0.8 + 255 * 0.2:
    assert np.sum(np.abs(scatter - colour).max(axis=-1) <= 3) >= 10


def test_report_embeds_the_test_split(report_run, cifar10_subset):
  _, summary, probed = report_run
  (train_x, train_y), (eval_x, eval_y) = probed['train'], probed['evaluation']
  # Every image of both splits, in file order (classes sorted).
  np.testing.assert_array_equal(train_y, np.repeat(np.arange(10), 26))
  np.testing.assert_array_equal(eval_y, np.repeat(np.arange(10), 10))
  assert summary['num_eval_examples'] == len(eval_y) and summary['feature_dim'] == 64
  # The evaluated features are the encoder's h of the test images themselves (64 of them: one
  # compile), not of train images.
  pixels, _ = decoded_split(cifar10_subset, 'test')
  h = probed['run'].embed_images(pixels[:64].reshape(-1, 32, 32, 3))
  np.testing.assert_allclose(eval_x[:64], h, rtol=1e-4, atol=1e-4 * np.abs(h).max())
  # Far from tolerance for other images: the check tells the splits apart.
  assert np.abs(train_x[:64] - h).max() > 0.1 * np.abs(h).max()


def test_report_accuracies_and_confusion_match_a_recomputation(report_run):
  output_dir, summary, probed = report_run
  (train_x, train_y), (eval_x, eval_y) = probed['train'], probed['evaluation']
  linear, knn_results = summary['linear'], summary['knn']
  assert summary['checkpoint_step'] == 4 and knn_results['k'] == 20

  # The linear probe: refitted on the train features with the chosen l2 and the report's
  # iterations (fit itself is tested against numpy gradient descent), scored here in numpy.
  classifier = linear_classifier.fit(
      train_x, train_y, 10, linear['l2'], max_iterations=MAX_ITERATIONS
  )
  weights, bias, mean, scale = (
      np.asarray(x)
      for x in (classifier.weights, classifier.bias, classifier.mean, classifier.scale)
  )
  logits = ((eval_x - mean) * scale) @ weights + bias
  ranking = np.argsort(-logits, axis=1, kind='stable')
  linear_top1 = np.mean(ranking[:, 0] == eval_y)
  linear_top5 = np.mean([label in row[:5] for label, row in zip(eval_y, ranking)])
  assert linear['top1'] == pytest.approx(linear_top1, abs=1e-9)
  assert linear['top5'] == pytest.approx(linear_top5, abs=1e-9)
  # The confusion matrix: rows are the true classes of the test examples.
  matrix = np.zeros((10, 10), int)
  for true, predicted in zip(eval_y, ranking[:, 0]):
    matrix[true, predicted] += 1
  np.testing.assert_array_equal(probed['matrix'], matrix)

  expected_knn = brute_force_accuracies(
      train_x, train_y, eval_x, eval_y, 10, 20, knn_results['knn_temperature']
  )
  assert knn_results['top1'] == pytest.approx(expected_knn['top1'], abs=1e-9)
  assert knn_results['top5'] == pytest.approx(expected_knn['top5'], abs=1e-9)

  text = (output_dir / 'report.md').read_text()
  assert re.search(rf'\| linear .*\| {100 * linear_top1:.2f}% \| {100 * linear_top5:.2f}% \|', text)
  assert re.search(
      rf'\| kNN \(k = 20.*\| {100 * expected_knn["top1"]:.2f}% \| '
      rf'{100 * expected_knn["top5"]:.2f}% \|',
      text,
  )


def test_report_markdown_has_the_counts_figures_and_config(report_run, pretrained_workdir):
  output_dir, _, _ = report_run
  text = (output_dir / 'report.md').read_text()
  assert '260 train and 100 test examples' in text
  for name in report.FIGURES:
    assert f']({name})' in text
  assert (pretrained_workdir / 'config.json').read_text().strip() in text


def test_workdir_without_checkpoint_or_config_is_reported(pretrained_workdir, tmp_path):
  with pytest.raises(
      ValueError,
      match=r'No checkpoint in .*empty/checkpoints: --workdir must '
      r'be the workdir of a pretraining run',
  ):
    report.load_run(str(tmp_path / 'empty'))
  shutil.copytree(pretrained_workdir / 'checkpoints', tmp_path / 'copied' / 'checkpoints')
  with pytest.raises(
      ValueError,
      match=r'No config.json in .*copied: the model is rebuilt '
      r".*copy the run's config.json along",
  ):
    report.load_run(str(tmp_path / 'copied'))


def test_notebook_runs_headless(pretrained_workdir, cifar10_subset, tmp_path, monkeypatch):
  images = tmp_path / 'my_images'
  images.mkdir()
  cats = sorted((cifar10_subset / 'test' / 'cat').iterdir())[:2]
  for path in cats:
    shutil.copy(path, images / path.name)
  Image.open(cats[0]).convert('L').save(images / 'gray.png')  # Any format and mode.
  # The kernel inherits the environment: the notebook's settings, and this checkout's code.
  settings = {
      'SIMCLR_WORKDIR': pretrained_workdir,
      'SIMCLR_IMAGE_FOLDER': images,
      'SIMCLR_MAX_EXAMPLES': 0,
      'SIMCLR_MAX_ITERATIONS': 20,
      'OMP_NUM_THREADS': OPENMP_THREADS,
      'PYTHONPATH': os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get('PYTHONPATH')])),
      # XLA's backend optimisations barely matter for these tiny arrays, and skipping them
      # halves the compile time that dominates this test (as sharding.run_once does).
      'XLA_FLAGS': ' '.join(
          filter(None, [os.environ.get('XLA_FLAGS'), '--xla_backend_optimization_level=0'])
      ),
  }
  for key, value in settings.items():
    monkeypatch.setenv(key, str(value))
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  nbclient.NotebookClient(
      notebook,
      timeout=600,
      kernel_name='python3',
      resources={'metadata': {'path': str(NOTEBOOK.parent)}},
  ).execute()

  outputs = [o for cell in notebook.cells if cell.cell_type == 'code' for o in cell.outputs]
  assert not [o for o in outputs if o.output_type == 'error']
  pngs = [o.data['image/png'] for o in outputs if 'image/png' in o.get('data', {})]
  # Augmentations, t-SNE, confusion matrix, test neighbours, the folder's neighbours.
  assert len(pngs) == 5
  decoded = [np.asarray(Image.open(io.BytesIO(base64.b64decode(p))).convert('RGB')) for p in pngs]
  # The report's sizes: the notebook shows 6 images x (1 + 2 pairs) and 8 test queries.
  sizes = [
      (5 * CELL, 6 * CELL),
      TSNE_SIZE,
      CONFUSION_SIZE,
      (9 * CELL, 8 * CELL),
      (9 * CELL, 3 * CELL),
  ]  # The last: 3 images of the folder x (1 + 8 neighbours).
  for image, size in zip(decoded, sizes):
    assert_picture(image, *size)
  text = ''.join(
      o.get('text', '') + str(o.get('data', {}).get('text/markdown', '')) for o in outputs
  )
  assert 'resnet18 (width 0.125) at step 4' in text and 'linear top-1' in text


def test_confusion_matrix_matches_a_naive_count():
  rng = np.random.default_rng(0)
  labels, predictions = rng.integers(0, 7, 500), rng.integers(0, 7, 500)
  expected = np.zeros((7, 7), int)
  for true, predicted in zip(labels, predictions):
    expected[true, predicted] += 1
  np.testing.assert_array_equal(plots.confusion_matrix(labels, predictions, 7), expected)
  with pytest.raises(ValueError, match=r'predictions must lie in \[0, 7\)'):
    plots.confusion_matrix([1], [7], 7)


def test_tsne_keeps_separated_clusters_apart():
  rng = np.random.default_rng(0)
  centres = 5 * np.eye(16)[:3]
  features = np.concatenate([c + 0.3 * rng.normal(size=(20, 16)) for c in centres])
  with threadpool_limits(OPENMP_THREADS, 'openmp'):
    points = plots.tsne_embedding(features, seed=0)
  labels = np.repeat(np.arange(3), 20)
  distances = np.linalg.norm(points[:, None] - points[None], axis=-1)
  np.fill_diagonal(distances, np.inf)
  assert np.all(labels[distances.argmin(axis=1)] == labels)
