"""The reference's facts, each stated once and checked against our code.

Reference: the authors' TensorFlow code, google-research/simclr (tf2/ and the TF1 root files),
transcribed here from its definitions into numpy (not copied). Every check uses fresh seeded
inputs and a tolerance set by float32 rounding, so a changed definition fails it: e.g. halving
the loss again, the torchvision shortcut layout, He (fan_out) initialisation, a (1, 1)-padded
max-pool, round() instead of the floor in the warm-up, or a probe without weight decay.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_config
from simclr_jax import losses
from simclr_jax import models
from simclr_jax.core import optim
from simclr_jax.methods import simclr
from simclr_jax.models import resnet

_LARGE_NUM = 1e9  # objective.py's LARGE_NUM.


def _softmax_cross_entropy(onehot, logits):
  logits = logits - logits.max(axis=1, keepdims=True)
  log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
  return -(onehot * log_probs).sum(axis=1)


def reference_contrastive_loss(hidden1, hidden2, temperature):
  """objective.add_contrastive_loss on one replica: (loss, logits_ab, labels), float64."""
  hidden1 = hidden1 / np.linalg.norm(hidden1, axis=1, keepdims=True)
  hidden2 = hidden2 / np.linalg.norm(hidden2, axis=1, keepdims=True)
  n = len(hidden1)
  labels = np.eye(n, 2 * n)
  masks = np.eye(n)
  logits_aa = hidden1 @ hidden1.T / temperature - masks * _LARGE_NUM
  logits_bb = hidden2 @ hidden2.T / temperature - masks * _LARGE_NUM
  logits_ab = hidden1 @ hidden2.T / temperature
  logits_ba = hidden2 @ hidden1.T / temperature
  loss_a = _softmax_cross_entropy(labels, np.concatenate([logits_ab, logits_aa], 1))
  loss_b = _softmax_cross_entropy(labels, np.concatenate([logits_ba, logits_bb], 1))
  return np.mean(loss_a + loss_b), logits_ab, labels[:, :n]


def reference_metrics(logits_con, labels_con):
  """metrics.update_pretrain_metrics_train: contrast accuracy and entropy."""
  accuracy = np.mean(np.argmax(labels_con, 1) == np.argmax(logits_con, 1))
  prob_con = np.exp(logits_con - logits_con.max(1, keepdims=True))
  prob_con /= prob_con.sum(1, keepdims=True)
  entropy = -np.mean(np.sum(prob_con * np.log(prob_con + 1e-8), -1))
  return accuracy, entropy


def _views(seed, n, d):
  rng = np.random.default_rng(seed)
  z_b = rng.normal(size=(n, d))
  return z_b + 0.9 * rng.normal(size=(n, d)), z_b  # Correlated: accuracy strictly in (0, 1).


@pytest.mark.parametrize(
    'seed,n,d,temperature', [(10, 16, 8, 0.5), (11, 7, 5, 0.1), (12, 24, 3, 0.2)]
)
def test_loss_and_metrics_are_the_reference_values(seed, n, d, temperature):
  z_a, z_b = _views(seed, n, d)
  out = losses.nt_xent(jnp.asarray(z_a, jnp.float32), jnp.asarray(z_b, jnp.float32), temperature)
  loss, logits_ab, labels = reference_contrastive_loss(z_a, z_b, temperature)
  accuracy, entropy = reference_metrics(logits_ab, labels)
  assert 0 < accuracy < 1
  # float32 logits of unit vectors: relative rounding ~1e-6; the reference's log(p + 1e-8)
  # moves the entropy by at most 2N * 1e-8.
  np.testing.assert_allclose(out.loss, loss, rtol=2e-6)
  np.testing.assert_allclose(out.accuracy, accuracy, atol=1e-7)
  np.testing.assert_allclose(out.entropy, entropy, rtol=2e-6, atol=2 * n * 1e-8)


def test_loss_gradient_is_the_reference_gradient():
  z_a, z_b = _views(13, 6, 4)
  temperature = 0.3
  grads = jax.grad(lambda a, b: losses.nt_xent(a, b, temperature).loss, argnums=(0, 1))(
      jnp.asarray(z_a, jnp.float32), jnp.asarray(z_b, jnp.float32)
  )
  eps = 1e-6
  for which, (z, grad) in enumerate(zip((z_a, z_b), grads)):
    numeric = np.zeros_like(z)
    for idx in np.ndindex(z.shape):
      shifted = []
      for sign in (1, -1):
        moved = z.copy()
        moved[idx] += sign * eps
        pair = (moved, z_b) if which == 0 else (z_a, moved)
        shifted.append(reference_contrastive_loss(*pair, temperature)[0])
      numeric[idx] = (shifted[0] - shifted[1]) / (2 * eps)
    assert np.abs(numeric).max() > 0.1
    # Central differences in float64 are exact to ~1e-9; float32 gradients to ~1e-6 relative.
    np.testing.assert_allclose(grad, numeric, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    'name,image_size,shortcut,expected',
    [
        ('resnet18', 32, 'reference', 11_173_056),  # A projection on the first block of each stage.
        ('resnet18', 32, 'torchvision', 11_168_832),  # torchvision's resnet18 less fc, CIFAR stem.
        ('resnet50', 224, 'reference', 23_508_032),  # Both layouts: every stage changes shape.
        ('resnet50', 224, 'torchvision', 23_508_032),
    ],
)
def test_encoder_parameter_counts(name, image_size, shortcut, expected):
  config = load_config('cifar10')
  config.model.name, config.model.shortcut = name, shortcut
  model = models.create_model(config.model, image_size=image_size)
  shapes = jax.eval_shape(lambda: models.init_variables(model, jax.random.PRNGKey(0), image_size))
  assert sum(x.size for x in jax.tree.leaves(shapes['params']['encoder'])) == expected


def test_reference_layout_is_the_default():
  assert load_config('cifar10').model.shortcut == 'reference'


def _leaves(tree, prefix=()):
  for name, sub in tree.items():
    if isinstance(sub, dict):
      yield from _leaves(sub, prefix + (name,))
    else:
      yield prefix + (name,), np.asarray(sub)


def test_initialisation_std_per_layer():
  """Convs: VarianceScaling(1, fan_in, truncated normal); head and probe dense: N(0, 0.01)."""
  config = load_config('cifar10')
  model = models.create_model(config.model, image_size=32, num_classes=10)
  params = jax.jit(lambda: models.init_variables(model, jax.random.PRNGKey(3), 32))()['params']
  checked = 0
  for path, w in _leaves(params):
    if path[-1] != 'kernel':
      continue
    if w.ndim == 4:
      std = math.sqrt(1.0 / (w.shape[0] * w.shape[1] * w.shape[2]))  # fan_in = kh * kw * cin.
      # Truncated at 2 sigma of the untruncated normal (std / 0.8796).
      assert np.abs(w).max() <= 2 * std / 0.87962566 * (1 + 1e-6), path
    else:
      std = 0.01
    # The sample std of n draws is within 5 standard errors (std / sqrt(2n)) of std.
    tolerance = 5 * std / math.sqrt(2 * w.size)
    assert abs(w.std() - std) < tolerance, (path, w.std(), std)
    assert abs(w.mean()) < 5 * std / math.sqrt(w.size), path
    checked += 1
  assert checked == 1 + 16 + 4 + 3 + 1  # Stem, blocks, projections, head, probe.


@pytest.mark.parametrize('size', [8, 9])
def test_stem_max_pool_windows_are_tf_same(size):
  x = np.random.default_rng(size).normal(size=(1, size, size, 1)).astype(np.float32)
  out = np.asarray(resnet.stem_max_pool(jnp.asarray(x)))
  # TF 'SAME': out = ceil(size / 2), total padding max((out - 1) * 2 + 3 - size, 0), the
  # smaller half before: (0, 1) for even sizes, (1, 1) for odd ones.
  out_size = -(-size // 2)
  pad = max((out_size - 1) * 2 + 3 - size, 0)
  before = pad // 2
  padded = np.full((size + pad, size + pad), -np.inf)
  padded[before : before + size, before : before + size] = x[0, :, :, 0]
  expected = np.array(
      [
          [padded[2 * i : 2 * i + 3, 2 * j : 2 * j + 3].max() for j in range(out_size)]
          for i in range(out_size)
      ]
  )
  np.testing.assert_array_equal(out[0, :, :, 0], expected)


def _schedule_config(warmup_epochs, batch_size, epochs, base_lr, scaling):
  config = load_config('cifar10')
  config.warmup_epochs, config.batch_size, config.num_epochs = warmup_epochs, batch_size, epochs
  config.learning_rate, config.lr_scaling = base_lr, scaling
  return config


def reference_learning_rate(
    step, *, base_lr, scaling, batch_size, warmup_epochs, num_examples, epochs
):
  """model.WarmUpAndCosineDecay at `step` (with get_train_steps' total)."""
  warmup_steps = int(round(warmup_epochs * num_examples // batch_size))
  scaled_lr = base_lr * (batch_size / 256.0 if scaling == 'linear' else math.sqrt(batch_size))
  total_steps = num_examples * epochs // batch_size + 1
  if step < warmup_steps:
    return step / warmup_steps * scaled_lr
  decay_steps = total_steps - warmup_steps
  return (
      0.5
      * scaled_lr
      * (1 + math.cos(math.pi * min(step - warmup_steps, decay_steps) / decay_steps))
  )


@pytest.mark.parametrize(
    'recipe',
    [
        dict(
            base_lr=1.0,
            scaling='linear',
            batch_size=512,
            warmup_epochs=10,
            num_examples=50_000,
            epochs=1000,
        ),  # CIFAR-10: 976 warm-up steps (round() of the quotient would give 977).
        dict(
            base_lr=0.075,
            scaling='sqrt',
            batch_size=4096,
            warmup_epochs=10,
            num_examples=1_281_167,
            epochs=100,
        ),  # ImageNet.
    ],
)
def test_schedule_at_chosen_steps(recipe):
  config = _schedule_config(
      recipe['warmup_epochs'],
      recipe['batch_size'],
      recipe['epochs'],
      recipe['base_lr'],
      recipe['scaling'],
  )
  total = optim.total_train_steps(config, recipe['num_examples'])
  assert total == recipe['num_examples'] * recipe['epochs'] // recipe['batch_size'] + 1
  schedule = optim.learning_rate_schedule(config, recipe['num_examples'], total)
  warmup = int(recipe['warmup_epochs'] * recipe['num_examples'] // recipe['batch_size'])
  steps = [
      0,
      1,
      warmup // 2,
      warmup - 1,
      warmup,
      warmup + 1,
      (warmup + total) // 2,
      total - 1,
      total,
  ]
  got = [float(schedule(s)) for s in steps]
  want = [reference_learning_rate(s, **recipe) for s in steps]
  np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-7 * max(want))


def test_probe_weight_decay_is_added_to_the_loss():
  """The reference adds weight_decay * l2_loss(kernel) of the supervised head (not its bias)."""
  config = load_config('cifar10')
  config.model.width_multiplier = 0.0625
  model = models.create_model(config.model, image_size=8, num_classes=3)
  model = model.clone(encoder=model.encoder.clone(stage_sizes=(1,)))
  rng = np.random.default_rng(14)
  batch = {
      'views': jnp.asarray(rng.uniform(size=(4, 2, 8, 8, 3)), jnp.float32),
      'label': jnp.asarray(rng.integers(0, 3, size=4), jnp.int32),
  }
  variables = jax.jit(lambda: models.init_variables(model, jax.random.PRNGKey(0), 8))()
  params = dict(variables['params'])
  params['probe'] = {
      'kernel': jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
      'bias': jnp.asarray(rng.normal(size=3), jnp.float32),
  }
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ('data',))
  loss_and_metrics = jax.jit(
      lambda params, weight_decay: simclr.loss_and_metrics(
          params,
          variables['batch_stats'],
          batch,
          model=model,
          temperature=0.5,
          mesh=mesh,
          weight_decay=weight_decay,
      )
  )
  outputs = [loss_and_metrics(params, wd) for wd in (0.0, 1e-2)]
  (loss0, (metrics0, _)), (loss1, (metrics1, _)) = outputs
  l2_loss = 0.5 * np.sum(np.square(np.asarray(params['probe']['kernel'], np.float64)))
  np.testing.assert_allclose(metrics1['probe_weight_decay'], 1e-2 * l2_loss, rtol=1e-6)
  np.testing.assert_allclose(loss1 - loss0, 1e-2 * l2_loss, rtol=1e-4)
  assert float(metrics0['probe_weight_decay']) == 0.0


def _reference_lars(params, grads_seq, decayed, lrs, wd, eta, momentum):
  """lars_optimizer.LARSOptimizer (classic momentum) over a sequence of gradients.

  `decayed[k]`: neither excluded from weight decay nor from layer adaptation (the reference
  excludes names with 'batch_normalization', 'bias' or 'head_supervised' from both).
  """
  params = {k: v.copy() for k, v in params.items()}
  velocity = {k: np.zeros_like(v) for k, v in params.items()}
  for grads, lr in zip(grads_seq, lrs):
    for k, w in params.items():
      grad = grads[k] + (wd * w if decayed[k] else 0)
      trust_ratio = 1.0
      if decayed[k]:
        w_norm, g_norm = np.linalg.norm(w), np.linalg.norm(grad)
        trust_ratio = eta * w_norm / g_norm if w_norm > 0 and g_norm > 0 else 1.0
      velocity[k] = momentum * velocity[k] + lr * trust_ratio * grad
      params[k] = w - velocity[k]
  return params


def test_lars_update_is_the_reference_update():
  config = _schedule_config(1, 512, 10, 1.0, 'linear')
  config.optimizer, config.weight_decay = 'lars', 0.01
  config.probe_learning_rate_scale = 1.0  # The reference's (ours differs: README, Fidelity).
  num_examples = 5120  # 10 steps per epoch.
  total = optim.total_train_steps(config, num_examples)
  schedule = optim.learning_rate_schedule(config, num_examples, total)
  tx = simclr.create_optimizer(config, schedule)
  rng = np.random.default_rng(15)
  shapes = {
      ('encoder', 'stem_conv', 'kernel'): (3, 3, 2, 4),
      ('encoder', 'stem_bn', 'scale'): (4,),
      ('encoder', 'stem_bn', 'bias'): (4,),
      ('head', 'dense1', 'kernel'): (4, 4),
      ('probe', 'kernel'): (4, 3),
      ('probe', 'bias'): (3,),
  }
  flat = {k: rng.normal(size=s) for k, s in shapes.items()}

  def nest(flat_dict):
    tree = {}
    for path, v in flat_dict.items():
      node = tree
      for key in path[:-1]:
        node = node.setdefault(key, {})
      node[path[-1]] = jnp.asarray(v, jnp.float32)
    return tree

  params = nest(flat)
  opt_state = tx.init(params)
  grads_seq = [{k: rng.normal(size=s) for k, s in shapes.items()} for _ in range(4)]
  for grads in grads_seq:
    updates, opt_state = tx.update(nest(grads), opt_state, params)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
  lrs = [float(schedule(t)) for t in range(4)]
  assert lrs[0] == 0 and lrs[3] > 0
  decayed = {k: k[-1] == 'kernel' and k[0] != 'probe' for k in shapes}
  expected = _reference_lars(flat, grads_seq, decayed, lrs, 0.01, 0.001, 0.9)
  for k, v in expected.items():
    node = params
    for key in k:
      node = node[key]
    np.testing.assert_allclose(node, v, rtol=2e-5, atol=1e-6, err_msg=str(k))


def test_recipes_are_the_reference_commands():
  """The reference README's commands, flag by flag."""
  cifar = load_config('cifar10')
  assert (
      cifar.batch_size,
      cifar.num_epochs,
      cifar.learning_rate,
      cifar.lr_scaling,
      cifar.weight_decay,
      cifar.temperature,
      cifar.augment.color_strength,
      cifar.augment.blur_prob,
      cifar.warmup_epochs,
  ) == (512, 1000, 1.0, 'linear', 1e-4, 0.5, 0.5, 0.0, 10)
  imagenet = load_config('imagenet')
  assert (
      imagenet.batch_size,
      imagenet.num_epochs,
      imagenet.temperature,
      imagenet.learning_rate,
      imagenet.lr_scaling,
      imagenet.weight_decay,
      imagenet.image_size,
  ) == (4096, 100, 0.1, 0.075, 'sqrt', 1e-4, 224)
  for name, epochs, batch, wd in (
      ('cifar10_linear_eval', 100, 512, 0.0),
      ('imagenet_linear_eval', 90, 4096, 1e-6),
  ):
    linear = load_config(name)
    ft = linear.finetune
    assert (
        linear.mode,
        linear.eval.protocol,
        ft.optimizer,
        ft.learning_rate,
        ft.lr_scaling,
        ft.epochs,
        ft.batch_size,
        ft.weight_decay,
        ft.warmup_epochs,
        ft.fine_tune_after_block,
    ) == ('evaluate', 'linear_sgd', 'momentum', 0.1, 'linear', epochs, batch, wd, 0, 4), name
  semi = load_config('imagenet_finetune_1pct')
  ft = semi.finetune
  assert semi.dataset == 'imagenet2012_subset/1pct' and semi.mode == 'evaluate'
  assert semi.eval.protocol == 'finetune'
  assert (
      ft.optimizer,
      ft.learning_rate,
      ft.lr_scaling,
      ft.weight_decay,
      ft.epochs,
      ft.batch_size,
      ft.keep_head_layers,
      ft.fine_tune_after_block,
      ft.warmup_epochs,
      ft.label_fraction,
  ) == ('lars', 0.005, 'sqrt', 0.0, 60, 1024, 1, -1, 0, 1.0)
