r"""Visual report of a pretraining run, read from its Orbax checkpoint and saved config.

  python -m simclr_jax.report --workdir=WORKDIR [--output_dir=WORKDIR/report] [--step=N] \
      [--num_queries=8] [--k=8] [--max_examples=0] [--tsne_examples=2000] [--dataset=PATH]

restores the run's checkpoint (the latest, or --step) with the model of the config it saved
(WORKDIR/config.json), extracts the representation h of the train and test splits, and writes
into the output folder:

- augmentations.png: train images and pairs of views drawn by the run's pretraining
  augmentation (augment.pretrain_view with its config.augment);
- tsne.png: a 2-D t-SNE of the test representations, coloured by class;
- neighbors.png: test queries and their k most cosine-similar training images, neighbours of
  another class outlined in red;
- confusion.png: the confusion matrix of the linear probe (the linear evaluation protocol:
  L-BFGS on train features, scored on test);
- report.md: the linear and kNN accuracies, the figures and the run's config;
- report.json: the numbers of report.md (accuracies, example counts, checkpoint step).

The steps are functions of a restored `Run`, which notebooks/explore_checkpoint.ipynb calls too.
The workdir is only read.
"""

import dataclasses
import functools
import io
import json
import os
import time
from typing import Any

from absl import app
from absl import flags
from absl import logging
import jax
import matplotlib
import ml_collections
import numpy as np
import tensorflow as tf

from simclr_jax.core import checkpoints
from simclr_jax import cli_errors
from simclr_jax import datasets
from simclr_jax import evaluators
from simclr_jax import example_images
from simclr_jax import knn
from simclr_jax import models
from simclr_jax import plots
from simclr_jax.core import run_config
from simclr_jax.core import workdirs
from simclr_jax.core import writers
from simclr_jax.evaluators import features
from simclr_jax.evaluators import linear
from simclr_jax.evaluators import results as results_lib
from simclr_jax.core.sharding import create_mesh

FIGURES = {
    'augmentations.png': 'Augmentations',
    'tsne.png': 't-SNE of the representation',
    'neighbors.png': 'Nearest training neighbours of test images',
    'confusion.png': 'Linear probe confusion matrix',
}


@dataclasses.dataclass
class Run:
  """A pretraining run restored for inspection (single host)."""

  workdir: str
  config: ml_collections.ConfigDict  # The saved config, with the report's settings applied.
  step: int  # Of the restored checkpoint.
  model: Any
  variables: Any  # params and batch_stats, replicated over `mesh`.
  mesh: Any
  class_names: list[str]

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def embed_splits(self):
    """((train_x, train_y), (eval_x, eval_y)): h of config.train_split and config.eval.split."""
    return features.embed_splits(self.config, self.model, self.variables, self.mesh)

  @functools.cached_property
  def _feature_fn(self):
    return features.make_feature_fn(self.model, self.mesh, 'pretrained')

  def embed_images(self, images) -> np.ndarray:
    """Representations h [N, D] of images [N, S, S, 3] in [0, 1] (e.g. the user's own)."""
    batch = self.config.eval.batch_size
    return np.concatenate(
        [
            features.features_of_array(
                self._feature_fn, self.variables, images[start : start + batch], jax.device_count()
            )
            for start in range(0, len(images), batch)
        ]
    )


