"""What BYOL, MoCo v3 and SimSiam share: an online network (encoder f, projector g, predictor q)
whose predictions of one view are pulled towards the projections of the other view by a target
network: an exponential moving average of the online encoder and projector (BYOL, MoCo v3), or
the online network itself behind a stop-gradient (SimSiam).

As in the authors' code, each view goes through the networks on its own (BatchNorm statistics
per view, over all devices: their SyncBatchNorm), and the target keeps its own BatchNorm running
averages. A method subclasses SiameseMethod with its heads, its pair loss and its config section.
"""

import abc
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from simclr_jax import models
from simclr_jax.core import optim
from simclr_jax.core import train_state
from simclr_jax.core.sharding import batch_sharded
from simclr_jax.methods import core
from simclr_jax.methods import probe
from simclr_jax.methods import simclr
from simclr_jax.models.heads import DENSE_INIT, MLPHead

# The modules that an EMA target copies (the predictor and the probe are online only).
TARGET_MODULES = ('encoder', 'head')


class SiameseModel(nn.Module):
  """Encoder f, projector g (named 'head', like SimCLR's), predictor q and the online probe.

  __call__ returns {'h', 'z' (projection), 'p' (prediction) and 'probe_logits' if any};
  `project` is the target network's part, {'h', 'z'}.
  """

  encoder: nn.Module
  head: nn.Module
  predictor: nn.Module | None = None  # None: no 'p' (DINO).
  num_classes: int = 0

  def project(self, images, train: bool):
    h = self.encoder(images, train=train)
    return {'h': models.at_least_float32(h), 'z': models.at_least_float32(self.head(h, train))}

  @nn.compact
  def __call__(self, images, train: bool):
    out = self.project(images, train)
    if self.predictor is not None:
      out['p'] = models.at_least_float32(self.predictor(out['z'], train))
    if self.num_classes:
      out['probe_logits'] = nn.Dense(self.num_classes, kernel_init=DENSE_INIT, name=probe.NAME)(
          jax.lax.stop_gradient(out['h'])
      )
    return out

  def encode(self, images, train: bool = False):
    return self.encoder(images, train=train)


def ema_decay(step, base_ema: float, total_steps: int):
  """tau(step) = 1 - (1 - base_ema) * (1 + cos(pi * step / total_steps)) / 2."""
  return optim.cosine_between(base_ema, 1.0, total_steps)(step)


def ema_update(target_params, params, tau):
  """target <- tau target + (1 - tau) online, for each module of the target."""
  return jax.tree.map(
      lambda t, o: t + (1.0 - tau) * (o - t), target_params, {k: params[k] for k in target_params}
  )


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


