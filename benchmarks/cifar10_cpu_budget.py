r"""Pretrain within a wall-clock budget on CIFAR-10, then evaluate against honest baselines.

  python benchmarks/cifar10_cpu_budget.py --budget_minutes=20 --workdir=/tmp/simclr_budget \
      [--dataset=../shared/data/cifar10-jpeg] [--config=configs/cifar10_cpu.py] \
      [--config.KEY=VALUE ...]

1. Calibration: a short run of the real config (pipeline included) in WORKDIR/calibration
   measures the step rate and the start-up cost (compilation, first batches).
2. Pretraining: num_train_steps is set so that the whole run (start-up included) fits the
   budget, so the learning-rate schedule completes; the measured wall time is reported.
   --train_steps=N skips step 1 and sets N instead (runs are deterministic on CPU, so a
   recipe change of equal step cost is compared with a past run of N steps exactly).
3. Evaluation of the pretrained encoder, a randomly initialised encoder of the same
   architecture and raw pixels, each by the linear protocol (L-BFGS logistic regression, L2
   chosen on held-out train examples) and by kNN (k=200), on the full train and test splits
   (--encoders picks which).
With --encoders=torch (the `torchvision` extra), benchmarks/torch_train.py pretrains the same
config in PyTorch for the same budget in its own process (--torch_python), and the same
programs score its encoder's features. Steps 1-2 run only for the encoder `pretrained`; run
`pretrained` and `torch` as two commands at once, each pinned to its own cores (taskset), to
compare them on one machine at one time.

Writes WORKDIR/benchmark_results.json and prints a Markdown table for BENCHMARKS.md.
"""

import json
import os
import subprocess
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
import budget_runs
import numpy as np
from simclr_jax import evaluators
from simclr_jax import input_pipeline
from simclr_jax.core import huge_pages

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    'config',
    os.path.join(REPO_ROOT, 'configs', 'cifar10_cpu.py'),
    'Config file to pretrain with; override values with '
    '--config.KEY=VALUE (e.g. --config.temperature=0.1).',
)
flags.DEFINE_string(
    'dataset',
    budget_runs.DEFAULT_CIFAR10,
    'CIFAR-10 image folder (<split>/<class>/<image>) or a TFDS name.',
)
flags.DEFINE_string('workdir', '/tmp/simclr_budget', 'Where runs and results are written.')
flags.DEFINE_float('budget_minutes', 20.0, 'Wall-clock budget of the pretraining run.')
flags.DEFINE_integer('calibration_steps', 40, 'Steps of the calibration run.')
flags.DEFINE_integer(
    'train_steps',
    0,
    'If > 0, pretrain exactly this many steps without calibration (the budget only labels '
    'the results): compares recipes of equal step cost at equal steps, free of the '
    "calibration's timing noise.",
)
flags.DEFINE_integer('eval_max_examples', 0, 'If > 0, evaluate on a subset per split (faster).')
flags.DEFINE_list(
    'encoders',
    ['pretrained', 'random', 'pixels'],
    'Encoders to evaluate; the baselines do not depend on the pretraining run (the '
    'pixel one takes about an hour on 2 cores); torch: the PyTorch reference.',
)
flags.DEFINE_string(
    'torch_python', sys.executable, 'Python with torch and torchvision for --encoders=torch.'
)
flags.DEFINE_integer('torch_threads', 0, "PyTorch's threads (0: the CPUs this process may use).")
flags.DEFINE_integer('torch_workers', 1, 'DataLoader worker processes of the PyTorch run.')

ENCODERS = ('pretrained', 'random', 'pixels', 'torch')


def pretrain(config, budget_sec):
  """Calibration and the budget's pretraining run: (run record, pretraining workdir)."""
  if FLAGS.train_steps > 0:
    steps, steps_per_sec = FLAGS.train_steps, None
  else:
    steps, steps_per_sec, _ = budget_runs.plan_steps(
        config, FLAGS.workdir, budget_sec, FLAGS.calibration_steps
    )
  config.num_train_steps = steps
  pretrain_dir = os.path.join(FLAGS.workdir, 'pretrain')
  pretrain_sec, _ = budget_runs.timed_pretraining(config, pretrain_dir)
  final = budget_runs.last_metrics(pretrain_dir)
  info = input_pipeline.get_dataset_info(config, config.train_split)
  return {
      'steps': steps,
      'epochs': steps * config.batch_size / info.num_examples,
      'pretrain_wall_sec': pretrain_sec,
      'calibrated_steps_per_sec': steps_per_sec,
      'final_contrastive_loss': final['contrastive_loss'],
      'final_probe_accuracy': final.get('probe_accuracy'),
  }, pretrain_dir


