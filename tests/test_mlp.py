"""evaluators/mlp.py: one Adam step against numpy backpropagation, a non-linear problem a linear
probe cannot solve, fitting on the train features only, and its config checks."""

import jax
import numpy as np
import pytest

from conftest import load_config
from simclr_jax import evaluators
from simclr_jax import linear_classifier
from simclr_jax.evaluators import mlp


def _xor(rng, n):
  """Two classes in XOR layout: Gaussian blobs at (+-2, +-2), class = sign(x0 * x1) > 0."""
  centres = np.array([[2, 2], [-2, -2], [2, -2], [-2, 2]], np.float32)
  which = rng.integers(0, 4, n)
  x = centres[which] + 0.4 * rng.normal(size=(n, 2)).astype(np.float32)
  return x, (which >= 2).astype(np.int32)


def test_one_full_batch_adam_step_equals_numpy_backpropagation():
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(8, 3)).astype(np.float32), rng.integers(0, 4, 8).astype(np.int32)
  params, mean, scale = mlp.fit(
      x, y, 4, hidden_dim=5, epochs=1, learning_rate=0.01, batch_size=8, seed=3
  )
  # The same start: the initialisation of the seed's first key.
  init = mlp.init_params(jax.random.split(jax.random.PRNGKey(3))[0], 3, 5, 4)
  w1, b1 = (np.asarray(init['hidden'][k], np.float64) for k in ('kernel', 'bias'))
  w2, b2 = (np.asarray(init['output'][k], np.float64) for k in ('kernel', 'bias'))
  xs = (x - np.asarray(mean)) * np.asarray(scale)
  pre = xs @ w1 + b1
  h = np.maximum(pre, 0)
  logits = h @ w2 + b2
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  d_logits = (p - np.eye(4)[y]) / 8
  grads = {'output': {'kernel': h.T @ d_logits, 'bias': d_logits.sum(0)}}
  d_pre = (d_logits @ w2.T) * (pre > 0)
  grads['hidden'] = {'kernel': xs.T @ d_pre, 'bias': d_pre.sum(0)}
  start = {'hidden': {'kernel': w1, 'bias': b1}, 'output': {'kernel': w2, 'bias': b2}}
  for layer in ('hidden', 'output'):
    for name in ('kernel', 'bias'):
      g = grads[layer][name]
      # Adam's first step: m = (1 - b1) g, v = (1 - b2) g^2, bias-corrected: g / (|g| + eps).
      expected = start[layer][name] - 0.01 * g / (np.abs(g) + 1e-8)
      np.testing.assert_allclose(
          params[layer][name], expected, rtol=1e-4, atol=1e-6, err_msg=f'{layer}/{name}'
      )


def _config(**eval_overrides):
  config = load_config('cifar10')
  config.eval.mlp_hidden_dim, config.eval.mlp_epochs, config.eval.mlp_batch_size = 32, 30, 64
  config.eval.mlp_learning_rate = 1e-2
  for key, value in eval_overrides.items():
    config.eval[key] = value
  return config


def test_mlp_solves_xor_where_the_linear_probe_cannot():
  rng = np.random.default_rng(1)
  train, evaluation = _xor(rng, 400), _xor(rng, 200)
  config = _config()
  mlp_results = evaluators.score('mlp', config, train, evaluation, 2)
  linear_scores, _ = linear_classifier.select_l2_and_fit(
      *train, 2, l2_grid=(1e-4,), holdout_fraction=0.1, seed=0, max_iterations=100
  )
  linear_top1 = linear_classifier.topk_accuracy(
      np.asarray(linear_classifier.logits(linear_scores, evaluation[0])), evaluation[1], 1
  )
  assert mlp_results['top1'] >= 0.97 and linear_top1 <= 0.7, (mlp_results, linear_top1)
  assert mlp_results['hidden_dim'] == 32 and mlp_results['epochs'] == 30
  # Seeded: the same numbers again.
  assert evaluators.score('mlp', config, train, evaluation, 2) == mlp_results
  # Fitted on the train split: with the evaluated labels flipped, it is always wrong.
  flipped = evaluators.score('mlp', config, train, (evaluation[0], 1 - evaluation[1]), 2)
  assert flipped['top1'] <= 0.03


@pytest.mark.parametrize(
    'key,value', [('mlp_hidden_dim', 0), ('mlp_epochs', -1), ('mlp_learning_rate', 0.0)]
)
def test_bad_mlp_settings_are_named(key, value):
  config = _config(**{key: value})
  config.mode, config.eval.protocol, config.pretrained_workdir = 'evaluate', 'mlp', 'x'
  from simclr_jax import config_validation  # pylint: disable=g-import-not-at-top

  with pytest.raises(ValueError, match=rf'config.eval.{key}={value!r} must be'):
    config_validation.validate_config(config, num_devices=1)


def test_pca_option_projects_on_the_train_features_principal_components():
  rng = np.random.default_rng(2)
  # Variance 9, 4 and 0.01 along three random orthogonal directions, plus an offset.
  basis = np.linalg.qr(rng.normal(size=(5, 5)))[0][:, :3]
  train_x = (rng.normal(size=(300, 3)) * [3.0, 2.0, 0.1]) @ basis.T + 7.0
  eval_x = rng.normal(size=(20, 5))
  config = _config(pca_dim=2)
  (train_p, _), (eval_p, _) = evaluators.core.pca_reduced(
      config, (train_x, np.zeros(300)), (eval_x, np.zeros(20))
  )
  # numpy's eigenvectors of the train covariance, largest first, up to sign.
  centred = train_x - train_x.mean(0)
  values, vectors = np.linalg.eigh(centred.T @ centred)
  top = vectors[:, ::-1][:, :2]
  expected = (eval_x - train_x.mean(0)) @ top
  signs = np.sign(np.sum(eval_p * expected, axis=0))
  np.testing.assert_allclose(eval_p * signs, expected, rtol=1e-4, atol=1e-5)
  assert train_p.shape == (300, 2)
  # Off by default: features unchanged.
  (same, _), _ = evaluators.core.pca_reduced(_config(), (train_x, None), (eval_x, None))
  assert same is train_x
