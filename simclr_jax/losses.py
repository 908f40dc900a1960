"""NT-Xent, the SimCLR contrastive loss, on one device or sharded over a mesh axis.

Sharded, each device gathers the projections of every device but computes only its own rows
(N_local anchors x N global columns), as the official TPU code does; gradients reach the other
devices' columns through the transpose of all_gather (a reduce-scatter).
"""

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

# Subtracted from self-similarity logits; large enough to zero their softmax weight in float32.
_LARGE_NUM = 1e9


class ContrastiveOutput(NamedTuple):
  loss: jax.Array  # Mean NT-Xent over all 2N anchors.
  accuracy: jax.Array  # Fraction of anchors whose most similar other-view column is the positive.
  entropy: jax.Array  # Mean entropy of the softmax over each anchor's 2N - 1 candidates.


def _l2_normalize(x):
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-24))


def _local_rows(z_a, z_b, z_a_all, z_b_all, temperature, row_offset):
  """Sums of loss, correct and entropy over the local anchors of both views."""
  n_local, n = z_a.shape[0], z_a_all.shape[0]
  positives = row_offset + jnp.arange(n_local)
  self_mask = jax.nn.one_hot(positives, n, dtype=z_a.dtype) * _LARGE_NUM

  def anchor_sums(anchors, same_view_all, other_view_all):
    logits_other = anchors @ other_view_all.T / temperature
    logits_same = anchors @ same_view_all.T / temperature - self_mask
    logits = jnp.concatenate([logits_other, logits_same], axis=1)
    log_probs = jax.nn.log_softmax(logits, axis=1)
    loss = -jnp.take_along_axis(log_probs, positives[:, None], axis=1).sum()
    correct = jnp.sum(jnp.argmax(logits_other, axis=1) == positives)
    # exp(log p) * log p is 0 for the masked columns (p underflows to exactly 0).
    entropy = -jnp.sum(jnp.exp(log_probs) * log_probs)
    return loss, correct, entropy

  sums_a = anchor_sums(z_a, z_a_all, z_b_all)
  sums_b = anchor_sums(z_b, z_b_all, z_a_all)
  return tuple(a + b for a, b in zip(sums_a, sums_b))


def nt_xent(z_a: jax.Array, z_b: jax.Array, temperature: float,
            mesh: Optional[Mesh] = None, axis_name: str = 'data') -> ContrastiveOutput:
  """NT-Xent of the two views z_a, z_b ([N, D] each; row i of both is image i).

  With a `mesh`, the batch axis of z_a and z_b is sharded over `axis_name` and every device
  computes its local rows against the gathered columns; the value equals the unsharded one.
  """
  z_a = _l2_normalize(z_a.astype(jnp.float32))
  z_b = _l2_normalize(z_b.astype(jnp.float32))
  num_anchors = 2 * z_a.shape[0]

  if mesh is None or mesh.shape[axis_name] == 1:
    sums = _local_rows(z_a, z_b, z_a, z_b, temperature, 0)
  else:
    def sharded_sums(z_a, z_b):
      z_a_all = jax.lax.all_gather(z_a, axis_name, tiled=True)
      z_b_all = jax.lax.all_gather(z_b, axis_name, tiled=True)
      offset = jax.lax.axis_index(axis_name) * z_a.shape[0]
      sums = _local_rows(z_a, z_b, z_a_all, z_b_all, temperature, offset)
      return tuple(jax.lax.psum(s, axis_name) for s in sums)

    sums = jax.shard_map(sharded_sums, mesh=mesh, in_specs=(P(axis_name), P(axis_name)),
                         out_specs=P())(z_a, z_b)
  loss, correct, entropy = sums
  return ContrastiveOutput(loss=loss / num_anchors,
                           accuracy=correct.astype(jnp.float32) / num_anchors,
                           entropy=entropy / num_anchors)
