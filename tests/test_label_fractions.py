"""Class-balanced, seeded, nested label subsets."""

import numpy as np
import pytest

from simclr_jax.label_fractions import class_balanced_subset


@pytest.fixture
def labels():
  # 10 classes of 1,000 examples each, shuffled, plus one small class of 30.
  rng = np.random.default_rng(123)
  return rng.permutation(np.concatenate([np.repeat(np.arange(10), 1000), np.full(30, 10)]))


@pytest.mark.parametrize('fraction', [0.01, 0.1, 0.5])
def test_subsets_are_class_balanced(labels, fraction):
  subset = class_balanced_subset(labels, fraction, seed=0)
  counts = np.bincount(labels[subset], minlength=11)
  np.testing.assert_array_equal(counts[:10], round(fraction * 1000))
  assert counts[10] == max(1, round(fraction * 30))
  assert len(np.unique(subset)) == len(subset) and np.all(np.diff(subset) > 0)


def test_subsets_are_deterministic_and_depend_on_the_seed(labels):
  first = class_balanced_subset(labels, 0.1, seed=7)
  np.testing.assert_array_equal(first, class_balanced_subset(labels.copy(), 0.1, seed=7))
  other = class_balanced_subset(labels, 0.1, seed=8)
  assert len(np.intersect1d(first, other)) < 0.3 * len(first)  # ~10% overlap by chance.


def test_subsets_are_nested(labels):
  one, ten = (class_balanced_subset(labels, f, seed=3) for f in (0.01, 0.1))
  assert np.isin(one, ten).all()
  np.testing.assert_array_equal(class_balanced_subset(labels, 1.0, seed=3), np.arange(len(labels)))


def test_subset_draws_uniformly_within_each_class(labels):
  """Over many seeds, every example of a class is picked about equally often."""
  hits = np.zeros(len(labels))
  for seed in range(200):
    hits[class_balanced_subset(labels, 0.1, seed=seed)] += 1
  members = labels == 0
  # Binomial(200, 0.1): mean 20, sd 4.2; the class mean is exact, extremes stay within ~6 sd.
  assert hits[members].mean() == pytest.approx(20, abs=1e-9)
  assert hits[members].min() >= 2 and hits[members].max() <= 45


@pytest.mark.parametrize('fraction', [0, -0.1, 1.5])
def test_bad_fraction_is_rejected(labels, fraction):
  with pytest.raises(ValueError, match='label fraction'):
    class_balanced_subset(labels, fraction, seed=0)


def test_unlabelled_examples_are_rejected():
  with pytest.raises(ValueError, match='unlabelled'):
    class_balanced_subset(np.array([0, 1, -1, 1]), 0.5, seed=0)
