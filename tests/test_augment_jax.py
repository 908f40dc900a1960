"""augment_jax against the tf.data augmentation (augment.py).

The deterministic parts must compute what TensorFlow computes (to float32 rounding); the
random parts must have the same distribution, compared by two-sample tests over thousands of
draws. Seeds are fixed, so the tests are deterministic. Each comparison fails when its
p-value is under _P_MIN: with a fresh seed, a correct implementation would fail it with
probability 1e-3, while thousands of draws resolve differences of a few percent (a KS test on
2 x 3000 draws detects CDFs 5 points apart).
"""

import functools
import textwrap

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy import stats
import tensorflow as tf

from conftest import load_config
from multidevice import run_on_eight_cpu_devices
from simclr_jax import augment, augment_jax
from jitter_reference import reference_jitter, reference_jitter_ranges

_P_MIN = 1e-3
_ATOL = 1e-5  # Deterministic parts: float32 rounding of [0, 1] values, summed over taps.


def _keys(n, seed=0):
  return jax.random.split(jax.random.key(seed), n)


def _seeds(n, seed=0):
  """[n, 2] uint32 seeds, the input pipeline's format for augment_on_device."""
  return np.random.default_rng(seed).integers(0, 2**32, size=(n, 2), dtype=np.uint32)


def _tf_seeds(n, seed=0):
  return tf.random.experimental.stateless_split(tf.constant([seed, 7], tf.int64), n)


def _image(shape, seed=0):
  return np.random.default_rng(seed).uniform(size=shape).astype(np.float32)


def _tf_map(fn, seeds, batch=1000):
  """[fn(seed) for seed in seeds] as numpy, in parallel through tf.data (fast in graph mode)."""
  ds = tf.data.Dataset.from_tensor_slices(seeds).map(
      tf.autograph.experimental.do_not_convert(fn),
      num_parallel_calls=tf.data.AUTOTUNE,
      deterministic=True,
  )
  return np.concatenate(list(ds.batch(batch).as_numpy_iterator()))


def _compile(fn, *args):
  """jax.jit(fn) compiled for `args` without XLA's backend optimisations.

  For the statistical tests: on CPU 5x faster to compile (slower to run), and the same
  values up to float32 rounding. The exact comparisons use plain jax.jit.
  """
  return jax.jit(fn).lower(*args).compile({'xla_backend_optimization_level': 0})


def _run(fn, *args):
  return np.asarray(_compile(fn, *args)(*args))


def _assert_same_distribution(a, b, what):
  p = stats.ks_2samp(a, b).pvalue
  assert p > _P_MIN, f'{what}: KS p = {p:.2g}'


_BATCH = 512  # Images per call of views_fn: the tests below share one compilation.


@pytest.fixture(scope='module')
def views_fn():
  """pretrain_views compiled for uint8 [_BATCH, 32, 32, 3] and seeds, every stage on."""
  config = load_config('cifar10').augment
  config.blur_prob = 0.5
  views = functools.partial(augment_jax.pretrain_views, config_augment=config, size=32)
  return config, _compile(
      views,
      jax.ShapeDtypeStruct((_BATCH, 32, 32, 3), np.uint8),
      jax.ShapeDtypeStruct((_BATCH, 2), np.uint32),
  )


# Deterministic parts: equal to TensorFlow's.


@pytest.mark.parametrize('height,width,size', [(32, 32, 32), (24, 40, 16), (20, 28, 48)])
def test_crop_and_resize_matches_tf(height, width, size):
  rng = np.random.default_rng(size)
  image = _image((height, width, 3), size)
  windows = []
  for _ in range(20):
    h, w = rng.integers(1, height + 1), rng.integers(1, width + 1)
    windows.append((rng.integers(0, height - h + 1), rng.integers(0, width - w + 1), h, w))
  windows = np.array(windows, np.int32)
  ours = jax.jit(jax.vmap(lambda win: augment_jax.crop_and_resize(image, tuple(win), size)))(
      windows
  )
  for (top, left, h, w), out in zip(windows, np.asarray(ours)):
    expected = tf.image.resize(
        image[None, top : top + h, left : left + w],
        [size, size],
        method=tf.image.ResizeMethod.BICUBIC,
    )[0].numpy()
    np.testing.assert_allclose(out, expected, rtol=0, atol=_ATOL)


