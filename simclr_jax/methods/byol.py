"""BYOL (Grill et al. 2020): an online network (encoder, projector, predictor) regresses the
projections of a target network, an exponential moving average of the online encoder and
projector, across the two views of each image; no negatives.

As in the authors' JAX code (deepmind-research/byol): each view goes through the networks on
its own (methods/siamese.py); the loss is mean_i [|p1_i - z2'_i|^2 + |p2_i - z1'_i|^2] of
l2-normalised vectors (0 to 8); after each optimiser step the target moves towards the new
online parameters with a decay tau rising from config.byol.base_ema to 1 on a cosine.
"""

import jax
import jax.numpy as jnp
import ml_collections

from simclr_jax import models
from simclr_jax.methods import siamese

_EPS = 1e-12  # Added to squared norms before normalising, as the authors' l2_normalize.


def default_config():
  """config.byol: the paper's networks and EMA (configs/*_byol.py)."""
  c = ml_collections.ConfigDict()
  c.projector_hidden_dim = 4096  # Projector g: dense 4096 -> BN -> ReLU -> dense.
  c.predictor_hidden_dim = 4096  # Predictor q: the same shape on z.
  c.output_dim = 256  # Dimension of z and of the prediction p.
  c.base_ema = 0.996  # Target decay tau at step 0, rising to 1 on a cosine.
  return c


def regression_loss(p, z):
  """BYOL's loss per row: |p/|p| - z/|z||^2 = 2 - 2 cos(p, z), in float32 or wider."""

  def normalise(x):
    x = models.at_least_float32(x)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(x), -1, keepdims=True), _EPS))

  return jnp.sum(jnp.square(normalise(p) - normalise(z)), axis=-1)


def pair_loss(p, z):
  """The symmetric loss of predictions p and target projections z [n, 2, d]."""
  loss = jnp.mean(regression_loss(p[:, 0], z[:, 1]) + regression_loss(p[:, 1], z[:, 0]))
  return loss, {'byol_loss': loss}


class BYOL(siamese.SiameseMethod):
  """BYOL with its projector and predictor (config.byol), EMA target and the online probe."""

  section = 'byol'
  example_configs = 'configs/cifar10_byol.py or configs/imagenet_byol.py'
  dims = ('projector_hidden_dim', 'predictor_hidden_dim', 'output_dim')

  def create_heads(self, dtype):
    c = self.config.byol
    return (
        self.mlp(dtype, hidden_dim=c.projector_hidden_dim, name='head'),
        self.mlp(dtype, hidden_dim=c.predictor_hidden_dim, name='predictor'),
    )

  def pair_loss(self, mesh):
    del mesh  # A per-image loss: XLA sums over the sharded batch.
    return pair_loss
