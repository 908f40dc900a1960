"""The SimCLR pretraining view in JAX, for augmenting on the accelerator inside the train step.

The same distribution as `augment.pretrain_view` (tf.data), tested statistically against it:
the crop window follows TF's sample_distorted_bounding_box kernel (including its integer
rounding, rejection of crops under 10% of the image and whole-image fallback), and the
deterministic parts (crop + bicubic resize, colour ops, grayscale, blur) compute what the TF
kernels compute, to float32 rounding. The random numbers themselves differ: views are a
function of a JAX key, not of TF's Philox stream.

Every function works on one float32 image [H, W, 3] in [0, 1] of a static size and one key;
there is no data-dependent Python control flow, so `pretrain_views` vmaps them over a batch
and runs inside a jitted, sharded train step.
"""

import jax
from jax import lax
import jax.numpy as jnp
import ml_collections
import numpy as np

_NUM_JITTER_OPS = 4  # brightness, contrast, saturation, hue.
# fold_in index of an image's local crops' keys (and seeds in augment.py): apart from the two
# views' split, which stays what it was without local crops.
LOCAL_CROPS_STREAM = 2
_MAX_ATTEMPTS = 100  # sample_distorted_bounding_box's max_attempts in augment.py.
_MIN_OBJECT_COVERED = 0.1  # Its min_object_covered on the whole-image box.
_GRAYSCALE_WEIGHTS = (0.2989, 0.5870, 0.1140)  # tf.image.rgb_to_grayscale's.
# Which of a pixel's (highest, middle, lowest) channel values are its R, G and B, by the
# sextant of its hue: 0-5, and 6, where TF's HSV-to-RGB kernel gives all lowest values.
_SEXTANT_CHANNELS = np.array(
    [[0, 1, 2], [1, 0, 2], [2, 0, 1], [2, 1, 0], [1, 2, 0], [0, 2, 1], [2, 2, 2]]
)


def to_float(images):
  """uint8 images -> float32 in [0, 1] as tf.image.convert_image_dtype; floats unchanged."""
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) * np.float32(1 / 255)
  return images.astype(jnp.float32)


def _random_apply(fn, image, key, prob):
  """Applies `fn(image, key)` with probability `prob` (augment._random_apply's key use)."""
  if prob <= 0:
    return image
  coin_key, fn_key = jax.random.split(key)
  if prob >= 1:
    return fn(image, fn_key)
  return jnp.where(jax.random.uniform(coin_key) < prob, fn(image, fn_key), image)


