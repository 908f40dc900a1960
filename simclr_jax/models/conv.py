"""2-D convolutions as matrix products over image patches, a few images at a time.

XLA on CPU runs ResNet convolutions well below its matmul rate: on the development VM a
float32 matmul reaches 110-130 GFLOP/s, the weight gradient of a 3x3 convolution 3-15 and the
forward 50-90. Written over the patch matrix P of a batch chunk (rows: output pixels, columns:
the kh*kw*cin input values under the kernel), each of the three products of a convolution is
one matrix product:
  forward          y  = P @ W                      W: the kernel as (kh*kw*cin, cout)
  weight gradient  dW = sum over chunks of P^T @ dy
  input gradient   stride 1: the forward of dy with the kernel flipped and transposed;
                   strided: dP = dy @ W^T, each kernel tap's slice added back where it came from.
Batch chunks whose patch matrix holds about _CHUNK_VALUES numbers keep it in cache (measured
best on CPU).
`matmul_conv` is a drop-in for `lax.conv_general_dilated` (flax `nn.Conv` takes it as
`conv_general_dilated`), limited to what ResNets use: NHWC/HWIO, no dilation, no groups.
"""

import functools

import jax
from jax import lax
import jax.numpy as jnp

_NHWC_HWIO = ('NHWC', 'HWIO', 'NHWC')
_CHUNK_VALUES = 2048 * 576  # 2048 output pixels of a 3x3 convolution over 64 channels.
_MAX_CHUNK_ROWS = 4096  # For the few input channels of the stem.


