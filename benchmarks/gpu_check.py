r"""What only a GPU can show, in one results file: the driver of benchmarks/gpu_check.sh.

  python benchmarks/gpu_check.py --out=gpu_check.json [--dataset=../shared/data/cifar10-jpeg] \
      [--budget_sec=470] [--dry_run]

Runs each part in a subprocess of its own with a time limit (the smaller of the part's cap and
what is left of --budget_sec), carries on when one fails or times out, and rewrites --out after
every part, so an interrupted session still leaves what it measured:
- device: nvidia-smi, and the backend and devices JAX finds;
- throughput_*: benchmarks/throughput.py for ResNet-18 on CIFAR (batch 512) and ResNet-50 at
  224 (batch 128), float32 and bfloat16;
- pretrain: 3 epochs of configs/cifar10.py (batch 512) on the --dataset image folder, with the
  wall time of each epoch (the first step, which compiles, excluded) and the final metrics;
- linear_eval: the L-BFGS linear evaluation of that run (top-1);
- memory: benchmarks/memory.py, peak memory of the train step at batch 512 per option.
With --dry_run the same parts run on the CPU at tiny sizes (1/8 width, batch 16, a few steps,
float32 ResNet-18 throughput only, XLA's unoptimised code; --dataset a small image folder),
which tests/test_gpu_check.py does.

The driver itself never imports JAX: on a GPU it would hold memory the parts need.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FLAGS = flags.FLAGS
flags.DEFINE_string('out', 'gpu_check.json', 'Results file (JSON).')
flags.DEFINE_string(
    'dataset',
    os.path.join(REPO_ROOT, '..', 'shared', 'data', 'cifar10-jpeg'),
    'CIFAR-10 image folder (<split>/<class>/<image>) to pretrain and evaluate on.',
)
flags.DEFINE_float('budget_sec', 470.0, 'Wall-clock seconds for all the parts together.')
flags.DEFINE_bool('dry_run', False, 'The same parts on the CPU at tiny sizes.')
flags.DEFINE_string(
    'workdir',
    '',
    'Where the pretraining runs go (default: a temporary folder, ' 'removed at the end).',
)
flags.DEFINE_string('install', 'not requested', 'What gpu_check.sh did to install JAX for CUDA.')

# Seconds a part may take at most on the GPU (the budget may leave it less): estimates for an
# H100/H200-class GPU with room to spare, not yet measured; in the order the parts run, most
# telling first. memory runs last as it keeps the options it finished when it is cut short.
GPU_CAPS = {
    'device': 60,
    'throughput_resnet18_cifar_float32': 75,
    'throughput_resnet18_cifar_bfloat16': 75,
    'pretrain': 150,
    'linear_eval': 90,
    'throughput_resnet50_224_float32': 120,
    'throughput_resnet50_224_bfloat16': 110,
    'throughput_vit_s4_cifar_bfloat16': 90,
    'throughput_vit_b16_224_bfloat16': 90,
    'throughput_resnet50_224_b4096_m16_bfloat16': 100,
    'memory': 150,
}
DRY_RUN_CAP = 300
# A part with less time left than this is skipped rather than started to be killed.
MIN_PART_SEC = 15
# After its time limit a part gets SIGTERM, on which pretraining saves a checkpoint (so the
# linear evaluation still has one), then SIGKILL after this many seconds.
GRACE_SEC = 20
EPOCHS = 3

# All of the dry run's programs: 1/8 width, batch 16, and XLA's convolutions, which 'auto'
# gives a GPU (and which compile several times faster on the CPU than its patch matmuls).
DRY_MODEL = ['--config.model.width_multiplier=0.125', '--config.model.conv_impl=xla']

DEVICE_SCRIPT = """
import json, jax, jaxlib
from simclr_jax import models
from simclr_jax.models import resnet
devices = jax.devices()
stats = devices[0].memory_stats() or {}
print(json.dumps({
    'backend': jax.default_backend(), 'device_count': len(devices),
    'devices': [d.device_kind for d in devices], 'jax': jax.__version__,
    'jaxlib': jaxlib.__version__, 'conv_impl_auto': resnet.conv_impl_for('auto'),
    'memory_gb': round(stats.get('bytes_limit', 0) / 1e9, 2)}))
