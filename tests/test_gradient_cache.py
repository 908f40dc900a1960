"""The gradient cache (config.microbatches) against plain autodiff: of a toy model and loss; of
SimCLR with a ViT and no projection head (no BatchNorm: the full batch's gradient); of SimCLR
with a ResNet (BatchNorm per micro-batch: autodiff through M separate model calls). 8 devices:
tests/test_train.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_config
from simclr_jax import models
from simclr_jax.core import gradient_cache
from simclr_jax.core.sharding import create_mesh, run_once
from simclr_jax.methods import simclr
from test_train_step import reference_nt_xent

N, SIZE, NUM_CLASSES, TEMPERATURE, PROBE_DECAY = 8, 16, 10, 0.2, 0.05


def _assert_trees_close(actual, expected, rel, name=''):
  expected = dict(jax.tree_util.tree_leaves_with_path(expected))
  actual = jax.tree_util.tree_leaves_with_path(actual)
  assert len(actual) == len(expected) > 0
  for path, leaf in actual:
    key = name + jax.tree_util.keystr(path)
    scale = np.abs(expected[path]).max()
    assert scale > 0, key
    np.testing.assert_allclose(leaf, expected[path], rtol=0, atol=rel * scale, err_msg=key)


def test_split_puts_example_m_plus_k_m_in_micro_batch_m_and_merge_inverts_it():
  x = np.arange(12 * 2).reshape(12, 2)
  micro = np.asarray(gradient_cache.split(x, 3))
  assert micro.shape == (3, 4, 2)
  for m in range(3):
    np.testing.assert_array_equal(micro[m], x[m::3])
  np.testing.assert_array_equal(gradient_cache.merge(micro), x)


def test_value_and_gradient_equal_autodiff_of_the_whole_batch():
  rng = np.random.default_rng(1)
  params = {'w1': rng.normal(size=(5, 7)), 'w2': rng.normal(size=(7, 3))}
  params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
  x = jnp.asarray(rng.normal(size=(12, 5)), jnp.float32)

  def forward(p, x, m):  # Per example, as a model without BatchNorm.
    del m
    out = jnp.tanh(x @ p['w1']) @ p['w2']
    return out, {'mean': out.mean()}

  def objective(p, out):  # Couples all examples, and reads a parameter directly.
    loss = jnp.mean(jax.nn.logsumexp(out @ out.T, axis=1)) + 0.1 * jnp.sum(p['w2'] ** 2)
    return loss, {'loss': loss}

  expected_loss, expected = jax.value_and_grad(lambda p: objective(p, forward(p, x, 0)[0])[0])(
      params
  )
  (loss, (metrics, aux)), grads = jax.jit(
      lambda p: gradient_cache.value_and_grad(forward, objective, p, x, 4)
  )(params)
  np.testing.assert_allclose(loss, expected_loss, rtol=1e-6)
  np.testing.assert_allclose(metrics['loss'], expected_loss, rtol=1e-6)
  assert aux['mean'].shape == (4,)
  _assert_trees_close(grads, expected, 1e-5)


def _model_and_variables(name, **options):
  """A tiny model with random (not initial) parameters and BatchNorm statistics; `options`
  (remat, dtype) go to models.create_model."""
  config = load_config('cifar10')
  config.model.width_multiplier = 0.125
  config.model.conv_impl = 'xla'
  if name == 'vit':  # Without the head's BatchNorm: z = h, and no BatchNorm anywhere.
    config.model.name, config.model.patch_size, config.model.head_layers = 'vit_ti', 8, 0
  model = models.create_model(config.model, image_size=SIZE, num_classes=NUM_CLASSES, **options)
  shallow = {'stage_sizes': (1, 1)} if name == 'resnet' else {'depth': 2}
  model = model.clone(encoder=model.encoder.clone(**shallow))

  def init():
    variables = models.init_variables(model, jax.random.PRNGKey(0), SIZE)
    keys = iter(jax.random.split(jax.random.PRNGKey(1), 1000))
    perturb = lambda x: x + 0.3 * jax.random.normal(next(keys), x.shape)
    return {
        'params': jax.tree.map(perturb, variables['params']),
        'batch_stats': jax.tree.map(
            lambda x: jnp.abs(perturb(x)), variables.get('batch_stats', {})
        ),
    }

  return model, jax.device_get(run_once(init))


def _batch(seed):
  rng = np.random.default_rng(seed)
  # Images that differ in structure, not only in i.i.d. noise (which a ViT averages away).
  base = rng.uniform(size=(N, 1, SIZE, SIZE, 3))
  return {
      'views': (base + 0.3 * rng.uniform(size=(N, 2, SIZE, SIZE, 3))).astype(np.float32),
      'label': rng.integers(0, NUM_CLASSES, size=N).astype(np.int32),
  }


def _loss_and_grads(model, variables, batch, microbatches, chunk_size=0):
  mesh = create_mesh(jax.devices()[:1])
  fn = lambda v, b: simclr.loss_and_grads(
      v['params'],
      v['batch_stats'],
      b,
      model=model,
      temperature=TEMPERATURE,
      mesh=mesh,
      weight_decay=PROBE_DECAY,
      chunk_size=chunk_size,
      microbatches=microbatches,
  )
  return jax.device_get(jax.jit(fn)(variables, batch))


def test_without_batchnorm_micro_batches_give_the_full_batch_loss_and_gradients():
  model, variables = _model_and_variables('vit')
  batch = _batch(2)
  # With the chunked loss too (2 anchors at a time), which sees the merged batch.
  (loss, (metrics, _)), grads = _loss_and_grads(model, variables, batch, 4, chunk_size=2)
  (full_loss, (full_metrics, _)), full_grads = _loss_and_grads(model, variables, batch, 1)
  assert set(metrics) == set(full_metrics)
  for key, value in full_metrics.items():
    np.testing.assert_allclose(metrics[key], value, rtol=1e-5, atol=1e-7, err_msg=key)
  np.testing.assert_allclose(loss, full_loss, rtol=1e-5)
  _assert_trees_close(grads, full_grads, 1e-4)


def _per_micro_batch_reference(model, variables, batch, microbatches):
  """(loss, batch_stats) by the definition: the model called on each micro-batch (pairs m,
  m + M, ...) by itself, NT-Xent (the reference's) and the probe over the whole batch; the
  running statistics the mean of the micro-batches' updates."""

  def loss_fn(params):
    outs, stats = [], []
    for m in range(microbatches):
      images = batch['views'][m::microbatches].reshape((-1, SIZE, SIZE, 3))
      out, updates = model.apply(
          {'params': params, 'batch_stats': variables['batch_stats']},
          images,
          train=True,
          mutable=['batch_stats'],
      )
      outs.append(out)
      stats.append(updates['batch_stats'])
    # Rows back in the batch's order: image i sits in micro-batch i % M.
    order = np.argsort(np.concatenate([np.arange(m, N, microbatches) for m in range(microbatches)]))
    z = jnp.concatenate([o['z'].reshape(-1, 2, o['z'].shape[-1]) for o in outs])[order]
    logits = jnp.concatenate([o['probe_logits'].reshape(-1, 2, NUM_CLASSES) for o in outs])[order]
    contrastive = reference_nt_xent(z[:, 0], z[:, 1], TEMPERATURE, jnp)
    log_probs = jax.nn.log_softmax(logits.reshape(2 * N, NUM_CLASSES))
    probe = -jnp.mean(log_probs[np.arange(2 * N), np.repeat(batch['label'], 2)])
    decay = PROBE_DECAY * 0.5 * jnp.sum(params['probe']['kernel'] ** 2)
    mean_stats = jax.tree.map(lambda *s: sum(s) / len(s), *stats)
    return contrastive + probe + decay, mean_stats

  return jax.device_get(jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(variables['params']))


@pytest.fixture(scope='module')
def resnet_in_two_micro_batches():
  """(model, variables, batch, loss_and_grads output) of a tiny ResNet in 2 micro-batches."""
  model, variables = _model_and_variables('resnet')
  batch = _batch(3)
  return model, variables, batch, _loss_and_grads(model, variables, batch, 2)


def test_with_batchnorm_each_micro_batch_is_normalised_by_its_own_statistics(
    resnet_in_two_micro_batches,
):
  model, variables, batch, ((loss, (_, stats)), grads) = resnet_in_two_micro_batches
  (expected_loss, expected_stats), expected = _per_micro_batch_reference(model, variables, batch, 2)
  np.testing.assert_allclose(loss, expected_loss, rtol=1e-5)
  _assert_trees_close(grads, expected, 1e-4)
  _assert_trees_close(stats, expected_stats, 1e-5)
  # Not the full batch's: the statistics of 8 views differ from those of 16.
  (full_loss, _), full_grads = _loss_and_grads(model, variables, batch, 1)
  assert abs(full_loss - loss) > 1e-4
  moved = [
      np.abs(g - full_grads_leaf).max() / np.abs(full_grads_leaf).max()
      for g, full_grads_leaf in zip(jax.tree.leaves(grads), jax.tree.leaves(full_grads))
  ]
  assert max(moved) > 1e-2


@pytest.mark.parametrize('option', ['remat', 'bfloat16'])
def test_remat_and_bfloat16_go_through_the_cache(resnet_in_two_micro_batches, option):
  _, variables, batch, ((loss, (_, stats)), grads) = resnet_in_two_micro_batches
  options = {'remat': True} if option == 'remat' else {'dtype': jnp.bfloat16}
  model, _ = _model_and_variables('resnet', **options)
  (new_loss, (_, new_stats)), new_grads = _loss_and_grads(model, variables, batch, 2)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves((new_grads, new_stats)))
  if option == 'remat':  # Recomputation inside the vjp pass: the same numbers.
    np.testing.assert_allclose(new_loss, loss, rtol=1e-6)
    _assert_trees_close(new_grads, grads, 1e-5)
    _assert_trees_close(new_stats, stats, 1e-6)
    return
  # bfloat16 compute: this tiny random ResNet's gradients are as far from float32 in one
  # micro-batch (cosine 0.974 measured) as in two (0.994).
  np.testing.assert_allclose(new_loss, loss, rtol=2e-2)
  flat = lambda tree: np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])
  cosine = (
      flat(new_grads) @ flat(grads) / np.linalg.norm(flat(new_grads)) / np.linalg.norm(flat(grads))
  )
  assert 0.97 < cosine < 1 - 1e-6, cosine


def test_micro_batches_must_divide_the_batch_over_the_devices(cifar_config):
  from simclr_jax import config_validation

  cifar_config.batch_size = 96
  cifar_config.microbatches = 5
  with pytest.raises(
      ValueError, match=r'config.microbatches=5 must be a positive integer dividing'
  ):
    config_validation.validate_config(cifar_config, num_devices=8)
  cifar_config.microbatches = 4  # 24 images per micro-batch: 3 per device.
  config_validation.validate_config(cifar_config, num_devices=8)
  cifar_config.microbatches = 8  # 12 per micro-batch do not split over 8 devices.
  with pytest.raises(ValueError, match=r'use microbatches dividing batch_size / devices = 12'):
    config_validation.validate_config(cifar_config, num_devices=8)
