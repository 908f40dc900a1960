"""Weighted k-nearest-neighbour classification on cosine similarity (Wu et al. 2018)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np


def _normalize(x):
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@functools.partial(jax.jit, static_argnames='k')
def _top_k(queries, bank, k):
  """Cosine similarities and indices [Q, k] of the k rows of `bank` (normalised) nearest each."""
  return jax.lax.top_k(_normalize(queries) @ bank.T, k)


@functools.partial(jax.jit, static_argnames=('num_classes', 'k'))
def _chunk_scores(queries, bank, bank_labels, *, num_classes, k, temperature):
  top_sim, top_idx = _top_k(queries, bank, k)
  weights = jnp.exp(top_sim / temperature)
  votes = jax.nn.one_hot(bank_labels[top_idx], num_classes) * weights[..., None]
  return votes.sum(axis=1)


def _check_k(k, bank):
  if not 1 <= k <= len(bank):
    raise ValueError(
        f'kNN k={k} must be in [1, number of training examples = '
        f'{len(bank)}]; lower config.eval.knn_k.'
    )


def _map_chunks(fn, queries, chunk_size):
  """fn(chunk) over zero-padded chunks of `queries`, outputs trimmed and concatenated.

  Every call has the same shape, so a jitted `fn` compiles once.
  """
  queries = np.asarray(queries, np.float32)
  outputs = []
  for start in range(0, len(queries), chunk_size):
    chunk = queries[start : start + chunk_size]
    padded = np.zeros((chunk_size,) + chunk.shape[1:], np.float32)
    padded[: len(chunk)] = chunk
    outputs.append(jax.tree.map(lambda x, n=len(chunk): np.asarray(x)[:n], fn(padded)))
  return jax.tree.map(lambda *xs: np.concatenate(xs), *outputs)


def knn_scores(
    train_features,
    train_labels,
    query_features,
    num_classes: int,
    *,
    k: int = 200,
    temperature: float = 0.1,
    chunk_size: int = 1024,
) -> np.ndarray:
  """Class scores [n_query, num_classes]: each of the k most cosine-similar training
  examples votes for its class with weight exp(similarity / temperature)."""
  _check_k(k, train_features)
  if not len(query_features):
    return np.zeros((0, num_classes), np.float32)
  bank = _normalize(jnp.asarray(train_features, jnp.float32))
  bank_labels = jnp.asarray(train_labels, jnp.int32)
  return _map_chunks(
      lambda chunk: _chunk_scores(
          chunk, bank, bank_labels, num_classes=num_classes, k=k, temperature=temperature
      ),
      query_features,
      chunk_size,
  )


def nearest_neighbours(
    bank_features, query_features, k: int, *, chunk_size: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
  """(cosine similarities, indices), each [n_query, k]: the k rows of `bank_features` most
  similar to each query, most similar first."""
  _check_k(k, bank_features)
  if not len(query_features):
    return np.zeros((0, k), np.float32), np.zeros((0, k), np.int32)
  bank = _normalize(jnp.asarray(bank_features, jnp.float32))
  chunk_size = min(chunk_size, len(query_features))
  return _map_chunks(lambda chunk: _top_k(chunk, bank, k=k), query_features, chunk_size)