def _colour_test_images():
  """Random colours, plus ties between channels, greys, 0s and 1s (TF's special cases)."""
  rng = np.random.default_rng(1)
  ties = rng.integers(0, 5, size=(8, 16, 3)) / 4
  ties[:2] = ties[:2, :, :1]  # Greys.
  return [_image((8, 16, 3), 2), ties.astype(np.float32)]


@pytest.mark.parametrize(
    'name,tf_fn,values',
    [
        ('adjust_contrast', tf.image.adjust_contrast, (0.0, 0.3, 1.0, 1.8)),
        ('adjust_saturation', tf.image.adjust_saturation, (0.0, 0.3, 1.0, 1.8)),
        ('adjust_hue', tf.image.adjust_hue, (-0.5, -0.37, 0.0, 0.1, 0.5)),
    ],
)
def test_colour_ops_match_tf(name, tf_fn, values):
  fn = jax.jit(getattr(augment_jax, name))
  for image in _colour_test_images():
    for value in values:
      np.testing.assert_allclose(
          fn(image, value),
          tf_fn(image, value).numpy(),
          rtol=0,
          atol=_ATOL,
          err_msg=f'{name}({value})',
      )


@pytest.mark.parametrize(
    'impl,values', [('simclrv2', (0.0, 0.6, 1.4)), ('simclrv1', (-0.4, 0.0, 0.25))]
)
def test_brightness_matches_augment(impl, values):
  # A factor (simclrv2) or an offset (simclrv1, tf.image.adjust_brightness).
  image = _colour_test_images()[0]
  for value in values:
    np.testing.assert_allclose(
        augment_jax.adjust_brightness(image, value, impl),
        augment.adjust_brightness(image, value, impl).numpy(),
        rtol=0,
        atol=_ATOL,
        err_msg=f'{impl}({value})',
    )


def test_grayscale_matches_tf():
  for image in _colour_test_images():
    np.testing.assert_allclose(
        augment_jax.to_grayscale(image), augment.to_grayscale(image).numpy(), rtol=0, atol=_ATOL
    )


@pytest.mark.parametrize(
    'shape,sigma,kernel_size',
    [((32, 32, 3), 0.1, 3), ((32, 32, 3), 1.3, 3), ((40, 30, 3), 2.0, 4), ((32, 32, 3), 0.8, 10)],
)
def test_blur_matches_augment(shape, sigma, kernel_size):
  image = _image(shape, kernel_size)
  blur = jax.jit(augment_jax.gaussian_blur, static_argnums=2)
  np.testing.assert_allclose(
      blur(image, sigma, kernel_size),
      augment.gaussian_blur(image, sigma, kernel_size).numpy(),
      rtol=0,
      atol=_ATOL,
  )
  # The random blur's kernel follows the height, as augment's: 40 // 10 = 4 -> 5 taps.
  ours = jax.jit(augment_jax.random_gaussian_blur, static_argnums=(2, 3, 4))(
      image, _keys(1)[0], 1.0, sigma, sigma
  )
  theirs = augment.random_gaussian_blur(image, _tf_seeds(1)[0], 1.0, sigma, sigma)
  np.testing.assert_allclose(ours, theirs.numpy(), rtol=0, atol=_ATOL)


@pytest.mark.parametrize(
    'area_range,aspect_range', [((0.08, 1.0), (10.0, 10.0)), ((1.0, 1.0), (1.0, 1.0))]
)
def test_crop_window_whole_image_cases(area_range, aspect_range):
  # Aspect 10 fits only 3 x 30 crops, 8.8% of the image: under min_object_covered, so every
  # attempt fails and TF falls back to the whole image; area 1 allows only the whole image.
  windows = _run(
      jax.vmap(
          lambda k: jnp.stack(augment_jax.sample_crop_window(k, 32, 32, area_range, aspect_range))
      ),
      _keys(50),
  )
  np.testing.assert_array_equal(windows, np.tile([0, 0, 32, 32], (50, 1)))
  begin, size = augment.sample_crop_window(
      tf.constant([32, 32, 3]), _tf_seeds(1)[0], area_range, aspect_range
  )
  np.testing.assert_array_equal(begin.numpy()[:2], [0, 0])
  np.testing.assert_array_equal(size.numpy()[:2], [32, 32])


