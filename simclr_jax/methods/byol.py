"""BYOL (Grill et al. 2020): an online network (encoder, projector, predictor) regresses the
projections of a target network, an exponential moving average of the online encoder and
projector, across the two views of each image; no negatives.

As in the authors' JAX code (deepmind-research/byol): each view goes through the networks on
its own (BatchNorm statistics per view, over all devices); the loss is
mean_i [|p1_i - z2'_i|^2 + |p2_i - z1'_i|^2] of l2-normalised vectors (0 to 8); the target
has its own BatchNorm running averages; after each optimiser step the target moves towards the
new online parameters with a decay tau rising from config.byol.base_ema to 1 on a cosine.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from simclr_jax import models
from simclr_jax.core import train_state
from simclr_jax.core.sharding import batch_sharded
from simclr_jax.methods import core
from simclr_jax.methods import probe
from simclr_jax.methods import simclr
from simclr_jax.models.heads import DENSE_INIT, MLPHead

# The modules that the target network copies (the predictor and the probe are online only).
TARGET_MODULES = ('encoder', 'head')
_EPS = 1e-12  # Added to squared norms before normalising, as the authors' l2_normalize.


class BYOLModel(nn.Module):
  """Encoder f, projector g (named 'head', like SimCLR's), predictor q and the online probe.

  __call__ returns {'h', 'z' (projection), 'p' (prediction), 'probe_logits' if any}; `project`
  is the target network's part, {'h', 'z'}.
  """

  encoder: nn.Module
  head: nn.Module
  predictor: nn.Module
  num_classes: int = 0

  def project(self, images, train: bool):
    h = self.encoder(images, train=train)
    return {'h': models.at_least_float32(h), 'z': models.at_least_float32(self.head(h, train))}

  @nn.compact
  def __call__(self, images, train: bool):
    out = self.project(images, train)
    out['p'] = models.at_least_float32(self.predictor(out['z'], train))
    if self.num_classes:
      out['probe_logits'] = nn.Dense(self.num_classes, kernel_init=DENSE_INIT, name=probe.NAME)(
          jax.lax.stop_gradient(out['h'])
      )
    return out

  def encode(self, images, train: bool = False):
    return self.encoder(images, train=train)


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


def ema_decay(step, base_ema: float, total_steps: int):
  """tau(step) = 1 - (1 - base_ema) * (1 + cos(pi * step / total_steps)) / 2."""
  progress = jnp.minimum(jnp.asarray(step, jnp.float32) / max(total_steps, 1), 1.0)
  return 1.0 - (1.0 - base_ema) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))


def per_view_forward(variables, views, *, model, mesh, method=None, dropout_rng=None):
  """`model` on views [n, 2, H, W, C], one view at a time; returns (outputs [n, 2, ...],
  batch_stats after both views' updates).

  Each call normalises by its own view's (global) BatchNorm statistics, as the authors' code.
  """
  params, batch_stats = variables['params'], variables['batch_stats']
  outputs = []
  for v in range(2):
    images = jax.lax.with_sharding_constraint(views[:, v], batch_sharded(mesh))
    out, updates = model.apply(
        {'params': params, 'batch_stats': batch_stats},
        images,
        train=True,
        mutable=['batch_stats'],
        method=method,
        rngs={} if dropout_rng is None else {'dropout': jax.random.fold_in(dropout_rng, v)},
    )
    batch_stats = updates.get('batch_stats', {})  # {}: a model without BatchNorm.
    outputs.append(out)
  return jax.tree.map(lambda a, b: jnp.stack([a, b], axis=1), *outputs), batch_stats


def loss_and_metrics(params, online, target_z, labels, weight_decay=0.0):
  """The symmetric BYOL loss (+ the probe's) of the online outputs and the target projections
  [n, 2, d] of the same views; returns (loss, metrics). No gradient reaches the target."""
  target_z = jax.lax.stop_gradient(target_z)
  p = online['p']
  loss = jnp.mean(
      regression_loss(p[:, 0], target_z[:, 1]) + regression_loss(p[:, 1], target_z[:, 0])
  )
  metrics = {'byol_loss': loss}
  if 'probe_logits' in online:
    loss, probe_metrics = probe.add_loss(loss, params, online['probe_logits'], labels, weight_decay)
    metrics.update(probe_metrics)
  metrics['loss'] = loss
  return loss, metrics


def train_step(
    state: train_state.TrainState,
    batch,
    *,
    model,
    tx,
    schedule,
    ema_schedule,
    mesh,
    augment=None,
    weight_decay=0.0,
    dropout_seed=0,
):
  """One BYOL step: the online update, then the target's EMA towards the new parameters."""
  if augment is not None:
    batch = augment(batch)
  rng = train_state.step_rng(dropout_seed, state.step)
  online_rng, target_rng = jax.random.split(rng)
  forward = functools.partial(per_view_forward, views=batch['views'], model=model, mesh=mesh)
  target = state.method_state['target']
  target_out, target_stats = forward(target, method='project', dropout_rng=target_rng)

  def loss_fn(params):
    online, batch_stats = forward(
        {'params': params, 'batch_stats': state.batch_stats}, dropout_rng=online_rng
    )
    loss, metrics = loss_and_metrics(
        params, online, target_out['z'], batch.get('label'), weight_decay
    )
    return loss, (metrics, batch_stats)

  (loss, (metrics, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  tau = ema_schedule(state.step)
  target_params = jax.tree.map(
      lambda t, o: t + (1.0 - tau) * (o - t),
      target['params'],
      {k: params[k] for k in target['params']},
  )
  metrics['learning_rate'] = schedule(state.step)
  metrics['ema_decay'] = tau
  new_state = state.replace(
      step=state.step + 1,
      params=params,
      batch_stats=batch_stats,
      opt_state=opt_state,
      method_state={'target': {'params': target_params, 'batch_stats': target_stats}},
  )
  return train_state.only_if_finite(loss, grads, new_state, state, metrics)


def target_of(variables) -> dict[str, Any]:
  """The target network at step 0: a copy of the online encoder and projector."""
  return {
      'target': {
          collection: {
              k: jax.tree.map(jnp.copy, v)
              for k, v in variables.get(collection, {}).items()
              if k in TARGET_MODULES
          }
          for collection in ('params', 'batch_stats')
      }
  }


class BYOL(core.Method):
  """BYOL with its projector and predictor (config.byol) and the online probe."""

  def validate(self, num_devices):
    del num_devices
    if 'byol' not in self.config:
      raise ValueError(
          "config.method='byol' needs the config.byol section: start from "
          'configs/cifar10_byol.py or configs/imagenet_byol.py.'
      )
    c = self.config.byol
    for name in ('projector_hidden_dim', 'predictor_hidden_dim', 'output_dim'):
      if not (isinstance(c[name], int) and c[name] > 0):
        raise ValueError(f'config.byol.{name}={c[name]!r} must be a positive integer.')
    if not 0 <= c.base_ema <= 1:
      raise ValueError(
          f'config.byol.base_ema={c.base_ema} must be in [0, 1] (the paper: 0.996; 0.99 for '
          'CIFAR-10 at small batches).'
      )
    if self.config.microbatches != 1:
      raise ValueError(
          f'config.microbatches={self.config.microbatches}: the gradient cache is for '
          'contrastive losses; BYOL has no negatives to keep, so set config.microbatches=1 '
          '(and lower batch_size to save memory).'
      )

  def create_model(self, num_classes):
    config, c = self.config, self.config.byol
    dtype = models.DTYPES[config.dtype]
    mlp = functools.partial(
        MLPHead,
        output_dim=c.output_dim,
        bn_momentum=config.model.bn_momentum,
        bn_epsilon=config.model.bn_epsilon,
        dtype=dtype,
    )
    return BYOLModel(
        encoder=models.create_encoder(
            config.model, image_size=config.image_size, dtype=dtype, remat=config.remat
        ),
        head=mlp(hidden_dim=c.projector_hidden_dim, name='head'),
        predictor=mlp(hidden_dim=c.predictor_hidden_dim, name='predictor'),
        num_classes=num_classes,
    )

  def create_optimizer(self, schedule):
    return simclr.create_optimizer(self.config, schedule)

  def init_state(self, model, tx, rng):
    return train_state.init_train_state(
        model, tx, rng, self.config.image_size, method_state=target_of
    )

  def make_train_step(self, model, tx, schedule, mesh, total_steps):
    config = self.config
    step_fn = functools.partial(
        train_step,
        model=model,
        tx=tx,
        schedule=schedule,
        ema_schedule=functools.partial(
            ema_decay, base_ema=config.byol.base_ema, total_steps=total_steps
        ),
        mesh=mesh,
        augment=simclr.device_augment(config, mesh),
        weight_decay=config.weight_decay,
        dropout_seed=config.seed,
    )
    return train_state.jit_step(step_fn, mesh)