"""


def last_json(text: str) -> dict:
  """The JSON object that ends `text` (printed last by a benchmark, maybe over many lines)."""
  lines = text.rstrip().splitlines()
  for start in range(len(lines) - 1, -1, -1):
    if lines[start].startswith('{'):
      try:
        return json.loads('\n'.join(lines[start:]))
      except json.JSONDecodeError:
        continue
  raise ValueError('no JSON object at the end of the output')


def count_images(folder: str) -> int:
  return sum(len(files) for _, _, files in os.walk(folder))


class Part:
  """A subprocess (`argv`) and how to read its result; subclasses override `result`."""

  def __init__(self, name, argv):
    self.name, self.argv = name, argv

  def result(self, stdout, stderr, ok):
    del stderr
    if not ok:
      return {}
    return last_json(stdout)


class DevicePart(Part):

  def result(self, stdout, stderr, ok):
    smi = shutil.which('nvidia-smi')
    nvidia = 'nvidia-smi not found'
    if smi:
      try:
        nvidia = subprocess.run(
            [smi, '--query-gpu=name,memory.total,driver_version', '--format=csv,noheader'],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stdout.strip()
      except subprocess.TimeoutExpired:
        nvidia = 'nvidia-smi timed out'
    return {'nvidia_smi': nvidia, **super().result(stdout, stderr, ok)}


class MemoryPart(Part):

  def result(self, stdout, stderr, ok):
    if ok:
      return last_json(stdout)
    # memory.py logs each option as it finishes ('name {json}' on stderr): keep those.
    options = {}
    for line in stderr.splitlines():
      name, _, entry = line.partition(' ')
      if entry.startswith('{"peak_gb"'):
        options[name] = json.loads(entry)
    return {'options': options} if options else {}


class PretrainPart(Part):
  """Pretraining logged once per epoch; its metrics.jsonl survives a timeout."""

  def __init__(self, name, argv, workdir, steps_per_epoch):
    super().__init__(name, argv)
    self.workdir, self.steps_per_epoch = workdir, steps_per_epoch

  def result(self, stdout, stderr, ok):
    del stdout, stderr, ok
    path = os.path.join(self.workdir, 'metrics.jsonl')
    if not os.path.exists(path):
      return {}
    with open(path) as f:
      records = [json.loads(line) for line in f if line.strip()]
    # The loop times from the end of step 1 (compilation) and restarts at each write.
    epochs, previous = [], 1
    for record in records:
      if 'steps_per_sec' in record:
        steps = record['step'] - previous
        epochs.append(
            {
                'epoch': len(epochs) + 1,
                'end_step': record['step'],
                'steps': steps,
                'sec': round(steps / record['steps_per_sec'], 2),
                'images_per_sec': round(record['images_per_sec'], 1),
            }
        )
        previous = record['step']
    # Steps past the last whole epoch (num_examples * epochs // batch + 1) form a short window.
    tail = epochs[EPOCHS:]
    return {
        'steps_per_epoch': self.steps_per_epoch,
        'epochs': epochs[:EPOCHS],
        'tail_steps': sum(e['steps'] for e in tail),
        'final_metrics': records[-1] if records else {},
    }


class LinearEvalPart(Part):

  def __init__(self, name, argv, workdir):
    super().__init__(name, argv)
    self.workdir = workdir

  def result(self, stdout, stderr, ok):
    del stdout, stderr
    path = os.path.join(self.workdir, 'eval_results.json')
    if not ok or not os.path.exists(path):
      return {}
    with open(path) as f:
      return json.load(f)


def parts(dry_run: bool, dataset: str, workdir: str) -> list[Part]:
  """The parts in the order they run, sized for a GPU or, with dry_run, for a CPU test."""
  python = sys.executable
  batch = 16 if dry_run else 512

  # absl applies --config.* overrides to the --config file named before them.
  def throughput(config, gpu_sizes, dtype, gpu_steps=('--steps=20', '--warmup_steps=3')):
    sizes = (
        DRY_MODEL
        + ['--config.batch_size=16', '--steps=1', '--warmup_steps=0', '--peak_matmul_size=256']
        if dry_run
        else gpu_sizes + list(gpu_steps)
    )
    return [
        python,
        'benchmarks/throughput.py',
        f'--config={config}',
        '--num_devices=1',
        f'--config.dtype={dtype}',
    ] + sizes

  steps_per_epoch = count_images(os.path.join(dataset, 'train')) // batch
  pretrain_dir = os.path.join(workdir, 'pretrain')
  eval_dir = os.path.join(workdir, 'linear_eval')
  main = [
      python,
      '-m',
      'simclr_jax.main',
      '--config=configs/cifar10.py',
      f'--config.dataset={dataset}',
      f'--config.batch_size={batch}',
  ]
  eval_sizes = []
  if dry_run:
    main += DRY_MODEL + ['--config.shuffle_buffer_size=256']
    eval_sizes = ['--config.eval.batch_size=64', '--config.eval.max_iterations=50']
  memory = [python, 'benchmarks/memory.py', '--config=configs/cifar10.py']
  # The dry run compiles two option sets of the four: each costs the test suite seconds.
  memory += (
      DRY_MODEL
      + ['--options=float32,chunked', '--batch_sizes=16', '--chunk_size=8', '--batch_multiple=16']
      if dry_run
      else ['--options=float32,bfloat16,remat,chunked', '--batch_sizes=512', '--chunk_size=128']
  )
  # The dry run times float32 only: bfloat16 differs by one flag, and every compile costs
  # the test suite seconds (bfloat16 compute is tested in tests/test_models.py).
  dtypes = ('float32',) if dry_run else ('float32', 'bfloat16')
  return [
      DevicePart('device', [python, '-c', DEVICE_SCRIPT]),
      *(
          Part(
              f'throughput_resnet18_cifar_{dtype}',
              throughput('configs/cifar10.py', ['--config.batch_size=512'], dtype),
          )
          for dtype in dtypes
      ),
      PretrainPart(
          'pretrain',
          main
          + [
              f'--workdir={pretrain_dir}',
              f'--config.num_epochs={EPOCHS}',
              f'--config.log_every_steps={max(steps_per_epoch, 1)}',
              '--config.eval_every_steps=0',
          ],
          pretrain_dir,
          steps_per_epoch,
      ),
      LinearEvalPart(
          'linear_eval',
          main
          + eval_sizes
          + [
              f'--workdir={eval_dir}',
              '--config.mode=evaluate',
              f'--config.pretrained_workdir={pretrain_dir}',
          ],
          eval_dir,
      ),
      # Not in the dry run: the same script as the ResNet-18 part with another config file,
      # and a compile that costs the test suite 15 s.
      *(
          Part(
              f'throughput_resnet50_224_{dtype}',
              throughput('configs/imagenet.py', ['--config.batch_size=128'], dtype),
          )
          for dtype in dtypes
          if not dry_run
      ),
      # The ViTs (issue 17), GPU only for the same reason, in bfloat16 as they are trained.
      *(
          Part(name, throughput(config, [f'--config.batch_size={gpu_batch}'], 'bfloat16'))
          for name, config, gpu_batch in (
              ('throughput_vit_s4_cifar_bfloat16', 'configs/cifar10_vit.py', 512),
              ('throughput_vit_b16_224_bfloat16', 'configs/imagenet_vit.py', 128),
          )
          if not dry_run
      ),
      # The gradient cache (issue 20): batch 4096 at 224x224 in 16 micro-batches of 256.
      *(
          []
          if dry_run
          else [
              Part(
                  'throughput_resnet50_224_b4096_m16_bfloat16',
                  throughput(
                      'configs/imagenet.py',
                      ['--config.batch_size=4096', '--config.microbatches=16'],
                      'bfloat16',
                      gpu_steps=('--steps=5', '--warmup_steps=1'),
                  ),
              )
          ]
      ),
      MemoryPart('memory', memory),
  ]


def run(argv, timeout, env):
  """(status, stdout, stderr) of `argv` run from the repository root within `timeout` s."""
  # A session of its own: on timeout the signal reaches the part's whole process group.
  process = subprocess.Popen(
      argv,
      cwd=REPO_ROOT,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
      start_new_session=True,
  )
  try:
    stdout, stderr = process.communicate(timeout=timeout)
    return (
        'ok' if process.returncode == 0 else f'failed (exit {process.returncode})',
        stdout,
        stderr,
    )
  except subprocess.TimeoutExpired:
    os.killpg(process.pid, signal.SIGTERM)
    try:
      stdout, stderr = process.communicate(timeout=GRACE_SEC)
    except subprocess.TimeoutExpired:
      os.killpg(process.pid, signal.SIGKILL)
      stdout, stderr = process.communicate()
    return f'timeout ({timeout:.0f} s)', stdout, stderr


def write_results(results: dict, path: str):
  """Writes `results` aside, then renames it: the file is always whole."""
  with open(path + '.tmp', 'w') as f:
    json.dump(results, f, indent=2)
  os.replace(path + '.tmp', path)


def main(argv):
  del argv
  start = time.perf_counter()
  out = os.path.abspath(FLAGS.out)
  dataset = os.path.abspath(FLAGS.dataset)
  workdir = FLAGS.workdir or tempfile.mkdtemp(prefix='gpu_check_')
  env = dict(os.environ)
  if FLAGS.dry_run:
    # The dry run checks the plumbing: XLA's unoptimised CPU code compiles ~40% faster.
    env['XLA_FLAGS'] = f'{env.get("XLA_FLAGS", "")} --xla_backend_optimization_level=0'.strip()
  results = {
      'mode': 'dry_run' if FLAGS.dry_run else 'gpu',
      'dataset': dataset,
      'budget_sec': FLAGS.budget_sec,
      'install': FLAGS.install,
      'parts': {},
  }
  try:
    for part in parts(FLAGS.dry_run, dataset, workdir):
      cap = DRY_RUN_CAP if FLAGS.dry_run else GPU_CAPS[part.name]
      timeout = min(cap, FLAGS.budget_sec - (time.perf_counter() - start) - GRACE_SEC)
      entry = {
          'command': ' '.join(part.argv) if part.name != 'device' else 'python -c ...',
          'timeout_sec': max(0, round(timeout)),
      }
      if timeout < MIN_PART_SEC:
        entry.update(status='skipped (budget spent)', result={})
      else:
        print(f'[gpu_check] {part.name} (at most {timeout:.0f} s)', flush=True)
        part_start = time.perf_counter()
        status, stdout, stderr = run(part.argv, timeout, env)
        entry.update(status=status, sec=round(time.perf_counter() - part_start, 1))
        try:
          entry['result'] = part.result(stdout, stderr, status == 'ok')
        except (ValueError, KeyError, OSError) as e:
          entry['result'], entry['parse_error'] = {}, repr(e)
        if status != 'ok':
          entry['stderr_tail'] = stderr[-3000:]
      print(f'[gpu_check] {part.name}: {entry["status"]} after {entry.get("sec", 0)} s', flush=True)
      if part.name == 'device':
        print(f'[gpu_check] {json.dumps(entry["result"])}', flush=True)
        backend = entry['result'].get('backend')
        if not FLAGS.dry_run and backend != 'gpu':
          results['warning'] = (
              f'JAX found no GPU (backend {backend}): the parts run on it at '
              'GPU sizes and time out; install jax[cuda12] (--install).'
          )
          print(f'[gpu_check] {results["warning"]}', flush=True)
      results['parts'][part.name] = entry
      results['total_sec'] = round(time.perf_counter() - start, 1)
      write_results(results, out)
  finally:
    if not FLAGS.workdir:
      shutil.rmtree(workdir, ignore_errors=True)
  print(f'[gpu_check] results in {out} after {results["total_sec"]} s', flush=True)


if __name__ == '__main__':
  app.run(main)
