"""SimCLR pretraining augmentations as stateless TensorFlow ops.

Every random function takes `seed`, an int32/int64 tensor of shape [2], and is a
pure function of (inputs, seed): the same seed always gives the same output, on
any machine and independently of TF's global seed. Images are float32 in [0, 1]
with shape [H, W, 3].
"""

import tensorflow as tf

from simclr_jax import augment_jax

_NUM_JITTER_OPS = 4  # brightness, contrast, saturation, hue.
_SOLARIZE_STREAM = 4  # fold_in index of a view's solarisation seed (0-3: crop to blur).


def _split(seed, num):
  """Returns `num` independent [2] seeds derived from `seed`."""
  return tf.unstack(tf.random.experimental.stateless_split(seed, num), num=num)


def _coin(seed, prob):
  """Returns a scalar bool tensor that is True with probability `prob`."""
  return tf.random.stateless_uniform([], seed) < prob


def _random_apply(fn, image, seed, prob):
  """Applies `fn(image, seed)` with probability `prob`."""
  if prob <= 0:
    return image
  coin_seed, fn_seed = _split(seed, 2)
  if prob >= 1:
    return fn(image, fn_seed)
  return tf.cond(_coin(coin_seed, prob), lambda: fn(image, fn_seed), lambda: image)


def sample_crop_window(image_shape, seed, area_range, aspect_ratio_range):
  """Samples a crop window as SimCLR does; returns (begin, size), each [3]."""
  whole_image = tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, shape=[1, 1, 4])
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      image_shape,
      bounding_boxes=whole_image,
      seed=seed,
      min_object_covered=0.1,
      aspect_ratio_range=tuple(aspect_ratio_range),
      area_range=tuple(area_range),
      max_attempts=100,
      use_image_if_no_bounding_boxes=True,
  )
  return begin, size


def random_resized_crop(
    image, seed, size, area_range=(0.08, 1.0), aspect_ratio_range=(3 / 4, 4 / 3)
):
  """Random crop (area/aspect ranges as fractions) resized bicubic to size x size.

  The official `crop_and_resize` multiplies the aspect range by the width/height
  of the *output* (not of the input image); the output is square, so that factor
  is 1. min_object_covered=0.1 on the whole-image box rejects crops under 10% of
  the image, so the effective area range is [max(area_range[0], 0.1), area_range[1]].
  """
  begin, crop_size = sample_crop_window(tf.shape(image), seed, area_range, aspect_ratio_range)
  image = tf.slice(image, begin, crop_size)
  image = tf.image.resize(image[None], [size, size], method=tf.image.ResizeMethod.BICUBIC)[0]
  return tf.clip_by_value(image, 0.0, 1.0)


def random_flip(image, seed, prob=0.5):
  """Flips the image left-right with probability `prob`."""
  return _random_apply(lambda x, s: tf.image.flip_left_right(x), image, seed, prob)


def adjust_brightness(image, value, impl='simclrv2'):
  """Multiplies by `value` (SimCLRv2) or adds it (SimCLRv1, tf.image.random_brightness's op)."""
  if impl == 'simclrv1':
    return tf.image.adjust_brightness(image, value)
  return tf.multiply(image, value)


def random_permutation(seed, n):
  """A uniformly random permutation of range(n) as an int32 [n] tensor."""
  return tf.argsort(tf.random.stateless_uniform([n], seed))


def sample_jitter(seed, ranges):
  """The random draws of a colour jitter: its order of ops and their parameters.

  Each parameter is uniform in its (low, high) of `ranges`, drawn with the same seeds as
  tf.image.stateless_random_{brightness, contrast, saturation, hue} would.

  Returns:
    (order, params): an int32 [4] uniformly random permutation, step i applying op
    order[i] of (brightness, contrast, saturation, hue); float32 [4], their parameters.
  """
  perm_seed, *op_seeds = _split(seed, _NUM_JITTER_OPS + 1)
  params = tf.stack(
      [
          tf.random.stateless_uniform([], op_seed, minval=low, maxval=high)
          for op_seed, (low, high) in zip(op_seeds, ranges)
      ]
  )
  return random_permutation(perm_seed, _NUM_JITTER_OPS), params