def _num_chunks(batch: int, rows_per_image: int, patch_size: int) -> int:
  """Number of batch chunks, dividing the batch evenly, whose patch matrix (rows_per_image
  rows of patch_size values for each image) holds about _CHUNK_VALUES numbers."""
  rows = max(1, min(_MAX_CHUNK_ROWS, _CHUNK_VALUES // patch_size))
  n = max(1, min(batch, batch * rows_per_image // rows))
  while batch % n:
    n -= 1
  return n


def _split(a, n):
  return a.reshape((n, a.shape[0] // n) + a.shape[1:])


def _pad(x, pads):
  (top, bottom), (left, right) = pads
  # lax.pad also takes the negative padding that 'SAME' can produce.
  return lax.pad(
      x, jnp.zeros((), x.dtype), ((0, 0, 0), (top, bottom, 0), (left, right, 0), (0, 0, 0))
  )


def _output_size(in_size, kernel_shape, strides, pads):
  return tuple(
      (size + lo + hi - k) // s + 1
      for size, k, s, (lo, hi) in zip(in_size, kernel_shape[:2], strides, pads)
  )


def _patches(x_pad, kernel_shape, strides, out_size):
  """[batch, out_h, out_w, kh*kw*cin]: the input under each output pixel's kernel window."""
  kh, kw, cin, _ = kernel_shape
  batch = x_pad.shape[0]
  (sh, sw), (out_h, out_w) = strides, out_size
  taps = [
      lax.slice(
          x_pad,
          (0, i, j, 0),
          (batch, i + sh * (out_h - 1) + 1, j + sw * (out_w - 1) + 1, cin),
          (1, sh, sw, 1),
      )
      for i in range(kh)
      for j in range(kw)
  ]
  return jnp.concatenate(taps, axis=-1) if len(taps) > 1 else taps[0]


def _conv(x, w, strides, pads, precision):
  """The forward convolution, chunk by chunk: patches @ kernel matrix."""
  out_size = _output_size(x.shape[1:3], w.shape, strides, pads)
  kernel = w.reshape(-1, w.shape[-1])

  def chunk_conv(x_chunk):
    patches = _patches(_pad(x_chunk, pads), w.shape, strides, out_size)
    return jnp.dot(patches, kernel, precision=precision)

  n = _num_chunks(x.shape[0], out_size[0] * out_size[1], kernel.shape[0])
  y = lax.map(chunk_conv, _split(x, n))
  return y.reshape((x.shape[0],) + y.shape[2:])


def _input_grad(g, w, x_shape, strides, pads, precision):
  kh, kw, cin, _ = w.shape
  if strides == (1, 1):
    # y[p] = sum_t x_pad[p + t] w[t], so dx_pad[q] = sum_t g[q - t] w[t]^T: a stride-1
    # convolution of g with the flipped, transposed kernel and complementary padding.
    flipped = jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)
    grad_pads = tuple((k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip((kh, kw), pads))
    return _conv(g, flipped, (1, 1), grad_pads, precision)
  batch, out_h, out_w, _ = g.shape
  (sh, sw), kernel = strides, w.reshape(-1, w.shape[-1])
  padded_h, padded_w = (size + lo + hi for size, (lo, hi) in zip(x_shape[1:3], pads))

  def chunk_grad(g_chunk):
    d_patches = jnp.dot(g_chunk, kernel.T, precision=precision)
    d_patches = d_patches.reshape(g_chunk.shape[:3] + (kh, kw, cin))
    dx_pad = 0
    for i in range(kh):
      for j in range(kw):
        # Tap (i, j) read x_pad[sh*y + i, sw*x + j]: scatter it back with interior padding.
        dx_pad += lax.pad(
            d_patches[:, :, :, i, j],
            jnp.zeros((), g.dtype),
            (
                (0, 0, 0),
                (i, padded_h - i - sh * (out_h - 1) - 1, sh - 1),
                (j, padded_w - j - sw * (out_w - 1) - 1, sw - 1),
                (0, 0, 0),
            ),
        )
    return dx_pad

  n = _num_chunks(batch, out_h * out_w, kernel.shape[0])
  dx_pad = lax.map(chunk_grad, _split(g, n)).reshape((batch, padded_h, padded_w, cin))
  unpad = jax.linear_transpose(lambda x: _pad(x, pads), jax.ShapeDtypeStruct(x_shape, g.dtype))
  return unpad(dx_pad)[0]


def _weight_grad(x, g, kernel_shape, strides, pads, precision):
  """sum over batch chunks of patches^T @ g, accumulated in float32.

  The patches are rebuilt from x rather than saved by the forward: they are kh*kw times the
  size of the activation.
  """
  out_size = g.shape[1:3]

  def add_chunk(total, chunk):
    x_chunk, g_chunk = chunk
    patches = _patches(_pad(x_chunk, pads), kernel_shape, strides, out_size)
    return (
        total
        + lax.dot_general(
            patches.reshape(-1, patches.shape[-1]),
            g_chunk.reshape(-1, g_chunk.shape[-1]),
            (((0,), (0,)), ((), ())),
            precision=precision,
            preferred_element_type=jnp.float32,
        ),
        None,
    )

  kh, kw, cin, cout = kernel_shape
  n = _num_chunks(g.shape[0], out_size[0] * out_size[1], kh * kw * cin)
  dw, _ = lax.scan(
      add_chunk, jnp.zeros((kh * kw * cin, cout), jnp.float32), (_split(x, n), _split(g, n))
  )
  return dw.reshape(kernel_shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _matmul_conv(x, w, strides, pads, precision):
  return _conv(x, w, strides, pads, precision)


def _forward(x, w, strides, pads, precision):
  return _conv(x, w, strides, pads, precision), (x, w)


def _backward(strides, pads, precision, residuals, g):
  x, w = residuals
  dx = _input_grad(g, w, x.shape, strides, pads, precision).astype(x.dtype)
  dw = _weight_grad(x, g, w.shape, strides, pads, precision).astype(w.dtype)
  return dx, dw


_matmul_conv.defvjp(_forward, _backward)


def matmul_conv(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count=1,
    precision=None,
    preferred_element_type=None,
):
  """`lax.conv_general_dilated` for NHWC/HWIO 2-D convolutions, as chunked matmuls."""
  expected = lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC_HWIO)
  given = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  dilated = any(d != 1 for d in (lhs_dilation or ()) + (rhs_dilation or ()))
  if (
      lhs.ndim != 4
      or given != expected
      or dilated
      or feature_group_count != 1
      or (preferred_element_type is not None)
  ):
    raise ValueError(
        'matmul_conv supports 2-D NHWC/HWIO convolutions without dilation, '
        'groups or preferred_element_type; use model.conv_impl="xla" for others.'
    )
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
  pads = tuple((int(lo), int(hi)) for lo, hi in padding)
  return _matmul_conv(lhs, rhs, tuple(window_strides), pads, precision)
