"""Host batches to global device arrays, a few batches ahead of the step."""

import collections
import itertools

import jax
import tensorflow as tf

from simclr_jax import datasets


def device_batches(dataset, sharding, prefetch=2, *, config=None, split=None):
  """Yields global jax.Arrays per batch, keeping `prefetch` batches in flight.

  Each host's local numpy batch becomes its part of a global array laid out by
  `sharding` (jax.make_array_from_process_local_data), so host-to-device
  copies of the next batches overlap the current step. Given the `config` and `split` the
  dataset reads, a decoding failure becomes a ValueError naming the unreadable files.
  """
  iterator = dataset.as_numpy_iterator()
  queue = collections.deque()

  def enqueue(n):
    try:
      for batch in itertools.islice(iterator, n):
        queue.append(
            {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}
        )
    except tf.errors.InvalidArgumentError as e:
      if config is None:
        raise
      raise ValueError(datasets.get(config).decode_error_message(split, e)) from None

  enqueue(max(prefetch, 1))
  while queue:
    yield queue.popleft()
    enqueue(1)
