"""The methods on methods/siamese.py (BYOL, MoCo v3, SimSiam): a step against a loss written out
apart, with the target a constant of it and moved by the EMA; exact resume (the target in the
checkpoint); evaluation and export of their encoders; config errors. Each loss against the
paper's pseudo-code: tests/test_byol.py, test_mocov3.py, test_simsiam.py; 8 devices equal 1:
tests/test_train.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config, tiny_method_config
from toy_encoder import ToyEncoder
from simclr_jax import export
from simclr_jax import methods
from simclr_jax import models
from simclr_jax import train
from simclr_jax.core import checkpoints
from simclr_jax.core import optim
from simclr_jax.core.sharding import create_mesh
from simclr_jax.evaluators import features
from simclr_jax.methods import siamese


def _cos(a, b):
  return jnp.sum(a * b, -1) / jnp.linalg.norm(a, axis=-1) / jnp.linalg.norm(b, axis=-1)


def _info_nce(q, k, t):
  q = q / jnp.linalg.norm(q, axis=-1, keepdims=True)
  k = k / jnp.linalg.norm(k, axis=-1, keepdims=True)
  return 2 * t * -jnp.mean(jnp.diagonal(jax.nn.log_softmax(q @ k.T / t, axis=1)))


# Each method's loss of predictions p1, p2 and target projections z1, z2, written out apart.
REFERENCE_LOSSES = {
    'byol': lambda p, z, c: jnp.mean(4 - 2 * _cos(p[0], z[1]) - 2 * _cos(p[1], z[0])),
    'simsiam': lambda p, z, c: -jnp.mean(_cos(p[0], z[1]) + _cos(p[1], z[0])) / 2,
    'mocov3': lambda p, z, c: (
        _info_nce(p[0], z[1], c.mocov3.temperature) + _info_nce(p[1], z[0], c.mocov3.temperature)
    ),
}


def _get(tree, path):
  for key in path:
    tree = tree[key.key]
  return tree


@pytest.mark.parametrize('name', ['byol', 'mocov3', 'simsiam'])
def test_step_descends_the_reference_loss_with_the_target_held_constant(name):
  config = tiny_method_config(name)
  config.image_size, config.batch_size, config.warmup_epochs = 16, 8, 0
  # SGD at lr 1 (32 * 8 / 256), no momentum or decay: new params = params - grads.
  config.optimizer, config.learning_rate, config.momentum, config.weight_decay = 'sgd', 32, 0, 0
  config.probe_learning_rate_scale = 1.0
  method = methods.get(config)
  uses_target = method.uses_target
  model = method.create_model(10).clone(encoder=ToyEncoder())
  schedule = optim.learning_rate_schedule(config, 80, 10)
  tx = method.create_optimizer(schedule)
  state = method.init_state(model, tx, jax.random.PRNGKey(0))
  if uses_target:
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
  else:
    assert state.method_state == {}
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

  if uses_target:
    # The target's projections of each view, computed apart: constants of the loss.
    zt, target_stats = jax.jit(project)(target['params'])

  def reference_loss(params, leak=False):
    stats, outs = old.batch_stats, []
    for v in range(2):
      out, new = apply({'params': params, 'batch_stats': stats}, batch['views'][:, v])
      outs.append(out)
      stats = new['batch_stats']
    # leak: the target is this online forward pass, gradient included.
    z = [o['z'] for o in outs]
    if not leak:
      z = jax.lax.stop_gradient(zt if uses_target else z)
    loss = REFERENCE_LOSSES[name]([o['p'] for o in outs], z, config)
    logits = jnp.concatenate([outs[0]['probe_logits'], outs[1]['probe_logits']])
    labels = jnp.concatenate([batch['label'], batch['label']])
    probe = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))
    return loss + probe, (loss, stats)

  (_, (ref_loss, ref_stats)), ref_grads = jax.jit(jax.value_and_grad(reference_loss, has_aux=True))(
      old.params
  )
  step = method.make_train_step(model, tx, schedule, create_mesh(), total_steps=10)
  new_state, metrics = step(state, batch)
  assert bool(metrics['finite'])
  np.testing.assert_allclose(metrics[f'{name}_loss'], ref_loss, rtol=1e-5)
  new_params = jax.device_get(new_state.params)
  # Biases before a BatchNorm get float32 noise (their gradient is 0): an absolute floor.
  scale = max(np.abs(g).max() for g in jax.tree.leaves(ref_grads))
  for path, got in jax.tree_util.tree_leaves_with_path(
      jax.tree.map(lambda a, b: a - b, old.params, new_params)
  ):
    want = _get(ref_grads, path)
    atol = 1e-4 * np.abs(want).max() + 1e-5 * scale
    np.testing.assert_allclose(got, want, atol=atol, err_msg=str(path))
  # Gradients through the target differ by far more than that.
  leaky = jax.jit(jax.grad(lambda p: reference_loss(p, leak=True)[0]))(old.params)['encoder']
  flat = lambda tree: np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])
  exact = flat(ref_grads['encoder'])
  assert np.linalg.norm(flat(leaky) - exact) > 0.05 * np.linalg.norm(exact)
  jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
      jax.device_get(new_state.batch_stats),
      jax.device_get(ref_stats),
  )
  if not uses_target:
    assert new_state.method_state == {} and 'ema_decay' not in metrics
    return
  tau = float(siamese.ema_decay(0, config[name].base_ema, 10))
  assert tau == pytest.approx(0.99) and float(metrics['ema_decay']) == pytest.approx(tau)
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


def test_ema_decay_rises_from_base_to_one_on_a_cosine():
  steps = np.array([0, 1, 250, 500, 999, 1000, 1500])
  got = np.array([siamese.ema_decay(s, 0.996, 1000) for s in steps])
  want = 1 - 0.004 * (np.cos(np.pi * np.minimum(steps, 1000) / 1000) + 1) / 2
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-7)
  assert got[0] == np.float32(0.996) and got[-1] == 1.0


@pytest.mark.parametrize('name', ['byol', 'mocov3', 'simsiam'])
def test_pretrains_resumes_exactly_and_its_encoder_is_evaluated(
    name, cifar10_subset, tmp_path, toy_encoder
):
  config = tiny_method_config(name)
  small = tiny_config(cifar10_subset)
  small.model.name = toy_encoder
  for key in ('dataset', 'model', 'batch_size', 'num_train_steps', 'shuffle_buffer_size', 'eval'):
    config[key] = small[key]
  config.log_every_steps = config.checkpoint_every_steps = 2
  config.eval_every_steps = 0
  workdir = str(tmp_path / name)
  straight = jax.device_get(train.train_and_evaluate(config, workdir))
  # Resume from step 2: the EMA target and the optimiser state are in the checkpoint, so the
  # run ends where it did.
  manager = checkpoints.create_checkpoint_manager(workdir, config)
  manager.delete(4)
  manager.wait_until_finished()
  resumed = jax.device_get(train.train_and_evaluate(config, workdir))
  assert int(resumed.step) == 4
  jax.tree.map(np.testing.assert_array_equal, resumed, straight)
  if name == 'simsiam':
    assert resumed.method_state == {}
  else:
    assert set(resumed.method_state['target']['params']) == {'encoder', 'head'}

  # Evaluation, embedding and export take its encoder like a SimCLR run's.
  eval_config = tiny_config(cifar10_subset)
  eval_config.model = config.model
  eval_model = models.create_model(eval_config.model, image_size=32, num_classes=10)
  variables, step = features.restore_encoder_variables(eval_config, eval_model, workdir)
  assert step == 4
  jax.tree.map(
      np.testing.assert_array_equal, variables['params']['encoder'], straight.params['encoder']
  )
  with pytest.raises(ValueError, match=f'pretrained with {name}.*keep_head_layers=0'):
    features.restore_encoder_variables(eval_config, eval_model, workdir, with_head=True)
  path = str(tmp_path / f'{name}.npz')
  export.export(workdir, path, 'npz')
  exported, saved_config, _ = export.load(path)
  images = np.random.default_rng(0).uniform(size=(4, 32, 32, 3)).astype(np.float32)
  out = export.inference_model(saved_config).apply(exported, images, train=False, method='project')
  h = eval_model.apply(variables, images, train=False, method='encode')
  np.testing.assert_allclose(out['h'], h, rtol=1e-5, atol=1e-5)
  assert out['z'].shape == (4, 16)  # config.<name>.output_dim.


@pytest.mark.parametrize('name', ['byol', 'mocov3', 'simsiam'])
def test_bad_configs_are_refused_naming_the_fix(name, cifar10_subset):
  config = tiny_method_config(name)
  config.dataset = str(cifar10_subset)
  config[name].output_dim = 0
  with pytest.raises(ValueError, match=f'config.{name}.output_dim=0 must be a positive integer'):
    train.train_and_evaluate(config, '/nonexistent/never/written')
  config[name].output_dim = 16
  if name != 'simsiam':
    config[name].base_ema = 1.5
    with pytest.raises(ValueError, match=rf'config.{name}.base_ema=1.5 must be in \[0, 1\]'):
      train.train_and_evaluate(config, '/nonexistent/never/written')
    config[name].base_ema = 0.99
  config.microbatches = 2
  with pytest.raises(ValueError, match=f'gradient cache.*{name}.*microbatches=1'):
    train.train_and_evaluate(config, '/nonexistent/never/written')
  config = tiny_config(cifar10_subset)
  config.method = name
  with pytest.raises(ValueError, match=f'needs the config.{name} section.*cifar10_{name}.py'):
    train.train_and_evaluate(config, '/nonexistent/never/written')