def sample_color_jitter(seed, strength, impl='simclrv2'):
  """`sample_jitter` with the ranges of `strength` (augment_jax.jitter_ranges)."""
  return sample_jitter(seed, augment_jax.jitter_ranges(strength, impl))


def apply_jitter(image, order, params, impl='simclrv2'):
  """Applies the ops of `sample_jitter` in `order`, clipping to [0, 1] after each.

  `impl` picks the brightness op: 'simclrv2' multiplies by params[0], 'simclrv1' adds it.
  """
  ops = (
      lambda x: adjust_brightness(x, params[0], impl),
      lambda x: tf.image.adjust_contrast(x, params[1]),
      lambda x: tf.image.adjust_saturation(x, params[2]),
      lambda x: tf.image.adjust_hue(x, params[3]),
  )
  # Unrolled: a tf.while_loop builds a 4x smaller graph but runs ~30% slower
  # on small images, where per-op overhead dominates.
  for i in range(_NUM_JITTER_OPS):
    image = tf.switch_case(order[i], [lambda op=op: op(image) for op in ops])
    image = tf.clip_by_value(image, 0.0, 1.0)
  return image


def color_jitter(image, seed, strength, impl='simclrv2'):
  """Brightness, contrast, saturation and hue in random order: SimCLR's 0.8s, 0.8s, 0.8s and
  0.2s of a number `strength` s, or four given maxima (augment_jax.jitter_maxima).

  The image is clipped to [0, 1] after each op. `impl` picks the brightness op of the
  reference's `color_jitter_rand`: 'simclrv2' multiplies, 'simclrv1' adds.
  """
  if not any(augment_jax.jitter_maxima(strength)):
    return image  # Every op would be the identity; the official code skips them.
  order, params = sample_color_jitter(seed, strength, impl)
  return apply_jitter(image, order, params, impl)


def to_grayscale(image):
  """Converts to grayscale, keeping 3 (equal) channels."""
  return tf.tile(tf.image.rgb_to_grayscale(image), [1, 1, 3])


def random_color_distortion(
    image, seed, strength, jitter_prob=0.8, grayscale_prob=0.2, impl='simclrv2'
):
  """Colour jitter with p=jitter_prob, then independently grayscale with p=grayscale_prob."""
  jitter_seed, gray_seed = _split(seed, 2)
  image = _random_apply(
      lambda x, s: color_jitter(x, s, strength, impl), image, jitter_seed, jitter_prob
  )
  return _random_apply(lambda x, s: to_grayscale(x), image, gray_seed, grayscale_prob)


def gaussian_blur(image, sigma, kernel_size):
  """Separable Gaussian blur with zero 'SAME' padding, as the official code.

  An even `kernel_size` is rounded up to the next odd size (2 * (k // 2) + 1).
  """
  radius = kernel_size // 2
  x = tf.cast(tf.range(-radius, radius + 1), tf.float32)
  kernel = tf.exp(-tf.square(x) / (2.0 * tf.square(tf.cast(sigma, tf.float32))))
  kernel /= tf.reduce_sum(kernel)
  num_channels = tf.shape(image)[-1]
  kernel_h = tf.tile(tf.reshape(kernel, [1, -1, 1, 1]), [1, 1, num_channels, 1])
  kernel_v = tf.tile(tf.reshape(kernel, [-1, 1, 1, 1]), [1, 1, num_channels, 1])
  blurred = tf.nn.depthwise_conv2d(image[None], kernel_h, [1, 1, 1, 1], 'SAME')
  blurred = tf.nn.depthwise_conv2d(blurred, kernel_v, [1, 1, 1, 1], 'SAME')
  return blurred[0]


