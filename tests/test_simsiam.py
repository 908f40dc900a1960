"""SimSiam (methods/simsiam.py): its loss against a numpy transcription of the paper's
pseudo-code, its heads, and the predictor's fixed learning rate. The step (stop-gradient, no
target), resume, evaluation and config checks: tests/test_siamese.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_method_config
from simclr_jax.core import optim
from simclr_jax.methods import siamese
from simclr_jax.methods import simsiam


def numpy_loss_and_grads(p1, p2, z1, z2):
  """The paper's algorithm 1: L = D(p1, z2) / 2 + D(p2, z1) / 2, D(p, z) = -mean cos(p, z);
  and its gradients with respect to p1 and p2, d(-cos(p, z))/dp = -(z^ - p^ cos) / |p|."""

  def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)

  def d(p, z):
    cos = np.sum(unit(p) * unit(z), -1, keepdims=True)
    grad = -(unit(z) - unit(p) * cos) / np.linalg.norm(p, axis=-1, keepdims=True)
    return -np.mean(cos), grad / len(p)

  (v1, g1), (v2, g2) = d(p1, z2), d(p2, z1)
  return v1 / 2 + v2 / 2, g1 / 2, g2 / 2


@pytest.mark.parametrize('seed', [0, 1])
def test_loss_and_gradients_match_the_papers_pseudo_code(seed):
  rng = np.random.default_rng(seed)
  p, z = rng.normal(size=(2, 8, 2, 16)).astype(np.float32) * rng.uniform(0.1, 10)
  loss_fn = lambda p, z: siamese.loss_and_metrics({}, {'p': p}, z, None, simsiam.pair_loss)[0]
  loss, (grad_p, grad_z) = jax.value_and_grad(loss_fn, argnums=(0, 1))(p, z)
  want, g1, g2 = numpy_loss_and_grads(p[:, 0], p[:, 1], z[:, 0], z[:, 1])
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  np.testing.assert_allclose(grad_p, np.stack([g1, g2], 1), atol=1e-5 * np.abs(g1).max())
  assert not np.any(grad_z)  # Stop-gradient: z is a constant of the loss.
  # Identical views' outputs: -1; opposite ones: 1.
  np.testing.assert_allclose(loss_fn(z, z[:, ::-1]), -1.0, atol=1e-6)
  np.testing.assert_allclose(loss_fn(-z, z[:, ::-1]), 1.0, atol=1e-6)


def test_heads_are_the_papers():
  config = tiny_method_config('simsiam')
  head, predictor = simsiam.SimSiam(config).create_heads(jnp.float32)
  h = jnp.ones((4, 8))
  variables = head.init(jax.random.PRNGKey(0), h, train=True)
  shapes = jax.tree.map(jnp.shape, variables)
  # Bias-free dense layers, BN between; the last BN has no scale or shift (statistics only).
  assert shapes['params'] == {
      'dense1': {'kernel': (8, 32)},
      'bn1': {'scale': (32,), 'bias': (32,)},
      'dense2': {'kernel': (32, 32)},
      'bn2': {'scale': (32,), 'bias': (32,)},
      'dense3': {'kernel': (32, 16)},
  }
  assert set(shapes['batch_stats']) == {'bn1', 'bn2', 'bn3'}
  z, _ = head.apply(variables, h * jnp.arange(8.0), train=True, mutable=['batch_stats'])
  np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-5)  # Centred by the output BN.
  shapes = jax.tree.map(jnp.shape, predictor.init(jax.random.PRNGKey(0), z, train=True))
  assert shapes['params'] == {
      'dense1': {'kernel': (16, 32)},
      'bn1': {'scale': (32,), 'bias': (32,)},
      'dense2': {'kernel': (32, 16), 'bias': (16,)},
  }


@pytest.mark.parametrize('fixed', [True, False])
def test_predictor_keeps_the_peak_learning_rate(fixed):
  config = tiny_method_config('simsiam')
  config.simsiam.fixed_predictor_lr = fixed
  config.weight_decay, config.probe_learning_rate_scale = 0.0, 1.0
  # A warm-up from lr 0: at step 0 the schedule gives 0, the fixed predictor lr the peak.
  schedule = optim.learning_rate_schedule(config, 256 * 10, 100)
  assert float(schedule(0)) == 0.0
  peak = optim.scaled_learning_rate(config.learning_rate, config.batch_size, config.lr_scaling)
  ones = lambda *shape: jnp.ones(shape)
  params = {
      'encoder': {'conv': {'kernel': ones(3, 3)}, 'bn': {'scale': ones(3)}},
      'head': {'dense1': {'kernel': ones(3, 2)}},
      'predictor': {'dense1': {'kernel': ones(2, 2)}, 'dense2': {'bias': ones(2)}},
      'probe': {'kernel': ones(3, 10)},
  }
  tx = simsiam.SimSiam(config).create_optimizer(schedule)
  grads = jax.tree.map(lambda p: jnp.full_like(p, 2.0), params)
  updates, _ = tx.update(grads, tx.init(params), params)
  for module, tree in updates.items():
    want = -2.0 * peak if module == 'predictor' and fixed else 0.0
    for leaf in jax.tree.leaves(tree):
      np.testing.assert_allclose(leaf, want, rtol=1e-6, err_msg=module)