def loss_and_metrics(params, online, target_z, labels, pair_loss, weight_decay=0.0):
  """pair_loss(online['p'], target_z) (+ the probe's) of the online outputs and the target
  projections [n, 2, d] of the same views; returns (loss, metrics). No gradient reaches the
  target."""
  loss, metrics = pair_loss(online['p'], jax.lax.stop_gradient(target_z))
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
    pair_loss,
    ema_schedule,
    mesh,
    augment=None,
    weight_decay=0.0,
    dropout_seed=0,
):
  """One step: the online update, then (ema_schedule given) the target's EMA towards the new
  parameters; without ema_schedule the target is the online network of this forward pass."""
  if augment is not None:
    batch = augment(batch)
  rng = train_state.step_rng(dropout_seed, state.step)
  online_rng, target_rng = jax.random.split(rng)
  forward = functools.partial(per_view_forward, views=batch['views'], model=model, mesh=mesh)
  target = state.method_state.get('target')
  if target is not None:
    target_out, target_stats = forward(target, method='project', dropout_rng=target_rng)

  def loss_fn(params):
    online, batch_stats = forward(
        {'params': params, 'batch_stats': state.batch_stats}, dropout_rng=online_rng
    )
    loss, metrics = loss_and_metrics(
        params,
        online,
        online['z'] if target is None else target_out['z'],
        batch.get('label'),
        pair_loss,
        weight_decay,
    )
    return loss, (metrics, batch_stats)

  (loss, (metrics, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics['learning_rate'] = schedule(state.step)
  method_state = state.method_state
  if target is not None:
    tau = ema_schedule(state.step)
    target_params = ema_update(target['params'], params, tau)
    method_state = {'target': {'params': target_params, 'batch_stats': target_stats}}
    metrics['ema_decay'] = tau
  new_state = state.replace(
      step=state.step + 1,
      params=params,
      batch_stats=batch_stats,
      opt_state=opt_state,
      method_state=method_state,
  )
  return train_state.only_if_finite(loss, grads, new_state, state, metrics)


def target_of(variables) -> dict[str, Any]:
  """The EMA target at step 0: a copy of the online encoder and projector."""
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


def validate_section(config, section: str, example_configs: str, dims):
  """What a method with a target network checks of its config: its section is there
  (`example_configs` named if not), the section's `dims` are positive integers, and one
  micro-batch (the gradient cache is SimCLR's)."""
  if section not in config:
    raise ValueError(
        f'config.method={section!r} needs the config.{section} section: start from '
        f'{example_configs}.'
    )
  for name in dims:
    value = config[section][name]
    if not (isinstance(value, int) and value > 0):
      raise ValueError(f'config.{section}.{name}={value!r} must be a positive integer.')
  if config.microbatches != 1:
    raise ValueError(
        f'config.microbatches={config.microbatches}: the gradient cache is built into '
        f"SimCLR's step only, not {section}'s; set config.microbatches=1 (and lower batch_size "
        'to save memory).'
    )


class SiameseMethod(core.Method):
  """A method of this family: its config section, heads and pair loss."""

  section: str  # Its config section (config.byol, ...) and config.method.
  example_configs: str  # Where to start from, named in errors.
  dims: tuple[str, ...]  # The section's positive integer sizes.
  uses_target: bool = True  # An EMA target (section.base_ema); False: stop-gradient only.

  def validate(self, num_devices):
    del num_devices
    validate_section(self.config, self.section, self.example_configs, self.dims)
    c = self.config[self.section]
    if self.uses_target and not 0 <= c.base_ema <= 1:
      raise ValueError(
          f"config.{self.section}.base_ema={c.base_ema} must be in [0, 1] (the target's EMA "
          'decay at step 0, rising to 1; e.g. 0.996 or 0.99).'
      )

  @abc.abstractmethod
  def create_heads(self, dtype) -> tuple[nn.Module, nn.Module]:
    """(projector named 'head', predictor named 'predictor') of the config section."""

  @abc.abstractmethod
  def pair_loss(self, mesh):
    """(p, target_z) [n, 2, d] each -> (loss, metrics): view v's predictions against the other
    view's target projections; the batch is sharded over `mesh`."""

  def mlp(self, dtype, **kwargs) -> MLPHead:
    """An MLPHead to the section's output_dim, with the encoder's BatchNorm settings."""
    model = self.config.model
    return MLPHead(
        output_dim=self.config[self.section].output_dim,
        bn_momentum=model.bn_momentum,
        bn_epsilon=model.bn_epsilon,
        dtype=dtype,
        **kwargs,
    )

  def create_model(self, num_classes):
    config = self.config
    dtype = models.DTYPES[config.dtype]
    head, predictor = self.create_heads(dtype)
    return SiameseModel(
        encoder=models.create_encoder(
            config.model, image_size=config.image_size, dtype=dtype, remat=config.remat
        ),
        head=head,
        predictor=predictor,
        num_classes=num_classes,
    )

  def create_optimizer(self, schedule):
    return simclr.create_optimizer(self.config, schedule)

  def init_state(self, model, tx, rng):
    return train_state.init_train_state(
        model, tx, rng, self.config.image_size, method_state=target_of if self.uses_target else None
    )

  def make_train_step(self, model, tx, schedule, mesh, total_steps):
    config = self.config
    ema_schedule = None
    if self.uses_target:
      ema_schedule = functools.partial(
          ema_decay, base_ema=config[self.section].base_ema, total_steps=total_steps
      )
    step_fn = functools.partial(
        train_step,
        model=model,
        tx=tx,
        schedule=schedule,
        pair_loss=self.pair_loss(mesh),
        ema_schedule=ema_schedule,
        mesh=mesh,
        augment=simclr.device_augment(config, mesh),
        weight_decay=config.weight_decay,
        dropout_seed=config.seed,
    )
    return train_state.jit_step(step_fn, mesh)
