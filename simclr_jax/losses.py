"""NT-Xent, the SimCLR contrastive loss, and MoCo v3's InfoNCE, on one device or sharded over a
mesh axis.

Sharded, each device gathers the projections of every device but computes only its own rows
(N_local anchors x N global columns), as the official TPU code does; gradients reach the other
devices' columns through the transpose of all_gather (a reduce-scatter).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

# Subtracted from self-similarity logits; large enough to zero their softmax weight in float32.
_LARGE_NUM = 1e9


class ContrastiveOutput(NamedTuple):
  """The reference's loss and metrics (google-research/simclr, objective.py and metrics.py)."""

  # NT-Xent: mean(loss_a) + mean(loss_b), twice the mean over the 2N anchors; InfoNCE: 2 T x
  # the mean cross-entropy of the N queries.
  loss: jax.Array
  # Fraction of view-a anchors whose most similar view-b column is their positive.
  accuracy: jax.Array
  # Mean entropy of softmax(logits_ab): each view-a anchor over the N view-b columns.
  entropy: jax.Array


def _l2_normalize(x):
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-24))


def _anchor_rows(z_a, z_b, z_a_all, z_b_all, temperature, row_offset):
  """Sums of loss (both views), correct and entropy (view a) over anchors z_a, z_b.

  The anchors are rows row_offset + i of the batch; the metrics are the reference's, computed on
  logits_ab alone.
  """
  n_rows, n = z_a.shape[0], z_a_all.shape[0]
  positives = row_offset + jnp.arange(n_rows)
  self_mask = jax.nn.one_hot(positives, n, dtype=z_a.dtype) * _LARGE_NUM

  def loss_sum(anchors, same_view_all, other_view_all):
    logits_other = anchors @ other_view_all.T / temperature
    logits_same = anchors @ same_view_all.T / temperature - self_mask
    logits = jnp.concatenate([logits_other, logits_same], axis=1)
    log_probs = jax.nn.log_softmax(logits, axis=1)
    return -jnp.take_along_axis(log_probs, positives[:, None], axis=1).sum(), logits_other

  loss_a, logits_ab = loss_sum(z_a, z_a_all, z_b_all)
  loss_b, _ = loss_sum(z_b, z_b_all, z_a_all)
  correct = jnp.sum(jnp.argmax(logits_ab, axis=1) == positives)
  log_probs_ab = jax.nn.log_softmax(logits_ab, axis=1)
  entropy = -jnp.sum(jnp.exp(log_probs_ab) * log_probs_ab)
  return loss_a + loss_b, correct, entropy


def _local_rows(z_a, z_b, z_a_all, z_b_all, temperature, row_offset, chunk_size):
  """Sums over the local anchors, `chunk_size` anchors of each view at a time (0: all).

  Chunks run in a scan whose body is rematerialised, so only one chunk's [chunk, 2N] logits
  live at a time, forward and backward: the loss memory drops from O(N^2) to O(chunk * N).
  """
  n_local = z_a.shape[0]
  if not chunk_size or chunk_size >= n_local:
    return _anchor_rows(z_a, z_b, z_a_all, z_b_all, temperature, row_offset)
  if n_local % chunk_size:
    raise ValueError(
        f'contrastive_chunk_size={chunk_size} must divide the {n_local} anchors '
        'per device and view.'
    )
  num_chunks = n_local // chunk_size

  @jax.checkpoint
  def chunk_sums(chunk):
    a, b, offset = chunk
    return _anchor_rows(a, b, z_a_all, z_b_all, temperature, offset)

  def accumulate(carry, chunk):
    return tuple(c + s for c, s in zip(carry, chunk_sums(chunk))), None

  chunks = (
      z_a.reshape(num_chunks, chunk_size, -1),
      z_b.reshape(num_chunks, chunk_size, -1),
      row_offset + chunk_size * jnp.arange(num_chunks),
  )
  # The first chunk starts the sums, so the carry has their exact type (sharded: varying).
  first = chunk_sums(jax.tree.map(lambda x: x[0], chunks))
  sums, _ = jax.lax.scan(accumulate, first, jax.tree.map(lambda x: x[1:], chunks))
  return sums


