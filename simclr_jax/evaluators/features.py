"""Features of a frozen encoder: restore it from a pretraining checkpoint (or take a random one,
or raw pixels), and embed whole splits with a jitted, batch-sharded function (BatchNorm in
inference mode)."""

import json
import time

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np
import tensorflow as tf

from simclr_jax.core import checkpoints
from simclr_jax import datasets
from simclr_jax import input_pipeline
from simclr_jax.core import prefetch
from simclr_jax import models
from simclr_jax.core import workdirs
from simclr_jax.core.sharding import batch_sharded, replicated, run_once

# Raw-pixel features are images downsampled to at most this side, then flattened.
_PIXEL_SIDE = 32
# SimCLR's, the one projection head that fine-tuning can keep layers of.
_HEAD_METHOD = 'simclr'


def _param_shapes(tree):
  return {
      jax.tree_util.keystr(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(tree)
  }


def _saved_config(pretrained_workdir: str):
  """The pretraining run's config.json as a dict; None if it has none."""
  saved = workdirs.path(pretrained_workdir, 'config.json')
  if not tf.io.gfile.exists(saved):
    return None
  with tf.io.gfile.GFile(saved) as f:
    return json.load(f)


def restore_encoder_variables(
    config, model, pretrained_workdir: str, step: int = -1, with_head: bool = False
):
  """Params and BatchNorm statistics from a pretraining checkpoint; returns (variables, step).

  Every method keeps the encoder it trains for evaluation under 'encoder', so any method's
  run restores here (with config.eval.weights=target: its EMA target's, under method_state);
  `with_head` also compares (and so needs) SimCLR's projection head.

  Moves nothing (the workdir is another run's). Raises ValueError when there is no
  checkpoint; when the checkpoint asked for (the latest by default) cannot be read, naming
  why and the other steps to pass as config.pretrained_step (rather than evaluating another
  step than asked for); or when it holds another architecture than `config.model` describes
  (naming the differences and the saved config's model).
  """
  manager = checkpoints.read_only_manager(pretrained_workdir)
  directory, steps = str(manager.directory), manager.all_steps()
  if not steps:
    raise ValueError(
        f'No checkpoint in {directory}; set config.pretrained_workdir to the '
        'workdir of a pretraining run (python -m simclr_jax.main '
        '--config=... --workdir=WORKDIR writes WORKDIR/checkpoints).'
    )
  saved_config = _saved_config(pretrained_workdir)
  saved_method = (saved_config or {}).get('method', _HEAD_METHOD)
  if with_head and saved_method != _HEAD_METHOD:
    raise ValueError(
        f'{pretrained_workdir} was pretrained with {saved_method}, whose projection head is '
        f"not SimCLR's: fine-tuning can keep head layers of SimCLR runs only; set "
        'config.finetune.keep_head_layers=0.'
    )
  compared = ("['encoder']", "['head']") if with_head else ("['encoder']",)
  step = max(steps) if step < 0 else step
  if step not in steps:
    raise ValueError(
        f'config.pretrained_step={step} is not among the checkpoints in '
        f'{directory}: {sorted(steps)}.'
    )
  expected = jax.eval_shape(
      lambda: models.init_variables(model, jax.random.PRNGKey(0), config.image_size)
  )
  restored = checkpoints.restore_read_only(
      manager, step, '--step' if config.mode == 'report' else '--config.pretrained_step'
  )
  if config.eval.get('weights', 'online') == 'target':  # A config.json saved before has none.
    target = restored.get('method_state', {}).get('target')
    if target is None:
      raise ValueError(
          f'config.eval.weights=target, but {pretrained_workdir} ({saved_method}) has no target '
          "network (BYOL's, MoCo v3's momentum encoder, DINO's teacher); set "
          'config.eval.weights=online.'
      )
    restored = {
        collection: {**restored[collection], 'encoder': target[collection]['encoder']}
        for collection in ('params', 'batch_stats')
    }
  for collection in ('params', 'batch_stats'):
    want, got = _param_shapes(expected[collection]), _param_shapes(restored[collection])
    # What evaluation and fine-tuning take: the encoder and maybe the projection head (the
    # rest depends on the method and the dataset's classes).
    want = {k: v for k, v in want.items() if k.startswith(compared)}
    got = {k: v for k, v in got.items() if k.startswith(compared)}
    if want != got:
      differences = sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k))
      saved_model, hint = 'unknown (no config.json)', ''
      if saved_config is not None:
        saved_model = saved_config['model']
        if 'shortcut' not in saved_model and config.model.shortcut != 'torchvision':
          hint = checkpoints.OLD_LAYOUT_HINT
      raise ValueError(
          f'The checkpoint at step {step} in {directory} holds another architecture than '
          f'config.model ({config.model.name}, width {config.model.width_multiplier}, '
          f'image_size {config.image_size}): {len(differences)} {collection} entries differ, '
          f'e.g. {differences[0]}: checkpoint {got.get(differences[0])}, config '
          f'{want.get(differences[0])}. The run was saved with model {saved_model}; pass the '
          f'same --config.model.* and --config.image_size values.{hint}'
      )
  return {'params': restored['params'], 'batch_stats': restored['batch_stats']}, step


