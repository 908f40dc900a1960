"""ResNet v1 encoders (He et al. 2016) as used by SimCLR, with a width multiplier.

Images of side <= 32 get the CIFAR stem (3x3 stride-1 conv, no max-pool); larger images the
ImageNet stem (7x7 stride-2 conv + 3x3 stride-2 max-pool with TF 'SAME' padding). The stride of
a bottleneck block sits on its 3x3 convolution, as in the official SimCLR code.

Shortcuts: the reference (google-research/simclr) projects (1x1 conv + BN) on the first block of
every stage, also where the shape is unchanged (stage 1 of ResNet-18/34); torchvision projects
only where the shape changes. Bottleneck networks are the same in both layouts.
"""

import functools
from typing import Any
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from simclr_jax.models.conv import matmul_conv

# Conv kernels: Keras' default VarianceScaling (scale 1, fan_in, truncated normal), which the
# reference's Conv2dFixedPadding uses.
_conv_init = nn.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal')
# How convolutions and their gradients are computed: XLA's own, or patch matmuls (CPU).
CONV_IMPLS = {'xla': None, 'matmul': matmul_conv}
SHORTCUTS = ('reference', 'torchvision')


def stem_max_pool(x):
  """The ImageNet stem's 3x3 stride-2 max-pool with TF 'SAME' padding, as the reference.

  On even sizes 'SAME' pads (0, 1): the windows start on the first pixel (a symmetric (1, 1)
  padding would shift them by one).
  """
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding='SAME')


class _ResidualBlock(nn.Module):
  """relu(shortcut(x) + BN(branch(x))); the shortcut projects when the shape changes or
  `project` says so."""

  filters: int
  strides: int
  conv_cls: Any  # nn.Conv with the model's dtype, initialiser and weight-gradient method.
  norm: Any
  project: bool = False

  def conv(self, features, kernel, strides=1, **kwargs):
    return self.conv_cls(features, (kernel, kernel), (strides, strides), **kwargs)

  @nn.compact
  def __call__(self, x):
    y = self.branch(x)
    # Zero-initialised last scale: every block starts as the identity.
    y = self.norm(scale_init=nn.initializers.zeros)(y)
    residual = x
    if self.project or residual.shape != y.shape:
      residual = self.conv(y.shape[-1], 1, self.strides, name='proj_conv')(x)
      residual = self.norm(name='proj_bn')(residual)
    return nn.relu(residual + y)


class BasicBlock(_ResidualBlock):
  """Two 3x3 convolutions; used by ResNet-18/34."""

  def branch(self, x):
    y = nn.relu(self.norm()(self.conv(self.filters, 3, self.strides, padding=1)(x)))
    return self.conv(self.filters, 3, padding=1)(y)


class BottleneckBlock(_ResidualBlock):
  """1x1 reduce, 3x3, 1x1 expand (x4); used by ResNet-50 and deeper."""

  def branch(self, x):
    y = nn.relu(self.norm()(self.conv(self.filters, 1)(x)))
    y = nn.relu(self.norm()(self.conv(self.filters, 3, self.strides, padding=1)(y)))
    return self.conv(self.filters * 4, 1)(y)