def load_run(
    workdir: str,
    *,
    step: int = -1,
    dataset: str = '',
    max_examples: int = 0,
    max_iterations: int = 0,
) -> Run:
  """Restores the encoder of a pretraining workdir with the model its config.json describes.

  Args:
    workdir: the --workdir of a pretraining run (checkpoints/ and config.json).
    step: checkpoint step; -1 for the latest.
    dataset: the image folder or TFDS name to read, if not the run's config.dataset (e.g. the
      folder moved).
    max_examples: if > 0, embed a fixed seeded subset of this many examples per split.
    max_iterations: if > 0, L-BFGS iterations of the linear probe (else the run's
      config.eval.max_iterations).

  Raises:
    ValueError: naming the fix, when WORKDIR has no checkpoint or no config.json, or the
      dataset cannot be read.
  """
  workdir = workdirs.absolute(workdir)
  if not checkpoints.checkpoint_steps(workdir):
    raise ValueError(
        f'No checkpoint in {workdir}/checkpoints: --workdir must be the workdir of a '
        'pretraining run (python -m simclr_jax.main --config=... --workdir=WORKDIR saves '
        'WORKDIR/checkpoints/<step>/ every checkpoint_every_steps steps and at the end). '
        'Check the path, or wait for the run to save its first checkpoint.'
    )
  config = run_config.load_config(workdir)
  config.mode = 'report'  # Names this program in the messages of shared checks.
  config.pretrained_workdir, config.pretrained_step = workdir, step
  config.eval.encoder = 'pretrained'
  config.eval.max_examples = max_examples
  if dataset:
    config.dataset = dataset
  if max_iterations:
    config.eval.max_iterations = max_iterations
  try:
    info = features.labelled_train_info(config)
  except ValueError as e:
    raise ValueError(
        f'{e} (The report reads config.dataset from {workdir}/config.json; pass '
        '--dataset=... if the data is elsewhere now.)'
    ) from None
  # kNN cannot use more neighbours than there are embedded training examples.
  config.eval.knn_k = min(config.eval.knn_k, max_examples or info.num_examples, info.num_examples)
  mesh = create_mesh()
  model = models.create_model(
      config.model, image_size=config.image_size, num_classes=info.num_classes
  )
  variables, step = features.encoder_variables(config, model, mesh)
  logging.info(
      'Restored %s at step %d (%s, width %s).',
      workdir,
      step,
      config.model.name,
      config.model.width_multiplier,
  )
  return Run(
      workdir=workdir,
      config=config,
      step=step,
      model=model,
      variables=variables,
      mesh=mesh,
      class_names=datasets.get(config).class_names(),
  )


def augmentations_figure(run: Run, num_images: int = 8, num_pairs: int = 2):
  """Train images (first column) with `num_pairs` pairs of their pretraining views."""
  images, views, _ = example_images.augmentation_examples(
      run.config, run.config.train_split, num_images, 2 * num_pairs
  )
  return plots.augmentation_plot(images, views)


def spread_indices(num_examples: int, num: int, seed: int = 0) -> np.ndarray:
  """`num` sorted indices of range(num_examples) drawn without replacement (all if fewer).

  Random rather than the first ones: splits of image folders are sorted by class.
  """
  if num >= num_examples:
    return np.arange(num_examples)
  return np.sort(np.random.default_rng(seed).choice(num_examples, num, replace=False))


def tsne_figure(run: Run, features, labels, max_points: int = 2000):
  """t-SNE of (at most max_points of) features [N, D], coloured by their labels [N]."""
  keep = spread_indices(len(labels), max_points, run.config.seed)
  logging.info('t-SNE of %d examples.', len(keep))
  points = plots.tsne_embedding(features[keep], seed=run.config.seed)
  return plots.tsne_plot(
      points,
      np.asarray(labels)[keep],
      run.class_names,
      title=f't-SNE of h on {run.config.eval.split}',
  )


def _neighbours(run: Run, train_data, query_features, k: int):
  """(similarities, indices, images [Q, k, S, S, 3]) of each query's k nearest train images."""
  similarities, indices = knn.nearest_neighbours(
      train_data[0], query_features, min(k, len(train_data[1]))
  )
  images = example_images.eval_images(
      run.config, run.config.train_split, indices, run.config.eval.max_examples
  )
  return similarities, indices, images.reshape(indices.shape + images.shape[1:])


def neighbours_figure(run: Run, train_data, eval_data, *, num_queries: int = 8, k: int = 8):
  """`num_queries` eval images and their k nearest train images (cosine similarity of h)."""
  queries = spread_indices(len(eval_data[1]), num_queries, run.config.seed)
  similarities, indices, images = _neighbours(run, train_data, eval_data[0][queries], k)
  query_images = example_images.eval_images(
      run.config, run.config.eval.split, queries, run.config.eval.max_examples
  )
  return plots.neighbours_plot(
      query_images,
      images,
      train_data[1][indices],
      run.class_names,
      query_labels=eval_data[1][queries],
      similarities=similarities,
  )


def folder_neighbours_figure(run: Run, train_data, folder: str, *, k: int = 8):
  """The images of `folder` (any, unlabelled) and their k nearest train images."""
  paths, query_images = example_images.folder_images(folder, run.config.image_size)
  similarities, indices, images = _neighbours(run, train_data, run.embed_images(query_images), k)
  return plots.neighbours_plot(
      query_images,
      images,
      train_data[1][indices],
      run.class_names,
      similarities=similarities,
      query_titles=[os.path.basename(p)[:16] for p in paths],
  )


