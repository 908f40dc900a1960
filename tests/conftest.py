"""Shared fixtures: the configs and the real CIFAR-10 folder."""

import fcntl
import importlib.util
import os
import pathlib
import shutil
import tempfile

import pytest

# torchvision (the `torchvision` extra, for tests/test_export_torch.py) crashes the interpreter
# when imported after TensorFlow (seen with torch 2.14.1, torchvision 0.29.1, TF 2.21): first.
if importlib.util.find_spec('torchvision') is not None:
  import torchvision  # noqa: F401

from simclr_jax.core import huge_pages

# One persistent compilation cache for the whole run, its subprocesses and both xdist workers
# (set here, before JAX loads and before the workers start): tests that compile the same
# computation (the tiny model's steps, feature extraction) compile it once.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(prefix='simclr_jax_test_cache_')
  _OWN_CACHE = os.environ['JAX_COMPILATION_CACHE_DIR']
else:
  _OWN_CACHE = None

# Tests compile far more than they run: XLA's CPU backend at -O0 compiles faster (alone,
# test_vit.py + test_train_step.py: 128 s -> 114 s) and runs these tiny models about as fast
# (the quality canary: 69 s -> 72 s); test_report.py's notebook run and gpu_check's dry run set
# it too. Subprocesses and both xdist workers inherit it. Every persistent-cache entry is kept,
# however quick its compile, so tests that compile the same computation share it.
if '--xla_backend_optimization_level' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = ' '.join(
      filter(None, [os.environ.get('XLA_FLAGS'), '--xla_backend_optimization_level=0'])
  )
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')

# Subprocesses and workers start with huge-page malloc, as the command-line program restarts
# itself to (simclr_jax/core/huge_pages.py): faster steps, and no restart per program run.
if huge_pages.supported():
  os.environ.setdefault('GLIBC_TUNABLES', huge_pages.TUNABLE)


def pytest_unconfigure(config):
  del config
  if _OWN_CACHE and 'PYTEST_XDIST_WORKER' not in os.environ:
    shutil.rmtree(_OWN_CACHE, ignore_errors=True)


from simclr_jax.config_files import load_config_file

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_config(name: str):
  """`get_config()` of configs/<name>.py."""
  return load_config_file(str(REPO_ROOT / 'configs' / f'{name}.py'))


@pytest.fixture
def cifar_config():
  return load_config('cifar10')


@pytest.fixture(scope='session')
def cifar10_dir() -> pathlib.Path:
  """The real CIFAR-10 JPEG folder ($SIMCLR_CIFAR10_DIR, default ../shared/data/cifar10-jpeg).

  Skips the test when the folder is absent, except under CI=true, where that is a failure.
  """
  path = pathlib.Path(
      os.environ.get('SIMCLR_CIFAR10_DIR', REPO_ROOT / '..' / 'shared' / 'data' / 'cifar10-jpeg')
  )
  path = path.expanduser().resolve()
  if not path.is_dir():
    message = (
        f'CIFAR-10 image folder {path} not found; set SIMCLR_CIFAR10_DIR to '
        'a folder laid out as <split>/<class>/<image>.'
    )
    if os.environ.get('CI') == 'true':
      pytest.fail(message)
    pytest.skip(message)
  return path


def tiny_config(dataset):
  """cifar10.py shrunk for CPU tests: 1/8 width, XLA convolutions, batch 32, 4 steps, small
  kNN monitor."""
  config = load_config('cifar10')
  config.dataset = str(dataset)
  config.model.width_multiplier = 0.125
  # At this size XLA's convolutions compile and run faster than the patch matmuls that 'auto'
  # picks on CPU (tests/test_conv.py holds those equal to XLA's).
  config.model.conv_impl = 'xla'
  config.batch_size = 32
  config.num_train_steps = 4
  config.log_every_steps = 2
  config.checkpoint_every_steps = 2
  config.shuffle_buffer_size = 256
  config.eval.batch_size = 64
  config.eval.max_examples = 100
  config.eval.knn_k = 20
  config.eval_every_steps = 4
  return config


