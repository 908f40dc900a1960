r"""The down-scaled SimCLR study on CIFAR-10, at a budget a CPU affords, in one command.

  python benchmarks/cifar10_study.py --workdir=/tmp/simclr_study --epochs=1 \
      [--dataset=../shared/data/cifar10-jpeg] [--arms=...] [--batch_sizes=32,64,128,256,512]

Arms (each pretrains configs/cifar10_cpu.py, ResNet-18 at width 0.25, for --epochs epochs of
images, whatever the batch):
- resnet18_simclr_b{B}: SimCLR's augmentation, for each batch B of --batch_sizes (the learning
  rate scales with sqrt(B), as the config says);
- resnet18_simclr_b{B}_m{M} for each B:M of --microbatch_arms: batch B through the gradient
  cache in M micro-batches (config.microbatches; BatchNorm statistics per micro-batch);
- resnet18_weak_b{base}: the study's weak policy (config.augment.policy='weak');
- {vit}_simclr_b{base} for each of --vits: the ViT of configs/cifar10_vit.py (patch 4) for the
  CPU time (all threads) the ResNet-18 arm of batch --base_batch took: equal compute on this
  machine, whatever else runs on it;
and the baselines: raw pixels, and randomly initialised encoders of each architecture (random:
the ResNet-18, random_{vit}: each ViT).

Every encoder is evaluated by --protocols (linear: L-BFGS logistic regression; mlp: the study's
one-hidden-layer probe; knn: k=200) trained on the full train split and scored on the full test
split; the first arm also by the probes on PCA-reduced features (--pca_dims). An arm whose
WORKDIR/arms/NAME/results.json exists is not run again, so an interrupted study resumes.

Writes WORKDIR/study_results.json, WORKDIR/study_table.md and WORKDIR/study_figure.png.
"""

import json
import os
import sys

from absl import app
from absl import flags
from absl import logging
import matplotlib

matplotlib.use('Agg')
# pylint: disable=g-import-not-at-top,wrong-import-position
import matplotlib.pyplot as plt
from ml_collections import config_flags

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

import budget_runs
from simclr_jax import input_pipeline
from simclr_jax.core import huge_pages
from simclr_jax.config_files import load_config_file

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    'config',
    os.path.join(REPO_ROOT, 'configs', 'cifar10_cpu.py'),
    "The ResNet-18 arms' config; --config.KEY=VALUE overrides (every arm).",
)
flags.DEFINE_string(
    'dataset',
    budget_runs.DEFAULT_CIFAR10,
    'CIFAR-10 image folder (<split>/<class>/<image>) or a TFDS name.',
)
flags.DEFINE_string('workdir', '/tmp/simclr_study', 'Where the arms and the results go.')
flags.DEFINE_float('epochs', 1.0, 'Epochs of images each arm pretrains on (the study: 20).')
flags.DEFINE_integer('base_batch', 128, 'The batch of the weak-policy and ViT arms.')
flags.DEFINE_list('batch_sizes', ['32', '64', '128', '256', '512'], 'The batch sweep.')
flags.DEFINE_list(
    'microbatch_arms', [], 'B:M pairs: batch B in M micro-batches (e.g. 1024:8), as above.'
)
flags.DEFINE_list('vits', ['vit_ti'], "ViT sizes trained for the ResNet-18 arm's CPU time.")
flags.DEFINE_list('protocols', ['linear', 'mlp', 'knn'], 'Evaluators of every encoder.')
flags.DEFINE_list(
    'pixel_protocols',
    ['mlp', 'knn'],
    'Evaluators of raw pixels (L-BFGS on 3072-d pixels takes ~1 h on 2 cores: add linear '
    'if the budget allows).',
)
flags.DEFINE_list('pca_dims', ['32'], 'PCA sizes for the probes of the first arm.')
flags.DEFINE_list('arms', [], 'Run only these arms (names as above, or random, pixels).')
flags.DEFINE_float('vit_learning_rate', 1e-4, "Peak AdamW lr of the ViT arms (the study's).")
flags.DEFINE_integer('calibration_steps', 30, "Steps of the ViT arms' calibration runs.")

# The study's figures (MLP probe on frozen 20-epoch SimCLR ResNet-18 embeddings, weak policy).
STUDY = {'SimCLR embeddings': 48.63, 'raw pixels': 35.77, 'PCA-reduced embeddings': 39.67}


def _arm_dir(name):
  return os.path.join(FLAGS.workdir, 'arms', name)


def _cached(name):
  path = os.path.join(_arm_dir(name), 'results.json')
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  return None


def _save(name, results):
  path = os.path.join(_arm_dir(name), 'results.json')
  with open(path + '.tmp', 'w') as f:
    json.dump(results, f, indent=2)
  os.replace(path + '.tmp', path)
  return results


