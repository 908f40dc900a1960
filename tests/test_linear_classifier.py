"""Linear evaluation: L-BFGS logistic regression against numpy references, and l2 selection."""

import numpy as np
import pytest

from simclr_jax import linear_classifier as lc


def gaussian_clusters(rng, centres, n, noise=1.0):
  labels = rng.integers(0, len(centres), n)
  return centres[labels] + noise * rng.normal(size=(n, centres.shape[1])), labels


def numpy_standardise(x_train, x):
  std = np.maximum(x_train.std(axis=0), 1e-6)
  return (x - x_train.mean(axis=0)) / std


def numpy_objective_and_grad(weights, bias, x, labels, l2):
  """Mean softmax cross-entropy + 0.5 * l2 * ||weights||^2 and its gradient (float64)."""
  z = x @ weights + bias
  z = z - z.max(axis=1, keepdims=True)
  log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
  n = len(labels)
  value = -log_probs[np.arange(n), labels].mean() + 0.5 * l2 * np.sum(weights**2)
  residual = np.exp(log_probs)
  residual[np.arange(n), labels] -= 1.0
  return value, (x.T @ residual / n + l2 * weights, residual.mean(axis=0))


def numpy_gradient_descent(x, labels, num_classes, l2, steps=50_000):
  """Minimiser of numpy_objective_and_grad by Nesterov-accelerated gradient descent."""
  x1 = np.concatenate([x, np.ones((len(x), 1))], axis=1)
  # The softmax cross-entropy Hessian is bounded by 0.5 * x1^T x1 / n (per class).
  step = 1.0 / (0.5 * np.linalg.eigvalsh(x1.T @ x1 / len(x)).max() + l2)
  params = prev = np.zeros((x.shape[1] + 1, num_classes))
  for t in range(steps):
    look = params + t / (t + 3) * (params - prev)
    _, (g_w, g_b) = numpy_objective_and_grad(look[:-1], look[-1], x, labels, l2)
    prev, params = params, look - step * np.concatenate([g_w, g_b[None]], axis=0)
    if np.sqrt(np.sum(g_w**2) + np.sum(g_b**2)) < 1e-11:
      break
  return params[:-1], params[-1]


def test_separable_clusters_are_classified_perfectly_on_fresh_data():
  rng = np.random.default_rng(0)
  centres = 6.0 * rng.normal(size=(5, 20))
  x_train, y_train = gaussian_clusters(rng, centres, 300)
  x_test, y_test = gaussian_clusters(rng, centres, 2000)
  classifier = lc.fit(x_train.astype(np.float32), y_train, 5, 1e-4)
  assert lc.topk_accuracy(lc.logits(classifier, x_test), y_test, 1) >= 0.995


def test_random_labels_stay_at_chance_on_fresh_data():
  rng = np.random.default_rng(1)
  num_classes, n_test = 5, 4000
  x_train, y_train = rng.normal(size=(300, 20)), rng.integers(0, num_classes, 300)
  x_test, y_test = rng.normal(size=(n_test, 20)), rng.integers(0, num_classes, n_test)
  classifier = lc.fit(x_train, y_train, num_classes, 1e-4)
  chance = 1 / num_classes
  # It fits the training labels well above chance (4 std at n = 300), yet not fresh ones.
  assert lc.topk_accuracy(lc.logits(classifier, x_train), y_train, 1) > 0.3
  test_accuracy = lc.topk_accuracy(lc.logits(classifier, x_test), y_test, 1)
  assert abs(test_accuracy - chance) < 4 * np.sqrt(chance * (1 - chance) / n_test)