def make_feature_fn(model, mesh, encoder: str):
  """jit-compiled images [B, S, S, 3] -> features [B, D], batch split over the mesh."""

  def features(variables, images):
    if encoder == 'pixels':
      side = min(_PIXEL_SIDE, images.shape[1])
      images = jax.image.resize(images, (images.shape[0], side, side, 3), 'linear')
      return images.reshape(images.shape[0], -1)
    return model.apply(variables, images, train=False, method='encode')

  return jax.jit(
      features,
      in_shardings=(replicated(mesh), batch_sharded(mesh)),
      out_shardings=batch_sharded(mesh),
  )


def features_of_array(feature_fn, variables, images, num_devices: int) -> np.ndarray:
  """feature_fn on host images [N, ...], padded to a multiple of num_devices (the batch is
  split over the devices) and cut back to N rows."""
  images = np.asarray(images, np.float32)
  padded = np.zeros((-(-len(images) // num_devices) * num_devices,) + images.shape[1:], np.float32)
  padded[: len(images)] = images
  return np.asarray(feature_fn(variables, padded))[: len(images)]


def extract_features(
    feature_fn,
    variables,
    dataset,
    mesh,
    *,
    config,
    split,
    description: str = '',
    num_examples: int = 0,
):
  """Runs `feature_fn` over a padded eval dataset of `split`; returns (features, labels).

  Logs progress every 20 batches and at the end (out of `num_examples`, when given).
  """
  features, labels = [], []
  start = time.perf_counter()
  batches = prefetch.device_batches(dataset, batch_sharded(mesh), config=config, split=split)
  total = f' of {num_examples}' if num_examples else ''

  def log_progress():
    done = sum(map(len, labels))
    logging.info(
        '%s: %d%s examples embedded (%.0f/s).',
        description,
        done,
        total,
        done / (time.perf_counter() - start),
    )

  for i, batch in enumerate(batches):
    out = feature_fn(variables, batch['image'])
    out, label, mask = (
        multihost_utils.process_allgather(x, tiled=True)
        for x in (out, batch['label'], batch['mask'])
    )
    features.append(np.asarray(out)[mask])
    labels.append(np.asarray(label)[mask])
    if (i + 1) % 20 == 0:
      log_progress()
  log_progress()
  return np.concatenate(features), np.concatenate(labels)


def encoder_variables(config, model, mesh):
  """Variables of the encoder to evaluate, per config.eval.encoder; returns (vars, step)."""
  if config.eval.encoder == 'pretrained':
    variables, step = restore_encoder_variables(
        config, model, config.pretrained_workdir, config.pretrained_step
    )
    return jax.device_put(variables, replicated(mesh)), step
  if config.eval.encoder == 'random':
    init = lambda: models.init_variables(model, jax.random.PRNGKey(config.seed), config.image_size)
    return run_once(init, out_shardings=replicated(mesh)), None
  return {}, None


def embed_splits(config, model, variables, mesh):
  """Features of config.train_split and config.eval.split: ((train_x, train_y), (eval_x, ...))."""
  feature_fn = make_feature_fn(model, mesh, config.eval.encoder)
  local_batch_size = config.eval.batch_size // jax.process_count()
  splits = []
  for split in (config.train_split, config.eval.split):
    dataset, num_examples = input_pipeline.create_eval_dataset(
        config, split, local_batch_size=local_batch_size, max_examples=config.eval.max_examples
    )
    splits.append(
        extract_features(
            feature_fn,
            variables,
            dataset,
            mesh,
            config=config,
            split=split,
            description=f'{split} features',
            num_examples=num_examples,
        )
    )
  return tuple(splits)


def labelled_train_info(config) -> datasets.DatasetInfo:
  """Info of the train split, after checking that both splits exist and have labels."""
  info = input_pipeline.get_dataset_info(config, config.train_split)
  input_pipeline.get_dataset_info(config, config.eval.split)
  if info.num_classes == 0:
    raise ValueError(
        f'config.dataset={config.dataset!r} has no labels; {config.mode} needs ' 'them.'
    )
  return info