def sample_crop_window(key, height, width, area_range, aspect_ratio_range):
  """Samples (top, left, crop height, crop width) as TF's sample_distorted_bounding_box.

  Mirrors the kernel (sample_distorted_bounding_box_op.cc) for the whole-image box with
  min_object_covered=0.1 and max_attempts=100: each attempt draws an aspect ratio r, then
  the crop height uniformly over the integers whose round(h * r) x h area fits `area_range`
  (clamped so the width fits), nudges it by one pixel if rounding left the area out of
  range, and is rejected if it still is or covers under 10% of the image. The offsets are
  uniform over [0, side - crop side) (TF never places a smaller crop at the last offset).
  All 100 attempts are drawn at once and the first accepted one is kept; the whole image
  if none is. Arithmetic is float32 like the kernel's, so the rounding matches.

  Args:
    key: a JAX key.
    height, width: static image size.
    area_range: (min, max) area fractions.
    aspect_ratio_range: (min, max) width / height.

  Returns:
    int32 scalars (top, left, crop_height, crop_width).
  """
  f32 = np.float32
  min_area = f32(area_range[0]) * f32(width) * f32(height)
  max_area = f32(area_range[1]) * f32(width) * f32(height)
  # Per attempt: aspect ratio, height, top and left, each from its own uniform.
  u_ratio, u_height, u_top, u_left = jax.random.uniform(key, [4, _MAX_ATTEMPTS])
  lo, hi = f32(aspect_ratio_range[0]), f32(aspect_ratio_range[1])
  ratio = u_ratio * (hi - lo) + lo

  def round_int(x):  # lrintf: to nearest, ties to even.
    return jnp.rint(x).astype(jnp.int32)

  def uniform_int(u, n):  # Uniform over range(n), n >= 1.
    return jnp.minimum(jnp.floor(u * n).astype(jnp.int32), n - 1)

  h_min = round_int(jnp.sqrt(min_area / ratio))
  h_max = round_int(jnp.sqrt(max_area / ratio))
  # The tallest crop whose rounded width still fits (the kernel's 1e-7 margin on the 0.5 is
  # below float32 resolution).
  h_fit = jnp.floor((width + f32(0.5)) / ratio).astype(jnp.int32)
  h_fit = jnp.where(round_int(h_fit * ratio) > width, h_fit - 1, h_fit)
  h_max = jnp.minimum(jnp.where(round_int(h_max * ratio) > width, h_fit, h_max), height)
  h_min = jnp.minimum(h_min, h_max)
  h = h_min + uniform_int(u_height, h_max - h_min + 1)
  w = round_int(h * ratio)
  too_small = (w * h).astype(jnp.float32) < min_area
  h = jnp.where(too_small, h + 1, h)
  w = round_int(h * ratio)
  too_big = (w * h).astype(jnp.float32) > max_area
  h = jnp.where(too_big, h - 1, h)
  w = round_int(h * ratio)
  area = (w * h).astype(jnp.float32)
  ok = (
      (area >= min_area)
      & (area <= max_area)
      & (w <= width)
      & (h <= height)
      & (w > 0)
      & (h > 0)
      & (area >= 1)
      & (area / f32(width * height) >= f32(_MIN_OBJECT_COVERED))
  )
  top = uniform_int(u_top, jnp.maximum(height - h, 1))
  left = uniform_int(u_left, jnp.maximum(width - w, 1))
  first = jnp.argmax(ok)
  found = ok[first]
  return (
      jnp.where(found, top[first], 0),
      jnp.where(found, left[first], 0),
      jnp.where(found, h[first], height),
      jnp.where(found, w[first], width),
  )


def _keys_cubic(x, a=-0.5):
  """Keys' cubic convolution kernel at distance x in [0, 2], as TF's coefficient table."""
  near = ((a + 2) * x - (a + 3)) * x * x + 1
  far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
  return jnp.where(x <= 1, near, far)


def _resize_weights(start, length, in_size, out_size):
  """[out_size, in_size] matrix of TF's bicubic resize of in[start:start + length].

  tf.image.resize(BICUBIC) (ResizeBicubic, half-pixel centres): Keys a=-0.5 on the 4
  nearest samples, the fractional position rounded to TF's table of 1/1024 steps, weights
  of samples outside the crop set to 0 and the rest renormalised.
  """
  scale = length.astype(jnp.float32) / np.float32(out_size)
  position = (jnp.arange(out_size, dtype=jnp.float32) + 0.5) * scale - 0.5
  base = jnp.floor(position)
  frac = jnp.rint((position - base) * 1024) / 1024
  taps = jnp.arange(-1, 3)
  weights = _keys_cubic(jnp.abs(frac[:, None] - taps))
  index = base.astype(jnp.int32)[:, None] + taps  # [out_size, 4], within the crop.
  weights = jnp.where((index >= 0) & (index < length), weights, 0.0)
  weights = weights * (1 / weights.sum(-1, keepdims=True))
  one_hot = (start + index)[..., None] == jnp.arange(in_size)
  return jnp.sum(weights[..., None] * one_hot, axis=1)


def _matmul(a, b, subscripts):
  # Full float32: on GPUs XLA's default precision would round these to TF32.
  return jnp.einsum(subscripts, a, b, precision=lax.Precision.HIGHEST)


