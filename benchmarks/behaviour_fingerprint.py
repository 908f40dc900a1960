r"""Fingerprint of what every program computes, to show that a refactoring changes nothing.

  python benchmarks/behaviour_fingerprint.py --out=/tmp/after.json \
      [--check=benchmarks/results/behaviour_fingerprint.json] [--dataset=DIR]

Runs, on a fixed subset of the real CIFAR-10 folder (26 train / 10 test images per class) with
a 1/8-width ResNet-18, each program as `simclr_jax.main` would: pretraining (8 steps, with the
kNN monitor), linear evaluation (L-BFGS), kNN evaluation, fine-tuning and
the reference's SGD linear evaluation. It writes every metric they log (metrics.jsonl) and
report (eval_results.json), less wall times and rates, and a hash of the final parameters.
--check compares with a recorded fingerprint and lists every difference (exit status 1).
"""

import hashlib
import json
import os
import shutil
import sys
import tempfile

from absl import app
from absl import flags
import jax
import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
from simclr_jax.core import checkpoints
from simclr_jax import main as main_lib
from simclr_jax.config_files import load_config_file

FLAGS = flags.FLAGS
flags.DEFINE_string(
    'dataset',
    os.environ.get(
        'SIMCLR_CIFAR10_DIR', os.path.join(REPO_ROOT, '..', 'shared', 'data', 'cifar10-jpeg')
    ),
    'The CIFAR-10 image folder (<split>/<class>/<image>).',
)
flags.DEFINE_string('out', None, 'Where the fingerprint (JSON) is written.')
flags.DEFINE_string('check', None, 'A recorded fingerprint to compare with.')

# Values that measure time, not what was computed.
_TIMING_KEYS = ('steps_per_sec', 'images_per_sec', 'wall_sec', 'seconds', 'eta', 'time')


def _subset(dataset, root, per_class):
  for split, count in per_class.items():
    for class_dir in sorted(os.listdir(os.path.join(dataset, split))):
      os.makedirs(os.path.join(root, split, class_dir))
      images = sorted(os.listdir(os.path.join(dataset, split, class_dir)))[:count]
      for image in images:
        os.symlink(
            os.path.join(dataset, split, class_dir, image),
            os.path.join(root, split, class_dir, image),
        )


def _config(dataset, **overrides):
  config = load_config_file(os.path.join(REPO_ROOT, 'configs', 'cifar10.py'))
  config.dataset = dataset
  config.model.width_multiplier = 0.125
  config.model.conv_impl = 'xla'
  config.batch_size = 32
  config.num_train_steps = 8
  config.log_every_steps = 2
  config.checkpoint_every_steps = 4
  config.shuffle_buffer_size = 256
  config.eval.batch_size = 64
  config.eval.knn_k = 20
  config.eval_every_steps = 4
  config.finetune.batch_size = 64
  config.finetune.epochs = 2.0
  for key, value in overrides.items():
    target = config
    *parents, leaf = key.split('.')
    for parent in parents:
      target = target[parent]
    target[leaf] = value
  return config


def _without_timing(record):
  if isinstance(record, dict):
    return {
        k: _without_timing(v) for k, v in record.items() if not any(t in k for t in _TIMING_KEYS)
    }
  if isinstance(record, list):
    return [_without_timing(v) for v in record]
  return record


def _outputs(workdir, root):
  """What the program in `workdir` logged and reported; paths under `root` start with <root>."""

  def read(name):
    with open(os.path.join(workdir, name)) as f:
      return f.read().replace(root, '<root>')

  out = {}
  if os.path.exists(os.path.join(workdir, 'metrics.jsonl')):
    out['metrics'] = [
        _without_timing(json.loads(line)) for line in read('metrics.jsonl').splitlines()
    ]
  if os.path.exists(os.path.join(workdir, 'eval_results.json')):
    out['eval_results'] = _without_timing(json.loads(read('eval_results.json')))
  return out


def _checkpoint_hash(workdir):
  """A hash of the latest checkpoint's arrays, restored as saved."""
  step = checkpoints.checkpoint_steps(workdir)[-1]
  restored = checkpoints.restore_read_only(checkpoints.read_only_manager(workdir), step)
  digest = hashlib.sha256()
  for path, leaf in sorted(
      jax.tree_util.tree_flatten_with_path(restored)[0], key=lambda kv: jax.tree_util.keystr(kv[0])
  ):
    digest.update(jax.tree_util.keystr(path).encode())
    digest.update(np.asarray(leaf).tobytes())
  return {'step': step, 'sha256': digest.hexdigest()}


def fingerprint(dataset, root):
  data = os.path.join(root, 'data')
  _subset(dataset, data, {'train': 26, 'test': 10})
  pretrain = os.path.join(root, 'pretrain')
  main_lib.run(_config(data), pretrain)
  result = {'pretrain': {**_outputs(pretrain, root), 'checkpoint': _checkpoint_hash(pretrain)}}
  programs = {
      'linear_eval_lbfgs': {'mode': 'evaluate', 'eval.protocol': 'linear'},
      'knn_eval': {'mode': 'evaluate', 'eval.protocol': 'knn'},
      'finetune': {
          'mode': 'evaluate',
          'eval.protocol': 'finetune',
          'finetune.fine_tune_after_block': 2,
      },
      'linear_eval_sgd': {'mode': 'evaluate', 'eval.protocol': 'linear_sgd'},
  }
  for name, overrides in programs.items():
    workdir = os.path.join(root, name)
    main_lib.run(_config(data, pretrained_workdir=pretrain, **overrides), workdir)
    result[name] = _outputs(workdir, root)
  return result


def differences(recorded, current, prefix=''):
  if isinstance(recorded, dict) and isinstance(current, dict):
    found = []
    for key in sorted(set(recorded) | set(current)):
      if key not in current or key not in recorded:
        found.append(f'{prefix}{key}: only in {"recorded" if key in recorded else "current"}')
      else:
        found += differences(recorded[key], current[key], f'{prefix}{key}.')
    return found
  if isinstance(recorded, list) and isinstance(current, list) and len(recorded) == len(current):
    return [
        d
        for i, (r, c) in enumerate(zip(recorded, current))
        for d in differences(r, c, f'{prefix}{i}.')
    ]
  return [] if recorded == current else [f'{prefix[:-1]}: {recorded!r} -> {current!r}']


def main(argv):
  del argv
  root = tempfile.mkdtemp(prefix='simclr_fingerprint_')
  try:
    result = fingerprint(os.path.abspath(FLAGS.dataset), root)
  finally:
    shutil.rmtree(root, ignore_errors=True)
  if FLAGS.out:
    with open(FLAGS.out, 'w') as f:
      json.dump(result, f, indent=1, sort_keys=True)
  if FLAGS.check:
    with open(FLAGS.check) as f:
      found = differences(json.load(f), json.loads(json.dumps(result)))
    print('\n'.join(found) or f'Identical to {FLAGS.check}.')
    sys.exit(1 if found else 0)


if __name__ == '__main__':
  app.run(main)
