"""MoCo v3 (methods/mocov3.py): its loss against a numpy transcription of the authors' code,
its heads (ResNet and ViT forms), the frozen patch projection and its config checks. InfoNCE
itself and its gathered keys: tests/test_losses.py; the step, momentum encoder, resume and
evaluation: tests/test_siamese.py; 8 devices equal 1: tests/test_train.py."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import load_config, tiny_method_config
from test_losses import naive_info_nce
from simclr_jax import methods
from simclr_jax.methods import mocov3
from simclr_jax.methods import siamese


@pytest.mark.parametrize('seed', [0, 1])
def test_loss_is_the_symmetric_contrastive_loss_of_the_authors_code(seed):
  rng = np.random.default_rng(seed)
  p, k = rng.normal(size=(2, 8, 2, 16)).astype(np.float32) * rng.uniform(0.1, 10)
  pair_loss = lambda p, k: mocov3.pair_loss(p, k, temperature=0.2)
  loss_fn = lambda p, k: siamese.loss_and_metrics({}, {'p': p}, k, None, pair_loss)
  (loss, metrics), (grad_p, grad_k) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(
      p, k
  )
  # loss = ctr(q1, k2) + ctr(q2, k1).
  a = naive_info_nce(p[:, 0].astype(np.float64), k[:, 1].astype(np.float64), 0.2)
  b = naive_info_nce(p[:, 1].astype(np.float64), k[:, 0].astype(np.float64), 0.2)
  np.testing.assert_allclose(loss, a[0] + b[0], rtol=1e-5)
  np.testing.assert_allclose(metrics['contrastive_accuracy'], (a[1] + b[1]) / 2, atol=1e-6)
  want = np.stack([a[3], b[3]], 1)
  np.testing.assert_allclose(grad_p, want, atol=1e-5 * np.abs(want).max())
  assert not np.any(grad_k)  # The momentum encoder's keys are constants.


@pytest.mark.parametrize('vit', [False, True])
def test_heads_are_the_authors(vit):
  config = tiny_method_config('mocov3')
  if vit:  # configs/imagenet_mocov3_vit.py's MLPs.
    config.mocov3.projector_layers, config.mocov3.predictor_output_bn = 3, True
  head, predictor = mocov3.MoCoV3(config).create_heads(jnp.float32)
  h = jnp.arange(32.0).reshape(4, 8)
  variables = head.init(jax.random.PRNGKey(0), h, train=True)
  layers = 3 if vit else 2
  # Bias-free dense layers; the projector's last BN has no scale or shift.
  assert jax.tree.map(jnp.shape, variables['params']) == {
      **{f'dense{i}': {'kernel': (8 if i == 1 else 32, 32)} for i in range(1, layers)},
      **{f'bn{i}': {'scale': (32,), 'bias': (32,)} for i in range(1, layers)},
      f'dense{layers}': {'kernel': (32, 16)},
  }
  assert f'bn{layers}' in variables['batch_stats']
  z, _ = head.apply(variables, h, train=True, mutable=['batch_stats'])
  variables = predictor.init(jax.random.PRNGKey(0), z, train=True)
  assert jax.tree.map(jnp.shape, variables['params']) == {
      'dense1': {'kernel': (16, 32)},
      'bn1': {'scale': (32,), 'bias': (32,)},
      'dense2': {'kernel': (32, 16)},
  }
  assert ('bn2' in variables['batch_stats']) == vit


def test_frozen_patch_projection_stays_at_its_initialisation():
  config = load_config('imagenet_mocov3_vit')
  assert config.mocov3.freeze_patch_embedding and config.model.name == 'vit_b'
  ones = lambda *shape: jnp.ones(shape)
  params = {
      'encoder': {
          'patch_embedding': {'kernel': ones(4, 4, 3, 8), 'bias': ones(8)},
          'block1': {'fc1': {'kernel': ones(8, 8), 'bias': ones(8)}},
      },
      'head': {'dense1': {'kernel': ones(8, 4)}},
      'predictor': {'dense1': {'kernel': ones(4, 4)}},
      'probe': {'kernel': ones(8, 10)},
  }
  tx = methods.get(config).create_optimizer(optax.constant_schedule(1e-3))
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
  state = tx.init(params)
  for _ in range(2):
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    frozen = 'patch_embedding' in jax.tree_util.keystr(path)
    assert np.all(leaf == 1.0) == frozen, jax.tree_util.keystr(path)


def test_bad_mocov3_configs_are_refused_naming_the_fix():
  config = tiny_method_config('mocov3')
  config.mocov3.temperature = 0.0
  with pytest.raises(ValueError, match='config.mocov3.temperature=0.0 must be > 0'):
    methods.get(config).validate(1)
  config.mocov3.temperature, config.mocov3.freeze_patch_embedding = 0.2, True
  with pytest.raises(ValueError, match='freeze_patch_embedding=True.*has none: set it False'):
    methods.get(config).validate(1)
  for name in ('imagenet_mocov3', 'imagenet_mocov3_vit'):
    methods.get(load_config(name)).validate(8)  # The shipped configs pass.
