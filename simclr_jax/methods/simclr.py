"""SimCLR (Chen et al. 2020): NT-Xent over two augmented views of each image, gathered across
devices, with the online linear probe on stop_gradient(h)."""

import functools

import jax
import jax.numpy as jnp
import optax

from simclr_jax import augment_jax
from simclr_jax import losses
from simclr_jax import models
from simclr_jax.core import optim
from simclr_jax.core import train_state
from simclr_jax.methods import core
from simclr_jax.core.sharding import DATA_AXIS, batch_sharded


def loss_and_metrics(
    params,
    batch_stats,
    batch,
    *,
    model,
    temperature,
    mesh,
    chunk_size=0,
    weight_decay=0.0,
    dropout_rng=None,
):
  """NT-Xent (+ probe loss) of a batch of view pairs; returns (loss, (metrics, stats)).

  `batch['views']` is [N, 2, H, W, C]; both views of an image sit in one shard, and the model
  sees all 2N images at once so BatchNorm statistics cover the global batch of both views.
  The probe's loss is its cross-entropy plus `weight_decay` * ||kernel||^2 / 2: the optimiser
  leaves the probe out of its decay, and the reference adds the probe's decay to the loss.
  `dropout_rng` feeds the encoder's dropout and stochastic depth, if it has any.
  """
  views = batch['views']
  n = views.shape[0]
  images = views.reshape((2 * n,) + views.shape[2:])
  images = jax.lax.with_sharding_constraint(images, batch_sharded(mesh))
  out, updates = model.apply(
      {'params': params, 'batch_stats': batch_stats},
      images,
      train=True,
      mutable=['batch_stats'],
      rngs={} if dropout_rng is None else {'dropout': dropout_rng},
  )
  z = out['z'].reshape(n, 2, -1)
  contrastive = losses.nt_xent(z[:, 0], z[:, 1], temperature, mesh, DATA_AXIS, chunk_size)
  loss = contrastive.loss
  metrics = {
      'contrastive_loss': contrastive.loss,
      'contrastive_accuracy': contrastive.accuracy,
      'contrastive_entropy': contrastive.entropy,
  }
  if 'probe_logits' in out:
    labels = jnp.repeat(batch['label'], 2)
    logits = out['probe_logits']
    probe_loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    probe_decay = weight_decay * 0.5 * jnp.sum(jnp.square(params['probe']['kernel']))
    loss = loss + probe_loss + probe_decay
    metrics['probe_loss'] = probe_loss
    metrics['probe_weight_decay'] = probe_decay
    metrics['probe_accuracy'] = jnp.mean(jnp.argmax(logits, axis=-1) == labels)
  metrics['loss'] = loss
  return loss, (metrics, updates['batch_stats'])


def augment_batch(batch, *, config_augment, image_size, mesh):
  """{'image', 'seed', 'label'} -> {'views', 'label'}: config.augment_on_device's views.

  Each example's views depend only on its own image and seed, so the vmapped augmentation
  splits over the 'data' axis like the batch, without communication.
  """
  views = augment_jax.pretrain_views(batch['image'], batch['seed'], config_augment, image_size)
  return {
      'views': jax.lax.with_sharding_constraint(views, batch_sharded(mesh)),
      'label': batch['label'],
  }


def train_step(
    state: train_state.TrainState,
    batch,
    *,
    model,
    tx,
    schedule,
    temperature,
    mesh,
    chunk_size=0,
    augment=None,
    weight_decay=0.0,
    dropout_seed=0,
):
  """One optimisation step on a global batch; returns the new state and scalar metrics.

  `augment`, if given, first turns the batch into views (`augment_batch`). The dropout key is
  a function of (dropout_seed, step), so a resumed run draws what an uninterrupted one would.
  """
  if augment is not None:
    batch = augment(batch)
  grad_fn = jax.value_and_grad(
      functools.partial(
          loss_and_metrics,
          model=model,
          temperature=temperature,
          mesh=mesh,
          chunk_size=chunk_size,
          weight_decay=weight_decay,
          dropout_rng=train_state.step_rng(dropout_seed, state.step),
      ),
      has_aux=True,
  )
  (loss, (metrics, batch_stats)), grads = grad_fn(state.params, state.batch_stats, batch)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics['learning_rate'] = schedule(state.step)
  new_state = state.replace(
      step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
  )
  return train_state.only_if_finite(loss, grads, new_state, state, metrics)


def make_train_step(
    model,
    tx,
    schedule,
    temperature,
    mesh,
    chunk_size=0,
    augment=None,
    weight_decay=0.0,
    dropout_seed=0,
):
  """jit-compiles `train_step` with the state replicated and the batch split over 'data'.

  `weight_decay` is the probe's, added to the loss (loss_and_metrics).
  """
  step_fn = functools.partial(
      train_step,
      model=model,
      tx=tx,
      schedule=schedule,
      temperature=temperature,
      mesh=mesh,
      chunk_size=chunk_size,
      augment=augment,
      weight_decay=weight_decay,
      dropout_seed=dropout_seed,
  )
  return train_state.jit_step(step_fn, mesh)


def create_optimizer(config, schedule):
  """The pretraining optimiser, the online probe ('probe') out of weight decay and the trust
  ratio and at config.probe_learning_rate_scale times the learning rate."""
  return optim.create_optimizer(config, schedule, supervised_head='probe')


class SimCLR(core.Method):
  """SimCLR with the SimCLRv2 projection head and the online probe (configs/cifar10.py)."""

  def validate(self, num_devices):
    config = self.config
    if not config.temperature > 0:
      raise ValueError(
          f'config.temperature={config.temperature} must be > 0 '
          '(0.5 for CIFAR-10, 0.1 for ImageNet).'
      )
    per_device = config.batch_size // num_devices
    chunk = config.contrastive_chunk_size
    if not (isinstance(chunk, int) and chunk >= 0 and (chunk == 0 or per_device % chunk == 0)):
      raise ValueError(
          f'config.contrastive_chunk_size={chunk!r} must be 0 (no chunks) or '
          f'divide the {per_device} images per device (batch_size / devices).'
      )

  def create_model(self, num_classes):
    config = self.config
    return models.create_model(
        config.model,
        image_size=config.image_size,
        num_classes=num_classes,
        dtype=models.DTYPES[config.dtype],
        remat=config.remat,
    )

  def create_optimizer(self, schedule):
    return create_optimizer(self.config, schedule)

  def make_train_step(self, model, tx, schedule, mesh):
    config = self.config
    augment = (
        functools.partial(
            augment_batch, config_augment=config.augment, image_size=config.image_size, mesh=mesh
        )
        if config.augment_on_device
        else None
    )
    return make_train_step(
        model,
        tx,
        schedule,
        config.temperature,
        mesh,
        config.contrastive_chunk_size,
        augment,
        config.weight_decay,
        config.seed,
    )
