"""Evaluation of a pretrained encoder, as a program separate from pretraining.

Restores the encoder from a pretraining workdir's Orbax checkpoint (read-only), extracts
representations h of the train and evaluation splits once with a jitted, batch-sharded
function (BatchNorm in inference mode), and evaluates them with a linear classifier (L-BFGS
logistic regression, L2 chosen on held-out train examples) or weighted kNN. The same program
evaluates the baselines: a randomly initialised encoder and raw pixels.
"""

import json
import os
import time

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np
import tensorflow as tf

from simclr_jax import checkpoints
from simclr_jax import config_validation
from simclr_jax import datasets
from simclr_jax import input_pipeline
from simclr_jax import knn
from simclr_jax import linear_classifier
from simclr_jax import models
from simclr_jax import writers
from simclr_jax.sharding import batch_sharded, create_mesh, replicated, run_once

PROTOCOLS = {'linear_eval': 'linear', 'knn_eval': 'knn'}
# Raw-pixel features are images downsampled to at most this side, then flattened.
_PIXEL_SIDE = 32


def _param_shapes(tree):
  return {jax.tree_util.keystr(p): tuple(x.shape)
          for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def restore_encoder_variables(config, model, pretrained_workdir: str, step: int = -1):
  """Params and BatchNorm statistics from a pretraining checkpoint; returns (variables, step).

  Moves nothing (the workdir is another run's). Raises ValueError when there is no
  checkpoint; when the checkpoint asked for (the latest by default) cannot be read, naming
  why and the other steps to pass as config.pretrained_step (rather than evaluating another
  step than asked for); or when it holds another architecture than `config.model` describes
  (naming the differences and the saved config's model).
  """
  manager = checkpoints.read_only_manager(pretrained_workdir)
  directory, steps = str(manager.directory), manager.all_steps()
  if not steps:
    raise ValueError(f'No checkpoint in {directory}; set config.pretrained_workdir to the '
                     'workdir of a pretraining run (python -m simclr_jax.main '
                     '--config=... --workdir=WORKDIR writes WORKDIR/checkpoints).')
  step = max(steps) if step < 0 else step
  if step not in steps:
    raise ValueError(f'config.pretrained_step={step} is not among the checkpoints in '
                     f'{directory}: {sorted(steps)}.')
  expected = jax.eval_shape(
      lambda: models.init_variables(model, jax.random.PRNGKey(0), config.image_size))
  restored = checkpoints.restore_read_only(
      manager, step, '--step' if config.mode == 'report' else '--config.pretrained_step')
  for collection in ('params', 'batch_stats'):
    want, got = _param_shapes(expected[collection]), _param_shapes(restored[collection])
    # The probe depends on the dataset's classes; evaluation does not use it.
    want = {k: v for k, v in want.items() if not k.startswith("['probe']")}
    got = {k: v for k, v in got.items() if not k.startswith("['probe']")}
    if want != got:
      differences = sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k))
      saved = writers.workdir_path(pretrained_workdir, 'config.json')
      saved_model, hint = 'unknown (no config.json)', ''
      if tf.io.gfile.exists(saved):
        with tf.io.gfile.GFile(saved) as f:
          saved_model = json.load(f)['model']
        if 'shortcut' not in saved_model and config.model.shortcut != 'torchvision':
          hint = checkpoints.OLD_LAYOUT_HINT
      raise ValueError(
          f'The checkpoint at step {step} in {directory} holds another architecture than '
          f'config.model ({config.model.name}, width {config.model.width_multiplier}, '
          f'image_size {config.image_size}): {len(differences)} {collection} entries differ, '
          f'e.g. {differences[0]}: checkpoint {got.get(differences[0])}, config '
          f'{want.get(differences[0])}. The run was saved with model {saved_model}; pass the '
          f'same --config.model.* and --config.image_size values.{hint}')
  return {'params': restored['params'], 'batch_stats': restored['batch_stats']}, step


def make_feature_fn(model, mesh, encoder: str):
  """jit-compiled images [B, S, S, 3] -> features [B, D], batch split over the mesh."""
  def features(variables, images):
    if encoder == 'pixels':
      side = min(_PIXEL_SIDE, images.shape[1])
      images = jax.image.resize(images, (images.shape[0], side, side, 3), 'linear')
      return images.reshape(images.shape[0], -1)
    return model.apply(variables, images, train=False, method=models.SimCLRModel.encode)
  return jax.jit(features, in_shardings=(replicated(mesh), batch_sharded(mesh)),
                 out_shardings=batch_sharded(mesh))