def crop_and_resize(image, window, size):
  """tf.image.resize(image[top:top + h, left:left + w], [size, size], BICUBIC), unclipped.

  `window` is (top, left, h, w), possibly traced; the crop is a weight matrix over the
  whole image, so shapes stay static.
  """
  top, left, crop_height, crop_width = window
  height, width, _ = image.shape
  rows = _resize_weights(top, crop_height, height, size)
  cols = _resize_weights(left, crop_width, width, size)
  # Rows first, as the TF kernel.
  return _matmul(cols, _matmul(rows, image, 'oy,yxc->oxc'), 'px,oxc->opc')


def random_resized_crop(
    image, key, size, area_range=(0.08, 1.0), aspect_ratio_range=(3 / 4, 4 / 3)
):
  """augment.random_resized_crop: a TF-distributed window, bicubic to size x size, clipped."""
  height, width, _ = image.shape
  window = sample_crop_window(key, height, width, area_range, aspect_ratio_range)
  return jnp.clip(crop_and_resize(image, window, size), 0.0, 1.0)


def random_flip(image, key, prob=0.5):
  """Flips the image left-right with probability `prob`."""
  return _random_apply(lambda x, _: x[:, ::-1], image, key, prob)


def adjust_brightness(image, value, impl='simclrv2'):
  """augment.adjust_brightness: multiplies by `value` (SimCLRv2) or adds it (SimCLRv1)."""
  return image + value if impl == 'simclrv1' else image * value


def adjust_contrast(image, factor):
  """tf.image.adjust_contrast: (x - channel mean) * factor + channel mean."""
  mean = image.mean(axis=(0, 1), keepdims=True)
  return (image - mean) * factor + mean


def _from_sextant(sextant, high, mid, low):
  """RGB from the highest, middle and lowest channel values and the hue sextant."""
  values = jnp.stack([high, mid, low], axis=-1)
  return jnp.take_along_axis(values, jnp.asarray(_SEXTANT_CHANNELS)[sextant], axis=-1)


def adjust_saturation(image, factor):
  """tf.image.adjust_saturation: HSV, saturation times `factor` clipped to [0, 1], RGB."""
  r, g, b = image[..., 0], image[..., 1], image[..., 2]
  value = jnp.maximum(r, jnp.maximum(g, b))
  spread = value - jnp.minimum(r, jnp.minimum(g, b))
  saturation = jnp.where(value > 0, spread / jnp.where(value > 0, value, 1), 0.0)
  norm = 1 / (6 * jnp.where(spread > 0, spread, 1))  # Grey pixels get hue 0 below.
  hue = jnp.where(
      r == value,
      norm * (g - b),
      jnp.where(g == value, norm * (b - r) + 2 / 6, norm * (r - g) + 4 / 6),
  )
  hue = jnp.where(spread <= 0, 0.0, hue)
  hue = jnp.where(hue < 0, hue + 1, hue)
  saturation = jnp.clip(saturation * factor, 0.0, 1.0)
  chroma = saturation * value
  sextant_position = hue * 6
  x = chroma * (1 - jnp.abs(jnp.mod(sextant_position, 2.0) - 1))
  sextant = jnp.clip(sextant_position.astype(jnp.int32), 0, 6)
  return _from_sextant(sextant, chroma, x, jnp.zeros_like(x)) + (value - chroma)[..., None]