# The colour jitter and the config's rates against their definitions (as test_augment.py).


def _compile_and_run(fn, *args):
  """_run for functions returning a tuple of arrays."""
  return tuple(np.asarray(x) for x in _compile(fn, *args)(*args))


@pytest.mark.parametrize(
    'impl,strength',
    [
        ('simclrv2', 0.5),
        ('simclrv2', 2.0),
        ('simclrv1', 0.5),
        ('simclrv1', 1.0),
        ('simclrv1', (0.4, 0.4, 0.2, 0.1)),  # BYOL's ImageNet jitter (additive brightness).
    ],
)
def test_color_jitter_draws_follow_the_reference(impl, strength):
  # simclrv2 multiplies by U[max(0, 1 - b), 1 + b] (clamped at 0 for strength 2), simclrv1
  # adds U[-b, b]; contrast and saturation factors U[max(0, 1 - 0.8s), 1 + 0.8s], hue U[-h, h].
  n = 2000
  image = _image((4, 4, 3)) * 0.9 + 0.1  # Away from 0, so that ratios are exact enough.

  def draw(key):
    _, params = augment_jax.sample_color_jitter(key, strength, impl)
    return params, augment_jax.adjust_brightness(image, params[0], impl)

  params, bright = _compile_and_run(jax.vmap(draw), _keys(n, 2))
  change = bright / image if impl == 'simclrv2' else bright - image
  # One factor (offset) per image: float32 rounding of values below 4 is < 1e-6.
  np.testing.assert_allclose(
      change, np.broadcast_to(params[:, 0, None, None, None], change.shape), rtol=0, atol=1e-6
  )
  for values, (low, high) in zip(params.T, reference_jitter_ranges(strength, impl)):
    assert low <= values.min() and values.max() <= high
    p = stats.kstest(values, stats.uniform(low, high - low).cdf).pvalue
    assert p > _P_MIN, (low, high, p)


@pytest.mark.parametrize('impl', ['simclrv2', 'simclrv1'])
def test_color_jitter_applies_its_ops_in_the_sampled_order(impl):
  n, strength = 200, 0.5
  image = _image((8, 8, 3), 4)

  def jitter(key):
    order, params = augment_jax.sample_color_jitter(key, strength, impl)
    return augment_jax.color_jitter(image, key, strength, impl), order, params

  out, orders, params = _compile_and_run(jax.vmap(jitter), _keys(n, 3))
  for i in range(n):
    # Float32 rounding of each op (see test_colour_ops_match_tf), carried through 4 ops.
    np.testing.assert_allclose(
        out[i],
        reference_jitter(image, orders[i], params[i], impl),
        rtol=0,
        atol=_ATOL,
        err_msg=f'order {orders[i]}',
    )
  assert all(sorted(order) == [0, 1, 2, 3] for order in orders)
  # Each of the 24 orders has probability 1/24: 200 uniform draws leave 3 or more unseen
  # with probability < C(24, 3) (21/24)^200 < 1e-8.
  assert len({tuple(order) for order in orders}) >= 22


