"""A run's config in its workdir (WORKDIR/config.json): what rebuilds its model later."""

import json
import os

import jax
import ml_collections
import tensorflow as tf

from simclr_jax.core import workdirs


def save_config(config, workdir: str):
  """Writes WORKDIR/config.json from process 0 (the workdir is shared by all hosts).

  Atomically: the other hosts may be reading it (checkpoints.config_differences) while
  resuming.
  """
  if jax.process_index() == 0:
    workdirs.write_atomically(
        os.path.join(workdir, 'config.json'), config.to_json_best_effort(indent=2) + '\n'
    )


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run saved in WORKDIR/config.json (save_config), as a ConfigDict."""
  path = workdirs.path(workdir, 'config.json')
  if not tf.io.gfile.exists(path):
    raise ValueError(
        f'No config.json in {workdir}: the model is rebuilt from the config its run saved '
        'there. Pretraining writes it when it starts (python -m simclr_jax.main --config=... '
        f'--workdir={workdir}); if the checkpoints were copied here without it, copy the '
        "run's config.json along."
    )
  try:
    with tf.io.gfile.GFile(path) as f:
      return ml_collections.ConfigDict(json.load(f))
  except json.JSONDecodeError as e:
    raise ValueError(
        f'{path} is not valid JSON ({e}); the model is rebuilt from it. Restore it from a '
        f'copy, or rerun the pretraining command on {workdir}: it rewrites config.json when '
        'it starts (with the same config file and flags, it resumes).'
    ) from None


def with_absolute_paths(config):
  """`config` with its local paths made absolute, so that the config.json a run saves works
  from any directory (the report, the notebook); URLs (gs://) and TFDS names stay as they are."""

  def absolute(path):
    local = (
        path and '://' not in path and (path.startswith(('.', '~', os.sep)) or os.path.isdir(path))
    )
    return os.path.abspath(os.path.expanduser(path)) if local else path

  for key in ('dataset', 'tfds_data_dir', 'pretrained_workdir'):
    config[key] = absolute(config[key])
  config.eval.dataset = absolute(config.eval.get('dataset', ''))
  return config
