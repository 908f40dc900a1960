"""Self-supervised methods behind one registry: what differs between them (the model and its
train step), while pretraining (train.py) does the rest for all of them: data, optimiser,
state, checkpoints, the loop, monitors.

A new method is one module with a Method subclass and one entry in METHODS, selected by
config.method.
"""

import abc
import importlib

from simclr_jax.core import optim
from simclr_jax.core import train_state

# config.method -> 'module:class'.
METHODS = {
    'simclr': 'simclr_jax.methods.simclr:SimCLR',
    'byol': 'simclr_jax.methods.byol:BYOL',
    'mocov3': 'simclr_jax.methods.mocov3:MoCoV3',
    'simsiam': 'simclr_jax.methods.simsiam:SimSiam',
    'dino': 'simclr_jax.methods.dino:DINO',
}


class Method(abc.ABC):
  """A pretraining method configured by `config` (the whole run's config)."""

  uses_local_crops = False  # Whether it trains on config.augment.local_crops (multi-crop).

  def __init__(self, config, num_examples: int = 0):
    self.config = config
    self.num_examples = num_examples  # Of the pretraining split; 0 where not known.

  def validate(self, num_devices: int):
    """Raises ValueError naming the fix when a config value of this method is bad."""
    del num_devices

  @abc.abstractmethod
  def create_model(self, num_classes: int):
    """The Flax module trained; num_classes (0: no labels) sizes its online probe, if any."""

  def create_optimizer(self, schedule):
    """The optimiser (optax) of the pretraining parameters."""
    return optim.create_optimizer(self.config, schedule)

  def init_state(self, model, tx, rng) -> train_state.TrainState:
    """The state at step 0, from `rng`."""
    return train_state.init_train_state(model, tx, rng, self.config.image_size)

  @abc.abstractmethod
  def make_train_step(self, model, tx, schedule, mesh, total_steps: int):
    """jitted (state, batch) -> (state, metrics) on global batches of the pretraining pipeline
    for a run of `total_steps`; metrics hold 'finite' (train_state.only_if_finite) and the
    scalars to log."""


def get(config, num_examples: int = 0) -> Method:
  """The method of config.method (pretraining on `num_examples` examples, where it matters); a
  ValueError listing the registered ones otherwise."""
  if config.method not in METHODS:
    raise ValueError(
        f'config.method={config.method!r} is not known; registered methods: '
        f'{", ".join(METHODS)}.'
    )
  module, name = METHODS[config.method].split(':')
  return getattr(importlib.import_module(module), name)(config, num_examples)
