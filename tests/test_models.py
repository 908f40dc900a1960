"""ResNet encoders and projection head: sizes, structure, initialisation, BatchNorm."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from simclr_jax import models
from simclr_jax.core import sharding


def _init_shapes(model_config, image_size, num_classes=0):
  model = models.create_model(model_config, image_size=image_size, num_classes=num_classes)
  return jax.eval_shape(
      lambda: model.init(
          jax.random.PRNGKey(0), jnp.zeros((2, image_size, image_size, 3)), train=False
      )
  )


def _conv_names(tree):
  """Names of the modules of a parameter tree that hold a 4-d (convolution) kernel."""
  for name, sub in tree.items():
    if not isinstance(sub, dict):
      continue
    if 'kernel' in sub and sub['kernel'].ndim == 4:
      yield name
    elif 'kernel' not in sub:
      yield from _conv_names(sub)


def test_projection_head_structure(cifar_config):
  cifar_config.model.name = 'resnet50'
  head = _init_shapes(cifar_config.model, 224)['params']['head']
  assert sorted(head) == ['bn1', 'bn2', 'bn3', 'dense1', 'dense2', 'dense3']
  assert all(set(head[f'dense{i}']) == {'kernel'} for i in (1, 2, 3))  # No bias before BN.
  assert head['dense1']['kernel'].shape == (2048, 2048)
  assert head['dense3']['kernel'].shape == (2048, 128)
  assert set(head['bn1']) == set(head['bn2']) == {'scale', 'bias'}
  assert set(head['bn3']) == {'scale'}  # Uncentred last BN.


def test_stems_follow_image_size(cifar_config):
  cifar_config.model.name = 'resnet18'
  small = _init_shapes(cifar_config.model, 32)['params']['encoder']['stem_conv']['kernel']
  large = _init_shapes(cifar_config.model, 64)['params']['encoder']['stem_conv']['kernel']
  assert small.shape == (3, 3, 3, 64) and large.shape == (7, 7, 3, 64)


def test_width_multiplier_scales_channels(cifar_config):
  cifar_config.model.width_multiplier = 0.25
  params = _init_shapes(cifar_config.model, 32)['params']
  assert params['encoder']['stem_conv']['kernel'].shape[-1] == 16
  assert params['head']['dense1']['kernel'].shape == (128, 128)  # 512 * 0.25.


@pytest.fixture(scope='module')
def tiny_model_and_variables():
  from conftest import load_config

  config = load_config('cifar10')
  config.model.width_multiplier = 0.125
  model = models.create_model(config.model, image_size=16, num_classes=10)
  variables = sharding.run_once(
      lambda key, x: model.init(key, x, train=False),
      jax.random.PRNGKey(0),
      jnp.zeros((2, 16, 16, 3)),
  )
  return model, variables


def test_last_batchnorm_scale_of_every_block_starts_at_zero(tiny_model_and_variables):
  _, variables = tiny_model_and_variables
  encoder = variables['params']['encoder']
  blocks = [k for k in encoder if k.startswith('stage')]
  assert len(blocks) == 8
  for name in blocks:
    bns = sorted(k for k in encoder[name] if k.startswith('BatchNorm'))
    assert np.all(encoder[name][bns[-1]]['scale'] == 0), name
    assert all(np.all(encoder[name][b]['scale'] == 1) for b in bns[:-1]), name


def test_outputs_and_batchnorm_running_statistics(tiny_model_and_variables):
  model, variables = tiny_model_and_variables
  images = jax.random.uniform(jax.random.PRNGKey(1), (6, 16, 16, 3))
  out, updates = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']))(
      variables, images
  )
  assert out['h'].shape == (6, 64) and out['z'].shape == (6, 128)
  assert out['probe_logits'].shape == (6, 10)
  # Head's first BN, computed by hand: running = 0.9 * running + 0.1 * batch statistic.
  pre_bn = np.asarray(out['h']) @ np.asarray(variables['params']['head']['dense1']['kernel'])
  old = variables['batch_stats']['head']['bn1']
  new = updates['batch_stats']['head']['bn1']
  np.testing.assert_allclose(
      new['mean'], 0.9 * old['mean'] + 0.1 * pre_bn.mean(0), rtol=1e-4, atol=1e-6
  )
  np.testing.assert_allclose(
      new['var'], 0.9 * old['var'] + 0.1 * pre_bn.var(0), rtol=1e-4, atol=1e-6
  )
  # The probe sees stop_gradient(h): the contrastive parameters get no gradient from it.
  grads = jax.jit(
      jax.grad(
          lambda p: model.apply(
              {**variables, 'params': p}, images, train=True, mutable=['batch_stats']
          )[0]['probe_logits'].sum()
      )
  )(variables['params'])
  assert all(np.all(g == 0) for g in jax.tree.leaves(grads['encoder']))
  assert np.any(grads['probe']['kernel'] != 0)


def test_unknown_model_name_is_rejected(cifar_config):
  cifar_config.model.name = 'resnet19'
  with pytest.raises(ValueError, match="config.model.name='resnet19'.*resnet18"):
    models.create_model(cifar_config.model, image_size=32)


def _loss_and_grads(config, **options):
  """Jitted NT-Xent-like loss and gradients of a tiny SimCLR model under `options`."""
  model = models.create_model(config.model, image_size=16, num_classes=10, **options)
  if config.model.name.startswith('vit'):  # Two blocks compile far faster than twelve.
    model = model.clone(encoder=model.encoder.clone(depth=2))
  # Per-image contrast and colour offsets: images of i.i.d. uniform pixels all look alike to
  # a ViT (h cosines ~0.98), which leaves the loss's gradient to rounding.
  keys = jax.random.split(jax.random.PRNGKey(1), 3)
  images = jax.random.uniform(keys[0], (8, 16, 16, 3)) * jax.random.uniform(
      keys[1], (8, 1, 1, 3), maxval=2.0
  ) + jax.random.normal(keys[2], (8, 1, 1, 3))
  variables = sharding.run_once(lambda: model.init(jax.random.PRNGKey(0), images, train=False))
  # Non-zero last-BN scales, so that every ResNet block contributes to the gradients.
  shift = 0.2 if config.model.name.startswith('resnet') else 0.0
  params = jax.tree.map(lambda p: p + shift, variables['params'])

  def loss(params):
    out, stats = model.apply(
        {'params': params, 'batch_stats': variables['batch_stats']},
        images,
        train=True,
        mutable=['batch_stats'],
    )
    z = out['z'] / jnp.linalg.norm(out['z'], axis=1, keepdims=True)
    return jnp.sum(jax.nn.log_softmax(z @ z.T / 0.5)[:, ::-1].diagonal()), (out, stats)

  (value, (out, stats)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  return value, out, stats, grads


@pytest.fixture(scope='module', params=['resnet18', 'vit_ti'])
def float32_reference(request):
  from conftest import load_config  # pylint: disable=g-import-not-at-top

  config = load_config('cifar10')
  config.model.name = request.param
  config.model.width_multiplier = 0.0625  # ResNet: a 4-channel stem; ViT: 12 wide, 3 heads.
  config.model.patch_size = 8  # 4 tokens at 16x16 (ViT).
  return config, _loss_and_grads(config)


def test_remat_computes_the_same_loss_and_gradients(float32_reference):
  config, (value, _, stats, grads) = float32_reference
  remat_value, _, remat_stats, remat_grads = _loss_and_grads(config, remat=True)
  np.testing.assert_allclose(remat_value, value, rtol=1e-6)
  for tree, ref in ((remat_grads, grads), (remat_stats, stats)):
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * np.abs(b).max()),
        tree,
        ref,
    )


def test_bfloat16_compute_keeps_float32_state_and_approximates_float32(float32_reference):
  config, (value, out, stats, grads) = float32_reference
  bf_value, bf_out, bf_stats, bf_grads = _loss_and_grads(config, dtype=jnp.bfloat16)
  assert bf_out['z'].dtype == bf_out['h'].dtype == jnp.float32
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves((bf_grads, bf_stats)))
  np.testing.assert_allclose(bf_value, value, rtol=2e-2)
  # The representation h, computed by the encoder in the compute type, agrees to bfloat16
  # precision (8-bit mantissa: 2^-8 = 0.4% per rounding, a few percent after the network)
  # and differs by far more than float32 rounding.
  error = np.linalg.norm(bf_out['h'] - out['h']) / np.linalg.norm(out['h'])
  assert 1e-4 < error < 5e-2, error
  # The compute really runs in bfloat16: every encoder convolution or dense layer appears in
  # the lowered program as a bf16 product (a convolution, or the patch matmuls of
  # conv_impl=matmul).
  model = models.create_model(config.model, image_size=16, dtype=jnp.bfloat16)
  images = jnp.zeros((2, 16, 16, 3))
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), images, train=False))
  text = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, images).as_text()
  products = [
      line
      for line in text.splitlines()
      if 'stablehlo.convolution' in line or 'stablehlo.dot_general' in line
  ]
  bf16_products = [line for line in products if line.count('bf16') >= 2]
  kernels = [
      path
      for path, _ in jax.tree_util.tree_leaves_with_path(variables['params']['encoder'])
      if jax.tree_util.keystr(path).endswith("['kernel']")
  ]
  assert len(kernels) >= 10 and len(bf16_products) >= len(kernels), (kernels, bf16_products)
  flat = lambda tree: np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])
  a, b = flat(bf_grads), flat(grads)
  # The tiny ViT's gradients (LayerNorms of 12 features) are the more rounding-sensitive; a
  # wrong bf16 path (a dropped branch, a missing cast back) gives cosines far below either.
  threshold = 0.98 if config.model.name.startswith('resnet') else 0.95
  assert np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b) > threshold
