"""Encoders, projection head and the SimCLR model that ties them together."""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from simclr_jax.models import encoders
from simclr_jax.models.heads import DENSE_INIT, ProjectionHead

# config.dtype: the compute type of the encoder and head.
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def at_least_float32(x):
  """x in float32, or float64 if it is (the float64 equivalence tests, jax_enable_x64)."""
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


class SimCLRModel(nn.Module):
  """Encoder f, projection head g, and an optional online linear probe.

  Returns a dict with the representation `h`, the projection `z` (float32) and, when
  `num_classes > 0`, `probe_logits` of a linear classifier on stop_gradient(h): the probe
  learns alongside pretraining without shaping the representation.
  """

  encoder: nn.Module
  head: nn.Module
  num_classes: int = 0

  def project(self, images, train: bool):
    """{'h', 'z'}: what every method's model gives (export serves it)."""
    h = self.encoder(images, train=train)
    return {'h': at_least_float32(h), 'z': at_least_float32(self.head(h, train=train))}

  @nn.compact
  def __call__(self, images, train: bool):
    out = self.project(images, train)
    if self.num_classes:
      out['probe_logits'] = nn.Dense(self.num_classes, kernel_init=DENSE_INIT, name='probe')(
          jax.lax.stop_gradient(out['h'])
      )
    return out

  def encode(self, images, train: bool = False):
    """The representation h alone (what evaluation uses)."""
    return self.encoder(images, train=train)


class Classifier(nn.Module):
  """Fine-tuning network: encoder, optionally the first projection-head layer(s), linear layer.

  The linear layer starts at zero (the reference's zero_init_logits_layer), so fine-tuning
  starts from uniform predictions whatever the scale of the representation.
  """

  encoder: nn.Module
  head: Any  # A ProjectionHead with keep_layers > 0, or None.
  num_classes: int

  @nn.compact
  def __call__(self, images, train: bool):
    x = self.encoder(images, train=train)
    if self.head is not None:
      x = self.head(x, train=train)
    return nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros, name='classifier')(
        at_least_float32(x)
    )


def init_variables(model, rng, image_size: int):
  """Initial variables of `model` for square images of side `image_size`."""
  return model.init(rng, jnp.zeros((2, image_size, image_size, 3), jnp.float32), train=False)


def create_encoder(model_config, *, image_size, dtype, fine_tune_after_block=-1, remat=False):
  """The encoder f of `config.model` (the module that evaluation keeps), named 'encoder'."""
  return encoders.family(model_config).build(
      model_config,
      image_size=image_size,
      dtype=dtype,
      fine_tune_after_block=fine_tune_after_block,
      remat=remat,
  )


def num_encoder_parts(model_config) -> int:
  """The parts of config.model's encoder that finetune.fine_tune_after_block counts."""
  return encoders.family(model_config).num_parts(model_config)


def encoder_part_of(model_config):
  """names under the encoder -> part (finetune.fine_tune_after_block counts parts)."""
  return functools.partial(encoders.family(model_config).part_of, model_config)


def _head(model_config, dtype, keep_layers=0):
  return ProjectionHead(
      num_layers=model_config.head_layers,
      output_dim=model_config.head_output_dim,
      bn_momentum=model_config.bn_momentum,
      bn_epsilon=model_config.bn_epsilon,
      keep_layers=keep_layers,
      dtype=dtype,
      name='head',
  )


def create_model(
    model_config,
    *,
    image_size: int,
    num_classes: int = 0,
    dtype: Any = jnp.float32,
    remat: bool = False
) -> SimCLRModel:
  """Builds the SimCLR model described by `config.model`.

  `dtype` is the compute type (parameters, BatchNorm statistics, h and z stay float32);
  `remat` recomputes residual blocks in the backward pass instead of storing activations.
  """
  return SimCLRModel(
      encoder=create_encoder(model_config, image_size=image_size, dtype=dtype, remat=remat),
      head=_head(model_config, dtype),
      num_classes=num_classes,
  )


def create_classifier(
    model_config,
    *,
    image_size: int,
    num_classes: int,
    fine_tune_after_block: int = -1,
    keep_head_layers: int = 0,
    dtype: Any = jnp.float32
) -> Classifier:
  """The fine-tuning network for `config.model`; parameter names match the SimCLR model's."""
  head = _head(model_config, dtype, keep_head_layers) if keep_head_layers else None
  return Classifier(
      encoder=create_encoder(
          model_config,
          image_size=image_size,
          dtype=dtype,
          fine_tune_after_block=fine_tune_after_block,
      ),
      head=head,
      num_classes=num_classes,
  )
