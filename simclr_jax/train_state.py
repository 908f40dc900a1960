"""The training state: everything that changes during training, as one pytree."""

from typing import Any

import flax
import jax
import jax.numpy as jnp

from simclr_jax import models


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training; saved and restored as one pytree."""

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array  # Base key; step t uses fold_in(rng, t), so randomness is a function of step.


def init_train_state(model, tx, rng, image_size: int) -> TrainState:
  """Initialises parameters, BatchNorm statistics and optimiser state from `rng`."""
  init_rng, state_rng = jax.random.split(rng)
  variables = models.init_variables(model, init_rng, image_size)
  params = variables['params']
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats=variables['batch_stats'],
      opt_state=tx.init(params),
      rng=state_rng,
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
