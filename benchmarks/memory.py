r"""Peak device memory of the train step per batch size, with and without the memory options.

  python benchmarks/memory.py --config=configs/cifar10.py --batch_sizes=256,1024,4096
  python benchmarks/memory.py --config=configs/imagenet.py --batch_sizes=256,1024,4096

For each option set (float32; remat; bfloat16; chunked NT-Xent; all three; the gradient cache in
4 or 16 micro-batches) and batch size, the
train step is compiled for one device of this machine from abstract shapes (nothing is
allocated or run) and XLA's compiled memory analysis gives the peak: arguments + outputs -
donated aliases + temporaries. A quadratic in the batch size fitted to the three largest
batches then predicts the largest batch that fits in --budget_gb; the prediction is compiled,
measured and refitted (a few rounds), and the largest measured batch within budget reported.
Prints one JSON object; BENCHMARKS.md records the results with the machine.

XLA's buffer assignment differs between backends (fusion, bfloat16 support), so figures from
the CPU backend approximate a GPU's; run this on the GPU to measure it there.
"""

import functools
import json
import os
import platform
import sys
import time

from absl import app
from absl import flags
import jax
from ml_collections import config_flags
import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
from simclr_jax import models
from simclr_jax.core import optim
from simclr_jax.core import train_state
from simclr_jax.methods import simclr
from simclr_jax.core.sharding import create_mesh

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    'config',
    os.path.join(REPO_ROOT, 'configs', 'cifar10.py'),
    'Config file; override values with --config.KEY=VALUE.',
)
flags.DEFINE_list('batch_sizes', ['256', '1024', '4096'], 'Global batch sizes to compile.')
flags.DEFINE_list(
    'options',
    ['float32', 'remat', 'bfloat16', 'chunked', 'all', 'micro4', 'micro16'],
    'Option sets to measure (see OPTIONS).',
)
flags.DEFINE_integer('chunk_size', 256, 'contrastive_chunk_size of the chunked option sets.')
flags.DEFINE_float('budget_gb', 80.0, 'Device memory budget for the largest-batch estimate.')
flags.DEFINE_integer('batch_multiple', 256, 'The largest batch is rounded down to a multiple.')

# Config overrides of each option set.
OPTIONS = {
    'float32': {},
    'remat': {'remat': True},
    'bfloat16': {'dtype': 'bfloat16'},
    'chunked': {'contrastive_chunk_size': None},  # None: --chunk_size.
    'all': {'remat': True, 'dtype': 'bfloat16', 'contrastive_chunk_size': None},
    # The gradient cache: the model sees batch / M images at a time.
    'micro4': {'microbatches': 4},
    'micro16': {'microbatches': 16},
}


def peak_bytes(config, batch_size: int) -> int:
  """Peak memory of the train step compiled for one device at `batch_size`."""
  config = config.copy_and_resolve_references()
  config.batch_size = batch_size
  mesh = create_mesh(jax.devices()[:1])
  model = models.create_model(
      config.model,
      image_size=config.image_size,
      num_classes=1000,
      dtype=models.DTYPES[config.dtype],
      remat=config.remat,
  )
  schedule = optim.learning_rate_schedule(config, 1_281_167, 1000)
  tx = simclr.create_optimizer(config, schedule)
  init = functools.partial(
      train_state.init_train_state, model, tx, jax.random.PRNGKey(0), config.image_size
  )
  state = jax.eval_shape(init)
  size = config.image_size
  batch = {
      'views': jax.ShapeDtypeStruct((batch_size, 2, size, size, 3), np.float32),
      'label': jax.ShapeDtypeStruct((batch_size,), np.int32),
  }
  step_fn = simclr.make_train_step(
      model,
      tx,
      schedule,
      config.temperature,
      mesh,
      config.contrastive_chunk_size,
      microbatches=config.microbatches,
  )
  memory = step_fn.lower(state, batch).compile().memory_analysis()
  return (
      memory.argument_size_in_bytes
      + memory.output_size_in_bytes
      - memory.alias_size_in_bytes
      + memory.temp_size_in_bytes
  )


def fitted_largest_batch(batch_sizes, peaks, budget: float, multiple: int) -> int:
  """Largest multiple of `multiple` whose quadratic fit of peak(batch) is within `budget`."""
  order = np.argsort(batch_sizes)[-3:]  # The largest batches weigh the quadratic loss term.
  coefficients = np.polyfit(
      np.asarray(batch_sizes, float)[order],
      np.asarray(peaks, float)[order],
      deg=min(2, len(order) - 1),
  )
  coefficients[-1] -= budget
  real = [r.real for r in np.roots(coefficients) if abs(r.imag) < 1e-9 and r.real > 0]
  return int(min(real) // multiple * multiple) if real else 0


def largest_batch(config, batch_sizes, peaks, budget: float, multiple: int, rounds: int = 3):
  """(batch, peak) of the largest measured batch within `budget`, refining the fit by compiling.

  Each round compiles the fit's prediction and refits with it, so the answer is a measured
  batch, not an extrapolation.
  """
  measured = dict(zip(batch_sizes, peaks))
  for _ in range(rounds):
    guess = fitted_largest_batch(list(measured), list(measured.values()), budget, multiple)
    if guess <= 0 or guess in measured:
      break
    measured[guess] = peak_bytes(config, guess)
  fitting = [b for b, p in measured.items() if p <= budget]
  best = max(fitting, default=0)
  return best, measured.get(best, 0)


def main(argv):
  del argv
  base = FLAGS.config
  batch_sizes = sorted(int(b) for b in FLAGS.batch_sizes)
  budget = FLAGS.budget_gb * 1e9
  results = {
      'machine': f'{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs',
      'backend': f'{jax.devices()[0].platform} ({jax.devices()[0].device_kind})',
      'model': base.model.name,
      'width_multiplier': base.model.width_multiplier,
      'image_size': base.image_size,
      'chunk_size': FLAGS.chunk_size,
      'budget_gb': FLAGS.budget_gb,
      'options': {},
  }
  for name in FLAGS.options:
    config = base.copy_and_resolve_references()
    for key, value in OPTIONS[name].items():
      config[key] = FLAGS.chunk_size if value is None else value
    start = time.perf_counter()
    peaks = [peak_bytes(config, b) for b in batch_sizes]
    best, best_peak = largest_batch(config, batch_sizes, peaks, budget, FLAGS.batch_multiple)
    entry = {
        'peak_gb': {str(b): round(p / 1e9, 3) for b, p in zip(batch_sizes, peaks)},
        'largest_batch_in_budget': best,
        'peak_gb_at_largest': round(best_peak / 1e9, 3),
    }
    entry['compile_sec'] = round(time.perf_counter() - start, 1)
    results['options'][name] = entry
    print(name, json.dumps(entry), file=sys.stderr, flush=True)
  print(json.dumps(results, indent=2))


if __name__ == '__main__':
  app.run(main)
