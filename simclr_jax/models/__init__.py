"""Encoders, projection head and the SimCLR model that ties them together."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from simclr_jax.models.heads import DENSE_INIT, ProjectionHead
from simclr_jax.models.resnet import CONV_IMPLS, ResNet, SHORTCUTS, STAGE_SIZES  # noqa: F401

MODEL_NAMES = tuple(STAGE_SIZES)
# config.model.conv_impl: 'auto' picks the patch matmuls on CPU (several times faster there) and
# XLA's convolutions on GPU and TPU (cuDNN / the MXU).
CONV_IMPL_NAMES = ('auto',) + tuple(CONV_IMPLS)


def conv_impl_for(name: str, platform: str = '') -> str:
  """The key of CONV_IMPLS that config.model.conv_impl `name` means on `platform`.

  `platform` defaults to JAX's default backend ('cpu', 'gpu', 'tpu'; 'cuda'/'rocm' also work).
  """
  if name != 'auto':
    return name
  return 'matmul' if (platform or jax.default_backend()) == 'cpu' else 'xla'

# config.dtype: the compute type of the encoder and head.
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
# Encoder parts fine_tune_after_block counts: the stem (0) and the four stages (1-4).
NUM_ENCODER_PARTS = 5


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

  @nn.compact
  def __call__(self, images, train: bool):
    h = self.encoder(images, train=train)
    z = at_least_float32(self.head(h, train=train))
    out = {'h': at_least_float32(h), 'z': z}
    if self.num_classes:
      out['probe_logits'] = nn.Dense(self.num_classes, kernel_init=DENSE_INIT, name='probe')(
          jax.lax.stop_gradient(out['h']))
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
    return nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros,
                    name='classifier')(at_least_float32(x))


def init_variables(model, rng, image_size: int):
  """Initial variables of `model` for square images of side `image_size`."""
  return model.init(rng, jnp.zeros((2, image_size, image_size, 3), jnp.float32), train=False)


def _encoder(model_config, image_size, dtype, fine_tune_after_block=-1, remat=False):
  if model_config.name not in STAGE_SIZES:
    raise ValueError(f'config.model.name={model_config.name!r} is not a known model; '
                     f'use one of {", ".join(MODEL_NAMES)}.')
  stage_sizes, block_cls = STAGE_SIZES[model_config.name]
  return ResNet(stage_sizes=stage_sizes, block_cls=block_cls,
                width_multiplier=model_config.width_multiplier,
                cifar_stem=image_size <= 32, bn_momentum=model_config.bn_momentum,
                bn_epsilon=model_config.bn_epsilon, dtype=dtype,
                conv_impl=conv_impl_for(model_config.conv_impl),
                # Runs saved before the option existed used the torchvision layout.
                shortcut=model_config.get('shortcut', 'torchvision'),
                fine_tune_after_block=fine_tune_after_block, remat=remat, name='encoder')


def _head(model_config, dtype, keep_layers=0):
  return ProjectionHead(num_layers=model_config.head_layers,
                        output_dim=model_config.head_output_dim,
                        bn_momentum=model_config.bn_momentum,
                        bn_epsilon=model_config.bn_epsilon, keep_layers=keep_layers, dtype=dtype,
                        name='head')


def create_model(model_config, *, image_size: int, num_classes: int = 0,
                 dtype: Any = jnp.float32, remat: bool = False) -> SimCLRModel:
  """Builds the SimCLR model described by `config.model`.

  `dtype` is the compute type (parameters, BatchNorm statistics, h and z stay float32);
  `remat` recomputes residual blocks in the backward pass instead of storing activations.
  """
  return SimCLRModel(encoder=_encoder(model_config, image_size, dtype, remat=remat),
                     head=_head(model_config, dtype), num_classes=num_classes)


def create_classifier(model_config, *, image_size: int, num_classes: int,
                      fine_tune_after_block: int = -1, keep_head_layers: int = 0,
                      dtype: Any = jnp.float32) -> Classifier:
  """The fine-tuning network for `config.model`; parameter names match the SimCLR model's."""
  head = _head(model_config, dtype, keep_head_layers) if keep_head_layers else None
  return Classifier(encoder=_encoder(model_config, image_size, dtype, fine_tune_after_block),
                    head=head, num_classes=num_classes)
