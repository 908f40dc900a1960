"""Weighted kNN against a brute-force numpy loop."""

import numpy as np
import pytest

from simclr_jax import knn


def brute_force_knn(train_x, train_y, queries, num_classes, k, temperature):
  train_x = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
  scores = np.zeros((len(queries), num_classes))
  for i, q in enumerate(queries):
    q = q / np.linalg.norm(q)
    sims = np.array([q @ x for x in train_x])
    for j in np.argsort(-sims)[:k]:
      scores[i, train_y[j]] += np.exp(sims[j] / temperature)
  return scores


def brute_force_accuracies(train_x, train_y, queries, labels, num_classes, k, temperature):
  """Top-1 and top-5 accuracy of `brute_force_knn`; ties go to the lower class index."""
  scores = brute_force_knn(train_x, train_y, queries, num_classes, k, temperature)
  ranking = np.argsort(-scores, axis=1, kind='stable')
  return {
      'top1': np.mean(ranking[:, 0] == labels),
      'top5': np.mean([label in row[:5] for label, row in zip(labels, ranking)]),
  }


@pytest.mark.parametrize('seed,k,chunk_size', [(0, 7, 16), (1, 1, 5), (2, 30, 64)])
def test_knn_scores_match_brute_force(seed, k, chunk_size):
  rng = np.random.default_rng(seed)
  train_x, queries = rng.normal(size=(60, 8)), rng.normal(size=(23, 8))
  train_y = rng.integers(0, 4, size=60)
  scores = knn.knn_scores(train_x, train_y, queries, 4, k=k, temperature=0.1, chunk_size=chunk_size)
  expected = brute_force_knn(train_x, train_y, queries, 4, k, 0.1)
  np.testing.assert_allclose(scores, expected, rtol=1e-4)
  np.testing.assert_array_equal(scores.argmax(1), expected.argmax(1))


def test_k_larger_than_bank_is_rejected():
  with pytest.raises(ValueError, match='kNN k=11 must be in'):
    knn.knn_scores(np.ones((10, 2)), np.zeros(10, int), np.ones((1, 2)), 2, k=11)


@pytest.mark.parametrize('k,chunk_size', [(1, 1024), (5, 4)])
def test_nearest_neighbours_match_a_naive_loop(k, chunk_size):
  rng = np.random.default_rng(k)
  bank, queries = rng.normal(size=(40, 6)), rng.normal(size=(11, 6))
  similarities, indices = knn.nearest_neighbours(bank, queries, k, chunk_size=chunk_size)
  for i, q in enumerate(queries):
    sims = [q @ x / (np.linalg.norm(q) * np.linalg.norm(x)) for x in bank]
    expected = np.argsort(sims)[::-1][:k]
    np.testing.assert_array_equal(indices[i], expected)
    np.testing.assert_allclose(similarities[i], np.asarray(sims)[expected], rtol=1e-5)
  assert knn.nearest_neighbours(bank, queries[:0], k)[1].shape == (0, k)
