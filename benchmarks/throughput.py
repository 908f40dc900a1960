r"""Train-step throughput, FLOPs, MFU and input-pipeline speed for a config.

  python benchmarks/throughput.py --config=configs/cifar10.py \
      --config.model.width_multiplier=0.25 --config.batch_size=128 [--num_devices=1] \
      [--dataset=../shared/data/cifar10-jpeg] [--steps=10] [--torch [--torch_threads=1]] \
      [--device_augment]

Reports, for the config's model and global batch on the first `num_devices` devices:
- compile time of the jitted train step;
- images/s: the median over `steps` timed steps after `warmup_steps`, on a device-resident
  synthetic batch (the step alone, no input pipeline);
- FLOPs per step from XLA's cost analysis of the step (with XLA's convolutions, see
  time_train_step), the achieved FLOP/s, and MFU against the float32 matmul peak measured on
  the same device in the same run;
- the input pipeline's images/s alone (decode + two augmented views), when --dataset is given;
- with --device_augment, the images/s of augment_jax.pretrain_views alone (two views of each
  uint8 image_size x image_size image, jitted, the config's batch split over the devices), and
  with --dataset the input pipeline's images/s when it only decodes (config.augment_on_device);
- with --torch, the same model, loss and optimiser step in PyTorch on CPU at the same batch,
  and the ratio of the two throughputs.
Prints one JSON object; BENCHMARKS.md records the results with the machine.
"""

import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
from simclr_jax import augment_jax
from simclr_jax.core import huge_pages
from simclr_jax import models
from simclr_jax.models import resnet
from simclr_jax.core import optim
from simclr_jax.core import train_state
from simclr_jax.methods import simclr
from simclr_jax.core.sharding import batch_sharded, create_mesh, replicated, run_once

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    'config',
    os.path.join(REPO_ROOT, 'configs', 'cifar10.py'),
    'Config file; override values with --config.KEY=VALUE.',
)
flags.DEFINE_integer('num_devices', 0, 'Devices to use (0: all).')
flags.DEFINE_integer('steps', 10, 'Timed train steps.')
flags.DEFINE_integer('warmup_steps', 2, 'Untimed steps after compilation.')
flags.DEFINE_string('dataset', '', 'If set, also time the input pipeline on this dataset.')
flags.DEFINE_integer('pipeline_batches', 20, 'Timed input-pipeline batches.')
flags.DEFINE_bool('torch', False, 'Also time the same step in PyTorch on CPU.')
flags.DEFINE_integer(
    'torch_threads',
    0,
    'PyTorch intra-op threads (0: its default, the '
    'physical cores; 1 for a one-core comparison under taskset).',
)
flags.DEFINE_integer(
    'peak_matmul_size',
    2048,
    'Side of the float32 matmul that measures the peak ' '(smaller: quicker and lower).',
)
flags.DEFINE_bool(
    'device_augment',
    False,
    'Also time the on-device augmentation '
    '(config.augment_on_device) and the decode-only input pipeline.',
)


def matmul_peak_flops(device, size=2048, repeats=10) -> float:
  """Float32 FLOP/s of a size x size matmul on `device` (best of `repeats`)."""
  a = jax.device_put(jnp.ones((size, size), jnp.float32), device)
  f = jax.jit(lambda a: a @ a)
  f(a).block_until_ready()
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * size**3 / best


def _train_step(config, mesh, schedule, tx):
  """(model, jitted train step) for `config`."""
  model = models.create_model(
      config.model,
      image_size=config.image_size,
      num_classes=10,
      dtype=models.DTYPES[config.dtype],
      remat=config.remat,
  )
  return model, simclr.make_train_step(
      model,
      tx,
      schedule,
      config.temperature,
      mesh,
      config.contrastive_chunk_size,
      weight_decay=config.weight_decay,
      microbatches=config.microbatches,
  )


def time_train_step(config, devices):
  """Compile time, median step seconds and FLOPs of the train step on `devices`.

  FLOPs are XLA's cost analysis of the plain step written with XLA's convolutions, whatever
  model.conv_impl and microbatches say: XLA counts a loop body once, so the count of the
  matmul convolutions' chunk loops, or of the micro-batch loops, would be too low (as is that
  of the loss's chunk loop when contrastive_chunk_size is set, a small part of the step). With
  microbatches > 1, the FLOPs and MFU are then those of the useful work: the gradient cache's
  second forward pass is not counted.
  """
  mesh = create_mesh(devices)
  size, batch = config.image_size, config.batch_size
  total = FLAGS.warmup_steps + FLAGS.steps + 1
  config.num_train_steps = total
  schedule = optim.learning_rate_schedule(config, 50_000, total)
  tx = simclr.create_optimizer(config, schedule)
  model, step_fn = _train_step(config, mesh, schedule, tx)
  init = functools.partial(train_state.init_train_state, model, tx, jax.random.PRNGKey(0), size)
  state = run_once(init, out_shardings=replicated(mesh))
  rng = np.random.default_rng(0)
  batch_data = jax.device_put(
      {
          'views': rng.uniform(size=(batch, 2, size, size, 3)).astype(np.float32),
          'label': rng.integers(0, 10, size=batch).astype(np.int32),
      },
      batch_sharded(mesh),
  )
  xla_step_fn = step_fn
  if resnet.conv_impl_for(config.model.conv_impl) != 'xla' or config.microbatches > 1:
    xla_config = config.copy_and_resolve_references()
    xla_config.model.conv_impl, xla_config.microbatches = 'xla', 1
    _, xla_step_fn = _train_step(xla_config, mesh, schedule, tx)
  flops = xla_step_fn.lower(state, batch_data).cost_analysis()['flops']
  start = time.perf_counter()
  compiled = step_fn.lower(state, batch_data).compile()
  compile_sec = time.perf_counter() - start
  times = []
  for i in range(FLAGS.warmup_steps + FLAGS.steps):
    start = time.perf_counter()
    state, metrics = compiled(state, batch_data)
    jax.block_until_ready(metrics)
    if i >= FLAGS.warmup_steps:
      times.append(time.perf_counter() - start)
  return compile_sec, statistics.median(times), flops