def _pretrain_arm(name, config, steps=None, budget_sec=None, pca_dims=()):
  """Pretrains `config` for `steps` (or what fits `budget_sec`), then evaluates it."""
  os.makedirs(_arm_dir(name), exist_ok=True)
  planned = {}
  if steps is None:
    steps, rate, startup = budget_runs.plan_steps(
        config, _arm_dir(name), budget_sec, FLAGS.calibration_steps, clock='cpu'
    )
    planned = {
        'budget_cpu_sec': budget_sec,
        'calibrated_steps_per_cpu_sec': rate,
        'startup_cpu_sec': startup,
    }
  config.num_train_steps = steps
  pretrain_dir = os.path.join(_arm_dir(name), 'pretrain')
  wall, cpu = budget_runs.timed_pretraining(config, pretrain_dir)
  info = input_pipeline.get_dataset_info(config, config.train_split)
  final = budget_runs.last_metrics(pretrain_dir)
  return _save(
      name,
      {
          'model': config.model.name,
          'width_multiplier': config.model.width_multiplier,
          'policy': config.augment.policy,
          'batch_size': config.batch_size,
          'microbatches': config.microbatches,
          'steps': steps,
          'epochs': steps * config.batch_size / info.num_examples,
          'pretrain_wall_sec': wall,
          'pretrain_cpu_sec': cpu,
          'final_contrastive_loss': final['contrastive_loss'],
          **planned,
          'eval': budget_runs.evaluate_encoder(
              config, pretrain_dir, 'pretrained', FLAGS.protocols, pca_dims
          ),
      },
  )


def _baseline(name, config, protocols):
  """A randomly initialised encoder of `config` ('random...') or raw pixels, evaluated."""
  os.makedirs(_arm_dir(name), exist_ok=True)
  encoder = 'pixels' if name == 'pixels' else 'random'
  return _save(
      name,
      {
          'model': config.model.name,
          'eval': budget_runs.evaluate_encoder(config, '', encoder, protocols),
      },
  )


def _configs():
  """{arm: config} of the ResNet-18 arms, in the order they run."""
  base = FLAGS.config
  base.dataset = FLAGS.dataset
  base.eval.max_examples = 0
  num_images = FLAGS.epochs * input_pipeline.get_dataset_info(base, base.train_split).num_examples
  arms = {}
  batches = [FLAGS.base_batch] + [int(b) for b in FLAGS.batch_sizes if int(b) != FLAGS.base_batch]
  for batch in batches:
    config = base.copy_and_resolve_references()
    config.batch_size = batch
    config.checkpoint_every_steps = 10**9  # The final step only.
    arms[f'resnet18_simclr_b{batch}'] = (config, max(1, round(num_images / batch)))
    if batch == FLAGS.base_batch:
      weak = config.copy_and_resolve_references()
      weak.augment.policy = 'weak'
      arms[f'resnet18_weak_b{batch}'] = (weak, arms[f'resnet18_simclr_b{batch}'][1])
  for pair in FLAGS.microbatch_arms:
    batch, microbatches = (int(x) for x in pair.split(':'))
    config = base.copy_and_resolve_references()
    config.batch_size, config.microbatches = batch, microbatches
    config.checkpoint_every_steps = 10**9
    arms[f'resnet18_simclr_b{batch}_m{microbatches}'] = (config, max(1, round(num_images / batch)))
  return base, arms


def _vit_config(base, name):
  """configs/cifar10_vit.py at the study's ViT learning rate and the ResNet arms' warm-up."""
  config = load_config_file(os.path.join(REPO_ROOT, 'configs', 'cifar10_vit.py'))
  config.model.name = name
  for key in ('dataset', 'eval_every_steps', 'log_every_steps', 'huge_page_malloc', 'seed'):
    config[key] = base[key]
  config.batch_size = FLAGS.base_batch
  # A peak of FLAGS.vit_learning_rate; 40 warm-up epochs would outlast a short run.
  config.learning_rate = FLAGS.vit_learning_rate * 256 / config.batch_size
  config.warmup_epochs = base.warmup_epochs
  config.eval.batch_size = base.eval.batch_size
  config.eval.max_examples = 0
  config.checkpoint_every_steps = 10**9
  return config


def run_study():
  base, arms = _configs()
  selected = set(FLAGS.arms)
  results = {}

  def wanted(name):
    return not selected or name in selected

  pca_dims = [int(d) for d in FLAGS.pca_dims]
  reference = f'resnet18_simclr_b{FLAGS.base_batch}'
  vits = {f'{vit}_simclr_b{FLAGS.base_batch}': vit for vit in FLAGS.vits}
  # The reference arm, the weak policy and the ViTs first: what the table most needs.
  order = [reference, f'resnet18_weak_b{FLAGS.base_batch}', *vits]
  order += [name for name in arms if name not in order]
  for name in filter(wanted, order):
    if name in arms:
      config, steps = arms[name]
      pca = pca_dims if name == reference else ()
      results[name] = _cached(name) or _pretrain_arm(name, config, steps=steps, pca_dims=pca)
      continue
    if _cached(reference) is None:
      raise ValueError(f'{name} needs the CPU time of {reference}: run that arm too.')
    results[name] = _cached(name) or _pretrain_arm(
        name, _vit_config(base, vits[name]), budget_sec=_cached(reference)['pretrain_cpu_sec']
    )
  baselines = [('random', base, FLAGS.protocols), ('pixels', base, FLAGS.pixel_protocols)]
  baselines += [(f'random_{vit}', _vit_config(base, vit), FLAGS.protocols) for vit in FLAGS.vits]
  for name, config, protocols in baselines:
    if wanted(name):
      results[name] = _cached(name) or _baseline(name, config, protocols)
  return results


