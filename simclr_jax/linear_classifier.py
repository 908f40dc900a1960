"""Linear evaluation: multinomial logistic regression on frozen features, fitted with L-BFGS.

As in the SimCLR transfer protocol, features are standardised, the classifier is fitted to
convergence with full-batch L-BFGS, and the L2 strength is chosen on a part of the training
split held out from the fit (never on the test split).
"""

from typing import NamedTuple
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

# One value per decade. With standardised features and a mean (not summed) loss, l2 = 1 charges
# 0.5 nats per example for a unit-norm weight matrix, a strong shrinkage, while l2 = 1e-6 is
# below the weight of one example (1 / n) for training sets up to 10^6 examples, i.e. nearly
# unregularised. Finer grids cost one more fit per value.
DEFAULT_L2_GRID = tuple(10.0**e for e in range(-6, 1))

# Floor on a feature's standard deviation: a constant feature standardises to 0 instead of
# dividing by (rounding) noise.
_MIN_STD = 1e-6


class LinearClassifier(NamedTuple):
  mean: jax.Array  # [d] Training-feature mean.
  scale: jax.Array  # [d] 1 / max(training-feature std, _MIN_STD).
  weights: jax.Array  # [d, c] Acting on standardised features.
  bias: jax.Array  # [c]


def logits(classifier: LinearClassifier, features: jax.Array) -> jax.Array:
  """Class logits [n, c] of raw (unstandardised) features [n, d]."""
  x = (jnp.asarray(features, jnp.float32) - classifier.mean) * classifier.scale
  return x @ classifier.weights + classifier.bias


def standardisation(x):
  """Per-feature mean and 1 / std (floored at _MIN_STD) of x [n, d]."""
  mean = jnp.mean(x, axis=0)
  centred = x - mean
  # Corrected two-pass variance: the second term cancels the rounding error of `mean`, so a
  # constant feature gets a variance of (almost exactly) 0 rather than its rounding error squared.
  var = jnp.mean(centred * centred, axis=0) - jnp.mean(centred, axis=0) ** 2
  std = jnp.sqrt(jnp.maximum(var, 0.0))
  return mean, 1.0 / jnp.maximum(std, _MIN_STD)


def _objective(params, x, labels, l2):
  """Mean softmax cross-entropy + 0.5 * l2 * ||weights||^2 on standardised features x."""
  weights, bias = params
  data_loss = optax.softmax_cross_entropy_with_integer_labels(x @ weights + bias, labels)
  return jnp.mean(data_loss) + 0.5 * l2 * jnp.sum(weights * weights)


@jax.jit(static_argnames=('num_classes',))
def _fit(features, labels, l2, max_iterations, tolerance, *, num_classes):
  """Standardisation and L-BFGS minimisation of `_objective`, in one while_loop."""
  mean, scale = standardisation(features)
  x = (features - mean) * scale
  params = (
      jnp.zeros((x.shape[1], num_classes), jnp.float32),
      jnp.zeros((num_classes,), jnp.float32),
  )
  value_fn = lambda p: _objective(p, x, labels, l2)
  value_and_grad = optax.value_and_grad_from_state(value_fn)
  solver = optax.lbfgs()

  def cond(carry):
    _, _, iteration, grad_norm = carry
    return (iteration < max_iterations) & (grad_norm >= tolerance)

  def body(carry):
    params, state, iteration, _ = carry
    value, grad = value_and_grad(params, state=state)
    updates, state = solver.update(grad, state, params, value=value, grad=grad, value_fn=value_fn)
    # The line search keeps the gradient at the new params; the next iteration reuses it.
    grad_norm = optax.tree.norm(optax.tree.get(state, 'grad'))
    return optax.apply_updates(params, updates), state, iteration + 1, grad_norm

  carry = (params, solver.init(params), jnp.asarray(0), jnp.asarray(jnp.inf, jnp.float32))
  (weights, bias), _, _, _ = jax.lax.while_loop(cond, body, carry)
  return LinearClassifier(mean=mean, scale=scale, weights=weights, bias=bias)


def _check_features_and_labels(features, labels, num_classes):
  """float32 features [n, d] and int32 labels [n], after validating them."""
  features = np.asarray(features, np.float32)
  labels = np.asarray(labels)
  if features.ndim != 2 or features.shape[0] == 0:
    raise ValueError(f'features must be a non-empty [n, d] array; got shape {features.shape}.')
  if labels.shape != features.shape[:1]:
    raise ValueError(
        f'labels must have shape [{features.shape[0]}] to match features; got ' f'{labels.shape}.'
    )
  if not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f'labels must be integers; got dtype {labels.dtype}.')
  if num_classes < 2:
    raise ValueError(f'num_classes must be >= 2; got {num_classes}.')
  if labels.min() < 0 or labels.max() >= num_classes:
    raise ValueError(
        f'labels must lie in [0, {num_classes}); got values in '
        f'[{labels.min()}, {labels.max()}].'
    )
  if not np.all(np.isfinite(features)):
    raise ValueError('features contain NaN or infinite values.')
  return features, labels.astype(np.int32)


