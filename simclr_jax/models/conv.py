"""A 2-D convolution whose weight gradient is a sum of shifted matrix products.

XLA on CPU computes the weight gradient of a convolution (the correlation of the input with
the output gradient) far below the machine's matmul rate; a full-width ResNet-18 step spends
most of its time there. For a kh x kw kernel that gradient is
    dW[i, j] = sum over (b, y, x) of  x_pad[b, s*y + i, s*x + j, :]^T  g[b, y, x, :],
i.e. kh*kw matrix products of a strided slice of the padded input with the output gradient,
which run at matmul speed when summed over batch chunks that fit in cache. The forward pass
and the input gradient stay XLA's convolutions.
`matmul_grad_conv` is a drop-in for `lax.conv_general_dilated` (flax `nn.Conv` takes it as
`conv_general_dilated`), limited to what ResNets use: NHWC/HWIO, no dilation, no groups.
"""

import functools

import jax
from jax import lax
import jax.numpy as jnp

_NHWC_HWIO = ('NHWC', 'HWIO', 'NHWC')
# Output pixels (batch x height x width) per weight-gradient product; measured best on CPU.
_CHUNK_ROWS = 4096


def _conv(x, w, strides, pads, precision):
  return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=_NHWC_HWIO,
                                  precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _matmul_grad_conv(x, w, strides, pads, precision):
  return _conv(x, w, strides, pads, precision)


def _forward(x, w, strides, pads, precision):
  return _conv(x, w, strides, pads, precision), (x, w)


def _num_chunks(batch: int, rows_per_image: int) -> int:
  """Batch chunks of about _CHUNK_ROWS output pixels that divide the batch evenly."""
  n = max(1, min(batch, batch * rows_per_image // _CHUNK_ROWS))
  while batch % n:
    n -= 1
  return n


def _weight_grad(x_pad, g, kernel_shape, strides, precision):
  """sum over taps (i, j) of strided-slice(x_pad)^T @ g, in float32."""
  kh, kw, cin, cout = kernel_shape
  batch, out_h, out_w, _ = g.shape
  sh, sw = strides
  g_rows = g.reshape(-1, cout)
  taps = []
  for i in range(kh):
    for j in range(kw):
      window = lax.slice(x_pad, (0, i, j, 0),
                         (batch, i + sh * (out_h - 1) + 1, j + sw * (out_w - 1) + 1, cin),
                         (1, sh, sw, 1))
      taps.append(lax.dot_general(window.reshape(-1, cin), g_rows, (((0,), (0,)), ((), ())),
                                  precision=precision, preferred_element_type=jnp.float32))
  return jnp.stack(taps).reshape(kernel_shape)


def _backward(strides, pads, precision, residuals, g):
  x, w = residuals
  _, input_vjp = jax.vjp(lambda x: _conv(x, w, strides, pads, precision), x)
  (dx,) = input_vjp(g)
  (top, bottom), (left, right) = pads
  # lax.pad also takes the negative padding that 'SAME' can produce.
  x_pad = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (top, bottom, 0), (left, right, 0),
                                              (0, 0, 0)))
  # Summing over batch chunks keeps each product's operands in cache: 2-5x faster than one
  # product over the whole batch on CPU.
  n = _num_chunks(g.shape[0], g.shape[1] * g.shape[2])
  chunks = lambda a: a.reshape((n, a.shape[0] // n) + a.shape[1:])

  def add_chunk(total, chunk):
    return total + _weight_grad(*chunk, w.shape, strides, precision), None

  dw, _ = lax.scan(add_chunk, jnp.zeros(w.shape, jnp.float32), (chunks(x_pad), chunks(g)))
  return dx, dw.astype(w.dtype)


_matmul_grad_conv.defvjp(_forward, _backward)


def matmul_grad_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                     dimension_numbers=None, feature_group_count=1, precision=None,
                     preferred_element_type=None):
  """`lax.conv_general_dilated` for NHWC/HWIO 2-D convolutions, weight gradient by matmuls."""
  expected = lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC_HWIO)
  given = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  dilated = any(d != 1 for d in (lhs_dilation or ()) + (rhs_dilation or ()))
  if lhs.ndim != 4 or given != expected or dilated or feature_group_count != 1 or (
      preferred_element_type is not None):
    raise ValueError('matmul_grad_conv supports 2-D NHWC/HWIO convolutions without dilation, '
                     'groups or preferred_element_type; use model.conv_grad="xla" for others.')
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
  pads = tuple((int(lo), int(hi)) for lo, hi in padding)
  return _matmul_grad_conv(lhs, rhs, tuple(window_strides), pads, precision)
