"""BYOL (methods/byol.py): its loss against a numpy transcription of the paper's pseudo-code. The
step (EMA target, no gradient into it), resume, evaluation and config checks:
tests/test_siamese.py; 8 devices equal 1: tests/test_train.py."""

import jax
import numpy as np
import pytest

from simclr_jax.methods import byol
from simclr_jax.methods import siamese


def numpy_loss_and_grads(p1, p2, z1, z2):
  """The paper's pseudo-code: mean of (2 - 2 cos(p1, z2')) + (2 - 2 cos(p2, z1')); and its
  gradients with respect to p1 and p2, d(-2 cos(p, z))/dp = -2 (z^ - p^ (p^.z^)) / |p|."""

  def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)

  def term(p, z):
    cos = np.sum(unit(p) * unit(z), -1, keepdims=True)
    grad = -2 * (unit(z) - unit(p) * cos) / np.linalg.norm(p, axis=-1, keepdims=True)
    return 2 - 2 * cos[:, 0], grad / len(p)

  (v1, g1), (v2, g2) = term(p1, z2), term(p2, z1)
  return np.mean(v1 + v2), g1, g2


@pytest.mark.parametrize('seed', [0, 1])
def test_loss_and_gradients_match_the_papers_pseudo_code(seed):
  rng = np.random.default_rng(seed)
  p, z = rng.normal(size=(2, 8, 2, 16)).astype(np.float32) * rng.uniform(0.1, 10)
  loss_fn = lambda p, z: siamese.loss_and_metrics({}, {'p': p}, z, None, byol.pair_loss)[0]
  loss, (grad_p, grad_z) = jax.value_and_grad(loss_fn, argnums=(0, 1))(p, z)
  want, g1, g2 = numpy_loss_and_grads(p[:, 0], p[:, 1], z[:, 0], z[:, 1])
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  np.testing.assert_allclose(grad_p, np.stack([g1, g2], 1), atol=1e-5 * np.abs(g1).max())
  assert not np.any(grad_z)  # The target is a constant of the loss.
  # Identical views' outputs: zero loss; opposite ones: 8.
  np.testing.assert_allclose(loss_fn(z, z[:, ::-1]), 0.0, atol=1e-6)
  np.testing.assert_allclose(loss_fn(-z, z[:, ::-1]), 8.0, rtol=1e-6)
