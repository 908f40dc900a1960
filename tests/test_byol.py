"""BYOL (methods/byol.py): its loss against numpy, the EMA target and its schedule, no gradient
into the target, exact resume, and evaluation and export of its encoder. 8 devices equal 1 in
tests/test_train.py."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_config, tiny_config
from simclr_jax import export
from simclr_jax import models
from simclr_jax import train
from simclr_jax.core import checkpoints
from simclr_jax.core import optim
from simclr_jax.core.sharding import create_mesh
from simclr_jax.evaluators import features
from simclr_jax.methods import byol


def numpy_loss_and_grads(p1, p2, z1, z2):
  """The paper's pseudo-code: mean of (2 - 2 cos(p1, z2')) + (2 - 2 cos(p2, z1')); and its
  gradients with respect to p1 and p2, d(-2 cos(p, z))/dp = -2 (z^ - p^ (p^.z^)) / |p|."""

  def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)

  def term(p, z):
    cos = np.sum(unit(p) * unit(z), -1, keepdims=True)
    grad = -2 * (unit(z) - unit(p) * cos) / np.linalg.norm(p, axis=-1, keepdims=True)
    return 2 - 2 * cos[:, 0], grad / len(p)

  (v1, g1), (v2, g2) = term(p1, z2), term(p2, z1)
  return np.mean(v1 + v2), g1, g2


@pytest.mark.parametrize('seed', [0, 1])
def test_loss_and_gradients_match_the_papers_pseudo_code(seed):
  rng = np.random.default_rng(seed)
  p, z = rng.normal(size=(2, 8, 2, 16)).astype(np.float32) * rng.uniform(0.1, 10)
  loss_fn = lambda p, z: byol.loss_and_metrics({}, {'p': p}, z, None)[0]
  loss, (grad_p, grad_z) = jax.value_and_grad(loss_fn, argnums=(0, 1))(p, z)
  want, g1, g2 = numpy_loss_and_grads(p[:, 0], p[:, 1], z[:, 0], z[:, 1])
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  np.testing.assert_allclose(grad_p, np.stack([g1, g2], 1), atol=1e-5 * np.abs(g1).max())
  assert not np.any(grad_z)  # The target is a constant of the loss.
  # Identical views' outputs: zero loss; opposite ones: 8.
  np.testing.assert_allclose(loss_fn(z, z[:, ::-1]), 0.0, atol=1e-6)
  np.testing.assert_allclose(loss_fn(-z, z[:, ::-1]), 8.0, rtol=1e-6)


def test_ema_decay_rises_from_base_to_one_on_a_cosine():
  steps = np.array([0, 1, 250, 500, 999, 1000, 1500])
  got = np.array([byol.ema_decay(s, 0.996, 1000) for s in steps])
  want = 1 - 0.004 * (np.cos(np.pi * np.minimum(steps, 1000) / 1000) + 1) / 2
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-7)
  assert got[0] == np.float32(0.996) and got[-1] == 1.0


def _tiny_byol(config):
  config.byol.projector_hidden_dim = config.byol.predictor_hidden_dim = 32
  config.byol.output_dim = 16
  return config


class _ToyEncoder(nn.Module):
  """Dense -> BatchNorm -> ReLU: fast to compile; the ResNet's step is in test_train.py."""

  @nn.compact
  def __call__(self, images, train: bool):
    x = nn.Dense(24)(images.reshape(images.shape[0], -1))
    return nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))


