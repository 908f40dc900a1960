"""The two-pass gradient cache (Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size
under Memory Limited Setup"): the gradient of a loss over a whole batch's model outputs, with
the activations of one micro-batch alive at a time.

1. Run the model on each micro-batch without differentiating it: only the outputs are kept.
2. Compute the loss of all outputs together and its gradient with respect to them (every
   anchor keeps every negative of the whole batch).
3. Run each micro-batch again, pull its slice of that gradient back through the model (vjp),
   and sum over micro-batches.

Micro-batch m holds examples m, m + M, m + 2M, ... of the batch: split over a sharded batch axis,
each device keeps its own rows, so the micro-batches are split over the mesh like the batch.
"""

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from simclr_jax.core.sharding import DATA_AXIS


def split(tree, num_microbatches: int, mesh=None):
  """[N, ...] leaves -> [M, N / M, ...]: micro-batch m holds examples m, m + M, ..."""

  def split_leaf(x):
    x = x.reshape((x.shape[0] // num_microbatches, num_microbatches) + x.shape[1:])
    x = jnp.swapaxes(x, 0, 1)
    if mesh is not None:
      x = jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(None, DATA_AXIS)))
    return x

  return jax.tree.map(split_leaf, tree)


def merge(tree, mesh=None):
  """The inverse of `split`: [M, N / M, ...] leaves -> [N, ...] in the batch's order."""

  def merge_leaf(x):
    x = jnp.swapaxes(x, 0, 1).reshape((x.shape[0] * x.shape[1],) + x.shape[2:])
    if mesh is not None:
      x = jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(DATA_AXIS)))
    return x

  return jax.tree.map(merge_leaf, tree)


def value_and_grad(forward, objective, params, inputs, num_microbatches: int, mesh=None):
  """The value and `params` gradient of objective(params, forward(params, inputs)), in
  micro-batches.

  Args:
    forward: (params, micro_inputs, m) -> (outputs, aux): the model on micro-batch m; the
      leaves of `outputs` have the micro-batch axis first, `aux` (e.g. BatchNorm statistics) is
      returned but not differentiated.
    objective: (params, outputs) -> (loss, metrics) on the outputs of the whole batch (merged
      in the batch's order); it may also read `params` directly (e.g. a weight penalty).
    params: differentiated.
    inputs: pytree of [N, ...] arrays, N divisible by num_microbatches.
    num_microbatches: M.
    mesh: if given, the batch axis of `inputs` is sharded over its 'data' axis.

  Returns:
    ((loss, (metrics, aux)), grads), aux stacked over micro-batches ([M, ...] leaves); the
    value and gradient equal jax.value_and_grad's of the composition in which the model sees
    one micro-batch at a time.
  """
  micro_inputs = split(inputs, num_microbatches, mesh)
  indices = jnp.arange(num_microbatches)
  frozen = jax.lax.stop_gradient(params)
  outputs, aux = jax.lax.map(lambda x: forward(frozen, x[0], x[1]), (micro_inputs, indices))
  (loss, metrics), (objective_grads, output_grads) = jax.value_and_grad(
      objective, argnums=(0, 1), has_aux=True
  )(params, merge(outputs, mesh))

  def accumulate(grads, micro):
    x, m, output_grad = micro
    _, pullback = jax.vjp(lambda p: forward(p, x, m)[0], params)
    return jax.tree.map(jnp.add, grads, pullback(output_grad)[0]), None

  grads, _ = jax.lax.scan(
      accumulate,
      objective_grads,
      (micro_inputs, indices, split(output_grads, num_microbatches, mesh)),
  )
  return (loss, (metrics, aux)), grads
