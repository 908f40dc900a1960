"""Loads `get_config()` from a config file by path (configs build on one another this way)."""

import importlib.util
import os


def load_config_file(path: str):
  """Returns `get_config()` of the Python config file at `path`."""
  name = os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(f'simclr_config_{name}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def load_sibling_config(config_file: str, name: str):
  """`get_config()` of configs/<name>.py next to `config_file` (pass __file__)."""
  return load_config_file(os.path.join(os.path.dirname(os.path.abspath(config_file)), f'{name}.py'))
