"""models/encoders.py: a new encoder family is one module and one registry entry; the model,
validation and fine-tuning's freezing then work with it. This test module is such a family."""

import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import load_config
from simclr_jax import config_validation
from simclr_jax import models
from simclr_jax.core import optim
from simclr_jax.models import encoders

# The family interface: an MLP of config.model.width_multiplier * 16 units per layer.
NAMES = ('toy_mlp2', 'toy_mlp3')


class _Mlp(nn.Module):
  layers: int
  width: int

  @nn.compact
  def __call__(self, images, train: bool):
    x = images.reshape(images.shape[0], -1)
    for i in range(self.layers):
      x = nn.relu(nn.Dense(self.width, name=f'layer{i}')(x))
    return x


def validate(model_config):
  if model_config.width_multiplier * 16 < 1:
    raise ValueError('toy_mlp needs width_multiplier >= 1/16.')


def build(model_config, *, image_size, dtype, fine_tune_after_block=-1, remat=False):
  del image_size, dtype, fine_tune_after_block, remat
  return _Mlp(
      layers=int(model_config.name[-1]),
      width=int(model_config.width_multiplier * 16),
      name='encoder',
  )


def num_parts(model_config):
  return int(model_config.name[-1])


def part_of(model_config, names):
  del model_config
  return int(names[0][len('layer') :])


@pytest.fixture
def toy_config(monkeypatch):
  monkeypatch.setattr(encoders, 'FAMILIES', encoders.FAMILIES + (__name__,))
  config = load_config('cifar10')
  config.model.name, config.image_size, config.batch_size = 'toy_mlp3', 8, 16
  return config


def test_a_registered_encoder_builds_validates_and_freezes_by_its_parts(toy_config):
  assert encoders.family(toy_config.model) is sys.modules[__name__]
  config_validation.validate_config(toy_config, num_devices=1)
  model = models.create_model(toy_config.model, image_size=8, num_classes=10)
  variables = models.init_variables(model, jax.random.PRNGKey(0), 8)
  assert sorted(variables['params']['encoder']) == ['layer0', 'layer1', 'layer2']
  h = model.apply(variables, jnp.ones((2, 8, 8, 3)), train=False, method='encode')
  assert h.shape == (2, 16)

  # Fine-tuning after part 1 freezes layers 0 and 1 and trains layer 2 and the rest.
  toy_config.finetune.fine_tune_after_block = 1
  tx = optim.create_finetune_optimizer(
      toy_config.finetune, optax.constant_schedule(0.1), models.encoder_part_of(toy_config.model)
  )
  params = variables['params']
  updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
  moved = {name: bool(np.any(updates['encoder'][name]['kernel'])) for name in params['encoder']}
  assert moved == {'layer0': False, 'layer1': False, 'layer2': True}
  assert np.any(updates['head']['dense1']['kernel'])

  toy_config.mode, toy_config.pretrained_workdir = 'evaluate', '/some/run'
  toy_config.eval.protocol, toy_config.finetune.fine_tune_after_block = 'finetune', 3
  with pytest.raises(
      ValueError, match=r'fine_tune_after_block=3 must be -1 \(fine-tune ' r'everything\) or 0-2'
  ):
    config_validation.validate_config(toy_config, num_devices=1)


def test_unknown_model_names_every_registered_one(toy_config):
  toy_config.model.name = 'vit_b16'
  with pytest.raises(
      ValueError,
      match=r"config.model.name='vit_b16' is not a known model; use "
      r'one of resnet18, .*resnet200, vit_ti, .*vit_l, toy_mlp2, toy_mlp3',
  ):
    config_validation.validate_config(toy_config, num_devices=1)