def adjust_hue(image, delta):
  """tf.image.adjust_hue: rotates the hue by `delta` turns, keeping each pixel's min and max."""
  r, g, b = image[..., 0], image[..., 1], image[..., 2]
  # TF's case split by channel order; ties go the same way, so the floats match.
  r_below_g = r < g
  high = jnp.where(r_below_g, jnp.where(b > g, b, g), jnp.where(b > r, b, r))
  low = jnp.where(r_below_g, jnp.where(b < r, b, r), jnp.where(b < g, b, g))
  mid = jnp.where(
      r_below_g,
      jnp.where(b < r, r, jnp.where(b > g, g, b)),
      jnp.where(b < g, g, jnp.where(b > r, r, b)),
  )
  sextant = jnp.where(
      r_below_g,
      jnp.where(b < r, 1, jnp.where(b > g, 3, 2)),
      jnp.where(b < g, 0, jnp.where(b > r, 4, 5)),
  )
  ratio = (mid - low) / jnp.where(high > low, high - low, 1)
  hue = sextant + jnp.where(sextant % 2 == 0, ratio, 1 - ratio)
  hue = jnp.where(high == low, 0.0, hue) + delta * 6
  hue = jnp.where(hue < 0, hue + 6, hue)
  hue = jnp.where(hue >= 6, hue - 6, hue)
  sextant = jnp.clip(hue.astype(jnp.int32), 0, 5)
  ratio = hue - sextant
  ratio = jnp.where(sextant % 2 == 0, ratio, 1 - ratio)
  return _from_sextant(sextant, high, low + ratio * (high - low), low)


def brightness_range(max_delta, impl):
  """(min, max) of the brightness draw: a factor (simclrv2) or an offset (simclrv1).

  Shared with augment.py (pure Python: usable in a tf.data graph).
  """
  if impl == 'simclrv2':
    return max(0.0, 1.0 - max_delta), 1.0 + max_delta
  if impl == 'simclrv1':
    return -max_delta, max_delta
  raise ValueError(f'Unknown colour jitter impl {impl!r}: use simclrv2 or simclrv1.')


def jitter_maxima(strength):
  """(brightness, contrast, saturation, hue) maxima of a colour jitter of `strength`: SimCLR's
  0.8s, 0.8s, 0.8s and 0.2s of a number s, or the four given (BYOL's (0.4, 0.4, 0.2, 0.1)).

  Shared with augment.py. The hue's is capped at TF's 0.5: a +-0.5 shift spans the circle.
  """
  if isinstance(strength, (tuple, list)):
    b, c, s, h = strength
  else:
    b = c = s = 0.8 * strength
    h = 0.2 * strength
  return b, c, s, min(h, 0.5)


def jitter_ranges(strength, impl='simclrv2'):
  """The (low, high) draws of brightness, contrast, saturation and hue for `strength`.

  Brightness is U[max(0, 1 - b), 1 + b] (a factor, simclrv2) or U[-b, b] (an offset,
  simclrv1), contrast and saturation factors U[max(0, 1 - c), 1 + c], hue delta U[-h, h],
  with (b, c, s, h) = jitter_maxima(strength). Factors are clamped at 0 as TF's random
  contrast/saturation require. Shared with augment.py.
  """
  b, c, s, h = jitter_maxima(strength)
  return (brightness_range(b, impl), (max(0.0, 1 - c), 1 + c), (max(0.0, 1 - s), 1 + s), (-h, h))


def color_jitter_strength(config_augment):
  """config.augment's jitter: its color_jitter maxima if given, else its color_strength."""
  # A config.json saved before color_jitter existed has none.
  return tuple(config_augment.get('color_jitter', ())) or config_augment.color_strength


def sample_color_jitter(key, strength, impl='simclrv2'):
  """augment.sample_color_jitter: (order [4], params [4]) of the colour jitter's ops.

  order[i] is the op of (brightness, contrast, saturation, hue) that step i applies, a
  uniformly random permutation; params are their uniform brightness factor or offset,
  contrast and saturation factors and hue delta (jitter_ranges).
  """
  ranges = jitter_ranges(strength, impl)
  perm_key, *op_keys = jax.random.split(key, _NUM_JITTER_OPS + 1)
  params = jnp.stack(
      [
          jax.random.uniform(op_key, minval=low, maxval=high)
          for op_key, (low, high) in zip(op_keys, ranges)
      ]
  )
  return jnp.argsort(jax.random.uniform(perm_key, [_NUM_JITTER_OPS])), params


