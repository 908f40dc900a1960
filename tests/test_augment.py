"""Tests of the stateless SimCLR augmentations."""

import ml_collections
import numpy as np
import pytest
from scipy import stats
import tensorflow as tf

from simclr_jax import augment
from conftest import load_config
from jitter_reference import reference_jitter, reference_jitter_ranges


def _seed(a, b=0):
  return tf.constant([a, b], tf.int64)


def _image(height=20, width=24, seed=0):
  return tf.random.stateless_uniform([height, width, 3], _seed(seed, 99))


def _map_seeds(fn, n, dtypes, seed=0):
  """[fn(seed) for n independent seeds] as numpy, in one graph (one tracing)."""
  seeds = tf.random.experimental.stateless_split(_seed(seed, 5), n)
  out = tf.function(lambda s: tf.map_fn(fn, s, fn_output_signature=dtypes))(seeds)
  return tf.nest.map_structure(lambda x: x.numpy(), out)


@pytest.fixture
def aug_config():
  config = load_config('cifar10').augment
  config.blur_prob = 0.5  # Exercise every stage.
  return config


def test_pretrain_view_shape_dtype_range(aug_config):
  for shape in [(20, 24), (40, 17), (8, 8)]:
    for seed in range(5):
      out = augment.pretrain_view(_image(*shape), _seed(seed), aug_config, 16)
      assert out.shape == (16, 16, 3) and out.dtype == tf.float32
      assert 0.0 <= float(tf.reduce_min(out)) and float(tf.reduce_max(out)) <= 1.0


def test_individual_ops_shape_and_range():
  image = _image()
  s = _seed(3)
  outputs = [
      augment.random_resized_crop(image, s, 12),
      augment.random_flip(image, s, 0.5),
      augment.color_jitter(image, s, 1.0),
      augment.to_grayscale(image),
      augment.random_color_distortion(image, s, 1.0, 1.0, 0.5),
      augment.random_gaussian_blur(image, s, 1.0, 0.1, 2.0),
  ]
  expected_shapes = [(12, 12, 3)] + [(20, 24, 3)] * 5
  for out, shape in zip(outputs, expected_shapes):
    assert out.shape == shape and out.dtype == tf.float32
    assert 0.0 <= float(tf.reduce_min(out)) and float(tf.reduce_max(out)) <= 1.0 + 1e-6


def _expected_mean_crop_area(height, width, area_range, aspect_range, grid=1000):
  """Mean area fraction of the TF kernel's crop (sample_distorted_bounding_box_op.cc).

  Per attempt the kernel draws the aspect ratio r ~ U[aspect_range] and then the
  crop *height* uniformly over the integers that keep the area in range, so the
  area is not uniform. min_object_covered=0.1 on the whole-image box rejects
  crops below 10% of the image (and the attempt is retried), so the result is
  the per-attempt distribution conditioned on acceptance. Integrates r on a grid.
  """
  lo, hi = aspect_range
  min_area = area_range[0] * height * width
  max_area = area_range[1] * height * width
  total_p = total_area = 0.0
  for r in lo + (hi - lo) * (np.arange(grid) + 0.5) / grid:
    h_min = int(np.rint(np.sqrt(min_area / r)))
    h_max = int(np.rint(np.sqrt(max_area / r)))
    if np.rint(h_max * r) > width:
      h_max = int((width + 0.5 - 1e-7) / r)
      if np.rint(h_max * r) > width:
        h_max -= 1
    h_max = min(h_max, height)
    h_min = min(h_min, h_max)
    p = 1.0 / (h_max - h_min + 1)
    for h in range(h_min, h_max + 1):
      w = int(np.rint(h * r))
      if w * h < min_area:
        h += 1
        w = int(np.rint(h * r))
      if w * h > max_area:
        h -= 1
        w = int(np.rint(h * r))
      area = w * h
      if not (min_area <= area <= max_area and 0 < w <= width and 0 < h <= height):
        continue
      if area / (height * width) < 0.1:  # min_object_covered.
        continue
      total_p += p
      total_area += p * area / (height * width)
  return total_area / total_p


