"""Decay masks, learning-rate scaling and the warm-up + cosine schedule.

The LARS update itself is checked against the reference in test_reference_parity.py.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from simclr_jax import models
from simclr_jax.core import optim


def test_decay_mask_excludes_exactly_batchnorm_parameters_biases_and_probe(cifar_config):
  cifar_config.model.width_multiplier = 0.125
  model = models.create_model(cifar_config.model, image_size=32, num_classes=10)
  params = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((2, 32, 32, 3)), train=False)
  )['params']
  mask = optim.decay_mask(params, supervised_head='probe')
  flat_mask = dict(jax.tree_util.tree_leaves_with_path(mask))
  num_bn = num_bias = num_kernels = 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    names = [k.key for k in path]
    is_bn = names[-1] in ('scale', 'bias') and any('bn' in n or 'BatchNorm' in n for n in names)
    is_bias = names[-1] == 'bias'
    in_probe = names[0] == 'probe'
    num_bn += is_bn
    num_bias += is_bias and not is_bn
    num_kernels += not (is_bn or is_bias or in_probe)
    # BN parameters and biases are the vectors; kernels of convs and dense layers are not.
    assert (leaf.ndim == 1) == (is_bn or is_bias), names
    assert flat_mask[path] == (not (is_bn or is_bias or in_probe)), names
  # ResNet-18 (reference layout): stem BN + 2 per block x 8 + 4 projection BNs = 21 BNs (scale
  # and bias each), head: 2 centred BNs + 1 scale-only BN; probe bias is the only dense bias.
  assert num_bn == 2 * 21 + 2 * 2 + 1
  assert num_bias == 1
  assert num_kernels == 1 + 2 * 8 + 4 + 3


@pytest.mark.parametrize(
    'scaling,batch,expected', [('linear', 512, 2.0), ('linear', 256, 1.0), ('sqrt', 4096, 64.0)]
)
def test_scaled_learning_rate(scaling, batch, expected):
  assert optim.scaled_learning_rate(1.0, batch, scaling) == pytest.approx(expected)


def test_total_steps_follow_reference_formula(cifar_config):
  cifar_config.batch_size, cifar_config.num_epochs = 512, 1000
  assert optim.total_train_steps(cifar_config, 50_000) == 50_000 * 1000 // 512 + 1
  cifar_config.num_train_steps = 7
  assert optim.total_train_steps(cifar_config, 50_000) == 7


def test_schedule_warmup_then_cosine_to_zero(cifar_config):
  cifar_config.batch_size, cifar_config.num_epochs, cifar_config.warmup_epochs = 512, 100, 10
  cifar_config.learning_rate, cifar_config.lr_scaling = 1.0, 'linear'
  num_examples = 51_200  # 100 steps per epoch.
  total = optim.total_train_steps(cifar_config, num_examples)
  assert total == 10_001
  schedule = optim.learning_rate_schedule(cifar_config, num_examples, total)
  peak, warmup = 2.0, 1000
  assert float(schedule(0)) == 0.0
  assert float(schedule(warmup // 2)) == pytest.approx(peak / 2, rel=1e-6)
  assert float(schedule(warmup)) == pytest.approx(peak, rel=1e-6)
  middle = warmup + (total - warmup) // 2
  expected_middle = peak * 0.5 * (1 + math.cos(math.pi * (middle - warmup) / (total - warmup)))
  assert float(schedule(middle)) == pytest.approx(expected_middle, rel=1e-5)
  assert float(schedule(total)) == pytest.approx(0.0, abs=1e-7)


def test_schedule_when_warmup_outlasts_a_short_run(cifar_config):
  cifar_config.batch_size, cifar_config.warmup_epochs, cifar_config.num_train_steps = 32, 10, 4
  schedule = optim.learning_rate_schedule(cifar_config, 256, 4)  # 80 warm-up steps > 4.
  peak = 32 / 256
  np.testing.assert_allclose(
      [float(schedule(t)) for t in range(4)], [peak * t / 80 for t in range(4)], rtol=1e-6
  )
  cifar_config.warmup_epochs = 0
  schedule = optim.learning_rate_schedule(cifar_config, 256, 4)
  assert float(schedule(0)) == pytest.approx(peak)


@pytest.mark.parametrize('optimizer', optim.OPTIMIZERS)
def test_probe_learning_rate_scale_scales_only_the_probe_updates(cifar_config, optimizer):
  # Against the same optimiser without the scale, over two steps (momentum carries over).
  cifar_config.optimizer = optimizer
  rng = np.random.default_rng(0)
  params = {
      'encoder': {'kernel': jnp.asarray(rng.normal(size=(4, 3)))},
      'probe': {
          'kernel': jnp.asarray(rng.normal(size=(3, 2))),
          'bias': jnp.asarray(rng.normal(size=2)),
      },
  }
  grads = [jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape)), params) for _ in range(2)]

  def updates(scale):
    cifar_config.probe_learning_rate_scale = scale
    tx = optim.create_optimizer(cifar_config, lambda step: 0.5, supervised_head='probe')
    state, out = tx.init(params), []
    for g in grads:
      u, state = tx.update(g, state, params)
      out.append(u)
    return out, state

  (base, base_state), (scaled, scaled_state) = updates(1.0), updates(0.1)
  assert jax.tree.structure(base_state) == jax.tree.structure(scaled_state)  # Same checkpoints.
  for b, s in zip(base, scaled):
    np.testing.assert_allclose(s['encoder']['kernel'], b['encoder']['kernel'], rtol=1e-6)
    for name in ('kernel', 'bias'):
      np.testing.assert_allclose(s['probe'][name], 0.1 * b['probe'][name], rtol=1e-6)
      assert np.abs(b['probe'][name]).min() > 0