def table(results):
  """A Markdown table: one row per encoder, its pretraining, and the top-1 of each protocol."""
  protocols = sorted(
      {k for r in results.values() for k, v in r['eval'].items() if isinstance(v, dict)},
      key=lambda k: (FLAGS.protocols.index(k.split('_')[0]), k),
  )
  lines = [
      '| encoder | batch | steps | epochs | pretraining CPU | ' + ' | '.join(protocols) + ' |',
      '|---' * (5 + len(protocols)) + '|',
  ]
  for name, r in results.items():
    cells = [f'{100 * r["eval"][p]["top1"]:.2f}%' if p in r['eval'] else '-' for p in protocols]
    trained = 'steps' in r
    micro = r.get('microbatches', 1)
    batch = f'{r["batch_size"]} ({micro} x {r["batch_size"] // micro})' if micro > 1 else ''
    pretraining = [
        (batch or str(r['batch_size'])) if trained else '-',
        str(r['steps']) if trained else '-',
        f'{r["epochs"]:.2f}' if trained else '-',
        f'{r["pretrain_cpu_sec"] / 60:.1f} min' if trained else '-',
    ]
    lines.append(f'| {name} | ' + ' | '.join(pretraining + cells) + ' |')
  return '\n'.join(lines)


def figure(results, path):
  """Left: top-1 of every encoder by protocol, with the study's figures; right: the batch
  sweep."""
  fig, (ax, sweep) = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={'width_ratios': [2, 1]})
  names = list(results)
  for j, protocol in enumerate(FLAGS.protocols):
    values = [100 * results[n]['eval'].get(protocol, {}).get('top1', 0) for n in names]
    offset = 0.8 / len(FLAGS.protocols) * (j - (len(FLAGS.protocols) - 1) / 2)
    ax.bar(
        [i + offset for i in range(len(names))], values, 0.8 / len(FLAGS.protocols), label=protocol
    )
  for label, value in STUDY.items():
    ax.axhline(value, ls='--', lw=0.8, color='gray')
    ax.text(len(names) - 0.5, value, f'study, MLP: {label}', fontsize=7, va='bottom', ha='right')
  ax.set_xticks(range(len(names)), names, rotation=30, ha='right', fontsize=8)
  ax.set_ylabel('test top-1 (%)')
  ax.legend(fontsize=8)
  sweep_arms = sorted(
      (r['batch_size'], r)
      for n, r in results.items()
      if n.startswith('resnet18_simclr_b') and r.get('microbatches', 1) == 1
  )
  micro_arms = [r for r in results.values() if r.get('microbatches', 1) > 1]
  for protocol in FLAGS.protocols:
    sweep.plot(
        [b for b, _ in sweep_arms],
        [100 * r['eval'][protocol]['top1'] for _, r in sweep_arms],
        marker='o',
        label=protocol,
    )
  for r in micro_arms:
    tops = [100 * r['eval'][protocol]['top1'] for protocol in FLAGS.protocols]
    sweep.plot([r['batch_size']] * len(tops), tops, 'kx')
    sweep.annotate(f'{r["microbatches"]} micro-batches', (r['batch_size'], tops[-1]), fontsize=7)
  sweep.set_xscale('log', base=2)
  sweep.set_xlabel(f'batch ({FLAGS.epochs:g} epochs of images each)')
  sweep.set_ylabel('test top-1 (%)')
  sweep.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main(argv):
  del argv
  if FLAGS.config.huge_page_malloc:  # As the command-line program does.
    huge_pages.reexec_with_huge_pages()
  os.makedirs(FLAGS.workdir, exist_ok=True)
  results = run_study()
  summary = {'machine': budget_runs.machine(), 'epochs': FLAGS.epochs, 'arms': results}
  with open(os.path.join(FLAGS.workdir, 'study_results.json'), 'w') as f:
    json.dump(summary, f, indent=2)
  markdown = table(results)
  with open(os.path.join(FLAGS.workdir, 'study_table.md'), 'w') as f:
    f.write(markdown + '\n')
  figure(results, os.path.join(FLAGS.workdir, 'study_figure.png'))
  logging.info('Study written to %s.', FLAGS.workdir)
  print(f'{FLAGS.epochs:g} epochs per arm on {summary["machine"]}.\n\n{markdown}')


if __name__ == '__main__':
  app.run(main)