def test_pretrain_view_rates_and_impl_follow_the_config():
  n = 1000
  config = load_config('cifar10').augment
  config.color_jitter_prob = 0.0  # Nothing else makes the 3 channels equal.
  # Not random_color_distortion's and random_gaussian_blur's defaults (0.2, 0.5), so
  # pretrain_view dropping the config's value shows.
  config.grayscale_prob = 0.35
  config.blur_prob = 0.3
  config.blur_sigma_min = 1.0  # A blur with sigma near 0.1 leaves float32 pixels unchanged.
  unblurred = ml_collections.ConfigDict(config)
  unblurred.blur_prob = 0.0  # The same key gives the same view, minus the blur.
  # The impls differ only in brightness: with the jitter always on, so do the views.
  jittered = {impl: ml_collections.ConfigDict(config) for impl in ('simclrv2', 'simclrv1')}
  for impl, impl_config in jittered.items():
    impl_config.update(color_jitter_prob=1.0, color_jitter_impl=impl, grayscale_prob=0.0)
  image = _image((32, 32, 3), 5)

  def all_views(key):
    return tuple(
        augment_jax.pretrain_view(image, key, c, 32)
        for c in (config, unblurred, *jittered.values())
    )

  views, unblurred_views, v2_views, v1_views = _compile_and_run(jax.vmap(all_views), _keys(n, 4))
  gray = (np.ptp(views, axis=-1) < 1e-6).all((1, 2))
  blurred = (np.abs(views - unblurred_views) > 1e-3).any((1, 2, 3))
  for count, prob in ((gray.sum(), 0.35), (blurred.sum(), 0.3)):
    # Within 4.5 standard deviations (+-0.07) of the binomial count: a correct rate fails
    # with probability < 1e-5, while the defaults 0.2 and 0.5 are ~10 and ~14 away.
    assert abs(count - n * prob) < 4.5 * np.sqrt(n * prob * (1 - prob)), (prob, count / n)
  assert np.abs(v1_views - v2_views).mean() > 1e-2


# Random parts: the same distributions as TensorFlow's.


@pytest.mark.parametrize('height,width', [(32, 32), (24, 40)])
def test_crop_window_distribution_matches_tf(height, width):
  n, area_range, aspect_range = 3000, (0.08, 1.0), (3 / 4, 4 / 3)
  ours = _run(
      jax.vmap(
          lambda k: jnp.stack(
              augment_jax.sample_crop_window(k, height, width, area_range, aspect_range)
          )
      ),
      _keys(n),
  )

  def tf_window(seed):
    begin, size = augment.sample_crop_window(
        tf.constant([height, width, 3]), seed, area_range, aspect_range
    )
    return tf.concat([begin[:2], size[:2]], 0)

  theirs = _tf_map(tf_window, _tf_seeds(n))
  features = []
  for windows in (ours, theirs):
    top, left, h, w = windows.T
    assert (h * w >= 0.1 * height * width).all() and (top + h <= height).all()
    # TF draws offsets in [0, side - crop side): a smaller crop never touches the far edge.
    assert (top + h < height)[h < height].all() and (left + w < width)[w < width].all()
    features.append(
        {'area': h * w, 'aspect': w / h, 'height': h, 'top': top, 'centre x': left + w / 2}
    )
  for name in features[0]:
    _assert_same_distribution(features[0][name], features[1][name], name)
  # Heights, a discrete distribution, also bin by bin.
  bins = np.arange(height + 2)
  table = np.stack([np.histogram(x[:, 2], bins)[0] for x in (ours, theirs)])
  table = table[:, table.sum(0) > 0]
  assert stats.chi2_contingency(table).pvalue > _P_MIN


def test_application_rates():
  # Flip, grayscale and blur; the jitter's rate is checked with its distribution below.
  n = 2000
  image = _image((32, 32, 3))  # Blur kernels have 32 // 10 = 3 taps (16 would give 1).
  keys = _keys(n, 1)

  def count(fn, detect):
    return int(detect(_run(jax.vmap(lambda k: fn(image, k)), keys)).sum())

  def changed(x):
    return (x != image).any((1, 2, 3))

  def gray(x):
    return (x[..., 0] == x[..., 2]).all((1, 2))

  counts = {
      0.5: count(lambda x, k: augment_jax.random_flip(x, k, 0.5), changed),
      0.2: count(lambda x, k: augment_jax.random_color_distortion(x, k, 0.5, 0.0, 0.2), gray),
      # Sigma >= 1: a blur with sigma near 0.1 leaves float32 pixels unchanged.
      0.3: count(lambda x, k: augment_jax.random_gaussian_blur(x, k, 0.3, 1.0, 2.0), changed),
  }
  for prob, count in counts.items():
    assert stats.binomtest(count, n, prob).pvalue > _P_MIN, (prob, count / n)