def _sum_over_devices(local_sums, arrays, mesh, axis_name):
  """The sums of local_sums(local, gathered, row_offset) over all rows of `arrays` ([N, ...]
  each, split over `axis_name` of `mesh`): each device passes its own rows (local), every
  device's rows (gathered) and the index of its first row; the results are summed over devices.
  Gathered arrays a device does not read are not gathered (XLA drops them, and autodiff sends
  them no gradient)."""
  if mesh is None or mesh.shape[axis_name] == 1:
    return local_sums(arrays, arrays, 0)

  def sharded_sums(*local):
    gathered = tuple(jax.lax.all_gather(x, axis_name, tiled=True) for x in local)
    offset = jax.lax.axis_index(axis_name) * local[0].shape[0]
    return tuple(jax.lax.psum(s, axis_name) for s in local_sums(local, gathered, offset))

  specs = (P(axis_name),) * len(arrays)
  return jax.shard_map(sharded_sums, mesh=mesh, in_specs=specs, out_specs=P())(*arrays)


def nt_xent(
    z_a: jax.Array,
    z_b: jax.Array,
    temperature: float,
    mesh: Mesh | None = None,
    axis_name: str = 'data',
    chunk_size: int = 0,
) -> ContrastiveOutput:
  """NT-Xent of the two views z_a, z_b ([N, D] each; row i of both is image i).

  With a `mesh`, the batch axis of z_a and z_b is sharded over `axis_name` and every device
  computes its local rows against the gathered columns; the value equals the unsharded one.
  `chunk_size` > 0 computes each device's rows that many anchors at a time, with the same
  value and gradients in less memory; it must divide the anchors per device.
  """
  # At least float32 (bfloat16 projections are promoted; float64 ones stay float64).
  dtype = jnp.promote_types(jnp.promote_types(z_a.dtype, z_b.dtype), jnp.float32)
  z_a = _l2_normalize(z_a.astype(dtype))
  z_b = _l2_normalize(z_b.astype(dtype))
  n = z_a.shape[0]

  sums = _sum_over_devices(
      lambda local, gathered, offset: _local_rows(
          *local, *gathered, temperature, offset, chunk_size
      ),
      (z_a, z_b),
      mesh,
      axis_name,
  )
  loss, correct, entropy = sums
  # The reference's reduce_mean(loss_a + loss_b): the sum over all 2N anchors divided by N.
  return ContrastiveOutput(loss=loss / n, accuracy=correct.astype(dtype) / n, entropy=entropy / n)


def _query_rows(q, k_all, temperature, row_offset):
  """Sums of cross-entropy, correct and entropy of queries q (rows row_offset + i of the batch)
  over all keys k_all, each query's positive its own image's key."""
  logits = q @ k_all.T / temperature
  positives = row_offset + jnp.arange(q.shape[0])
  log_probs = jax.nn.log_softmax(logits, axis=1)
  loss = -jnp.take_along_axis(log_probs, positives[:, None], axis=1).sum()
  correct = jnp.sum(jnp.argmax(logits, axis=1) == positives)
  entropy = -jnp.sum(jnp.exp(log_probs) * log_probs)
  return loss, correct, entropy


def info_nce(
    q: jax.Array,
    k: jax.Array,
    temperature: float,
    mesh: Mesh | None = None,
    axis_name: str = 'data',
) -> ContrastiveOutput:
  """MoCo v3's InfoNCE of queries q against keys k ([N, D] each; row i of both is image i):
  2 T * the mean cross-entropy of each query against the N keys, its own key the positive.

  The keys are constants (the momentum encoder's). With a `mesh`, each device gathers every
  device's keys and computes its own query rows, as the authors' concat_all_gather; the value
  equals the unsharded one. Accuracy and entropy are those of the query rows.
  """
  dtype = jnp.promote_types(jnp.promote_types(q.dtype, k.dtype), jnp.float32)
  q = _l2_normalize(q.astype(dtype))
  k = jax.lax.stop_gradient(_l2_normalize(k.astype(dtype)))
  n = q.shape[0]
  sums = _sum_over_devices(
      lambda local, gathered, offset: _query_rows(local[0], gathered[1], temperature, offset),
      (q, k),
      mesh,
      axis_name,
  )
  loss, correct, entropy = sums
  return ContrastiveOutput(
      loss=2 * temperature * loss / n, accuracy=correct.astype(dtype) / n, entropy=entropy / n
  )
