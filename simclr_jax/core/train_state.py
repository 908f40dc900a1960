"""The training state: everything that changes during training, as one pytree."""

from typing import Any

import flax
import jax
import jax.numpy as jnp

from simclr_jax import models
from simclr_jax.core.sharding import batch_sharded, replicated

_DROPOUT_STREAM = 1  # fold_in index of the dropout keys.


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training; saved and restored as one pytree."""

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array  # Base key; step t uses fold_in(rng, t), so randomness is a function of step.
  # What a method keeps besides the trained parameters (BYOL's EMA target network); {} for
  # SimCLR. Checkpoints made before this field existed restore it as {}.
  method_state: Any = flax.struct.field(default_factory=dict)


def init_train_state(
    model, tx, rng, image_size: int, pretrained=None, method_state=None
) -> TrainState:
  """Initialises parameters, BatchNorm statistics and optimiser state from `rng`.

  `pretrained` (optional) maps the fresh variables to those to start from (fine-tuning: the
  pretrained encoder in place of the random one); `method_state` (optional) maps them to the
  method's own state.
  """
  init_rng, state_rng = jax.random.split(rng)
  variables = models.init_variables(model, init_rng, image_size)
  if pretrained is not None:
    variables = pretrained(variables)
  params = variables['params']
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats=variables.get('batch_stats', {}),  # {}: a model without BatchNorm.
      opt_state=tx.init(params),
      rng=state_rng,
      method_state={} if method_state is None else method_state(variables),
  )


def jit_step(step_fn, mesh):
  """jit-compiles step_fn(state, batch) -> (state, metrics) with the state replicated, the batch
  split over the mesh's 'data' axis, and the old state donated."""
  return jax.jit(
      step_fn,
      in_shardings=(replicated(mesh), batch_sharded(mesh)),
      out_shardings=(replicated(mesh), replicated(mesh)),
      donate_argnums=(0,),
  )


def only_if_finite(loss, grads, new_state, state, metrics):
  """(new_state, metrics) if loss and gradients are finite, else (state, metrics).

  metrics['finite'] tells the loop, which stops with an error: a non-finite update never
  reaches the parameters, so no checkpoint can hold one.
  """
  finite = jnp.isfinite(loss)
  for g in jax.tree.leaves(grads):
    finite &= jnp.all(jnp.isfinite(g))
  kept = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
  return kept, {**metrics, 'finite': finite}


def step_rng(seed: int, step):
  """The dropout key of `step`: a function of (seed, step) only, so that a resumed run draws
  what an uninterrupted one would; a stream apart from the initialisation's PRNGKey(seed)."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), _DROPOUT_STREAM), step)