def _summaries(views):
  """Per-view brightness, contrast and colourfulness: what the colour jitter moves."""
  return {
      'mean': views.mean((-3, -2, -1)),
      'std': views.std((-3, -2, -1)),
      'chroma': (views.max(-1) - views.min(-1)).mean((-2, -1)),
  }


@pytest.mark.parametrize('impl', ['simclrv2', 'simclrv1'])
def test_color_jitter_distribution_matches_tf(impl):
  n, strength, prob = 2000, 0.5, 0.8
  image = _image((16, 16, 3), 3)
  ours = _run(
      jax.vmap(lambda k: augment_jax.random_color_distortion(image, k, strength, prob, 0.0, impl)),
      _keys(n),
  )
  theirs = _tf_map(
      lambda s: augment.random_color_distortion(image, s, strength, prob, 0.0, impl), _tf_seeds(n)
  )
  jittered = (ours != image).any((1, 2, 3)).sum()
  assert stats.binomtest(jittered, n, prob).pvalue > _P_MIN, jittered / n
  ours_s, theirs_s = _summaries(ours), _summaries(theirs)
  for name in ours_s:
    _assert_same_distribution(ours_s[name], theirs_s[name], name)
  # The order matters (e.g. contrast before or after saturation), so every pixel's value
  # depends on it; compare the red channel of a few pixels too.
  for i in range(4):
    _assert_same_distribution(ours[:, i, 2 * i, 0], theirs[:, i, 2 * i, 0], f'pixel {i}')


@pytest.fixture(scope='module')
def cifar_image(cifar10_dir):
  """One real CIFAR-10 training image, uint8 [32, 32, 3]."""
  first_class = sorted((cifar10_dir / 'train').iterdir())[0]
  path = sorted(first_class.iterdir())[0]
  return tf.io.decode_image(tf.io.read_file(str(path)), channels=3).numpy()


def test_full_views_of_a_real_image_match_tf(cifar_image, views_fn):
  n = 2 * _BATCH  # Views from each implementation.
  config, views = views_fn
  ours = np.asarray(views(np.repeat(cifar_image[None], _BATCH, 0), _seeds(_BATCH)))
  ours = ours.reshape(n, 32, 32, 3)
  image = tf.image.convert_image_dtype(cifar_image, tf.float32)
  theirs = _tf_map(lambda s: augment.pretrain_view(image, s, config, 32), _tf_seeds(n))
  # Per pixel and channel: means, and variances with their standard errors from the fourth
  # moments; z-scores against a Bonferroni bound over all of them.
  z = []
  for moment in (lambda x: x, lambda x: (x - x.mean(0)) ** 2):
    a, b = moment(ours), moment(theirs)
    z.append((a.mean(0) - b.mean(0)) / np.sqrt((a.var(0) + b.var(0)) / n))
  z = np.abs(np.stack(z))
  assert z.max() < stats.norm.isf(_P_MIN / (2 * z.size)), z.max()
  ours_s, theirs_s = _summaries(ours), _summaries(theirs)
  for name in ours_s:
    _assert_same_distribution(ours_s[name], theirs_s[name], name)


# Interface: shapes, dtypes, keys and seeds, sharding.


def test_pretrain_views_shapes_keys_and_determinism(views_fn):
  _, views = views_fn
  images, seeds = _random_images(), _seeds(_BATCH, 1)
  out = np.asarray(views(images, seeds))
  assert out.shape == (_BATCH, 2, 32, 32, 3) and out.dtype == np.float32
  assert out.min() >= 0 and out.max() <= 1
  np.testing.assert_array_equal(views(images, seeds), out)  # The same seed, the same views.
  assert np.abs(out[:, 0] - out[:, 1]).mean() > 1e-2  # Two different views of each image.
  assert np.abs(np.asarray(views(images, _seeds(_BATCH, 2))) - out).mean() > 1e-2
  # Seeds are threefry key data, typed keys pass through; uint8 becomes x / 255 as in TF.
  seeds = np.array([[1, 2], [3, 4], [-5, 2**30]], np.int32)
  keys = augment_jax._as_keys(seeds)  # pylint: disable=protected-access
  np.testing.assert_array_equal(jax.random.key_data(keys), seeds.astype(np.uint32))
  assert augment_jax._as_keys(keys) is keys  # pylint: disable=protected-access
  np.testing.assert_array_equal(
      augment_jax.to_float(images), tf.image.convert_image_dtype(images, tf.float32).numpy()
  )