def color_jitter(image, key, strength, impl='simclrv2'):
  """Brightness, contrast, saturation and hue (jitter_maxima) in random order (augment's)."""
  if not any(jitter_maxima(strength)):
    return image  # Every op would be the identity, skipped as in augment.
  order, params = sample_color_jitter(key, strength, impl)
  ops = (
      lambda x: adjust_brightness(x, params[0], impl),
      lambda x: adjust_contrast(x, params[1]),
      lambda x: adjust_saturation(x, params[2]),
      lambda x: adjust_hue(x, params[3]),
  )

  def apply(i, x):
    return jnp.clip(lax.switch(order[i], ops, x), 0.0, 1.0)

  # A loop, not unrolled: under vmap every step computes all 4 ops, and 4 unrolled steps
  # would compile 16 copies of them.
  return lax.fori_loop(0, _NUM_JITTER_OPS, apply, image)


def to_grayscale(image):
  """tf.image.rgb_to_grayscale, keeping 3 (equal) channels."""
  gray = _matmul(image, jnp.asarray(_GRAYSCALE_WEIGHTS, jnp.float32), 'hwc,c->hw')
  return jnp.repeat(gray[..., None], 3, axis=-1)


def random_color_distortion(
    image, key, strength, jitter_prob=0.8, grayscale_prob=0.2, impl='simclrv2'
):
  """Colour jitter with p=jitter_prob, then independently grayscale with p=grayscale_prob."""
  jitter_key, gray_key = jax.random.split(key)
  image = _random_apply(
      lambda x, k: color_jitter(x, k, strength, impl), image, jitter_key, jitter_prob
  )
  return _random_apply(lambda x, _: to_grayscale(x), image, gray_key, grayscale_prob)


def _blur_matrix(kernel, size):
  """[size, size] banded matrix: zero-padded 'SAME' convolution with the odd `kernel`."""
  radius = kernel.shape[0] // 2
  offset = jnp.arange(size)[None, :] - jnp.arange(size)[:, None]
  return jnp.where(jnp.abs(offset) <= radius, kernel[jnp.clip(offset + radius, 0, 2 * radius)], 0.0)


def gaussian_blur(image, sigma, kernel_size):
  """augment.gaussian_blur: separable Gaussian, 2 * (kernel_size // 2) + 1 taps, zero padding."""
  radius = kernel_size // 2
  x = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  kernel = jnp.exp(-jnp.square(x) / (2.0 * jnp.square(sigma)))
  kernel = kernel / kernel.sum()
  height, width, _ = image.shape
  # Horizontal pass first, as augment.gaussian_blur.
  image = _matmul(_blur_matrix(kernel, width), image, 'xw,hwc->hxc')
  return _matmul(_blur_matrix(kernel, height), image, 'yh,hwc->ywc')