def probe_results(run: Run, train_data, eval_data):
  """({'linear': ..., 'knn': ...} accuracies on the eval split, linear confusion matrix)."""
  scores, linear_info = linear.linear_probe_scores(
      run.config, train_data, eval_data[0], run.num_classes
  )
  linear_results = {**linear_info, **evaluators.accuracies(scores, eval_data[1], run.num_classes)}
  knn_results = evaluators.score('knn', run.config, train_data, eval_data, run.num_classes)
  matrix = plots.confusion_matrix(eval_data[1], scores.argmax(axis=-1), run.num_classes)
  return {'linear': linear_results, 'knn': knn_results}, matrix


def report_markdown(summary: dict, saved_config: str) -> str:
  """report.md: what was evaluated, the accuracies, the figures, the run's config."""
  linear, knn_results = summary['linear'], summary['knn']
  lines = [
      f'# SimCLR report: {summary["pretrained_workdir"]}',
      '',
      f'Checkpoint step {summary["checkpoint_step"]} of {summary["model"]} (width '
      f'{summary["width_multiplier"]}) pretrained on {summary["dataset"]} '
      f'({summary["train_split"]} split). Representations h ({summary["feature_dim"]}-d) of '
      f'{summary["num_train_examples"]} {summary["train_split"]} and '
      f'{summary["num_eval_examples"]} {summary["eval_split"]} examples.',
      '',
      f'| protocol on {summary["eval_split"]} | top-1 | top-5 |',
      '|---|---|---|',
      f'| linear (L-BFGS logistic regression on {summary["train_split"]}, L2 = '
      f'{linear["l2"]:g}) | {100 * linear["top1"]:.2f}% | {100 * linear["top5"]:.2f}% |',
      f'| kNN (k = {knn_results["k"]}, temperature {knn_results["knn_temperature"]:g}) | '
      f'{100 * knn_results["top1"]:.2f}% | {100 * knn_results["top5"]:.2f}% |',
      '',
      f'## {FIGURES["augmentations.png"]}',
      '',
      '![augmentations](augmentations.png)',
      '',
      'Each row: a training image (first column, as evaluation sees it) and pairs of views '
      'drawn by the pretraining augmentation of this run (`config.augment`). The two views of '
      'a pair are what the contrastive loss pulls together.',
      '',
      f'## {FIGURES["tsne.png"]}',
      '',
      '![t-SNE](tsne.png)',
      '',
      f't-SNE of the L2-normalised h of {summary["tsne_examples"]} {summary["eval_split"]} '
      'examples, coloured by class (labels that pretraining never saw). Clusters of one '
      'colour mean that the representation separates the classes.',
      '',
      f'## {FIGURES["neighbors.png"]}',
      '',
      '![neighbours](neighbors.png)',
      '',
      f'Images of the {summary["eval_split"]} split (first column) and their {summary["k"]} '
      f'most cosine-similar images of the {summary["train_split"]} split, most similar first, '
      'with their class and similarity. Neighbours of another class than the query are '
      'outlined in red.',
      '',
      f'## {FIGURES["confusion.png"]}',
      '',
      '![confusion](confusion.png)',
      '',
      f'Predictions of the linear probe on {summary["eval_split"]}: rows are true classes, '
      'columns predicted ones; shading is the fraction of the row.',
      '',
      '## Config of the run',
      '',
      '```json',
      saved_config.rstrip(),
      '```',
      '',
  ]
  return '\n'.join(lines)


def _save(fig, path: str):
  """Renders `fig` as a PNG at `path`, a local path or a URL tf.io.gfile knows (gs://...)."""
  png = io.BytesIO()
  fig.savefig(png, dpi=plots.DPI, format='png')
  with tf.io.gfile.GFile(path, 'wb') as f:
    f.write(png.getvalue())
  logging.info('Wrote %s.', path)


