"""Shared fixtures: the configs and the real CIFAR-10 folder."""

import importlib.util
import os
import pathlib

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_config(name: str):
  """`get_config()` of configs/<name>.py."""
  spec = importlib.util.spec_from_file_location(name, REPO_ROOT / 'configs' / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.fixture
def cifar_config():
  return load_config('cifar10')


@pytest.fixture(scope='session')
def cifar10_dir() -> pathlib.Path:
  """The real CIFAR-10 JPEG folder ($SIMCLR_CIFAR10_DIR, default ../shared/data/cifar10-jpeg).

  Skips the test when the folder is absent, except under CI=true, where that is a failure.
  """
  path = pathlib.Path(os.environ.get('SIMCLR_CIFAR10_DIR',
                                     REPO_ROOT / '..' / 'shared' / 'data' / 'cifar10-jpeg'))
  path = path.expanduser().resolve()
  if not path.is_dir():
    message = (f'CIFAR-10 image folder {path} not found; set SIMCLR_CIFAR10_DIR to '
               'a folder laid out as <split>/<class>/<image>.')
    if os.environ.get('CI') == 'true':
      pytest.fail(message)
    pytest.skip(message)
  return path