def test_step_regresses_on_the_target_and_moves_it_by_the_ema():
  config = _tiny_byol(load_config('cifar10_byol'))
  config.image_size, config.batch_size, config.warmup_epochs = 16, 8, 0
  # SGD at lr 1 (32 * 8 / 256), no momentum or decay: new params = params - grads.
  config.optimizer, config.learning_rate, config.momentum, config.weight_decay = 'sgd', 32, 0, 0
  config.probe_learning_rate_scale = 1.0
  method = byol.BYOL(config)
  model = method.create_model(10).clone(encoder=_ToyEncoder())
  schedule = optim.learning_rate_schedule(config, 80, 10)
  tx = method.create_optimizer(schedule)
  state = method.init_state(model, tx, jax.random.PRNGKey(0))
  assert jax.tree.all(
      jax.tree.map(
          np.array_equal,
          state.method_state['target']['params'],
          {k: state.params[k] for k in ('encoder', 'head')},
      )
  )
  # A target apart from the online network, as after some steps.
  keys = iter(jax.random.split(jax.random.PRNGKey(1), 100))
  target = state.method_state['target']
  target = {
      'params': jax.tree.map(
          lambda t: t + 0.1 * jax.random.normal(next(keys), t.shape), target['params']
      ),
      'batch_stats': target['batch_stats'],
  }
  state = state.replace(method_state={'target': target})
  rng = np.random.default_rng(0)
  batch = {
      'views': rng.uniform(size=(8, 2, 16, 16, 3)).astype(np.float32),
      'label': rng.integers(0, 10, size=8).astype(np.int32),
  }
  old = jax.device_get(state)

  def apply(variables, images, **kw):
    return model.apply(variables, images, train=True, mutable=['batch_stats'], **kw)

  def project(target_params):
    zt, stats = [], target['batch_stats']
    for v in range(2):
      variables = {'params': target_params, 'batch_stats': stats}
      out, new = apply(variables, batch['views'][:, v], method='project')
      zt.append(out['z'])
      stats = new['batch_stats']
    return zt, stats

  # The target's projections of each view, computed apart: constants of the loss.
  zt, target_stats = jax.jit(project)(target['params'])

  def reference_loss(params, leak=False):
    # leak: the target is the online network, gradient included (no EMA, no stop-gradient).
    z = project({k: params[k] for k in ('encoder', 'head')})[0] if leak else zt
    stats, outs = old.batch_stats, []
    for v in range(2):
      out, new = apply({'params': params, 'batch_stats': stats}, batch['views'][:, v])
      outs.append(out)
      stats = new['batch_stats']
    cos = (
        lambda a, b: jnp.sum(a * b, -1) / jnp.linalg.norm(a, axis=-1) / jnp.linalg.norm(b, axis=-1)
    )
    loss = jnp.mean(4 - 2 * cos(outs[0]['p'], z[1]) - 2 * cos(outs[1]['p'], z[0]))
    logits = jnp.concatenate([outs[0]['probe_logits'], outs[1]['probe_logits']])
    labels = jnp.concatenate([batch['label'], batch['label']])
    probe = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))
    return loss + probe, (loss, stats)

  (_, (ref_byol_loss, ref_stats)), ref_grads = jax.jit(
      jax.value_and_grad(reference_loss, has_aux=True)
  )(old.params)
  step = method.make_train_step(model, tx, schedule, create_mesh(), total_steps=10)
  new_state, metrics = step(state, batch)
  assert bool(metrics['finite'])
  np.testing.assert_allclose(metrics['byol_loss'], ref_byol_loss, rtol=1e-5)
  new_params = jax.device_get(new_state.params)
  # Biases before a BatchNorm get float32 noise (their gradient is 0): an absolute floor.
  scale = max(np.abs(g).max() for g in jax.tree.leaves(ref_grads))
  for path, got in jax.tree_util.tree_leaves_with_path(
      jax.tree.map(lambda a, b: a - b, old.params, new_params)
  ):
    want = _get(ref_grads, path)
    atol = 1e-4 * np.abs(want).max() + 1e-5 * scale
    np.testing.assert_allclose(got, want, atol=atol, err_msg=str(path))
  # Gradients through a target shared with the online network differ by far more than that.
  leaky = jax.jit(jax.grad(lambda p: reference_loss(p, leak=True)[0]))(old.params)['encoder']
  flat = lambda tree: np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])
  exact = flat(ref_grads['encoder'])
  assert np.linalg.norm(flat(leaky) - exact) > 0.05 * np.linalg.norm(exact)
  tau = float(byol.ema_decay(0, config.byol.base_ema, 10))
  assert tau == pytest.approx(0.99)
  want_target = jax.tree.map(
      lambda t, o: tau * t + (1 - tau) * o,
      target['params'],
      {k: new_params[k] for k in ('encoder', 'head')},
  )
  got_target = jax.device_get(new_state.method_state['target'])
  jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
      got_target['params'],
      want_target,
  )
  jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
      got_target['batch_stats'],
      jax.device_get(target_stats),
  )
  jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
      jax.device_get(new_state.batch_stats),
      jax.device_get(ref_stats),
  )