def fit(
    features,
    labels,
    num_classes: int,
    l2: float,
    *,
    max_iterations: int = 1000,
    tolerance: float = 1e-6,
) -> LinearClassifier:
  """Standardises features [n, d] and fits a linear classifier to them and int labels [n].

  Minimises mean softmax cross-entropy + 0.5 * l2 * ||weights||^2 (bias not regularised) with
  L-BFGS until the gradient norm falls below `tolerance` or `max_iterations` iterations have
  run.
  """
  features, labels = _check_features_and_labels(features, labels, num_classes)
  if not np.isfinite(l2) or l2 < 0:
    raise ValueError(f'l2 must be finite and >= 0; got {l2}.')
  if max_iterations < 0:
    raise ValueError(f'max_iterations must be >= 0; got {max_iterations}.')
  return _fit(
      jnp.asarray(features),
      jnp.asarray(labels),
      jnp.float32(l2),
      jnp.int32(max_iterations),
      jnp.float32(tolerance),
      num_classes=int(num_classes),
  )


def topk_accuracy(logits: jax.Array, labels: jax.Array, k: int) -> float:
  """Fraction of rows whose label is among the k largest logits (ties go to the lower index)."""
  logits, labels = np.asarray(logits), np.asarray(labels)
  if logits.ndim != 2 or labels.shape != logits.shape[:1]:
    raise ValueError(
        f'logits must be [n, c] and labels [n]; got {logits.shape} and ' f'{labels.shape}.'
    )
  if not 1 <= k <= logits.shape[1]:
    raise ValueError(f'k must lie in [1, {logits.shape[1]}]; got {k}.')
  if labels.size and (labels.min() < 0 or labels.max() >= logits.shape[1]):
    raise ValueError(f'labels must lie in [0, {logits.shape[1]}).')
  true_logit = np.take_along_axis(logits, labels[:, None], axis=1)
  lower_index = np.arange(logits.shape[1])[None, :] < labels[:, None]
  rank = np.sum((logits > true_logit) | ((logits == true_logit) & lower_index), axis=1)
  return float(np.mean(rank < k))


def stratified_holdout(
    labels, num_classes: int, holdout_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
  """Sorted (fit, holdout) index arrays; holdout_fraction of each class, rounded half up."""
  labels = np.asarray(labels)
  rng = np.random.default_rng(seed)
  fit_parts, holdout_parts = [], []
  for c in range(num_classes):
    members = rng.permutation(np.flatnonzero(labels == c))
    num_holdout = int(np.floor(holdout_fraction * len(members) + 0.5))
    if num_holdout >= len(members):
      raise ValueError(
          f'class {c} has {len(members)} examples, leaving none to fit on after '
          f'holding out {holdout_fraction:.0%}.'
      )
    holdout_parts.append(members[:num_holdout])
    fit_parts.append(members[num_holdout:])
  holdout = np.sort(np.concatenate(holdout_parts))
  if holdout.size == 0:
    raise ValueError(f'holdout_fraction={holdout_fraction} holds out no example of any class.')
  return np.sort(np.concatenate(fit_parts)), holdout


def select_l2_and_fit(
    features,
    labels,
    num_classes: int,
    *,
    l2_grid: Sequence[float],
    holdout_fraction: float = 0.1,
    seed: int = 0,
    max_iterations: int = 1000,
) -> tuple[LinearClassifier, dict]:
  """Chooses l2 by held-out top-1 accuracy on a split of these (training) features, then refits.

  Every l2 in `l2_grid` is fitted on a class-stratified (1 - holdout_fraction) part; the one with
  the best accuracy on the rest (ties go to the larger l2) is refitted on all the features.
  Returns the classifier and {'l2': chosen l2, 'holdout_accuracy': {str(l2): accuracy}}.
  """
  features, labels = _check_features_and_labels(features, labels, num_classes)
  grid = sorted({float(l2) for l2 in l2_grid})
  if not grid:
    raise ValueError('l2_grid is empty.')
  if any(not np.isfinite(l2) or l2 < 0 for l2 in grid):
    raise ValueError(f'l2_grid values must be finite and >= 0; got {grid}.')
  if not 0 < holdout_fraction < 1:
    raise ValueError(f'holdout_fraction must lie in (0, 1); got {holdout_fraction}.')
  fit_idx, holdout_idx = stratified_holdout(labels, num_classes, holdout_fraction, seed)

  accuracies = {}
  for l2 in grid:
    classifier = fit(
        features[fit_idx], labels[fit_idx], num_classes, l2, max_iterations=max_iterations
    )
    accuracies[l2] = topk_accuracy(
        logits(classifier, features[holdout_idx]), labels[holdout_idx], 1
    )
  # max keeps the first of equal maxima, so scanning from the largest l2 breaks ties toward it.
  best = max(reversed(grid), key=lambda l2: accuracies[l2])
  classifier = fit(features, labels, num_classes, best, max_iterations=max_iterations)
  return classifier, {
      'l2': best,
      'holdout_accuracy': {str(l2): acc for l2, acc in accuracies.items()},
  }
