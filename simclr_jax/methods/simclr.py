"""SimCLR (Chen et al. 2020): NT-Xent over two augmented views of each image, gathered across
devices, with the online linear probe on stop_gradient(h)."""

import functools

from absl import logging
import jax
import optax

from simclr_jax import augment_jax
from simclr_jax import losses
from simclr_jax import models
from simclr_jax.core import gradient_cache
from simclr_jax.core import optim
from simclr_jax.core import train_state
from simclr_jax.methods import core
from simclr_jax.methods import probe
from simclr_jax.core.sharding import DATA_AXIS, batch_sharded


def _forward(params, batch_stats, views, *, model, mesh, dropout_rng=None):
  """The model on view pairs [n, 2, H, W, C]: ({'z', 'probe_logits' if any}, batch_stats),
  each output [n, 2, ...].

  The model sees all 2n images at once, so BatchNorm statistics cover both views of the
  (global) batch.
  """
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
  outputs = {
      k: out[k].reshape((n, 2) + out[k].shape[1:]) for k in ('z', 'probe_logits') if k in out
  }
  return outputs, updates.get('batch_stats', {})  # {}: a model without BatchNorm.


def _objective(params, outputs, labels, *, temperature, mesh, chunk_size=0, weight_decay=0.0):
  """NT-Xent (+ probe loss) of a batch's outputs (_forward's); returns (loss, metrics)."""
  z = outputs['z']
  contrastive = losses.nt_xent(z[:, 0], z[:, 1], temperature, mesh, DATA_AXIS, chunk_size)
  loss = contrastive.loss
  metrics = {
      'contrastive_loss': contrastive.loss,
      'contrastive_accuracy': contrastive.accuracy,
      'contrastive_entropy': contrastive.entropy,
  }
  if 'probe_logits' in outputs:
    loss, probe_metrics = probe.add_loss(
        loss, params, outputs['probe_logits'], labels, weight_decay
    )
    metrics.update(probe_metrics)
  metrics['loss'] = loss
  return loss, metrics


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

  `batch['views']` is [N, 2, H, W, C]; both views of an image sit in one shard.
  The probe's loss is its cross-entropy plus `weight_decay` * ||kernel||^2 / 2: the optimiser
  leaves the probe out of its decay, and the reference adds the probe's decay to the loss.
  `dropout_rng` feeds the encoder's dropout and stochastic depth, if it has any.
  """
  outputs, batch_stats = _forward(
      params, batch_stats, batch['views'], model=model, mesh=mesh, dropout_rng=dropout_rng
  )
  loss, metrics = _objective(
      params,
      outputs,
      batch.get('label'),
      temperature=temperature,
      mesh=mesh,
      chunk_size=chunk_size,
      weight_decay=weight_decay,
  )
  return loss, (metrics, batch_stats)


def loss_and_grads(
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
    microbatches=1,
):
  """((loss, (metrics, batch_stats)), grads) of loss_and_metrics, in `microbatches` passes.

  microbatches = M > 1: the gradient cache (core/gradient_cache.py). The loss still pairs
  every anchor with all 2N - 2 negatives of the batch, but the model sees N / M pairs at a time
  (pairs m, m + M, ...): BatchNorm normalises each micro-batch by its own statistics, the
  running averages move by the mean of the micro-batches' updates, and micro-batch m draws its
  dropout from fold_in(dropout_rng, m).
  """
  kwargs = dict(temperature=temperature, mesh=mesh, chunk_size=chunk_size)
  if microbatches == 1:
    return jax.value_and_grad(loss_and_metrics, has_aux=True)(
        params,
        batch_stats,
        batch,
        model=model,
        weight_decay=weight_decay,
        dropout_rng=dropout_rng,
        **kwargs,
    )

  def forward(p, views, m):
    rng = None if dropout_rng is None else jax.random.fold_in(dropout_rng, m)
    return _forward(p, batch_stats, views, model=model, mesh=mesh, dropout_rng=rng)

  def objective(p, outputs):
    return _objective(p, outputs, batch.get('label'), weight_decay=weight_decay, **kwargs)

  (loss, (metrics, micro_stats)), grads = gradient_cache.value_and_grad(
      forward, objective, params, batch['views'], microbatches, mesh
  )
  return (loss, (metrics, jax.tree.map(lambda s: s.mean(0), micro_stats))), grads


def augment_batch(batch, *, config_augment, image_size, mesh):
  """{'image', 'seed', 'label'} -> {'views', 'label'} (and 'local_views' with
  config.augment.local_crops): config.augment_on_device's views.

  Each example's views depend only on its own image and seed, so the vmapped augmentation
  splits over the 'data' axis like the batch, without communication.
  """
  views = {
      'views': augment_jax.pretrain_views(batch['image'], batch['seed'], config_augment, image_size)
  }
  if augment_jax.local_crops(config_augment)[0]:
    views['local_views'] = augment_jax.local_views(batch['image'], batch['seed'], config_augment)
  views = jax.lax.with_sharding_constraint(views, batch_sharded(mesh))
  return {**views, 'label': batch['label']}


def device_augment(config, mesh):
  """The views maker of config.augment_on_device for a train step (augment_batch); None when
  tf.data makes the views."""
  if not config.augment_on_device:
    return None
  return functools.partial(
      augment_batch,
      config_augment=config.augment,
      image_size=augment_jax.pretrain_size(config),
      mesh=mesh,
  )


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
    microbatches=1,
):
  """One optimisation step on a global batch; returns the new state and scalar metrics.

  `augment`, if given, first turns the batch into views (`augment_batch`). The dropout key is
  a function of (dropout_seed, step), so a resumed run draws what an uninterrupted one would.
  """
  if augment is not None:
    batch = augment(batch)
  (loss, (metrics, batch_stats)), grads = loss_and_grads(
      state.params,
      state.batch_stats,
      batch,
      model=model,
      temperature=temperature,
      mesh=mesh,
      chunk_size=chunk_size,
      weight_decay=weight_decay,
      dropout_rng=train_state.step_rng(dropout_seed, state.step),
      microbatches=microbatches,
  )
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
    microbatches=1,
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
      microbatches=microbatches,
  )
  return train_state.jit_step(step_fn, mesh)


def create_optimizer(config, schedule, weight_decay=None):
  """The pretraining optimiser, the online probe ('probe') out of weight decay and the trust
  ratio and at config.probe_learning_rate_scale times the learning rate; `weight_decay` (a
  value or a schedule) replaces config.weight_decay."""
  return optim.create_optimizer(
      config, schedule, supervised_head=probe.NAME, weight_decay=weight_decay
  )


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
    micro = config.microbatches
    if not (isinstance(micro, int) and micro >= 1 and config.batch_size % micro == 0):
      raise ValueError(
          f'config.microbatches={micro!r} must be a positive integer dividing '
          f'config.batch_size={config.batch_size} (1: no micro-batches).'
      )
    if (config.batch_size // micro) % num_devices:
      raise ValueError(
          f'config.microbatches={micro} gives micro-batches of {config.batch_size // micro} '
          f'images, which do not split over the {num_devices} devices: use microbatches '
          f'dividing batch_size / devices = {per_device}.'
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

  def make_train_step(self, model, tx, schedule, mesh, total_steps):
    del total_steps  # The schedule holds it.
    config = self.config
    if config.microbatches > 1:
      logging.info(
          'Gradient cache: each batch of %d pairs runs in %d micro-batches of %d; NT-Xent sees '
          'the whole batch, BatchNorm each micro-batch.',
          config.batch_size,
          config.microbatches,
          config.batch_size // config.microbatches,
      )
    return make_train_step(
        model,
        tx,
        schedule,
        config.temperature,
        mesh,
        config.contrastive_chunk_size,
        device_augment(config, mesh),
        config.weight_decay,
        config.seed,
        config.microbatches,
    )
