"""SimCLR's projection head (SimCLRv2 form), the MLPs of the other methods and DINO's head."""

import functools
from typing import Any

import flax.linen as nn
import jax
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


class WeightNormDense(nn.Module):
  """x @ (v / ||v||) per output unit, times a learned gain g (started at 1) unless `unit_norm`,
  without bias: torch's weight_norm(Linear(bias=False)) as DINO starts it (g filled with 1).

  'kernel' is v [in, out], uniform in +-1/sqrt(in) as torch's Linear default.
  """

  features: int
  unit_norm: bool = True  # DINO's norm_last_layer: g fixed at 1.
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    bound = 1.0 / jnp.sqrt(x.shape[-1])
    v = self.param(
        'kernel',
        lambda key, shape: jax.random.uniform(key, shape, jnp.float32, -bound, bound),
        (x.shape[-1], self.features),
    )
    w = v * jax.lax.rsqrt(jnp.sum(v * v, axis=0, keepdims=True))
    if not self.unit_norm:
      w = w * self.param('scale', nn.initializers.ones, (self.features,))
    return x @ w.astype(self.dtype)


class DINOHead(nn.Module):
  """DINO's head: `num_layers - 1` x (dense -> [BN] -> GELU), a dense bottleneck, L2
  normalisation and a weight-normalised dense layer to `output_dim` (named 'last_layer').

  Dense kernels from N(0, 0.02^2) and zero biases, as facebookresearch/dino (its
  trunc_normal_ cuts at +-2 absolute, 100 standard deviations: a plain normal).
  """

  hidden_dim: int
  bottleneck_dim: int
  output_dim: int
  num_layers: int = 3
  use_bn: bool = False
  norm_last_layer: bool = True
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    dense = functools.partial(nn.Dense, dtype=self.dtype, kernel_init=nn.initializers.normal(0.02))
    for i in range(self.num_layers - 1):
      x = dense(self.hidden_dim, name=f'dense{i + 1}')(x)
      if self.use_bn:
        x = nn.BatchNorm(
            use_running_average=not train,
            momentum=self.bn_momentum,
            epsilon=self.bn_epsilon,
            dtype=self.dtype,
            name=f'bn{i + 1}',
        )(x)
      x = nn.gelu(x, approximate=False)  # torch's nn.GELU.
    x = dense(self.bottleneck_dim, name=f'dense{self.num_layers}')(x)
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))  # Normalised in float32 at least.
    x = x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-24))
    return WeightNormDense(
        self.output_dim, unit_norm=self.norm_last_layer, dtype=self.dtype, name='last_layer'
    )(x.astype(self.dtype))