@pytest.mark.parametrize('seed,l2', [(2, 1e-2), (3, 1e-3)])
def test_fit_minimises_the_objective_like_numpy_gradient_descent(seed, l2):
  rng = np.random.default_rng(seed)
  num_classes = 4
  centres = rng.normal(size=(num_classes, 6))
  x, labels = gaussian_clusters(rng, centres, 200)  # Overlapping clusters: a finite optimum.
  x = x * rng.uniform(0.1, 10.0, size=6) + rng.normal(size=6)  # Unequal scales and offsets.
  classifier = lc.fit(x.astype(np.float32), labels, num_classes, l2)

  np.testing.assert_allclose(classifier.mean, x.mean(axis=0), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(classifier.scale, 1 / x.std(axis=0), rtol=1e-4)
  x_std = numpy_standardise(x, x)
  weights = np.asarray(classifier.weights, np.float64)
  bias = np.asarray(classifier.bias, np.float64)
  value, (g_w, g_b) = numpy_objective_and_grad(weights, bias, x_std, labels, l2)
  assert np.sqrt(np.sum(g_w**2) + np.sum(g_b**2)) < 1e-5

  ref_weights, ref_bias = numpy_gradient_descent(x_std, labels, num_classes, l2)
  ref_value, _ = numpy_objective_and_grad(ref_weights, ref_bias, x_std, labels, l2)
  np.testing.assert_allclose(value, ref_value, rtol=1e-6)
  np.testing.assert_allclose(weights, ref_weights, atol=1e-3)
  # Adding a constant to every bias leaves the softmax, and so the objective, unchanged.
  np.testing.assert_allclose(bias - bias.mean(), ref_bias - ref_bias.mean(), atol=1e-3)


def test_bias_is_not_regularised():
  rng = np.random.default_rng(4)
  frequencies = np.array([0.5, 0.3, 0.15, 0.05])
  labels = rng.choice(4, size=200, p=frequencies)
  x = rng.normal(size=(200, 6)) + labels[:, None]  # Informative, but l2 forbids using it.
  classifier = lc.fit(x, labels, 4, 1e4)
  assert np.abs(classifier.weights).max() < 1e-3
  bias = np.asarray(classifier.bias, np.float64)
  softmax = np.exp(bias - bias.max()) / np.exp(bias - bias.max()).sum()
  np.testing.assert_allclose(softmax, np.bincount(labels, minlength=4) / 200, atol=1e-4)


def test_constant_feature_is_ignored():
  rng = np.random.default_rng(5)
  centres = 2.0 * rng.normal(size=(4, 5))
  x, labels = gaussian_clusters(rng, centres, 200)
  x_test, _ = gaussian_clusters(rng, centres, 100)
  with_constant = lambda v: np.concatenate([v, np.full((len(v), 1), 0.1)], axis=1)
  classifier = lc.fit(with_constant(x).astype(np.float32), labels, 4, 1e-3)
  reference = lc.fit(x.astype(np.float32), labels, 4, 1e-3)
  assert classifier.scale[-1] == pytest.approx(1 / 1e-6)
  np.testing.assert_allclose(
      lc.logits(classifier, with_constant(x_test)), lc.logits(reference, x_test), atol=1e-3
  )


def test_topk_accuracy_matches_numpy_ranking():
  rng = np.random.default_rng(6)
  logits = rng.normal(size=(500, 10))
  labels = rng.integers(0, 10, 500)
  ranking = np.argsort(-logits, axis=1)
  for k in (1, 2, 5, 10):
    expected = np.mean([label in row[:k] for label, row in zip(labels, ranking)])
    assert lc.topk_accuracy(logits, labels, k) == pytest.approx(expected)
  # Ties go to the lower class index, as in argmax.
  assert lc.topk_accuracy(np.zeros((500, 10)), labels, 1) == pytest.approx(np.mean(labels == 0))
  assert lc.topk_accuracy(np.zeros((500, 10)), labels, 3) == pytest.approx(np.mean(labels < 3))
  with pytest.raises(ValueError, match='k must lie'):
    lc.topk_accuracy(logits, labels, 11)


def test_stratified_holdout_is_stratified_disjoint_and_deterministic():
  rng = np.random.default_rng(7)
  labels = rng.permutation(np.repeat(np.arange(4), [100, 50, 30, 20]))
  fit_idx, holdout_idx = lc.stratified_holdout(labels, 4, 0.1, seed=3)
  np.testing.assert_array_equal(np.bincount(labels[holdout_idx], minlength=4), [10, 5, 3, 2])
  np.testing.assert_array_equal(np.sort(np.concatenate([fit_idx, holdout_idx])), np.arange(200))
  again = lc.stratified_holdout(labels, 4, 0.1, seed=3)
  np.testing.assert_array_equal(again[1], holdout_idx)
  other = lc.stratified_holdout(labels, 4, 0.1, seed=4)
  assert not np.array_equal(other[1], holdout_idx)


def noisy_centres(rng, class_counts, separation):
  """600 x 60 features: class centres separation * N(0, 1) per dimension, plus N(0, 1) noise."""
  labels = rng.permutation(np.repeat(np.arange(len(class_counts)), class_counts))
  centres = separation * rng.normal(size=(len(class_counts), 60))
  return centres[labels] + rng.normal(size=(len(labels), 60)), labels


# Fits on 100 examples and evaluates on 500, so that held-out accuracies differ significantly.
HOLDOUT = 5 / 6


def test_selection_prefers_a_larger_l2_on_noisy_features_and_refits_on_everything():
  # 20 examples per class in 60 noisy dimensions: barely regularised fits chase the noise.
  x, labels = noisy_centres(np.random.default_rng(8), [120] * 5, 0.35)
  grid = (1e-4, 1e-2, 1.0)
  classifier, info = lc.select_l2_and_fit(
      x, labels, 5, l2_grid=grid, holdout_fraction=HOLDOUT, seed=1
  )

  assert set(info) == {'l2', 'holdout_accuracy'}
  assert set(info['holdout_accuracy']) == {str(l2) for l2 in grid}
  fit_idx, holdout_idx = lc.stratified_holdout(labels, 5, HOLDOUT, seed=1)
  for l2 in grid:
    on_split = lc.fit(x[fit_idx], labels[fit_idx], 5, l2)
    accuracy = lc.topk_accuracy(lc.logits(on_split, x[holdout_idx]), labels[holdout_idx], 1)
    assert info['holdout_accuracy'][str(l2)] == pytest.approx(accuracy)
  assert info['l2'] == 1.0
  assert info['holdout_accuracy']['1.0'] > info['holdout_accuracy']['0.0001'] + 0.03

  refit = lc.fit(x, labels, 5, 1.0)
  np.testing.assert_allclose(classifier.weights, refit.weights, atol=1e-5)


def test_selection_rejects_an_l2_so_large_that_only_the_majority_class_is_predicted():
  counts = [180, 120, 120, 90, 90]
  x, labels = noisy_centres(np.random.default_rng(10), counts, 0.35)
  _, info = lc.select_l2_and_fit(x, labels, 5, l2_grid=(1.0, 1e4), holdout_fraction=HOLDOUT)
  assert info['holdout_accuracy']['10000.0'] == pytest.approx(counts[0] / sum(counts))
  assert info['holdout_accuracy']['1.0'] > 0.6
  assert info['l2'] == 1.0


def test_selection_breaks_ties_toward_the_larger_l2():
  x, labels = noisy_centres(np.random.default_rng(9), [120] * 5, 3.0)
  _, info = lc.select_l2_and_fit(x, labels, 5, l2_grid=(1e-3, 1e-2, 1e-1), holdout_fraction=HOLDOUT)
  assert all(acc == 1.0 for acc in info['holdout_accuracy'].values())
  assert info['l2'] == 1e-1


@pytest.mark.parametrize(
    'labels,kwargs,message',
    [
        ([0, 1, 3, 1], {}, r'labels must lie in \[0, 3\)'),
        ([0, -1, 2, 1], {}, 'labels must lie'),
        ([0.0, 1.0, 2.0, 1.0], {}, 'labels must be integers'),
        ([0, 1, 2, 1], {'l2_grid': ()}, 'l2_grid is empty'),
        ([0, 1, 2, 1], {'l2_grid': (-1.0,)}, 'finite and >= 0'),
        ([0, 1, 2, 1], {'holdout_fraction': 1.0}, 'holdout_fraction must lie'),
        # Class 0 has a single example; holding out half of it leaves nothing to fit on.
        ([0, 1, 2, 1], {'holdout_fraction': 0.5}, 'class 0 has 1 examples'),
        ([0, 0, 1, 1], {}, 'class 2 has 0 examples'),
        ([0, 0, 1, 1, 2, 2, 2, 2], {'holdout_fraction': 0.01}, 'holds out no example'),
    ],
)
def test_select_l2_and_fit_rejects_bad_inputs(labels, kwargs, message):
  kwargs = {'l2_grid': (1e-3,), **kwargs}
  features = np.zeros((len(labels), 2), np.float32)
  with pytest.raises(ValueError, match=message):
    lc.select_l2_and_fit(features, np.asarray(labels), 3, **kwargs)


def test_fit_rejects_bad_inputs():
  features, labels = np.zeros((4, 2), np.float32), np.array([0, 1, 1, 0])
  with pytest.raises(ValueError, match='labels must have shape'):
    lc.fit(features, labels[:3], 2, 1e-3)
  with pytest.raises(ValueError, match='NaN'):
    lc.fit(np.full((4, 2), np.nan), labels, 2, 1e-3)
  with pytest.raises(ValueError, match='l2 must be'):
    lc.fit(features, labels, 2, -1.0)