def random_gaussian_blur(image, seed, prob=0.5, sigma_min=0.1, sigma_max=2.0):
  """With p=prob, blurs with sigma ~ U[sigma_min, sigma_max], kernel ~10% of the height."""

  def blur(x, s):
    sigma = tf.random.stateless_uniform([], s, minval=sigma_min, maxval=sigma_max)
    return gaussian_blur(x, sigma, tf.shape(x)[0] // 10)

  return _random_apply(blur, image, seed, prob)


def solarize(image):
  """BYOL's solarisation: pixels at or above 0.5 become 1 - x."""
  return tf.where(image < 0.5, image, 1.0 - image)


def random_solarize(image, seed, prob):
  """Solarises with p=prob; `seed` is the view's own (a stream apart from its four parts)."""
  seed = tf.random.experimental.stateless_fold_in(seed, _SOLARIZE_STREAM)
  return _random_apply(lambda x, _: solarize(x), image, seed, prob)


def simclr_view(image, seed, config_augment, size):
  """One SimCLR view: crop -> flip -> colour distortion -> blur -> solarize -> clip to [0, 1].

  Args:
    image: float32 [H, W, 3] in [0, 1], any H and W.
    seed: int32/int64 [2] stateless seed.
    config_augment: the `config.augment` ConfigDict.
    size: side of the square output.

  Returns:
    float32 [size, size, 3] in [0, 1].
  """
  c = config_augment
  crop_seed, flip_seed, color_seed, blur_seed = _split(seed, 4)
  image = random_resized_crop(
      image,
      crop_seed,
      size,
      (c.crop_area_min, c.crop_area_max),
      (c.aspect_ratio_min, c.aspect_ratio_max),
  )
  image = random_flip(image, flip_seed, c.flip_prob)
  # A config.json saved before color_jitter_impl existed was trained with v2.
  image = random_color_distortion(
      image,
      color_seed,
      augment_jax.color_jitter_strength(c),
      c.color_jitter_prob,
      c.grayscale_prob,
      c.get('color_jitter_impl', 'simclrv2'),
  )
  if c.blur_prob > 0:
    image = random_gaussian_blur(image, blur_seed, c.blur_prob, c.blur_sigma_min, c.blur_sigma_max)
  if c.get('solarize_prob', 0.0) > 0:  # A config.json saved before solarize_prob has none.
    image = random_solarize(image, seed, c.solarize_prob)
  image = tf.clip_by_value(image, 0.0, 1.0)
  return tf.ensure_shape(image, [size, size, 3])


def sample_weak_crop_window(image_shape, seed, area_range, aspect_ratio_range, attempts=10):
  """The weak policy's crop window: area U[area_range], width/height U[aspect_ratio_range].

  Up to `attempts` (area, ratio) draws; the first whose rounded height and width fit the
  image is taken, at a uniformly random position. If none fits, the centred crop of the
  largest size whose ratio is clamped into the range. The area is not bounded below by
  `min_object_covered` and is uniform, unlike `sample_crop_window`'s.

  Returns:
    (begin, size), each int32 [3], for tf.slice.
  """
  area_seed, ratio_seed, top_seed, left_seed = _split(seed, 4)
  height, width = image_shape[0], image_shape[1]
  h_f, w_f = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
  areas = h_f * w_f * tf.random.stateless_uniform([attempts], area_seed, *area_range)
  ratios = tf.random.stateless_uniform([attempts], ratio_seed, *aspect_ratio_range)
  widths = tf.cast(tf.round(tf.sqrt(areas * ratios)), tf.int32)
  heights = tf.cast(tf.round(tf.sqrt(areas / ratios)), tf.int32)
  fits = (widths >= 1) & (widths <= width) & (heights >= 1) & (heights <= height)
  first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
  low, high = aspect_ratio_range
  # Clamping the ratio shrinks one side only, so the fallback always fits.
  fallback_w = tf.where(w_f / h_f > high, tf.cast(tf.round(h_f * high), tf.int32), width)
  fallback_h = tf.where(w_f / h_f < low, tf.cast(tf.round(w_f / low), tf.int32), height)
  found = tf.reduce_any(fits)
  crop_h = tf.where(found, heights[first], fallback_h)
  crop_w = tf.where(found, widths[first], fallback_w)
  top = tf.where(
      found,
      tf.random.stateless_uniform([], top_seed, 0, height - crop_h + 1, dtype=tf.int32),
      (height - crop_h) // 2,
  )
  left = tf.where(
      found,
      tf.random.stateless_uniform([], left_seed, 0, width - crop_w + 1, dtype=tf.int32),
      (width - crop_w) // 2,
  )
  return tf.stack([top, left, 0]), tf.stack([crop_h, crop_w, -1])


def _resize_bilinear(image, size):
  """Bilinear (antialiased) resize to size x size: the identity on a size x size image."""
  image = tf.image.resize(image[None], [size, size], method='bilinear', antialias=True)[0]
  return tf.clip_by_value(image, 0.0, 1.0)


def weak_jitter_ranges(config_weak):
  """The weak policy's jitter draws: factors U[1 - x, 1 + x] and a hue shift U[-h, h]."""
  w = config_weak
  return tuple((max(0.0, 1 - x), 1 + x) for x in (w.brightness, w.contrast, w.saturation)) + (
      (-w.hue, w.hue),
  )


def sample_weak_view(seed, image_shape, config_weak):
  """The random draws of `weak_view`.

  Returns:
    {'crop': scalar bool, the crop branch is taken; 'flip': scalar bool; 'begin', 'size':
    the crop window (`sample_weak_crop_window`); 'order', 'params': the colour jitter's
    (`sample_jitter` with `weak_jitter_ranges`)}. The window and the jitter are drawn in
    both branches and used in one.
  """
  w = config_weak
  branch_seed, flip_seed, crop_seed, jitter_seed = _split(seed, 4)
  begin, size = sample_weak_crop_window(
      image_shape,
      crop_seed,
      (w.crop_area_min, w.crop_area_max),
      (w.aspect_ratio_min, w.aspect_ratio_max),
  )
  order, params = sample_jitter(jitter_seed, weak_jitter_ranges(w))
  return {
      'crop': _coin(branch_seed, w.crop_branch_prob),
      'flip': _coin(flip_seed, w.flip_prob),
      'begin': begin,
      'size': size,
      'order': order,
      'params': params,
  }


def weak_view(image, seed, config_augment, size):
  """One view of the down-scaled study's weak policy (config.augment.policy='weak').

  With p=crop_branch_prob, a crop (`sample_weak_crop_window`) resized bilinearly to the
  output size, then a flip; else a flip, then a colour jitter (`weak_jitter_ranges`, the
  ops in random order, multiplicative brightness). Each flip has p=flip_prob. The knobs
  are config.augment.weak.

  Returns:
    float32 [size, size, 3] in [0, 1].
  """
  draws = sample_weak_view(seed, tf.shape(image), config_augment.weak)

  def flipped(x):
    return tf.cond(draws['flip'], lambda: tf.image.flip_left_right(x), lambda: x)

  def crop_branch():
    return flipped(_resize_bilinear(tf.slice(image, draws['begin'], draws['size']), size))

  def jitter_branch():
    return apply_jitter(flipped(_resize_bilinear(image, size)), draws['order'], draws['params'])

  return tf.ensure_shape(tf.cond(draws['crop'], crop_branch, jitter_branch), [size, size, 3])


POLICIES = {'simclr': simclr_view, 'weak': weak_view}


def pretrain_view(image, seed, config_augment, size):
  """One pretraining view of the policy config_augment.policy (see POLICIES)."""
  # A config.json saved before augment.policy existed was trained with SimCLR's.
  return POLICIES[config_augment.get('policy', 'simclr')](image, seed, config_augment, size)


def crop_flip_view(image, seed, config_augment, size):
  """Fine-tuning view (reference): random resized crop and horizontal flip only."""
  c = config_augment
  crop_seed, flip_seed = _split(seed, 2)
  image = random_resized_crop(
      image,
      crop_seed,
      size,
      (c.crop_area_min, c.crop_area_max),
      (c.aspect_ratio_min, c.aspect_ratio_max),
  )
  image = tf.clip_by_value(random_flip(image, flip_seed, c.flip_prob), 0.0, 1.0)
  return tf.ensure_shape(image, [size, size, 3])


def eval_view(image, size, center_crop_fraction=0.875):
  """Deterministic evaluation view: centre crop (images larger than 32 px) and bicubic resize.

  As in the reference, 32x32 inputs are used whole; larger ones are centre-cropped to
  `center_crop_fraction` of their shorter side first.
  """
  if size > 32:
    shape = tf.shape(image)
    side = tf.cast(
        tf.cast(tf.minimum(shape[0], shape[1]), tf.float32) * center_crop_fraction, tf.int32
    )
    top, left = (shape[0] - side) // 2, (shape[1] - side) // 2
    image = image[top : top + side, left : left + side]
  image = tf.image.resize(image[None], [size, size], method=tf.image.ResizeMethod.BICUBIC)[0]
  return tf.ensure_shape(tf.clip_by_value(image, 0.0, 1.0), [size, size, 3])
