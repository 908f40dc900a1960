"""One jitted train step on one device against independent definitions: BatchNorm's update by
model.apply, and SGD on the gradient of the reference's NT-Xent plus the probe's loss; and the
on-device augmentation's data flow."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import load_config
from simclr_jax import augment_jax
from simclr_jax import models
from simclr_jax.core import train_state
from simclr_jax.methods import simclr
from simclr_jax.core.sharding import create_mesh, run_once

N, SIZE, NUM_CLASSES = 8, 16, 10  # Images per batch (2N views), their side, probe classes.
TEMPERATURE = 0.2
PROBE_WEIGHT_DECAY = 0.05


def reference_nt_xent(z_a, z_b, temperature, xp=np):
  """google-research/simclr's NT-Xent, in numpy (xp=np) or JAX (xp=jnp), by its definition.

  Each anchor of view a classifies its image's view b among [z_a . z_b | z_a . z_a, the
  self-similarity removed] / temperature; likewise for view b. The loss is the mean over the
  view-a anchors plus the mean over the view-b anchors.
  """
  z_a = z_a / xp.linalg.norm(z_a, axis=1, keepdims=True)
  z_b = z_b / xp.linalg.norm(z_b, axis=1, keepdims=True)
  n = len(z_a)

  def mean_cross_entropy(anchors, same_view, other_view):
    losses = []
    for i in range(n):
      others = anchors[i] @ other_view.T / temperature
      same = anchors[i] @ same_view.T / temperature
      logits = xp.concatenate([others, same[:i], same[i + 1 :]])
      log_norm = logits.max() + xp.log(xp.sum(xp.exp(logits - logits.max())))
      losses.append(log_norm - others[i])  # The positive: image i in the other view.
    return sum(losses) / n

  return mean_cross_entropy(z_a, z_a, z_b) + mean_cross_entropy(z_b, z_b, z_a)


def test_reference_nt_xent_of_perfect_and_uninformative_pairs():
  # Orthogonal images whose two views coincide: each positive has cosine 1 and the 2N - 2
  # negatives 0, so each anchor's loss is log(1 + (2N - 2) exp(-1 / t)).
  z = np.eye(4, 6)
  expected = 2 * np.log(1 + 6 * np.exp(-1 / 0.5))
  assert reference_nt_xent(z, z, 0.5) == pytest.approx(expected, rel=1e-12)
  # All projections equal: 2N - 1 equally likely candidates for each anchor.
  ones = np.ones((4, 3))
  assert reference_nt_xent(ones, ones, 0.5) == pytest.approx(2 * np.log(7), rel=1e-12)


@pytest.fixture(scope='module')
def step_and_expectations():
  """(new state, metrics, old variables, batch, model) of one jitted train step."""
  config = load_config('cifar10')
  config.model.width_multiplier = 0.125
  # Plain SGD at lr 1 without momentum or decay: new params = params - gradient.
  config.optimizer, config.momentum, config.weight_decay = 'sgd', 0.0, 0.0
  config.probe_learning_rate_scale = 1.0
  model = models.create_model(config.model, image_size=SIZE, num_classes=NUM_CLASSES)
  # Two one-block stages (a stride-2 projection included) compile far faster than four.
  model = model.clone(encoder=model.encoder.clone(stage_sizes=(1, 1)))
  schedule = optax.constant_schedule(1.0)
  tx = simclr.create_optimizer(config, schedule)
  rng = np.random.default_rng(0)
  batch = {
      'views': rng.uniform(size=(N, 2, SIZE, SIZE, 3)).astype(np.float32),
      'label': rng.integers(0, NUM_CLASSES, size=N).astype(np.int32),
  }

  def init():
    state = train_state.init_train_state(model, tx, jax.random.PRNGKey(0), SIZE)
    # Random BN scales (at init, zeroed block scales hide most gradients) and running
    # statistics (so that the momentum update is visible).
    keys = iter(jax.random.split(jax.random.PRNGKey(1), 1000))
    perturb = lambda x: x + 0.3 * jax.random.normal(next(keys), x.shape)
    return state.replace(
        params=jax.tree.map(perturb, state.params),
        batch_stats=jax.tree.map(lambda x: jnp.abs(perturb(x)), state.batch_stats),
    )

  state = run_once(init)
  variables = jax.device_get({'params': state.params, 'batch_stats': state.batch_stats})
  mesh = create_mesh(jax.devices()[:1])
  # The probe's weight decay, which the step adds to the loss (the optimiser's is 0).
  step = simclr.make_train_step(
      model, tx, schedule, TEMPERATURE, mesh, weight_decay=PROBE_WEIGHT_DECAY
  )
  new_state, metrics = jax.device_get(step(state, batch))
  return new_state, metrics, variables, batch, model


def _expected_loss(params, batch_stats, batch, model, xp=jnp):
  """(loss, NT-Xent) by their definitions, the views stacked as [all views a; all views b].

  NT-Xent + the probe's mean cross-entropy over the 2N views + its weight decay.
  """
  views = batch['views']
  images = jnp.concatenate([views[:, 0], views[:, 1]])
  out, _ = model.apply(
      {'params': params, 'batch_stats': batch_stats}, images, train=True, mutable=['batch_stats']
  )
  z = out['z'] if xp is jnp else np.asarray(out['z'], np.float64)
  contrastive = reference_nt_xent(z[:N], z[N:], TEMPERATURE, xp)
  labels = np.concatenate([batch['label'], batch['label']])
  log_probs = jax.nn.log_softmax(out['probe_logits'])
  probe = -jnp.mean(log_probs[np.arange(2 * N), labels])
  decay = PROBE_WEIGHT_DECAY * 0.5 * jnp.sum(params['probe']['kernel'] ** 2)
  return contrastive + probe + decay, contrastive


def test_batch_stats_are_the_batchnorm_update_over_all_2n_views(step_and_expectations):
  new_state, _, variables, batch, model = step_and_expectations
  # The train step feeds [image 0 view a, image 0 view b, image 1 view a, ...].
  images = batch['views'].reshape((2 * N, SIZE, SIZE, 3))
  _, updates = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']))(
      variables, images
  )
  expected = dict(jax.tree_util.tree_leaves_with_path(updates['batch_stats']))
  old = dict(jax.tree_util.tree_leaves_with_path(variables['batch_stats']))
  actual = jax.tree_util.tree_leaves_with_path(new_state.batch_stats)
  assert len(actual) == len(expected) > 10
  for path, new in actual:
    name = jax.tree_util.keystr(path)
    scale = np.abs(expected[path]).max()
    # Running averages move by (1 - momentum) * (batch statistic - old): far above rounding.
    assert np.abs(expected[path] - old[path]).max() > 1e-3 * scale, name
    np.testing.assert_allclose(new, expected[path], rtol=1e-5, atol=1e-5 * scale, err_msg=name)


def test_sgd_step_follows_the_gradient_of_the_reference_loss(step_and_expectations):
  new_state, metrics, variables, batch, model = step_and_expectations
  params, batch_stats = variables['params'], variables['batch_stats']
  loss_fn = lambda p: _expected_loss(p, batch_stats, batch, model)
  (loss, contrastive), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)
  # The value once more in float64 numpy, from the same projections.
  _, contrastive64 = _expected_loss(params, batch_stats, batch, model, xp=np)
  assert metrics['contrastive_loss'] == pytest.approx(contrastive64, rel=1e-5)
  assert metrics['loss'] == pytest.approx(float(loss), rel=1e-5)
  assert contrastive == pytest.approx(contrastive64, rel=1e-5)

  old = dict(jax.tree_util.tree_leaves_with_path(params))
  expected = dict(jax.tree_util.tree_leaves_with_path(grads))
  actual = jax.tree_util.tree_leaves_with_path(new_state.params)
  assert len(actual) == len(expected) > 20
  for path, new in actual:
    name = jax.tree_util.keystr(path)
    scale = np.abs(expected[path]).max()
    assert scale > 0, name
    # new = old - grad: the subtraction rounds at float32 resolution of the parameters.
    rounding = 4 * np.finfo(np.float32).eps * np.abs(old[path]).max()
    np.testing.assert_allclose(
        old[path] - new, expected[path], rtol=0, atol=1e-3 * scale + rounding, err_msg=name
    )


def test_on_device_augmentation_feeds_the_step_each_images_own_views():
  # config.augment_on_device: the step given decoded images and per-example seeds must equal
  # the step given the views augment_jax.pretrain_views makes of them, example by example.
  config = load_config('cifar10')
  config.model.width_multiplier = 0.125
  config.optimizer, config.momentum, config.weight_decay = 'sgd', 0.0, 0.0
  # Crop and flip only: the colour stages would double the compile time.
  config.augment.color_jitter_prob = config.augment.grayscale_prob = 0.0
  model = models.create_model(config.model, image_size=SIZE, num_classes=NUM_CLASSES)
  model = model.clone(encoder=model.encoder.clone(stage_sizes=(1, 1)))
  schedule = optax.constant_schedule(0.5)
  tx = simclr.create_optimizer(config, schedule)
  mesh = create_mesh(jax.devices()[:1])
  rng = np.random.default_rng(1)
  decoded = {
      'image': rng.integers(0, 256, size=(N, 24, 24, 3), dtype=np.uint8),
      'seed': rng.integers(0, 2**32, size=(N, 2), dtype=np.uint32),
      'label': rng.integers(0, NUM_CLASSES, size=N).astype(np.int32),
  }
  views = np.asarray(
      augment_jax.pretrain_views(decoded['image'], decoded['seed'], config.augment, SIZE)
  )
  assert np.abs(views[:, 0] - views[:, 1]).mean() > 0.01  # Two different views per image.
  state = run_once(lambda: train_state.init_train_state(model, tx, jax.random.PRNGKey(0), SIZE))
  augment = functools.partial(
      simclr.augment_batch, config_augment=config.augment, image_size=SIZE, mesh=mesh
  )
  steps = [
      simclr.make_train_step(model, tx, schedule, TEMPERATURE, mesh, augment=a)
      for a in (augment, None)
  ]
  (got, got_metrics), (want, want_metrics) = (
      jax.device_get(steps[0](jax.tree.map(jnp.copy, state), decoded)),
      jax.device_get(steps[1](state, {'views': views, 'label': decoded['label']})),
  )
  for name in ('contrastive_loss', 'probe_loss', 'loss'):
    assert got_metrics[name] == pytest.approx(want_metrics[name], rel=1e-5), name
  for (path, new), expected in zip(
      jax.tree_util.tree_leaves_with_path(got.params), jax.tree.leaves(want.params)
  ):
    np.testing.assert_allclose(
        new, expected, rtol=1e-4, atol=1e-6, err_msg=jax.tree_util.keystr(path)
    )