def _get(tree, path):
  for key in path:
    tree = tree[key.key]
  return tree


def test_byol_pretrains_resumes_exactly_and_its_encoder_is_evaluated(cifar10_subset, tmp_path):
  config = _tiny_byol(load_config('cifar10_byol'))
  small = tiny_config(cifar10_subset)
  for key in ('dataset', 'model', 'batch_size', 'num_train_steps', 'shuffle_buffer_size', 'eval'):
    config[key] = small[key]
  config.log_every_steps = config.checkpoint_every_steps = 2
  config.eval_every_steps = 0
  workdir = str(tmp_path / 'byol')
  straight = jax.device_get(train.train_and_evaluate(config, workdir))
  # Resume from step 2: the EMA target is in the checkpoint, so the run ends where it did.
  manager = checkpoints.create_checkpoint_manager(workdir, config)
  manager.delete(4)
  manager.wait_until_finished()
  resumed = jax.device_get(train.train_and_evaluate(config, workdir))
  assert int(resumed.step) == 4
  jax.tree.map(np.testing.assert_array_equal, resumed, straight)
  assert set(resumed.method_state['target']['params']) == {'encoder', 'head'}

  # Evaluation, embedding and export take its encoder like a SimCLR run's.
  eval_config = tiny_config(cifar10_subset)
  eval_model = models.create_model(eval_config.model, image_size=32, num_classes=10)
  variables, step = features.restore_encoder_variables(eval_config, eval_model, workdir)
  assert step == 4
  jax.tree.map(
      np.testing.assert_array_equal, variables['params']['encoder'], straight.params['encoder']
  )
  with pytest.raises(ValueError, match='pretrained with byol.*keep_head_layers=0'):
    features.restore_encoder_variables(eval_config, eval_model, workdir, with_head=True)
  path = str(tmp_path / 'byol.npz')
  export.export(workdir, path, 'npz')
  exported, saved_config, _ = export.load(path)
  images = np.random.default_rng(0).uniform(size=(4, 32, 32, 3)).astype(np.float32)
  out = export.inference_model(saved_config).apply(exported, images, train=False, method='project')
  h = eval_model.apply(variables, images, train=False, method='encode')
  np.testing.assert_allclose(out['h'], h, rtol=1e-5, atol=1e-5)
  assert out['z'].shape == (4, 16)  # config.byol.output_dim.


def test_bad_byol_configs_are_refused_naming_the_fix(cifar10_subset):
  config = _tiny_byol(load_config('cifar10_byol'))
  config.dataset = str(cifar10_subset)
  config.byol.base_ema = 1.5
  with pytest.raises(ValueError, match=r'config.byol.base_ema=1.5 must be in \[0, 1\]'):
    train.train_and_evaluate(config, '/nonexistent/never/written')
  config.byol.base_ema, config.microbatches = 0.99, 2
  with pytest.raises(ValueError, match='BYOL has no negatives.*microbatches=1'):
    train.train_and_evaluate(config, '/nonexistent/never/written')
  config = tiny_config(cifar10_subset)
  config.method = 'byol'
  with pytest.raises(ValueError, match='needs the config.byol section.*cifar10_byol.py'):
    train.train_and_evaluate(config, '/nonexistent/never/written')
