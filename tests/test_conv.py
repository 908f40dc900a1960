"""The patch-matmul convolution against XLA's convolution, its gradients and naive loops."""

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from simclr_jax.models import conv
from simclr_jax.models.conv import matmul_conv
from simclr_jax.models.resnet import BasicBlock, ResNet
from simclr_jax.core.sharding import run_once

_DN = ('NHWC', 'HWIO', 'NHWC')


@pytest.mark.parametrize(
    'batch,size,cin,cout,kernel,stride,padding',
    [
        (4, 9, 3, 5, 3, 1, ((1, 1), (1, 1))),  # 3x3 stride 1 (basic block).
        (3, 10, 4, 6, 3, 2, ((1, 1), (1, 1))),  # 3x3 stride 2 (first block of a stage).
        (2, 8, 4, 8, 1, 2, ((0, 0), (0, 0))),  # 1x1 stride-2 projection shortcut.
        (2, 15, 3, 4, 7, 2, ((3, 3), (3, 3))),  # 7x7 stride-2 ImageNet stem.
        (2, 8, 3, 4, 3, 2, 'SAME'),  # String padding, asymmetric for even sizes.
        (64, 16, 4, 4, 3, 1, ((1, 1), (2, 0))),  # Several batch chunks; uneven padding.
        (128, 16, 4, 4, 3, 2, ((1, 1), (1, 0))),  # The same, strided.
    ],
)
def test_matches_xla_convolution_and_gradients(batch, size, cin, cout, kernel, stride, padding):
  kx, kw, kg = jax.random.split(jax.random.PRNGKey(batch * size + kernel), 3)
  x = jax.random.normal(kx, (batch, size, size, cin))
  w = jax.random.normal(kw, (kernel, kernel, cin, cout))
  reference = lambda x, w: lax.conv_general_dilated(
      x, w, (stride, stride), padding, dimension_numbers=_DN
  )
  ours = lambda x, w: matmul_conv(x, w, (stride, stride), padding, dimension_numbers=_DN)
  g = jax.random.normal(kg, jax.eval_shape(reference, x, w).shape)
  if batch >= 64:  # The cases meant to span several batch chunks do.
    assert conv._num_chunks(batch, g.shape[1] * g.shape[2], kernel * kernel * cin) > 1
  # Jitted: one compile per function instead of one per operation.
  value_and_vjp = lambda f: jax.jit(lambda x, w, g: (f(x, w), jax.vjp(f, x, w)[1](g)))
  y_ref, grads_ref = value_and_vjp(reference)(x, w, g)
  y, grads = value_and_vjp(ours)(x, w, g)
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
  for got, want in zip(grads, grads_ref):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_forward_and_gradients_match_naive_loops():
  """y[y, x] = sum over taps of x_pad[s*y + i, s*x + j] @ w[i, j], and its two gradients,
  written out in numpy (stride 2, so the strided input gradient is the one checked)."""
  rng = np.random.default_rng(0)
  x, w = rng.normal(size=(2, 6, 6, 3)), rng.normal(size=(3, 3, 3, 2))
  y, vjp = jax.vjp(
      lambda x, w: matmul_conv(x, w, (2, 2), ((1, 1), (1, 1)), dimension_numbers=_DN),
      jnp.asarray(x, jnp.float32),
      jnp.asarray(w, jnp.float32),
  )
  g = rng.normal(size=y.shape)
  dx, dw = vjp(jnp.asarray(g, jnp.float32))
  x_pad = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  want_y, want_dx_pad, want_dw = np.zeros(y.shape), np.zeros_like(x_pad), np.zeros_like(w)
  for i in range(3):
    for j in range(3):
      for oy in range(y.shape[1]):
        for ox in range(y.shape[2]):
          want_y[:, oy, ox] += x_pad[:, 2 * oy + i, 2 * ox + j, :] @ w[i, j]
          want_dx_pad[:, 2 * oy + i, 2 * ox + j] += g[:, oy, ox, :] @ w[i, j].T
          want_dw[i, j] += x_pad[:, 2 * oy + i, 2 * ox + j, :].T @ g[:, oy, ox, :]
  np.testing.assert_allclose(y, want_y, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(dx, want_dx_pad[:, 1:-1, 1:-1], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(dw, want_dw, rtol=1e-4, atol=1e-4)


def test_rejects_unsupported_convolutions():
  x, w = jnp.zeros((1, 4, 4, 2)), jnp.zeros((3, 3, 1, 2))
  with pytest.raises(ValueError, match='conv_impl="xla"'):
    matmul_conv(x, w, (1, 1), 'SAME', dimension_numbers=_DN, feature_group_count=2)


def test_resnet_outputs_and_gradients_equal_with_either_convolution():
  """Through flax's nn.Conv: a two-stage ResNet (stride-2 projection included)."""
  images = jax.random.uniform(jax.random.PRNGKey(1), (4, 16, 16, 3))
  losses, grads = {}, {}
  for conv_impl in ('xla', 'matmul'):
    model = ResNet(
        stage_sizes=[1, 1],
        block_cls=BasicBlock,
        width_multiplier=0.125,
        cifar_stem=True,
        conv_impl=conv_impl,
    )
    variables = run_once(lambda: model.init(jax.random.PRNGKey(0), images, train=False))
    # Non-zero last-BN scales, so that every convolution gets a gradient.
    params = jax.tree.map(lambda p: p + 0.5, variables['params'])

    def loss(params):
      h, _ = model.apply(
          {'params': params, 'batch_stats': variables['batch_stats']},
          images,
          train=True,
          mutable=['batch_stats'],
      )
      return jnp.sum(jnp.sin(h))

    losses[conv_impl], grads[conv_impl] = jax.jit(jax.value_and_grad(loss))(params)
  np.testing.assert_allclose(losses['matmul'], losses['xla'], rtol=1e-5)
  flat_ref = dict(jax.tree_util.tree_leaves_with_path(grads['xla']))
  assert any('proj_conv' in jax.tree_util.keystr(p) for p in flat_ref)
  for path, got in jax.tree_util.tree_leaves_with_path(grads['matmul']):
    want = flat_ref[path]
    assert np.abs(want).max() > 0, jax.tree_util.keystr(path)
    np.testing.assert_allclose(
        got, want, rtol=1e-3, atol=1e-4 * np.abs(want).max(), err_msg=jax.tree_util.keystr(path)
    )