def write_report(
    workdir: str,
    output_dir: str = '',
    *,
    step: int = -1,
    dataset: str = '',
    max_examples: int = 0,
    max_iterations: int = 0,
    num_images: int = 8,
    num_pairs: int = 2,
    num_queries: int = 8,
    k: int = 8,
    tsne_examples: int = 2000,
) -> dict:
  """Writes the figures, report.md and report.json into output_dir (default WORKDIR/report).

  See `load_run` for step, dataset, max_examples and max_iterations. Returns the summary that
  report.json holds (accuracies, counts, checkpoint step, wall time).
  """
  start = time.perf_counter()
  run = load_run(
      workdir, step=step, dataset=dataset, max_examples=max_examples, max_iterations=max_iterations
  )
  output_dir = output_dir or os.path.join(run.workdir, 'report')
  tf.io.gfile.makedirs(output_dir)
  out = lambda name: os.path.join(output_dir, name)
  _save(augmentations_figure(run, num_images, num_pairs), out('augmentations.png'))
  train_data, eval_data = run.embed_splits()
  results, matrix = probe_results(run, train_data, eval_data)
  _save(plots.confusion_plot(matrix, run.class_names), out('confusion.png'))
  _save(tsne_figure(run, *eval_data, max_points=tsne_examples), out('tsne.png'))
  _save(
      neighbours_figure(run, train_data, eval_data, num_queries=num_queries, k=k),
      out('neighbors.png'),
  )

  summary = {
      **results_lib.results_header(run.config, 'report', run.step),
      'output_dir': output_dir,
      'num_train_examples': len(train_data[1]),
      'num_eval_examples': len(eval_data[1]),
      'feature_dim': int(train_data[0].shape[1]),
      'tsne_examples': min(tsne_examples, len(eval_data[1])),
      'k': min(k, len(train_data[1])),
      **results,
  }
  with tf.io.gfile.GFile(workdirs.path(run.workdir, 'config.json')) as f:
    saved_config = f.read()
  with tf.io.gfile.GFile(out('report.md'), 'w') as f:
    f.write(report_markdown(summary, saved_config))
  summary['wall_time_sec'] = time.perf_counter() - start
  with tf.io.gfile.GFile(out('report.json'), 'w') as f:
    f.write(json.dumps(summary, indent=2))
  logging.info(
      'Report in %s (%.0f s): linear top-1 %.2f%%, kNN top-1 %.2f%%.',
      output_dir,
      summary['wall_time_sec'],
      100 * results['linear']['top1'],
      100 * results['knn']['top1'],
  )
  return summary


def define_flags(flag_values=flags.FLAGS):
  """The command's flags (defined on demand: simclr_jax.main has a --workdir of its own)."""
  define = dict(flag_values=flag_values)
  flags.DEFINE_string(
      'workdir', None, 'Pretraining workdir: checkpoints/ and config.json.', required=True, **define
  )
  flags.DEFINE_string('output_dir', '', 'Where the report goes (default WORKDIR/report).', **define)
  flags.DEFINE_integer('step', -1, 'Checkpoint step (-1: the latest).', **define)
  flags.DEFINE_string('dataset', '', 'Dataset to read if not config.dataset of the run.', **define)
  flags.DEFINE_integer(
      'max_examples',
      0,
      'If > 0, examples embedded per split (a fixed ' 'seeded subset); 0: all.',
      **define,
  )
  flags.DEFINE_integer(
      'max_iterations',
      0,
      'If > 0, L-BFGS iterations of the linear probe '
      '(default: config.eval.max_iterations of the run).',
      **define,
  )
  flags.DEFINE_integer('num_images', 8, 'Images in augmentations.png.', **define)
  flags.DEFINE_integer('num_pairs', 2, 'Pairs of views per image in augmentations.png.', **define)
  flags.DEFINE_integer('num_queries', 8, 'Test images in neighbors.png.', **define)
  flags.DEFINE_integer('k', 8, 'Neighbours per query in neighbors.png.', **define)
  flags.DEFINE_integer(
      'tsne_examples', 2000, 'Test examples in tsne.png (a seeded subset).', **define
  )
  flags.DEFINE_bool(
      'verbose',
      False,
      'Show the traceback of known errors (no checkpoint, '
      'missing data), not only the sentence that explains them.',
      **define,
  )


def main(argv, flag_values=flags.FLAGS):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  matplotlib.use('Agg')  # Files only, no display needed.
  writers.quiet_orbax_logs()
  f = flag_values
  with cli_errors.as_sentences(f.verbose):
    summary = write_report(
        f.workdir,
        f.output_dir,
        step=f.step,
        dataset=f.dataset,
        max_examples=f.max_examples,
        max_iterations=f.max_iterations,
        num_images=f.num_images,
        num_pairs=f.num_pairs,
        num_queries=f.num_queries,
        k=f.k,
        tsne_examples=f.tsne_examples,
    )
  print(
      f'Wrote {summary["output_dir"]}/report.md: linear top-1 '
      f'{100 * summary["linear"]["top1"]:.2f}%, kNN top-1 {100 * summary["knn"]["top1"]:.2f}%.'
  )


if __name__ == '__main__':
  define_flags()
  app.run(main)
