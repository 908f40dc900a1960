"""Weighted k-nearest-neighbour classification on cosine similarity (Wu et al. 2018)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np


def _normalize(x):
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@functools.partial(jax.jit, static_argnames=('num_classes', 'k'))
def _chunk_scores(queries, bank, bank_labels, *, num_classes, k, temperature):
  similarity = _normalize(queries) @ bank.T
  top_sim, top_idx = jax.lax.top_k(similarity, k)
  weights = jnp.exp(top_sim / temperature)
  votes = jax.nn.one_hot(bank_labels[top_idx], num_classes) * weights[..., None]
  return votes.sum(axis=1)


def knn_scores(train_features, train_labels, query_features, num_classes: int, *, k: int = 200,
               temperature: float = 0.1, chunk_size: int = 1024) -> np.ndarray:
  """Class scores [n_query, num_classes]: each of the k most cosine-similar training
  examples votes for its class with weight exp(similarity / temperature)."""
  if not 1 <= k <= len(train_features):
    raise ValueError(f'kNN k={k} must be in [1, number of training examples = '
                     f'{len(train_features)}]; lower config.eval.knn_k.')
  bank = _normalize(jnp.asarray(train_features, jnp.float32))
  bank_labels = jnp.asarray(train_labels, jnp.int32)
  query_features = np.asarray(query_features, np.float32)
  scores = []
  for start in range(0, len(query_features), chunk_size):
    chunk = query_features[start:start + chunk_size]
    # Pad the last chunk so every call has one shape (one compilation).
    padded = np.zeros((chunk_size,) + chunk.shape[1:], np.float32)
    padded[:len(chunk)] = chunk
    scores.append(np.asarray(_chunk_scores(padded, bank, bank_labels, num_classes=num_classes,
                                           k=k, temperature=temperature))[:len(chunk)])
  return np.concatenate(scores) if scores else np.zeros((0, num_classes), np.float32)
