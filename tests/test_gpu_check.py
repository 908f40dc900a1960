"""benchmarks/gpu_check.sh: its dry run fills one results file with every part's numbers."""

import importlib.util
import json
import os
import subprocess
import sys

from conftest import REPO_ROOT

_spec = importlib.util.spec_from_file_location(
    'gpu_check', REPO_ROOT / 'benchmarks' / 'gpu_check.py'
)
gpu_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_check)


def numbers(tree) -> list:
  """The numbers (not booleans) anywhere in a JSON tree."""
  if isinstance(tree, dict):
    return [n for value in tree.values() for n in numbers(value)]
  if isinstance(tree, list):
    return [n for value in tree for n in numbers(value)]
  return [tree] if isinstance(tree, (int, float)) and not isinstance(tree, bool) else []


def test_gpu_parts_have_caps_and_gpu_sizes(tmp_path):
  parts = gpu_check.parts(False, str(tmp_path), str(tmp_path))
  assert [p.name for p in parts] == list(gpu_check.GPU_CAPS)
  commands = {p.name: ' '.join(p.argv) for p in parts}
  assert '--config.batch_size=512' in commands['throughput_resnet18_cifar_bfloat16']
  assert '--config.dtype=bfloat16' in commands['throughput_resnet50_224_bfloat16']
  assert 'configs/imagenet.py' in commands['throughput_resnet50_224_float32']
  assert 'configs/cifar10_vit.py' in commands['throughput_vit_s4_cifar_bfloat16']
  assert 'configs/imagenet_vit.py' in commands['throughput_vit_b16_224_bfloat16']
  assert 'width_multiplier' not in ''.join(commands.values())
  assert '--options=float32,bfloat16,remat,chunked' in commands['memory']
  assert '--config.microbatches=16' in commands['throughput_resnet50_224_b4096_m16_bfloat16']


def test_timeout_stops_the_part_and_reports_it():
  status, _, _ = gpu_check.run(
      [sys.executable, '-c', 'import time; time.sleep(60)'], 1, dict(os.environ)
  )
  assert status == 'timeout (1 s)'


def test_dry_run_writes_every_part(cifar10_small_subset, tmp_path):
  out = tmp_path / 'results.json'
  env = {**os.environ, 'DRY_RUN': '1', 'PYTHON': sys.executable, 'BUDGET_SEC': '1200'}
  # From another folder: the script finds the repository and resolves the paths given. 100
  # training images: 6 steps an epoch at the dry run's batch of 16, one held out per class.
  subprocess.run(
      [
          'bash',
          str(REPO_ROOT / 'benchmarks' / 'gpu_check.sh'),
          'results.json',
          str(cifar10_small_subset),
      ],
      cwd=tmp_path,
      env=env,
      check=True,
      timeout=1200,
  )
  results = json.loads(out.read_text())
  assert results['mode'] == 'dry_run'
  # Every part, less the bfloat16 throughputs (the same script with another --config.dtype)
  # and the ResNet-50 ones (the same script with another config file).
  assert list(results['parts']) == [
      name
      for name in gpu_check.GPU_CAPS
      if not name.endswith('_bfloat16') and 'resnet50' not in name
  ]
  for name, part in results['parts'].items():
    assert part['status'] == 'ok', (name, part.get('stderr_tail'))
    assert numbers(part['result']), name
  parts = results['parts']
  assert parts['device']['result']['device_count'] >= 1
  for name in results['parts']:
    if name.startswith('throughput_'):
      assert parts[name]['result']['images_per_sec'] > 0, name
  pretrain = parts['pretrain']['result']
  assert [e['epoch'] for e in pretrain['epochs']] == [1, 2, 3]
  assert all(e['sec'] > 0 for e in pretrain['epochs'])
  assert pretrain['final_metrics']['contrastive_loss'] > 0
  assert 0 <= parts['linear_eval']['result']['top1'] <= 1
  peaks = {
      name: option['peak_gb']['16'] for name, option in parts['memory']['result']['options'].items()
  }
  assert list(peaks) == ['float32', 'chunked']
  assert all(peak > 0 for peak in peaks.values())
