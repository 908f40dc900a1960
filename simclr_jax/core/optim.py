"""Learning-rate schedule and optimisers (LARS, momentum SGD, AdamW) for SimCLR."""

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

OPTIMIZERS = ('lars', 'sgd', 'adamw')
FINETUNE_OPTIMIZERS = ('momentum', 'lars')
LR_SCALINGS = ('linear', 'sqrt')


def scaled_learning_rate(base_lr: float, batch_size: int, scaling: str) -> float:
  """Peak learning rate: base * B / 256 ('linear') or base * sqrt(B) ('sqrt')."""
  if scaling == 'linear':
    return base_lr * batch_size / 256
  if scaling == 'sqrt':
    return base_lr * math.sqrt(batch_size)
  raise ValueError(f'config.lr_scaling={scaling!r} is not known; use one of {LR_SCALINGS}.')


def steps_for_epochs(epochs: float, num_examples: int, batch_size: int) -> int:
  """epochs * num_examples // batch_size + 1, as the reference counts training steps."""
  return int(epochs * num_examples // batch_size) + 1


def total_train_steps(config, num_examples: int) -> int:
  """config.num_train_steps if > 0, else steps_for_epochs of config.num_epochs."""
  if config.num_train_steps > 0:
    return config.num_train_steps
  return steps_for_epochs(config.num_epochs, num_examples, config.batch_size)


def warmup_cosine_schedule(peak: float, warmup_steps: int, total_steps: int) -> optax.Schedule:
  """Linear warm-up from 0 to `peak` over `warmup_steps`, then cosine decay to 0 at total_steps."""

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warmup = peak * step / max(warmup_steps, 1)
    progress = jnp.clip((step - warmup_steps) / max(total_steps - warmup_steps, 1), 0.0, 1.0)
    cosine = peak * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    return jnp.where(step < warmup_steps, warmup, cosine)

  return schedule


def cosine_between(start: float, end: float, total_steps: int) -> optax.Schedule:
  """end + (start - end) (1 + cos(pi step / total_steps)) / 2, then `end`: from start to end
  on a half cosine (the EMA decay of the target networks, DINO's weight decay)."""

  def schedule(step):
    progress = jnp.minimum(jnp.asarray(step, jnp.float32) / max(total_steps, 1), 1.0)
    return end + (start - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))

  return schedule