def pretrain_in_this_process(argv):
  """What `python -m simclr_jax.main ARGV` does for a pretraining run, without a new
  interpreter's start-up (~10 s of imports and JAX set-up)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

  from simclr_jax import train  # pylint: disable=g-import-not-at-top
  from simclr_jax.core import run_config  # pylint: disable=g-import-not-at-top

  flag_values = flags.FlagValues()
  # The config file's --config.KEY overrides become flags when it is defined, from sys_argv.
  config_flags.DEFINE_config_file('config', flag_values=flag_values, sys_argv=['main', *argv])
  flags.DEFINE_string('workdir', None, '', flag_values=flag_values)
  flag_values(['main', *argv])
  # As main.run (importing simclr_jax.main would define its flags in absl's global FLAGS).
  config = run_config.with_absolute_paths(flag_values.config)
  train.train_and_evaluate(config, flag_values.workdir)


@pytest.fixture
def toy_encoder(monkeypatch):
  """tests/toy_encoder.py registered as an encoder family; returns its config.model.name."""
  import toy_encoder as family  # pylint: disable=g-import-not-at-top
  from simclr_jax.models import encoders  # pylint: disable=g-import-not-at-top

  monkeypatch.setattr(encoders, 'FAMILIES', encoders.FAMILIES + (family.__name__,))
  return family.NAME


def tiny_method_config(name):
  """configs/cifar10_<name>.py of a method on methods/siamese.py, its MLPs 32 wide and its
  outputs 16-dimensional."""
  config = load_config(f'cifar10_{name}')
  section = config[name]
  section.projector_hidden_dim = section.predictor_hidden_dim = 32
  section.output_dim = 16
  return config


def _built_once(tmp_path_factory, name, build):
  """The folder `name`, made by `build(folder)` once per test run, even across xdist workers.

  Without xdist it is a fresh temporary folder. With xdist, the first worker to get there builds
  it in the run's shared temporary folder under a file lock; the others wait and reuse it.
  """
  if 'PYTEST_XDIST_WORKER' not in os.environ:
    folder = tmp_path_factory.mktemp(name)
    build(folder)
    return folder
  folder = tmp_path_factory.getbasetemp().parent / name
  with open(f'{folder}.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    done = pathlib.Path(f'{folder}.done')
    if not done.exists():
      shutil.rmtree(folder, ignore_errors=True)  # Left by a worker that failed halfway.
      folder.mkdir()
      build(folder)
      done.touch()
  return folder


def _symlinked_subset(cifar10_dir, root, per_class):
  """root/<split>/<class>/ with the first per_class[split] images of each class, as links."""
  for split, count in per_class.items():
    for class_dir in sorted((cifar10_dir / split).iterdir()):
      target = root / split / class_dir.name
      target.mkdir(parents=True)
      for image in sorted(class_dir.iterdir())[:count]:
        (target / image.name).symlink_to(image)


@pytest.fixture(scope='session')
def cifar10_subset(cifar10_dir, tmp_path_factory):
  """Symlinked subset of real CIFAR-10: 26 train and 10 test images per class."""
  return _built_once(
      tmp_path_factory,
      'cifar10_subset',
      lambda root: _symlinked_subset(cifar10_dir, root, {'train': 26, 'test': 10}),
  )


@pytest.fixture(scope='session')
def cifar10_small_subset(cifar10_dir, tmp_path_factory):
  """Symlinked subset of real CIFAR-10: 10 train and 2 test images per class."""
  return _built_once(
      tmp_path_factory,
      'cifar10_small_subset',
      lambda root: _symlinked_subset(cifar10_dir, root, {'train': 10, 'test': 2}),
  )


@pytest.fixture(scope='session')
def cifar10_canary_subset(cifar10_dir, tmp_path_factory):
  """Symlinked subset of real CIFAR-10: 300 train and 100 test images per class."""
  return _built_once(
      tmp_path_factory,
      'cifar10_canary_subset',
      lambda root: _symlinked_subset(cifar10_dir, root, {'train': 300, 'test': 100}),
  )


@pytest.fixture(scope='session')
def pretrained_workdir(cifar10_subset, tmp_path_factory):
  """A workdir holding a tiny pretraining run (4 steps) on `cifar10_subset`; read-only."""
  from simclr_jax import train  # pylint: disable=g-import-not-at-top

  return _built_once(
      tmp_path_factory,
      'pretrained',
      lambda workdir: train.train_and_evaluate(tiny_config(cifar10_subset), str(workdir)),
  )


# Multi-process tests that take minutes of wall time; run first, so that with `-n 2` the
# other worker fills the time with the rest of the suite instead of waiting at the end.
_SLOW_FIRST = (
    'test_multihost.py::test_two_processes',
    'test_main.py::test_sigterm',
    'test_gpu_check.py::test_dry_run',
    'test_quality_canary.py',
    'test_train.py::test_train_step_on_eight_devices',
    'test_vit.py::test_simclr_pretrains',
    'test_siamese.py::test_pretrains',
)


def pytest_collection_modifyitems(items):
  items.sort(key=lambda item: not any(name in item.nodeid for name in _SLOW_FIRST))