def torch_reference(config, budget_sec):
  """benchmarks/torch_train.py for the budget, its features scored as evaluate_encoder does."""
  if not os.path.isdir(config.dataset):
    raise app.UsageError(f'--encoders=torch reads an image folder; {config.dataset} is not one.')
  output = os.path.join(FLAGS.workdir, 'torch_features.npz')
  threads = FLAGS.torch_threads or len(os.sched_getaffinity(0))
  command = [
      FLAGS.torch_python,
      os.path.join(REPO_ROOT, 'benchmarks', 'torch_train.py'),
      json.dumps(config.to_dict()),
      config.dataset,
      str(budget_sec),
      output,
      str(threads),
      str(FLAGS.torch_workers),
  ]
  subprocess.run(command, check=True)
  with open(os.path.splitext(output)[0] + '.json') as f:
    results = json.load(f)
  with np.load(output) as data:
    train_set, test_set = (data['train_x'], data['train_y']), (data['test_x'], data['test_y'])
  results['feature_dim'] = int(train_set[0].shape[1])
  for name in ('linear', 'knn'):
    results[name] = evaluators.score(name, config, train_set, test_set, 10)
  return results


def main(argv):
  del argv
  config = FLAGS.config
  if config.huge_page_malloc:  # As the command-line program does.
    huge_pages.reexec_with_huge_pages()
  config.dataset = FLAGS.dataset
  config.eval.max_examples = FLAGS.eval_max_examples
  unknown = sorted(set(FLAGS.encoders) - set(ENCODERS))
  if unknown:
    raise app.UsageError(f'--encoders: unknown {unknown}; known: {", ".join(ENCODERS)}.')
  os.makedirs(FLAGS.workdir, exist_ok=True)
  budget_sec = 60 * FLAGS.budget_minutes
  run, pretrain_dir = {}, os.path.join(FLAGS.workdir, 'pretrain')
  if 'pretrained' in FLAGS.encoders:
    run, pretrain_dir = pretrain(config, budget_sec)
  results = {
      'machine': budget_runs.machine(),
      'config': os.path.relpath(config_flags.get_config_filename(FLAGS['config']), REPO_ROOT),
      'config_values': config.to_dict(),
      'dataset': config.dataset,
      'model': config.model.name,
      'width_multiplier': config.model.width_multiplier,
      'batch_size': config.batch_size,
      'budget_minutes': FLAGS.budget_minutes,
      **run,
      'encoders': {},
  }
  for encoder in FLAGS.encoders:
    if encoder == 'torch':
      scores = torch_reference(config, budget_sec)
    else:
      scores = budget_runs.evaluate_encoder(config, pretrain_dir, encoder, ['linear', 'knn'])
    results['encoders'][encoder] = scores
  with open(os.path.join(FLAGS.workdir, 'benchmark_results.json'), 'w') as f:
    json.dump(results, f, indent=2)
  print(json.dumps(results, indent=2))
  print(f'\n{FLAGS.budget_minutes:g} minutes of pretraining on {results["machine"]}.\n')
  print('| encoder | steps (epochs) | linear top-1 | linear top-5 | kNN top-1 | feature dim |')
  print('|---|---|---|---|---|---|')
  for encoder, r in results['encoders'].items():
    source = {'pretrained': run, 'torch': r}.get(encoder)
    steps = f'{source["steps"]} ({source["epochs"]:.2f})' if source else '-'
    print(
        f'| {encoder} | {steps} | {100 * r["linear"]["top1"]:.2f}% '
        f'| {100 * r["linear"]["top5"]:.2f}% | {100 * r["knn"]["top1"]:.2f}% '
        f'| {r["feature_dim"]} |'
    )


if __name__ == '__main__':
  app.run(main)