def extract_features(feature_fn, variables, dataset, mesh, *, config, split,
                     description: str = '', num_examples: int = 0):
  """Runs `feature_fn` over a padded eval dataset of `split`; returns (features, labels).

  Logs progress every 20 batches and at the end (out of `num_examples`, when given).
  """
  features, labels = [], []
  start = time.perf_counter()
  batches = input_pipeline.device_batches(dataset, batch_sharded(mesh), config=config,
                                          split=split)
  total = f' of {num_examples}' if num_examples else ''
  def log_progress():
    done = sum(map(len, labels))
    logging.info('%s: %d%s examples embedded (%.0f/s).', description, done, total,
                 done / (time.perf_counter() - start))
  for i, batch in enumerate(batches):
    out = feature_fn(variables, batch['image'])
    out, label, mask = (multihost_utils.process_allgather(x, tiled=True)
                        for x in (out, batch['label'], batch['mask']))
    features.append(np.asarray(out)[mask])
    labels.append(np.asarray(label)[mask])
    if (i + 1) % 20 == 0:
      log_progress()
  log_progress()
  return np.concatenate(features), np.concatenate(labels)


class KnnMonitor:
  """kNN accuracy of the encoder being pretrained, for periodic logging (eval_every_steps)."""

  def __init__(self, config, model, mesh, num_classes: int):
    self._config, self._mesh, self._num_classes = config, mesh, num_classes
    self._feature_fn = make_feature_fn(model, mesh, 'pretrained')
    local_batch_size = config.eval.batch_size // jax.process_count()
    self._datasets = [
        (split, input_pipeline.create_eval_dataset(
            config, split, local_batch_size=local_batch_size,
            max_examples=config.eval.max_examples)[0])
        for split in (config.train_split, config.eval.split)]

  def __call__(self, params, batch_stats) -> dict:
    variables = {'params': params, 'batch_stats': batch_stats}
    (train_x, train_y), (eval_x, eval_y) = (
        extract_features(self._feature_fn, variables, ds, self._mesh, config=self._config,
                         split=split, description='kNN monitor')
        for split, ds in self._datasets)
    k = min(self._config.eval.knn_k, len(train_y))
    scores = knn.knn_scores(train_x, train_y, eval_x, self._num_classes, k=k,
                            temperature=self._config.eval.knn_temperature)
    return {f'knn_{name}': value
            for name, value in accuracies(scores, eval_y, self._num_classes).items()}


def encoder_variables(config, model, mesh):
  """Variables of the encoder to evaluate, per config.eval.encoder; returns (vars, step)."""
  if config.eval.encoder == 'pretrained':
    variables, step = restore_encoder_variables(config, model, config.pretrained_workdir,
                                                config.pretrained_step)
    return jax.device_put(variables, replicated(mesh)), step
  if config.eval.encoder == 'random':
    init = lambda: models.init_variables(model, jax.random.PRNGKey(config.seed),
                                         config.image_size)
    return run_once(init, out_shardings=replicated(mesh)), None
  return {}, None


def embed_splits(config, model, variables, mesh):
  """Features of config.train_split and config.eval.split: ((train_x, train_y), (eval_x, ...))."""
  feature_fn = make_feature_fn(model, mesh, config.eval.encoder)
  local_batch_size = config.eval.batch_size // jax.process_count()
  splits = []
  for split in (config.train_split, config.eval.split):
    dataset, num_examples = input_pipeline.create_eval_dataset(
        config, split, local_batch_size=local_batch_size, max_examples=config.eval.max_examples)
    splits.append(extract_features(feature_fn, variables, dataset, mesh, config=config,
                                   split=split, description=f'{split} features',
                                   num_examples=num_examples))
  return tuple(splits)


def accuracies(scores, labels, num_classes):
  """Top-1 and top-5 (or top-num_classes) accuracy of class scores [N, C]."""
  return {'top1': linear_classifier.topk_accuracy(scores, labels, 1),
          'top5': linear_classifier.topk_accuracy(scores, labels, min(5, num_classes))}


def linear_probe_scores(config, train, eval_features, num_classes: int):
  """(class scores [N, C] of eval_features, {'l2', 'holdout_accuracy'}) of the L-BFGS
  logistic regression fitted on train features (L2 chosen on held-out train examples)."""
  classifier, info = linear_classifier.select_l2_and_fit(
      *train, num_classes, l2_grid=linear_classifier.DEFAULT_L2_GRID,
      holdout_fraction=config.eval.holdout_fraction, seed=config.seed,
      max_iterations=config.eval.max_iterations)
  return np.asarray(linear_classifier.logits(classifier, eval_features)), info


def linear_protocol(config, train, evaluation, num_classes: int) -> dict:
  """L-BFGS logistic regression on train features (L2 chosen on held-out train examples)."""
  scores, info = linear_probe_scores(config, train, evaluation[0], num_classes)
  return {'l2': info['l2'], 'holdout_accuracy': info['holdout_accuracy'],
          **accuracies(scores, evaluation[1], num_classes)}