_SHARDED_SCRIPT = textwrap.dedent("""
    import functools, sys
    import jax, numpy as np
    from simclr_jax import augment_jax
    from simclr_jax.config_files import load_config_file
    from simclr_jax.core.sharding import batch_sharded, create_mesh
    config = load_config_file('configs/cifar10.py').augment
    config.blur_prob = 0.5
    inputs = np.load(sys.argv[1])
    sharding = batch_sharded(create_mesh())  # The train step's batch sharding.
    views = jax.jit(functools.partial(augment_jax.pretrain_views, config_augment=config,
                                      size=32), in_shardings=sharding, out_shardings=sharding)
    # As the views it is compared with (see _compile).
    compiled = views.lower(inputs['images'], inputs['seeds']).compile(
        {'xla_backend_optimization_level': 0})
    collectives = ('all-gather', 'all-reduce', 'all-to-all', 'collective-permute')
    assert not any(c in compiled.as_text() for c in collectives), 'communicates'
    out = compiled(inputs['images'], inputs['seeds'])
    np.save(sys.argv[2], np.asarray(out))
    print(len(out.sharding.device_set))
""")


def _random_images():
  return np.random.default_rng(0).integers(0, 256, size=(_BATCH, 32, 32, 3), dtype=np.uint8)


def test_views_split_over_eight_devices_without_communication(views_fn, tmp_path):
  # Each example's views depend on its own image and seed only, so the batch splits over
  # devices (as in the train step) with no collective and the same views.
  images, seeds = _random_images(), _seeds(_BATCH, 1)
  np.savez(tmp_path / 'inputs.npz', images=images[:16], seeds=seeds[:16])
  assert (
      run_on_eight_cpu_devices(
          _SHARDED_SCRIPT, str(tmp_path / 'inputs.npz'), str(tmp_path / 'views.npy')
      )
      == '8'
  )
  one_device = np.asarray(views_fn[1](images, seeds))[:16]  # Compiled for _BATCH images.
  np.testing.assert_allclose(np.load(tmp_path / 'views.npy'), one_device, rtol=0, atol=1e-6)


def test_second_view_overrides_make_asymmetric_views_in_both_pipelines():
  # BYOL's asymmetry: config.augment.second_view replaces keys for the second view only. With
  # every other random stage off, view 1 is the image and view 2 its numpy solarisation.
  aug = load_config('cifar10').augment
  aug.crop_area_min, aug.aspect_ratio_min, aug.aspect_ratio_max = 1.0, 1.0, 1.0
  aug.flip_prob = aug.color_jitter_prob = aug.grayscale_prob = aug.blur_prob = 0.0
  aug.second_view.solarize_prob = 1.0
  first, second = augment_jax.view_configs(aug)
  assert (first.solarize_prob, second.solarize_prob) == (0.0, 1.0)
  assert 'second_view' not in first and first.flip_prob == second.flip_prob == 0.0
  images = (_image((3, 12, 12, 3), 5) * 255).astype(np.uint8)
  x = images.astype(np.float32) / 255
  expected = np.stack([x, np.where(x < 0.5, x, 1 - x)], axis=1)
  views = augment_jax.pretrain_views(images, _seeds(3), aug, 12)
  np.testing.assert_allclose(views, expected, atol=_ATOL)
  tf_views = [
      [augment.pretrain_view(tf.constant(x[i]), seed, c, 12).numpy() for c in (first, second)]
      for i, seed in enumerate(_tf_seeds(3))
  ]
  np.testing.assert_allclose(np.array(tf_views), expected, atol=_ATOL)