class ResNet(nn.Module):
  """ResNet v1 trunk; returns the global-average-pooled representation h."""

  stage_sizes: Sequence[int]
  block_cls: Any
  width_multiplier: float = 1.0
  cifar_stem: bool = False
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  dtype: Any = jnp.float32
  conv_impl: str = 'xla'  # A key of CONV_IMPLS.
  shortcut: str = 'reference'  # One of SHORTCUTS.
  # Fine-tuning: the stem (0) and stages 1..k up to this one are frozen (-1: none, 4: all):
  # no gradient flows into them and their BatchNorm stays in inference mode.
  fine_tune_after_block: int = -1
  # Rematerialise each residual block in the backward pass: activation memory for compute.
  remat: bool = False

  @nn.compact
  def __call__(self, x, train: bool):
    def norm_for(part):
      return functools.partial(
          nn.BatchNorm,
          use_running_average=not train or part <= self.fine_tune_after_block,
          momentum=self.bn_momentum,
          epsilon=self.bn_epsilon,
          dtype=self.dtype,
      )

    def end_of(part, x):
      return jax.lax.stop_gradient(x) if part == self.fine_tune_after_block else x

    conv = functools.partial(
        nn.Conv,
        use_bias=False,
        dtype=self.dtype,
        kernel_init=_conv_init,
        conv_general_dilated=CONV_IMPLS[self.conv_impl],
    )
    width = max(1, int(round(64 * self.width_multiplier)))
    x = x.astype(self.dtype)
    if self.cifar_stem:
      x = conv(width, (3, 3), padding=1, name='stem_conv')(x)
      x = nn.relu(norm_for(0)(name='stem_bn')(x))
    else:
      x = conv(width, (7, 7), (2, 2), padding=3, name='stem_conv')(x)
      x = nn.relu(norm_for(0)(name='stem_bn')(x))
      x = stem_max_pool(x)
    x = end_of(0, x)
    block_cls = nn.remat(self.block_cls) if self.remat else self.block_cls
    for stage, num_blocks in enumerate(self.stage_sizes):
      for block in range(num_blocks):
        strides = 2 if stage > 0 and block == 0 else 1
        project = block == 0 and self.shortcut == 'reference'
        x = block_cls(
            width * 2**stage,
            strides,
            conv,
            norm_for(stage + 1),
            project,
            name=f'stage{stage + 1}_block{block + 1}',
        )(x)
      x = end_of(stage + 1, x)
    return jnp.mean(x, axis=(1, 2))


STAGE_SIZES = {
    'resnet18': ([2, 2, 2, 2], BasicBlock),
    'resnet34': ([3, 4, 6, 3], BasicBlock),
    'resnet50': ([3, 4, 6, 3], BottleneckBlock),
    'resnet101': ([3, 4, 23, 3], BottleneckBlock),
    'resnet152': ([3, 8, 36, 3], BottleneckBlock),
    'resnet200': ([3, 24, 36, 3], BottleneckBlock),
}

# The encoder family interface (models/encoders.py).
NAMES = tuple(STAGE_SIZES)
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


def validate(model_config):
  if model_config.conv_impl not in CONV_IMPL_NAMES:
    raise ValueError(
        f'config.model.conv_impl={model_config.conv_impl!r} is not known; use one '
        f'of {", ".join(CONV_IMPL_NAMES)}.'
    )
  if model_config.shortcut not in SHORTCUTS:
    raise ValueError(
        f'config.model.shortcut={model_config.shortcut!r} is not known; use one of '
        f'{", ".join(SHORTCUTS)} (reference: google-research/simclr; torchvision: '
        'to load torchvision weights).'
    )


def build(model_config, *, image_size, dtype, fine_tune_after_block=-1, remat=False):
  stage_sizes, block_cls = STAGE_SIZES[model_config.name]
  return ResNet(
      stage_sizes=stage_sizes,
      block_cls=block_cls,
      width_multiplier=model_config.width_multiplier,
      cifar_stem=image_size <= 32,
      bn_momentum=model_config.bn_momentum,
      bn_epsilon=model_config.bn_epsilon,
      dtype=dtype,
      conv_impl=conv_impl_for(model_config.conv_impl),
      # Runs saved before the option existed used the torchvision layout.
      shortcut=model_config.get('shortcut', 'torchvision'),
      fine_tune_after_block=fine_tune_after_block,
      remat=remat,
      name='encoder',
  )


def num_parts(model_config):
  """The stem (0) and the four stages (1-4)."""
  del model_config
  return 5


def part_of(model_config, names):
  """0 for the stem's parameters ('stem_conv', ...), k for stage k's ('stage2_block1', ...)."""
  del model_config
  return 0 if names[0].startswith('stem') else int(names[0][len('stage')])