def knn_protocol(config, train, evaluation, num_classes: int) -> dict:
  """Weighted kNN of the eval features among the train features."""
  scores = knn.knn_scores(*train, evaluation[0], num_classes, k=config.eval.knn_k,
                          temperature=config.eval.knn_temperature)
  return {'k': config.eval.knn_k, 'knn_temperature': config.eval.knn_temperature,
          **accuracies(scores, evaluation[1], num_classes)}


def labelled_train_info(config) -> datasets.DatasetInfo:
  """Info of the train split, after checking that both splits exist and have labels."""
  info = input_pipeline.get_dataset_info(config, config.train_split)
  input_pipeline.get_dataset_info(config, config.eval.split)
  if info.num_classes == 0:
    raise ValueError(f'config.dataset={config.dataset!r} has no labels; {config.mode} needs '
                     'them.')
  return info


def evaluate(config, workdir: str) -> dict:
  """Runs the protocol of config.mode; prints and writes WORKDIR/eval_results.json."""
  start = time.perf_counter()
  config_validation.validate_config(config, num_devices=jax.device_count(),
                                    num_processes=jax.process_count())
  protocol = PROTOCOLS[config.mode]
  train_info = labelled_train_info(config)
  mesh = create_mesh()
  num_classes = train_info.num_classes
  model = models.create_model(config.model, image_size=config.image_size,
                              num_classes=num_classes)
  variables, step = encoder_variables(config, model, mesh)
  tf.io.gfile.makedirs(workdir)
  train, evaluation = embed_splits(config, model, variables, mesh)

  results = {**results_header(config, protocol, step),
             'num_train_examples': len(train[1]), 'num_eval_examples': len(evaluation[1]),
             'feature_dim': int(train[0].shape[1])}
  run_protocol = linear_protocol if protocol == 'linear' else knn_protocol
  results.update(run_protocol(config, train, evaluation, num_classes))
  return report_results(results, workdir, start)


# eval_results.json's `compare_with`: which published figures a protocol's number is
# comparable to (README: "Which number to compare with which").
COMPARE_WITH = {
    'linear': "the SimCLR paper's transfer-learning figures (logistic regression on frozen "
              'features of unaugmented images, L2 tuned on held-out train examples). Not the '
              "reference's CIFAR-10 (~91%) or ImageNet (64.5%, 69.1%) linear-evaluation figures: "
              'those come from the SGD protocol (eval.linear_protocol=sgd, '
              'configs/*_linear_eval.py).',
    'linear_sgd': "the reference's linear-evaluation figures: CIFAR-10 ResNet-18 ~91% after "
                  '1000 epochs; ImageNet ResNet-50 64.5% after 100 epochs, 69.1% after 1000.',
    'knn': 'kNN figures of other codebases (e.g. CIFAR-10 ResNet-18, 1000 epochs: 91.4%), '
           'not linear-evaluation figures.',
    'finetune': 'semi-supervised fine-tuning figures at the same label fraction (SimCLRv2, '
                'ResNet-50 1x: 57.9% with 1% and 68.4% with 10% of the ImageNet labels).',
    'report': "its linear number is the L-BFGS protocol ('linear'), its kNN number the kNN "
              "protocol ('knn'): compare each as those.",
}


def results_header(config, protocol: str, checkpoint_step) -> dict:
  """The fields of eval_results.json that say what was evaluated."""
  return {'protocol': protocol, 'compare_with': COMPARE_WITH[protocol],
          'dataset': config.dataset, 'train_split': config.train_split,
          'eval_split': config.eval.split, 'encoder': config.eval.encoder,
          'model': config.model.name, 'width_multiplier': config.model.width_multiplier,
          'pretrained_workdir': (config.pretrained_workdir if checkpoint_step is not None
                                 else None),
          'checkpoint_step': checkpoint_step}


def report_results(results: dict, workdir: str, start_time: float) -> dict:
  """Adds the wall time, logs and prints `results`, writes WORKDIR/eval_results.json."""
  results['wall_time_sec'] = time.perf_counter() - start_time
  logging.info('%s evaluation of the %s encoder: top-1 %.2f%%, top-5 %.2f%% on %s/%s.',
               results['protocol'], results['encoder'], 100 * results['top1'],
               100 * results['top5'], results['dataset'], results['eval_split'])
  print(json.dumps(results, indent=2))
  if jax.process_index() == 0:
    with tf.io.gfile.GFile(os.path.join(workdir, 'eval_results.json'), 'w') as f:
      json.dump(results, f, indent=2)
  return results
