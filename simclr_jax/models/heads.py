"""SimCLR's projection head (SimCLRv2 form) and the MLPs of the other methods."""

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

# The reference's LinearLayer (projection and supervised heads): kernels from N(0, 0.01).
DENSE_INIT = nn.initializers.normal(stddev=0.01)


class ProjectionHead(nn.Module):
  """`num_layers` x (dense without bias -> BN -> ReLU), the last without ReLU or BN centring.

  Hidden layers are as wide as the representation; BN replaces the dense biases, and the last
  BN is uncentred (scale only), and the dense kernels start from N(0, 0.01), as in the
  reference implementation. With `keep_layers` > 0
  only the first `keep_layers` (hidden) layers run: SimCLRv2 fine-tunes from the first one.
  """

  num_layers: int
  output_dim: int
  keep_layers: int = 0
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h, train: bool):
    hidden_dim = h.shape[-1]
    x = h
    for i in range(self.keep_layers or self.num_layers):
      last = i == self.num_layers - 1
      x = nn.Dense(
          self.output_dim if last else hidden_dim,
          use_bias=False,
          dtype=self.dtype,
          kernel_init=DENSE_INIT,
          name=f'dense{i + 1}',
      )(x)
      x = nn.BatchNorm(
          use_running_average=not train,
          momentum=self.bn_momentum,
          epsilon=self.bn_epsilon,
          use_bias=not last,
          dtype=self.dtype,
          name=f'bn{i + 1}',
      )(x)
      if not last:
        x = nn.relu(x)
    return x


class MLPHead(nn.Module):
  """`num_layers - 1` x (dense -> BN -> ReLU), then a dense layer and, with `output_bn`, a
  BatchNorm without scale or shift.

  BYOL's projector and predictor: biases everywhere, no output BN. SimSiam's and MoCo v3's:
  bias-free dense layers before each BatchNorm (it centres them anyway).
  """

  hidden_dim: int
  output_dim: int
  num_layers: int = 2
  hidden_bias: bool = True
  output_bias: bool = True
  output_bn: bool = False
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    bn = functools.partial(
        nn.BatchNorm,
        use_running_average=not train,
        momentum=self.bn_momentum,
        epsilon=self.bn_epsilon,
        dtype=self.dtype,
    )
    for i in range(self.num_layers - 1):
      x = nn.Dense(
          self.hidden_dim, use_bias=self.hidden_bias, dtype=self.dtype, name=f'dense{i + 1}'
      )(x)
      x = nn.relu(bn(name=f'bn{i + 1}')(x))
    last = f'{self.num_layers}'
    x = nn.Dense(self.output_dim, use_bias=self.output_bias, dtype=self.dtype, name=f'dense{last}')(
        x
    )
    if self.output_bn:
      x = bn(use_scale=False, use_bias=False, name=f'bn{last}')(x)
    return x
