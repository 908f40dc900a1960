"""Encoders, projection head and the SimCLR model that ties them together."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from simclr_jax.models.heads import ProjectionHead
from simclr_jax.models.resnet import ResNet, STAGE_SIZES

MODEL_NAMES = tuple(STAGE_SIZES)


class SimCLRModel(nn.Module):
  """Encoder f, projection head g, and an optional online linear probe.

  Returns a dict with the representation `h`, the projection `z` (float32) and, when
  `num_classes > 0`, `probe_logits` of a linear classifier on stop_gradient(h): the probe
  learns alongside pretraining without shaping the representation.
  """
  encoder: nn.Module
  head: nn.Module
  num_classes: int = 0

  @nn.compact
  def __call__(self, images, train: bool):
    h = self.encoder(images, train=train)
    z = self.head(h, train=train).astype(jnp.float32)
    out = {'h': h.astype(jnp.float32), 'z': z}
    if self.num_classes:
      out['probe_logits'] = nn.Dense(self.num_classes, name='probe')(
          jax.lax.stop_gradient(out['h']))
    return out

  def encode(self, images, train: bool = False):
    """The representation h alone (what evaluation uses)."""
    return self.encoder(images, train=train)


def create_model(model_config, *, image_size: int, num_classes: int = 0,
                 dtype: Any = jnp.float32) -> SimCLRModel:
  """Builds the SimCLR model described by `config.model`."""
  if model_config.name not in STAGE_SIZES:
    raise ValueError(f'config.model.name={model_config.name!r} is not a known model; '
                     f'use one of {", ".join(MODEL_NAMES)}.')
  stage_sizes, block_cls = STAGE_SIZES[model_config.name]
  encoder = ResNet(stage_sizes=stage_sizes, block_cls=block_cls,
                   width_multiplier=model_config.width_multiplier,
                   cifar_stem=image_size <= 32, bn_momentum=model_config.bn_momentum,
                   bn_epsilon=model_config.bn_epsilon, dtype=dtype, name='encoder')
  head = ProjectionHead(num_layers=model_config.head_layers,
                        output_dim=model_config.head_output_dim,
                        bn_momentum=model_config.bn_momentum,
                        bn_epsilon=model_config.bn_epsilon, dtype=dtype, name='head')
  return SimCLRModel(encoder=encoder, head=head, num_classes=num_classes)