def time_device_augment(config, devices):
  """Compile seconds and images/s of augment_jax.pretrain_views alone on `devices`."""
  sharding = batch_sharded(create_mesh(devices))
  size, batch = config.image_size, config.batch_size
  rng = np.random.default_rng(0)
  images = jax.device_put(rng.integers(0, 256, (batch, size, size, 3), np.uint8), sharding)
  seeds = jax.device_put(rng.integers(0, 2**32, (batch, 2), np.uint32), sharding)
  views = jax.jit(
      functools.partial(augment_jax.pretrain_views, config_augment=config.augment, size=size),
      in_shardings=sharding,
      out_shardings=sharding,
  )
  start = time.perf_counter()
  compiled = views.lower(images, seeds).compile()
  compile_sec = time.perf_counter() - start
  times = []
  for i in range(FLAGS.warmup_steps + FLAGS.steps):
    start = time.perf_counter()
    compiled(images, seeds).block_until_ready()
    if i >= FLAGS.warmup_steps:
      times.append(time.perf_counter() - start)
  return compile_sec, batch / statistics.median(times)


def time_input_pipeline(config, augment_on_device=False):
  """Images/s of the pretraining tf.data pipeline alone on this host."""
  # Here only: TensorFlow takes ~6 s to import, which step timings need not pay.
  from simclr_jax import input_pipeline  # pylint: disable=g-import-not-at-top

  config = config.copy_and_resolve_references()
  config.dataset = FLAGS.dataset
  config.augment_on_device = augment_on_device
  dataset = input_pipeline.create_pretrain_dataset(
      config, local_batch_size=config.batch_size // jax.process_count()
  )
  iterator = dataset.as_numpy_iterator()
  for _ in range(3):  # Warm-up: file listing, graph building, first fills.
    next(iterator)
  start = time.perf_counter()
  for _ in range(FLAGS.pipeline_batches):
    next(iterator)
  return FLAGS.pipeline_batches * config.batch_size / (time.perf_counter() - start)


def torch_images_per_second(config) -> float:
  """benchmarks/torch_reference.py in a fresh process (PyTorch and TensorFlow clash)."""
  out = subprocess.run(
      [
          sys.executable,
          os.path.join(REPO_ROOT, 'benchmarks', 'torch_reference.py'),
          config.to_json_best_effort(),
          str(FLAGS.steps),
          str(FLAGS.warmup_steps),
          str(FLAGS.torch_threads),
      ],
      check=True,
      capture_output=True,
      text=True,
  ).stdout
  return float(out.strip().splitlines()[-1])


def main(argv):
  del argv
  config = FLAGS.config
  if config.huge_page_malloc:  # As the command-line program does; before JAX starts its backend.
    huge_pages.reexec_with_huge_pages()
  devices = jax.devices()[: FLAGS.num_devices or None]
  peak = matmul_peak_flops(devices[0], FLAGS.peak_matmul_size) * len(devices)
  compile_sec, step_sec, flops = time_train_step(config, devices)
  images_per_sec = config.batch_size / step_sec
  results = {
      'machine': f'{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs',
      'device': f'{devices[0].device_kind} x{len(devices)}',
      'model': config.model.name,
      'width_multiplier': config.model.width_multiplier,
      'conv_impl': resnet.conv_impl_for(config.model.conv_impl),
      'dtype': config.dtype,
      'remat': config.remat,
      'microbatches': config.microbatches,
      'image_size': config.image_size,
      'batch_size': config.batch_size,
      'compile_sec': round(compile_sec, 2),
      'step_sec_median': step_sec,
      'images_per_sec': round(images_per_sec, 1),
      'step_gflops': round(flops / 1e9, 2),
      'achieved_gflops_per_sec': round(flops / step_sec / 1e9, 1),
      'matmul_peak_gflops_per_sec': round(peak / 1e9, 1),
      'mfu': round(flops / step_sec / peak, 4),
  }
  if FLAGS.dataset:
    results['input_pipeline_images_per_sec'] = round(time_input_pipeline(config), 1)
  if FLAGS.device_augment:
    augment_compile_sec, augment_images_per_sec = time_device_augment(config, devices)
    results['device_augment_compile_sec'] = round(augment_compile_sec, 2)
    results['device_augment_images_per_sec'] = round(augment_images_per_sec, 1)
    if FLAGS.dataset:
      results['input_pipeline_decode_only_images_per_sec'] = round(
          time_input_pipeline(config, augment_on_device=True), 1
      )
  if FLAGS.torch:
    torch_images_per_sec = torch_images_per_second(config)
    results['torch_images_per_sec'] = round(torch_images_per_sec, 1)
    results['jax_over_torch'] = round(images_per_sec / torch_images_per_sec, 2)
  print(json.dumps(results, indent=2))


if __name__ == '__main__':
  app.run(main)
