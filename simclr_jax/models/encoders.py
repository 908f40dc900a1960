"""Encoders behind one registry: config.model.name -> the family module that builds it.

A family module defines:
- NAMES: the config.model.name values it builds;
- validate(model_config): raises ValueError naming the fix for a bad value of its own keys;
- build(model_config, *, image_size, dtype, fine_tune_after_block, remat): the encoder, an
  nn.Module named 'encoder' that maps images [B, H, W, 3] to representations h [B, D];
- num_parts(model_config): what config.finetune.fine_tune_after_block counts, parts 0..n-1
  from the input up (-1 freezes none, n - 1 all);
- part_of(model_config, names): the part of a parameter, given its path under the encoder as
  names.
A new family is one module and one entry in FAMILIES.
"""

import importlib

FAMILIES = (
    'simclr_jax.models.resnet',
    'simclr_jax.models.vit',
)


def _modules():
  return [importlib.import_module(name) for name in FAMILIES]


def names() -> tuple[str, ...]:
  """Every config.model.name a registered family builds."""
  return tuple(name for module in _modules() for name in module.NAMES)


def family(model_config):
  """The family module of config.model.name; a ValueError listing the known names otherwise."""
  for module in _modules():
    if model_config.name in module.NAMES:
      return module
  raise ValueError(
      f'config.model.name={model_config.name!r} is not a known model; use one of '
      f'{", ".join(names())}.'
  )