def test_crop_area_statistics():
  height, width, n = 32, 32, 3000
  seeds = tf.random.experimental.stateless_split(_seed(5), n)

  @tf.function
  def windows(seeds):
    def one(s):
      _, size = augment.sample_crop_window(
          tf.constant([height, width, 3]), s, (0.08, 1.0), (3 / 4, 4 / 3)
      )
      return size[:2]

    return tf.map_fn(one, seeds, fn_output_signature=tf.int32)

  sizes = windows(seeds).numpy().astype(np.float64)
  area = sizes[:, 0] * sizes[:, 1] / (height * width)
  aspect = sizes[:, 1] / sizes[:, 0]
  # The 0.1 lower bound comes from min_object_covered (see the helper above).
  assert area.min() >= 0.1 - 1e-6 and area.max() <= 1.0
  assert area.min() < 0.12 and area.max() == 1.0  # Both ends are reached.
  # Rounding the width to whole pixels moves the aspect a little past the range.
  assert aspect.min() >= 3 / 4 - 0.05 and aspect.max() <= 4 / 3 + 0.05
  expected = _expected_mean_crop_area(height, width, (0.08, 1.0), (3 / 4, 4 / 3))
  # The kernel's distribution has mean ~0.43, far from the naive U[0.08, 1] 0.54.
  assert 0.40 < expected < 0.46
  standard_error = area.std() / np.sqrt(n)
  assert abs(area.mean() - expected) < 4 * standard_error