def warmup_steps(warmup_epochs: float, num_examples: int, batch_size: int) -> int:
  """Warm-up steps as the reference counts them: int(round(epochs * examples // batch)).

  The floor division comes first (10 epochs of 50,000 at batch 512: 976 steps, not 977).
  """
  return int(round(warmup_epochs * num_examples // batch_size))


def learning_rate_schedule(config, num_examples: int, total_steps: int) -> optax.Schedule:
  """Pretraining schedule: warm-up over `config.warmup_epochs`, then cosine to 0."""
  peak = scaled_learning_rate(config.learning_rate, config.batch_size, config.lr_scaling)
  return warmup_cosine_schedule(
      peak, warmup_steps(config.warmup_epochs, num_examples, config.batch_size), total_steps
  )


def names(path):
  """A parameter's tree path as plain names: ('encoder', 'stem_conv', 'kernel')."""
  return [str(getattr(k, 'key', k)) for k in path]


def decay_mask(params, supervised_head: str | None = None):
  """True for the conv and dense kernels, less those of `supervised_head` (a module name).

  BatchNorm parameters, biases and the supervised head (the online probe in pretraining, the
  classifier in LARS fine-tuning) are excluded from weight decay and from the LARS trust ratio,
  as in the reference.
  """

  def is_decayed(path, _):
    path_names = names(path)
    return path_names[-1] == 'kernel' and supervised_head not in path_names

  return jax.tree_util.tree_map_with_path(is_decayed, params)


def _lars(section, schedule: optax.Schedule, mask, weight_decay=None):
  """LARS with `section`'s weight decay (or `weight_decay`), trust coefficient and momentum;
  `mask` picks the parameters that get both decay and trust ratio (the reference excludes the
  same set)."""
  return optax.lars(
      schedule,
      weight_decay=section.weight_decay if weight_decay is None else weight_decay,
      weight_decay_mask=mask,
      trust_coefficient=section.lars_trust_coefficient,
      trust_ratio_mask=mask,
      momentum=section.momentum,
  )


def create_optimizer(
    config,
    schedule: optax.Schedule,
    supervised_head: str | None = None,
    weight_decay: optax.ScalarOrSchedule | None = None,
) -> optax.GradientTransformation:
  """The optimiser named by config.optimizer, with decay masked as in `decay_mask`.

  The updates of params[supervised_head] (SimCLR's online probe), if given, are scaled by
  config.probe_learning_rate_scale. `weight_decay` (a value or a schedule of the step) replaces
  config.weight_decay.
  """
  mask = functools.partial(decay_mask, supervised_head=supervised_head)
  decay = config.weight_decay if weight_decay is None else weight_decay
  if config.optimizer == 'lars':
    tx = _lars(config, schedule, mask, decay)
  elif config.optimizer == 'sgd':
    tx = optax.chain(
        optax.add_decayed_weights(decay, mask=mask),
        optax.sgd(schedule, momentum=config.momentum),
    )
  elif config.optimizer == 'adamw':
    tx = optax.adamw(schedule, b1=config.momentum, weight_decay=decay, mask=mask)
  else:
    raise ValueError(
        f'config.optimizer={config.optimizer!r} is not known; use one of {OPTIMIZERS}.'
    )
  if supervised_head is None:
    return tx
  return scale_updates(tx, supervised_head, config.probe_learning_rate_scale)


def scale_updates(tx: optax.GradientTransformation, name: str, scale: float):
  """`tx` with the updates of params[name] multiplied by `scale`: its learning rate times
  `scale`. The optimiser state is tx's own, so checkpoints do not depend on `scale`."""

  def update(updates, state, params=None):
    updates, state = tx.update(updates, state, params)
    if name in updates:
      updates = {**updates, name: jax.tree.map(lambda u: scale * u, updates[name])}
    return updates, state

  return optax.GradientTransformation(tx.init, update)


class FrozenForState(NamedTuple):
  count: jax.Array  # Calls so far, up to num_steps.
  inner: optax.OptState


def frozen_for(tx: optax.GradientTransformation, num_steps: int):
  """`tx`, updating nothing for its first `num_steps` calls: zero updates and tx's state left
  as it was, so its first real update is as its first from init (DINO's last layer in epoch 1:
  torch's grad = None skips the optimiser, momentum and step count included)."""

  def init(params):
    return FrozenForState(jnp.zeros([], jnp.int32), tx.init(params))

  def update(updates, state, params=None):
    new_updates, new_inner = tx.update(updates, state.inner, params)
    frozen = state.count < num_steps
    keep = lambda old, new: jnp.where(frozen, old, new)
    return jax.tree.map(lambda u: keep(jnp.zeros_like(u), u), new_updates), FrozenForState(
        jnp.minimum(state.count + 1, num_steps), jax.tree.map(keep, state.inner, new_inner)
    )

  return optax.GradientTransformation(init, update)


def clip_each_by_norm(max_norm: float):
  """Each parameter's gradient scaled to an L2 norm of at most `max_norm` (DINO's
  clip_gradients: per parameter, not over all of them as optax.clip_by_global_norm)."""

  def update(updates, state, params=None):
    del params
    clip = lambda g: g * jnp.minimum(1.0, max_norm / (jnp.linalg.norm(g) + 1e-6))
    return jax.tree.map(clip, updates), state

  return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def frozen_mask(params, fine_tune_after_block: int, part_of):
  """True for the encoder parameters that fine-tuning freezes: those of parts 0 (the input
  side) to fine_tune_after_block, as `part_of(names under the encoder)` tells."""

  def is_frozen(path, _):
    path_names = names(path)
    return path_names[0] == 'encoder' and part_of(path_names[1:]) <= fine_tune_after_block

  return jax.tree_util.tree_map_with_path(is_frozen, params)


def create_finetune_optimizer(
    ft_config, schedule: optax.Schedule, part_of
) -> optax.GradientTransformation:
  """The reference's fine-tuning optimisers; frozen parameters (frozen_mask) stay fixed.

  'momentum': Nesterov momentum SGD with weight decay on every kernel, the classifier's
  included (its linear evaluation). 'lars': LARS as in pretraining, the classifier (its
  'head_supervised') excluded from decay and trust ratio (its 1%/10% fine-tuning).
  """
  if ft_config.optimizer == 'lars':
    tx = _lars(ft_config, schedule, functools.partial(decay_mask, supervised_head='classifier'))
  elif ft_config.optimizer == 'momentum':
    tx = optax.chain(
        optax.add_decayed_weights(ft_config.weight_decay, mask=decay_mask),
        optax.sgd(schedule, momentum=ft_config.momentum, nesterov=True),
    )
  else:
    raise ValueError(
        f'config.finetune.optimizer={ft_config.optimizer!r} is not known; use one '
        f'of {FINETUNE_OPTIMIZERS}.'
    )

  def labels(params):
    return jax.tree.map(
        lambda frozen: 'frozen' if frozen else 'trained',
        frozen_mask(params, ft_config.fine_tune_after_block, part_of),
    )

  return optax.multi_transform({'trained': tx, 'frozen': optax.set_to_zero()}, labels)