def random_gaussian_blur(image, key, prob=0.5, sigma_min=0.1, sigma_max=2.0):
  """With p=prob, blurs with sigma ~ U[sigma_min, sigma_max], kernel ~10% of the height."""

  def blur(x, k):
    sigma = jax.random.uniform(k, minval=sigma_min, maxval=sigma_max)
    return gaussian_blur(x, sigma, x.shape[0] // 10)

  return _random_apply(blur, image, key, prob)


def solarize(image):
  """augment.solarize: pixels at or above 0.5 become 1 - x."""
  return jnp.where(image < 0.5, image, 1.0 - image)


def random_solarize(image, key, prob):
  """Solarises with p=prob; `key` is the view's own (fold_in stream 4, as augment's)."""
  key = jax.random.fold_in(key, 4)
  return _random_apply(lambda x, _: solarize(x), image, key, prob)


def pretrain_size(config) -> int:
  """Side of the pretraining views: config.pretrain_image_size, or config.image_size when that
  is 0 (or absent, in a config.json saved before the option)."""
  return config.get('pretrain_image_size', 0) or config.image_size


def view_configs(config_augment):
  """(first, second) view's config.augment: the second with config.augment.second_view's
  values in place of the first's (BYOL's asymmetric blur and solarisation); both without
  second_view and local_crops. Shared with augment.py and the tf.data pipeline.
  """
  values = config_augment.to_dict()
  overrides = values.pop('second_view', None) or {}
  values.pop('local_crops', None)
  return ml_collections.ConfigDict(values), ml_collections.ConfigDict({**values, **overrides})


def local_crops(config_augment) -> tuple[int, int, ml_collections.ConfigDict | None]:
  """(number, size, view config) of the local crops of multi-crop (DINO): the first view's
  config with config.augment.local_crops' other values in its place; (0, 0, None) without."""
  c = config_augment.get('local_crops')  # A config.json saved before multi-crop has none.
  if c is None or not c.number:
    return 0, 0, None
  overrides = {k: v for k, v in c.to_dict().items() if k not in ('number', 'size')}
  first, _ = view_configs(config_augment)
  return c.number, c.size, ml_collections.ConfigDict({**first.to_dict(), **overrides})


def pretrain_view(image, key, config_augment, size):
  """One SimCLR view: crop -> flip -> colour distortion -> blur -> solarize -> clip (augment's
  order).

  Args:
    image: float32 [H, W, 3] in [0, 1] of a static size.
    key: a JAX key.
    config_augment: the `config.augment` ConfigDict.
    size: side of the square output.

  Returns:
    float32 [size, size, 3] in [0, 1].
  """
  c = config_augment
  crop_key, flip_key, color_key, blur_key = jax.random.split(key, 4)
  image = random_resized_crop(
      image,
      crop_key,
      size,
      (c.crop_area_min, c.crop_area_max),
      (c.aspect_ratio_min, c.aspect_ratio_max),
  )
  image = random_flip(image, flip_key, c.flip_prob)
  # A config.json saved before color_jitter_impl existed was trained with v2.
  image = random_color_distortion(
      image,
      color_key,
      color_jitter_strength(c),
      c.color_jitter_prob,
      c.grayscale_prob,
      c.get('color_jitter_impl', 'simclrv2'),
  )
  image = random_gaussian_blur(image, blur_key, c.blur_prob, c.blur_sigma_min, c.blur_sigma_max)
  image = random_solarize(image, key, c.get('solarize_prob', 0.0))
  return jnp.clip(image, 0.0, 1.0)


def _as_keys(keys):
  """Typed JAX keys [N] from typed keys, or from raw threefry key data / seeds [N, 2] ints."""
  if jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key):
    return keys
  return jax.random.wrap_key_data(keys.astype(jnp.uint32), impl='threefry2x32')


def pretrain_views(images, keys, config_augment, size):
  """Two independent views of each image (view_configs: the second's may differ), vmapped over
  the batch.

  Args:
    images: uint8 (or float in [0, 1]) [N, H, W, 3], all of one size.
    keys: typed JAX keys [N], or int seeds [N, 2] used as threefry key data (the input
      pipeline's per-example 'seed').
    config_augment: the `config.augment` ConfigDict.
    size: side of the square views.

  Returns:
    float32 [N, 2, size, size, 3] in [0, 1].
  """

  first, second = view_configs(config_augment)

  def two_views(image, key):
    keys = jax.random.split(key)
    if first == second:  # One vmapped view function compiles once.
      return jax.vmap(lambda k: pretrain_view(image, k, first, size))(keys)
    return jnp.stack(
        [pretrain_view(image, keys[0], first, size), pretrain_view(image, keys[1], second, size)]
    )

  return jax.vmap(two_views)(to_float(images), _as_keys(keys))


def local_views(images, keys, config_augment):
  """The config.augment.local_crops of each image (multi-crop), from the same keys as
  `pretrain_views` but a stream apart; float32 [N, number, size, size, 3] in [0, 1]."""
  number, size, local = local_crops(config_augment)

  def crops(image, key):
    keys = jax.random.split(jax.random.fold_in(key, LOCAL_CROPS_STREAM), number)
    return jax.vmap(lambda k: pretrain_view(image, k, local, size))(keys)

  return jax.vmap(crops)(to_float(images), _as_keys(keys))
