r"""Every pretraining method for the same CPU budget on CIFAR-10, scored by the same evaluators.

  python benchmarks/methods_cpu_budget.py --budget_minutes=20 --workdir=/tmp/methods_budget \
      [--dataset=../shared/data/cifar10-jpeg] [--methods=simclr,byol]

Each method trains its own CIFAR-10 recipe (METHOD_CONFIGS: lr, schedule, augmentation, heads)
at the CPU scale of configs/cifar10_cpu.py: ResNet-18 at width 0.25, batch 128, the CPU
convolutions, its pretraining views' side, a short warm-up. SimCLR's arm is
configs/cifar10_cpu.py itself. As in benchmarks/cifar10_cpu_budget.py, a calibration run sets
the steps so that the whole run fits the wall-clock budget (the schedule completes); the
encoder is then scored by the linear protocol (L-BFGS, L2 chosen on held-out train examples)
and kNN (k = 200) on the full splits.

Writes WORKDIR/methods_results.json and prints a Markdown table for BENCHMARKS.md.
"""

import json
import os
import sys

from absl import app
from absl import flags

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
import budget_runs
from simclr_jax import config_files
from simclr_jax import input_pipeline
from simclr_jax.core import huge_pages

# method -> its CIFAR-10 config; each is brought to CPU scale by cpu_scale().
METHOD_CONFIGS = {
    'simclr': 'cifar10_cpu',
    'byol': 'cifar10_byol',
    'mocov3': 'cifar10_mocov3',
    'simsiam': 'cifar10_simsiam',
    'dino': 'cifar10_dino',
}

FLAGS = flags.FLAGS
flags.DEFINE_list('methods', list(METHOD_CONFIGS), 'Methods to train, each for the budget.')
flags.DEFINE_string('dataset', budget_runs.DEFAULT_CIFAR10, 'CIFAR-10 image folder or a TFDS name.')
flags.DEFINE_string('workdir', '/tmp/methods_budget', 'Where runs and results are written.')
flags.DEFINE_float('budget_minutes', 20.0, 'Wall-clock budget of each pretraining run.')
flags.DEFINE_integer('calibration_steps', 40, 'Steps of each calibration run.')
flags.DEFINE_integer('eval_max_examples', 0, 'If > 0, evaluate on a subset per split (faster).')


def cpu_scale(config, cpu):
  """`config` with the architecture, batch and bookkeeping of `cpu` (configs/cifar10_cpu.py)."""
  config.model.width_multiplier = cpu.model.width_multiplier
  config.model.conv_impl = cpu.model.conv_impl
  config.batch_size = cpu.batch_size
  config.pretrain_image_size = cpu.pretrain_image_size  # Compute per step, as the width.
  config.warmup_epochs = cpu.warmup_epochs
  for key in ('eval_every_steps', 'log_every_steps', 'checkpoint_every_steps'):
    config[key] = cpu[key]
  config.eval.batch_size = cpu.eval.batch_size
  if 'dino' in config:
    # Its 1000-epoch recipe's epoch-long schedules, shrunk as the warm-up is: the last layer
    # frozen for a tenth of the warm-up (1 of 10 epochs in the recipe). With the recipe's
    # 4,096 prototypes at T_t 0.07 the teacher stayed uniform for a whole short run
    # (BENCHMARKS.md); 1,024 at T_t 0.04 (the authors' ImageNet value) and a teacher EMA from
    # 0.996 (theirs) left that plateau in a 1,500-step diagnostic run.
    config.dino.freeze_last_layer_epochs = cpu.warmup_epochs / 10
    config.dino.output_dim = 1024
    config.dino.teacher_temperature = config.dino.warmup_teacher_temperature = 0.04
    config.dino.base_ema = 0.996
  return config


def run_method(method, cpu):
  config = config_files.load_config_file(
      os.path.join(REPO_ROOT, 'configs', f'{METHOD_CONFIGS[method]}.py')
  )
  config = cpu_scale(config, cpu)
  config.dataset = FLAGS.dataset
  config.eval.max_examples = FLAGS.eval_max_examples
  workdir = os.path.join(FLAGS.workdir, method)
  os.makedirs(workdir, exist_ok=True)
  steps, steps_per_sec, _ = budget_runs.plan_steps(
      config, workdir, 60 * FLAGS.budget_minutes, FLAGS.calibration_steps
  )
  config.num_train_steps = steps
  pretrain_dir = os.path.join(workdir, 'pretrain')
  wall_sec, _ = budget_runs.timed_pretraining(config, pretrain_dir)
  info = input_pipeline.get_dataset_info(config, config.train_split)
  return {
      'config': f'configs/{METHOD_CONFIGS[method]}.py',
      'config_values': config.to_dict(),
      'pretrain_steps': steps,
      'pretrain_epochs': steps * config.batch_size / info.num_examples,
      'pretrain_wall_sec': wall_sec,
      'calibrated_steps_per_sec': steps_per_sec,
      'final_metrics': budget_runs.last_metrics(pretrain_dir),
      'pretrained': budget_runs.evaluate_encoder(
          config, pretrain_dir, 'pretrained', ['linear', 'knn']
      ),
  }


def main(argv):
  del argv
  cpu = config_files.load_config_file(os.path.join(REPO_ROOT, 'configs', 'cifar10_cpu.py'))
  unknown = sorted(set(FLAGS.methods) - set(METHOD_CONFIGS))
  if unknown:
    raise app.UsageError(f'--methods: unknown {unknown}; known: {", ".join(METHOD_CONFIGS)}.')
  if cpu.huge_page_malloc:  # As the command-line program does.
    huge_pages.reexec_with_huge_pages()
  os.makedirs(FLAGS.workdir, exist_ok=True)
  results = {
      'machine': budget_runs.machine(),
      'dataset': FLAGS.dataset,
      'budget_minutes': FLAGS.budget_minutes,
      'methods': {},
  }
  path = os.path.join(FLAGS.workdir, 'methods_results.json')
  for method in FLAGS.methods:
    results['methods'][method] = run_method(method, cpu)
    with open(path, 'w') as f:  # After each method: a stopped run keeps what it finished.
      json.dump(results, f, indent=2)
  print(f'\n{FLAGS.budget_minutes:g} minutes per method on {results["machine"]}.\n')
  print('| method | config | steps (epochs) | linear top-1 | kNN top-1 |')
  print('|---|---|---|---|---|')
  for method, r in results['methods'].items():
    scores = r['pretrained']
    print(
        f'| {method} | `{r["config"]}` | {r["pretrain_steps"]} ({r["pretrain_epochs"]:.1f}) '
        f'| {100 * scores["linear"]["top1"]:.2f}% | {100 * scores["knn"]["top1"]:.2f}% |'
    )


if __name__ == '__main__':
  app.run(main)
