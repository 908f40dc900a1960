"""MoCo v3 (Chen, Xie, He 2021): the online network's predictions q of one view classify their
own image's key among the keys k of the other view, projections by a momentum encoder (an EMA
of the online encoder and projector) over the whole global batch; symmetric.

As in the authors' code (facebookresearch/moco-v3, moco/builder.py): q and k are l2-normalised,
the keys gathered from every device, and the loss is ctr(q1, k2) + ctr(q2, k1) with
ctr = 2 T * cross-entropy(q k^T / T, own key); the momentum m rises from config.mocov3.base_ema
to 1 on a cosine (their --moco-m-cos); all dense layers are bias-free; the projector ends in a
BatchNorm without scale or shift (the predictor too for ViTs); optionally the ViT's patch
projection stays at its random initialisation (their --stop-grad-conv1). They move the momentum
encoder at the start of a step, before the keys; the shared step moves it at the end of the
previous one, towards the same online parameters: the same keys.
"""

import functools

import jax
import ml_collections
import optax

from simclr_jax import losses
from simclr_jax.core.sharding import DATA_AXIS
from simclr_jax.methods import siamese


def default_config():
  """config.mocov3: the authors' ResNet networks (configs/*_mocov3.py)."""
  c = ml_collections.ConfigDict()
  c.projector_hidden_dim = 4096  # Their mlp_dim: the hidden width of projector and predictor.
  c.predictor_hidden_dim = 4096
  c.output_dim = 256  # Their dim: q and k.
  c.projector_layers = 2  # ResNets: 2 (dense -> BN -> ReLU -> dense -> BN); ViTs: 3.
  c.predictor_output_bn = False  # ResNets: the predictor ends in a dense layer; ViTs: + BN.
  c.temperature = 1.0  # T: 1.0 for their ResNet-50, 0.2 for ViTs.
  c.base_ema = 0.99  # Momentum m at step 0, rising to 1 on a cosine (0.996 for 1000 epochs).
  c.freeze_patch_embedding = False  # ViTs: keep the random patch projection (stop-grad-conv1).
  return c


def pair_loss(p, k, *, temperature, mesh=None):
  """ctr(q1, k2) + ctr(q2, k1) of predictions p and keys k [n, 2, d] of the global batch."""
  one = functools.partial(losses.info_nce, temperature=temperature, mesh=mesh, axis_name=DATA_AXIS)
  a, b = one(p[:, 0], k[:, 1]), one(p[:, 1], k[:, 0])
  return a.loss + b.loss, {
      'mocov3_loss': a.loss + b.loss,
      'contrastive_accuracy': (a.accuracy + b.accuracy) / 2,
      'contrastive_entropy': (a.entropy + b.entropy) / 2,
  }


def _patch_embedding_labels(params):
  return {
      k: jax.tree_util.tree_map_with_path(
          lambda path, _: (
              'frozen' if k == 'encoder' and path[0].key == 'patch_embedding' else 'trained'
          ),
          v,
      )
      for k, v in params.items()
  }


class MoCoV3(siamese.SiameseMethod):
  """MoCo v3 with its projector, predictor and momentum encoder (config.mocov3)."""

  section = 'mocov3'
  example_configs = 'configs/cifar10_mocov3.py or configs/imagenet_mocov3.py'
  dims = ('projector_hidden_dim', 'predictor_hidden_dim', 'output_dim', 'projector_layers')

  def validate(self, num_devices):
    super().validate(num_devices)
    c = self.config.mocov3
    if not c.temperature > 0:
      raise ValueError(
          f'config.mocov3.temperature={c.temperature} must be > 0 (1.0 for ResNet-50, 0.2 for '
          'ViTs and CIFAR-10).'
      )
    if c.freeze_patch_embedding and not self.config.model.name.startswith('vit'):
      raise ValueError(
          "config.mocov3.freeze_patch_embedding=True freezes a ViT's patch projection, but "
          f'config.model.name={self.config.model.name!r} has none: set it False.'
      )

  def create_heads(self, dtype):
    c = self.config.mocov3
    mlp = functools.partial(self.mlp, dtype, hidden_bias=False, output_bias=False)
    return (
        mlp(
            hidden_dim=c.projector_hidden_dim,
            num_layers=c.projector_layers,
            output_bn=True,
            name='head',
        ),
        mlp(
            hidden_dim=c.predictor_hidden_dim,
            num_layers=2,
            output_bn=c.predictor_output_bn,
            name='predictor',
        ),
    )

  def create_optimizer(self, schedule):
    tx = super().create_optimizer(schedule)
    if not self.config.mocov3.freeze_patch_embedding:
      return tx
    return optax.multi_transform(
        {'trained': tx, 'frozen': optax.set_to_zero()}, _patch_embedding_labels
    )

  def pair_loss(self, mesh):
    return functools.partial(pair_loss, temperature=self.config.mocov3.temperature, mesh=mesh)
