"""SimSiam (Chen & He 2021): the online network's predictions p of one view are pulled towards
the projections z of the other view by the same network behind a stop-gradient; no negatives,
no momentum encoder.

As in the authors' code (facebookresearch/simsiam, simsiam/builder.py and main_simsiam.py): the
loss is -(cos(p1, sg(z2)) + cos(p2, sg(z1))) / 2 (-1 at best); the projector is 3 x (dense ->
BN), ReLU between, bias-free, its last BN without scale or shift; the predictor is a dense ->
BN -> ReLU bottleneck and a dense output with a bias; with fixed_predictor_lr the predictor
keeps the peak learning rate while the rest follows the schedule (their --fix-pred-lr).
"""

import jax
import jax.numpy as jnp
import ml_collections
import optax

from simclr_jax import models
from simclr_jax.core import optim
from simclr_jax.methods import siamese
from simclr_jax.methods import simclr

_EPS = 1e-8  # torch's cosine_similarity clamps each norm at 1e-8.


def default_config():
  """config.simsiam: the paper's ImageNet networks (configs/*_simsiam.py)."""
  c = ml_collections.ConfigDict()
  c.projector_hidden_dim = 2048  # The paper: as wide as the ResNet-50's h (2048).
  c.output_dim = 2048  # z and p.
  c.projector_layers = 3  # dense -> BN -> ReLU, twice, then dense -> BN (no affine).
  c.predictor_hidden_dim = 512  # The predictor's bottleneck.
  c.fixed_predictor_lr = True  # The predictor at the peak lr, unscheduled (--fix-pred-lr).
  return c


def negative_cosine(p, z):
  """-cos(p, z) per row, in float32 or wider (siamese.loss_and_metrics stops z's gradient)."""
  p, z = models.at_least_float32(p), models.at_least_float32(z)
  norm = lambda x: jnp.maximum(jnp.linalg.norm(x, axis=-1), _EPS)
  return -jnp.sum(p * z, axis=-1) / (norm(p) * norm(z))


def pair_loss(p, z):
  """-(cos(p1, sg z2) + cos(p2, sg z1)) / 2, averaged over the batch ([n, 2, d] each)."""
  loss = 0.5 * jnp.mean(negative_cosine(p[:, 0], z[:, 1]) + negative_cosine(p[:, 1], z[:, 0]))
  return loss, {'simsiam_loss': loss}


def _predictor_labels(params):
  return {
      k: jax.tree.map(lambda _: k if k == 'predictor' else 'rest', v) for k, v in params.items()
  }


class SimSiam(siamese.SiameseMethod):
  """SimSiam with its projector and predictor (config.simsiam) and the online probe."""

  section = 'simsiam'
  example_configs = 'configs/cifar10_simsiam.py or configs/imagenet_simsiam.py'
  dims = ('projector_hidden_dim', 'output_dim', 'projector_layers', 'predictor_hidden_dim')
  uses_target = False

  def create_heads(self, dtype):
    c = self.config.simsiam
    return (
        self.mlp(
            dtype,
            hidden_dim=c.projector_hidden_dim,
            num_layers=c.projector_layers,
            hidden_bias=False,
            output_bias=False,
            output_bn=True,
            name='head',
        ),
        self.mlp(
            dtype,
            hidden_dim=c.predictor_hidden_dim,
            num_layers=2,
            hidden_bias=False,
            name='predictor',
        ),
    )

  def create_optimizer(self, schedule):
    config = self.config
    tx = simclr.create_optimizer(config, schedule)
    if not config.simsiam.fixed_predictor_lr:
      return tx
    peak = optim.scaled_learning_rate(config.learning_rate, config.batch_size, config.lr_scaling)
    fixed = optim.create_optimizer(config, optax.constant_schedule(peak))  # No probe in it.
    return optax.multi_transform({'rest': tx, 'predictor': fixed}, _predictor_labels)

  def pair_loss(self, mesh):
    del mesh  # A per-image loss: XLA sums over the sharded batch.
    return pair_loss