def _naive_weak_windows(height, width, n, rng, area_range=(0.7, 1.0), ratio_range=(0.8, 1.2)):
  """The weak crop's sampling as a plain loop: [n, 4] (top, left, crop height, crop width)."""
  windows = []
  for _ in range(n):
    for _ in range(10):
      area = height * width * rng.uniform(*area_range)
      ratio = rng.uniform(*ratio_range)
      w, h = int(round(np.sqrt(area * ratio))), int(round(np.sqrt(area / ratio)))
      if 0 < w <= width and 0 < h <= height:
        windows.append((rng.integers(0, height - h + 1), rng.integers(0, width - w + 1), h, w))
        break
    else:  # Centred, with the image's ratio clamped into the range.
      w, h = width, height
      if width / height > ratio_range[1]:
        w = int(round(height * ratio_range[1]))
      elif width / height < ratio_range[0]:
        h = int(round(width / ratio_range[0]))
      windows.append(((height - h) // 2, (width - w) // 2, h, w))
  return np.array(windows, np.float64)


@pytest.mark.parametrize('height,width', [(32, 32), (24, 36)])
def test_weak_crop_window_matches_a_naive_sampler(height, width):
  n = 3000

  def window(seed):
    begin, size = augment.sample_weak_crop_window(
        tf.constant([height, width, 3]), seed, (0.7, 1.0), (0.8, 1.2)
    )
    return tf.concat([begin[:2], size[:2]], 0)

  ours = _map_seeds(window, n, tf.int32).astype(np.float64)
  naive = _naive_weak_windows(height, width, 20000, np.random.default_rng(0))
  area, naive_area = (w[:, 2] * w[:, 3] / (height * width) for w in (ours, naive))
  aspect, naive_aspect = (w[:, 3] / w[:, 2] for w in (ours, naive))
  assert area.min() >= 0.7 * (1 - 2 / min(height, width)) and area.max() <= 1.0
  # The last attempts' failures leave a few fallback windows: the largest centred crop.
  for values, reference in ((area, naive_area), (aspect, naive_aspect)):
    # Two-sample KS at p = 1e-3 tells CDFs ~0.035 apart (e.g. TF's sampler, whose height,
    # not area, is uniform); the seeds are fixed, so the outcome is deterministic.
    assert stats.ks_2samp(values, reference).pvalue > 1e-3
  # Positions: uniform over the free rows and columns (mean of the free fraction 1/2).
  free = ours[:, 2] < height
  position = ours[free, 0] / (height - ours[free, 2])
  assert abs(position.mean() - 0.5) < 4 * 0.29 / np.sqrt(free.sum())


def test_weak_crop_window_falls_back_to_a_centred_crop():
  # At 20 x 60 no area >= 0.7 fits with a ratio <= 1.2: the centred 20 x 24 crop is taken.
  for seed in range(5):
    begin, size = augment.sample_weak_crop_window(
        tf.constant([20, 60, 3]), _seed(seed), (0.7, 1.0), (0.8, 1.2)
    )
    np.testing.assert_array_equal(begin.numpy(), [0, 18, 0])
    np.testing.assert_array_equal(size.numpy()[:2], [20, 24])


def test_weak_view_applies_its_draws_as_the_policy_says(aug_config):
  # Each view against its draws applied by hand: crop -> resize -> flip, or flip -> jitter.
  n = 1000
  weak = aug_config.weak
  image = _image(32, 32)

  def view_and_draws(seed):
    draws = augment.sample_weak_view(seed, tf.shape(image), weak)
    view = augment.weak_view(image, seed, aug_config, 32)
    return (
        view,
        draws['crop'],
        draws['flip'],
        draws['begin'],
        draws['size'],
        draws['order'],
        draws['params'],
    )

  views, crop, flip, begin, size, order, params = _map_seeds(
      view_and_draws, n, (tf.float32, tf.bool, tf.bool, tf.int32, tf.int32, tf.int32, tf.float32)
  )
  for i in range(100):
    if crop[i]:
      (y, x, _), (h, w, _) = begin[i], size[i]
      expected = tf.image.resize(
          image[None, y : y + h, x : x + w], [32, 32], method='bilinear', antialias=True
      )[0].numpy()
      expected = expected[:, ::-1] if flip[i] else expected
    else:
      flipped = image.numpy()[:, ::-1] if flip[i] else image.numpy()
      expected = reference_jitter(flipped, order[i], params[i], 'simclrv2')
    np.testing.assert_allclose(views[i], np.clip(expected, 0, 1), rtol=0, atol=1e-5)
  for count, prob in ((crop.sum(), 0.5), (flip.sum(), 0.3), ((crop & flip).sum(), 0.15)):
    # Within 4.5 binomial standard deviations: a wrong rate of 0.5 vs 0.3 is ~14 away.
    assert abs(count - n * prob) < 4.5 * np.sqrt(n * prob * (1 - prob)), (prob, count / n)
  ranges = [(0.9, 1.1), (0.9, 1.1), (0.9, 1.1), (-0.05, 0.05)]
  for values, (low, high) in zip(params.T, ranges):
    assert low <= values.min() and values.max() <= high
    assert stats.kstest(values, stats.uniform(low, high - low).cdf).pvalue > 1e-3, (low, high)


def test_pretrain_view_follows_the_configured_policy(aug_config):
  image = _image(32, 32)
  simclr = augment.pretrain_view(image, _seed(4), aug_config, 32).numpy()
  aug_config.policy = 'weak'
  weak = augment.pretrain_view(image, _seed(4), aug_config, 32).numpy()
  np.testing.assert_array_equal(weak, augment.weak_view(image, _seed(4), aug_config, 32).numpy())
  assert np.abs(weak - simclr).mean() > 1e-2


def test_crop_takes_the_sampled_window():
  # Pixel values encode their coordinates, so the crop's content shows where it came from.
  height, width = 20, 24
  ys, xs = np.meshgrid(np.arange(height), np.arange(width), indexing='ij')
  coords = np.stack([ys / (height - 1), xs / (width - 1), np.zeros_like(ys)], -1)
  image = tf.constant(coords, tf.float32)
  for seed in range(10):
    begin, size = augment.sample_crop_window(
        tf.shape(image), _seed(seed), (0.08, 1.0), (3 / 4, 4 / 3)
    )
    y0, x0, _ = begin.numpy()
    h, w, _ = size.numpy()
    out = augment.random_resized_crop(image, _seed(seed), 16).numpy()
    # Bicubic resizing keeps the crop's corners' coordinates up to interpolation error.
    tol = 1.0 / min(height, width)
    assert abs(out[0, 0, 0] - y0 / (height - 1)) < tol
    assert abs(out[-1, -1, 0] - (y0 + h - 1) / (height - 1)) < tol
    assert abs(out[0, 0, 1] - x0 / (width - 1)) < tol
    assert abs(out[-1, -1, 1] - (x0 + w - 1) / (width - 1)) < tol


def test_same_seed_same_output_different_seed_different(aug_config):
  image = _image()
  a = augment.pretrain_view(image, _seed(7), aug_config, 16).numpy()
  b = augment.pretrain_view(image, _seed(7), aug_config, 16).numpy()
  c = augment.pretrain_view(image, _seed(8), aug_config, 16).numpy()
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)


def test_same_seed_same_output_in_graph_mode(aug_config):
  image = _image()
  graph_fn = tf.function(lambda x, s: augment.pretrain_view(x, s, aug_config, 16), autograph=False)
  np.testing.assert_array_equal(
      graph_fn(image, _seed(11)).numpy(),
      augment.pretrain_view(image, _seed(11), aug_config, 16).numpy(),
  )


def test_two_views_differ(aug_config):
  image = _image()
  seed_a, seed_b = tf.unstack(tf.random.experimental.stateless_split(_seed(1), 2))
  view_a = augment.pretrain_view(image, seed_a, aug_config, 16).numpy()
  view_b = augment.pretrain_view(image, seed_b, aug_config, 16).numpy()
  assert np.abs(view_a - view_b).mean() > 1e-3


def test_grayscale_has_equal_channels():
  out = augment.to_grayscale(_image()).numpy()
  assert out.shape == (20, 24, 3)
  np.testing.assert_array_equal(out[..., 0], out[..., 1])
  np.testing.assert_array_equal(out[..., 0], out[..., 2])
  forced = augment.random_color_distortion(
      _image(), _seed(2), 0.5, jitter_prob=0.0, grayscale_prob=1.0
  ).numpy()
  np.testing.assert_array_equal(forced[..., 0], forced[..., 2])


def test_color_jitter_strength_zero_is_identity():
  image = _image()
  for seed in range(3):
    out = augment.color_jitter(image, _seed(seed), 0.0)
    np.testing.assert_allclose(out.numpy(), image.numpy(), atol=1e-6)


def test_color_jitter_changes_image_and_is_seeded():
  image = _image()
  a = augment.color_jitter(image, _seed(1), 0.5).numpy()
  assert np.abs(a - image.numpy()).mean() > 1e-3
  np.testing.assert_array_equal(a, augment.color_jitter(image, _seed(1), 0.5).numpy())


@pytest.mark.parametrize(
    'impl,strength',
    [
        ('simclrv2', 0.5),
        ('simclrv2', 2.0),
        ('simclrv1', 0.5),
        ('simclrv1', 1.0),
        ('simclrv2', (0.4, 0.4, 0.2, 0.1)),  # BYOL's CIFAR-10 jitter (torchvision's).
    ],
)
def test_color_jitter_draws_follow_the_reference(impl, strength):
  # simclrv2 multiplies by U[max(0, 1 - b), 1 + b] (clamped at 0 for strength 2), simclrv1
  # adds U[-b, b]; contrast and saturation factors U[max(0, 1 - 0.8s), 1 + 0.8s], hue U[-h, h]
  # (or the four maxima given).
  n = 2000
  image = _image(4, 4) * 0.9 + 0.1  # Away from 0, so that ratios are exact enough.

  def draw(seed):
    _, params = augment.sample_color_jitter(seed, strength, impl)
    return params, augment.adjust_brightness(image, params[0], impl)

  params, bright = _map_seeds(draw, n, (tf.float32, tf.float32))
  change = bright / image.numpy() if impl == 'simclrv2' else bright - image.numpy()
  # One factor (offset) per image: float32 rounding of values below 4 is < 1e-6.
  np.testing.assert_allclose(
      change, np.broadcast_to(params[:, 0, None, None, None], change.shape), rtol=0, atol=1e-6
  )
  for values, (low, high) in zip(params.T, reference_jitter_ranges(strength, impl)):
    assert low <= values.min() and values.max() <= high
    # At n = 2000 the KS test rejects CDFs ~0.045 apart at p = 1e-3 (a shifted or scaled
    # range); seeds are fixed, so the outcome is deterministic.
    assert stats.kstest(values, stats.uniform(low, high - low).cdf).pvalue > 1e-3, (low, high)


@pytest.mark.parametrize('impl', ['simclrv2', 'simclrv1'])
def test_color_jitter_applies_its_ops_in_the_sampled_order(impl):
  n, strength = 200, 0.5
  image = _image(8, 8)

  def jitter(seed):
    order, params = augment.sample_color_jitter(seed, strength, impl)
    return augment.color_jitter(image, seed, strength, impl), order, params

  out, orders, params = _map_seeds(jitter, n, (tf.float32, tf.int32, tf.float32))
  for i in range(n):
    # Float32 rounding of the numpy brightness and contrast vs TF's, carried through 4 ops.
    np.testing.assert_allclose(
        out[i],
        reference_jitter(image.numpy(), orders[i], params[i], impl),
        rtol=0,
        atol=1e-5,
        err_msg=f'order {orders[i]}',
    )
  assert all(sorted(order) == [0, 1, 2, 3] for order in orders)
  # Each of the 24 orders has probability 1/24: 200 uniform draws leave 3 or more unseen
  # with probability < C(24, 3) (21/24)^200 < 1e-8.
  assert len({tuple(order) for order in orders}) >= 22


def test_pretrain_view_uses_the_configured_jitter_impl(aug_config):
  # The impls differ only in brightness: with the jitter always on, so do the views.
  aug_config.color_jitter_prob = 1.0
  views = []
  for impl in ('simclrv2', 'simclrv1'):
    aug_config.color_jitter_impl = impl
    views.append(augment.pretrain_view(_image(), _seed(3), aug_config, 16).numpy())
  assert np.abs(views[0] - views[1]).mean() > 1e-2


def test_color_jitter_impl_is_validated():
  with pytest.raises(ValueError, match='simclrv3'):
    augment.color_jitter(_image(), _seed(0), 0.5, 'simclrv3')


def test_random_order_uses_many_permutations():
  perms = {tuple(augment.random_permutation(_seed(i), 4).numpy()) for i in range(300)}
  assert all(sorted(p) == [0, 1, 2, 3] for p in perms)
  assert len(perms) == 24  # P(some order unseen in 300 draws) < 1e-4.


def test_flip_probabilities():
  image = _image()
  np.testing.assert_array_equal(
      augment.random_flip(image, _seed(0), 1.0).numpy(), image.numpy()[:, ::-1]
  )
  np.testing.assert_array_equal(augment.random_flip(image, _seed(0), 0.0).numpy(), image.numpy())
  flipped = [
      not np.array_equal(augment.random_flip(image, _seed(i), 0.5).numpy(), image.numpy())
      for i in range(40)
  ]
  assert 5 < sum(flipped) < 35


def test_pretrain_view_grayscale_and_blur_rates_follow_the_config(aug_config):
  n = 1000
  aug_config.color_jitter_prob = 0.0  # Nothing else makes the 3 channels equal.
  # Not random_color_distortion's and random_gaussian_blur's defaults (0.2, 0.5), so
  # pretrain_view dropping the config's value shows.
  aug_config.grayscale_prob = 0.35
  aug_config.blur_prob = 0.3
  aug_config.blur_sigma_min = 1.0  # A blur with sigma near 0.1 leaves float32 pixels unchanged.
  unblurred_config = ml_collections.ConfigDict(aug_config)
  unblurred_config.blur_prob = 0.0  # The same seed gives the same view, minus the blur.
  image = _image(32, 32)

  def both_views(seed):
    return (
        augment.pretrain_view(image, seed, aug_config, 32),
        augment.pretrain_view(image, seed, unblurred_config, 32),
    )

  views, unblurred = _map_seeds(both_views, n, (tf.float32, tf.float32))
  gray = (np.ptp(views, axis=-1) < 1e-6).all((1, 2))
  blurred = (np.abs(views - unblurred) > 1e-3).any((1, 2, 3))
  for count, prob in ((gray.sum(), 0.35), (blurred.sum(), 0.3)):
    # Within 4.5 standard deviations (+-0.07) of the binomial count: a correct rate fails
    # with probability < 1e-5, while the defaults 0.2 and 0.5 are ~10 and ~14 away.
    assert abs(count - n * prob) < 4.5 * np.sqrt(n * prob * (1 - prob)), (prob, count / n)


def _numpy_gaussian_blur(image, sigma, kernel_size):
  """Reference: separable Gaussian, zero padding, output the input's size."""
  radius = kernel_size // 2
  x = np.arange(-radius, radius + 1, dtype=np.float64)
  kernel = np.exp(-(x**2) / (2 * sigma**2))
  kernel /= kernel.sum()
  height, width, _ = image.shape
  padded = np.pad(image.astype(np.float64), ((radius, radius), (radius, radius), (0, 0)))
  out = np.zeros_like(padded)
  for i, k in enumerate(kernel):  # Horizontal pass.
    out[:, radius : radius + width] += k * padded[:, i : i + width]
  padded, out = out, np.zeros_like(out)
  for i, k in enumerate(kernel):  # Vertical pass.
    out[radius : radius + height] += k * padded[i : i + height]
  return out[radius : radius + height, radius : radius + width]


def test_gaussian_blur_matches_numpy_reference():
  image = _image(23, 21)
  for sigma, kernel_size in [(0.7, 3), (1.5, 5), (2.0, 4)]:  # 4 rounds up to 5.
    out = augment.gaussian_blur(image, sigma, kernel_size).numpy()
    np.testing.assert_allclose(
        out, _numpy_gaussian_blur(image.numpy(), sigma, kernel_size), atol=1e-5
    )


def test_random_gaussian_blur_fixed_sigma_matches_reference():
  image = _image(40, 30)  # Kernel side from the height: 2 * ((40 // 10) // 2) + 1 = 5.
  out = augment.random_gaussian_blur(
      image, _seed(4), prob=1.0, sigma_min=1.3, sigma_max=1.3
  ).numpy()
  np.testing.assert_allclose(out, _numpy_gaussian_blur(image.numpy(), 1.3, 4), atol=1e-5)
  skipped = augment.random_gaussian_blur(image, _seed(4), prob=0.0).numpy()
  np.testing.assert_array_equal(skipped, image.numpy())
