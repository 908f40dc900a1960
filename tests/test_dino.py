"""DINO: its loss and gradient against a numpy transcription of the authors' DINOLoss, the
teacher temperature and centre, the head, a step against a loss written out apart (teacher and
centre constants of it), multi-crop in both pipelines, a whole run with exact resume and
evaluation, config errors. 8 devices equal 1 (centre included): tests/test_train.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import test_siamese
from toy_encoder import ToyEncoder
from conftest import load_config, tiny_config
from simclr_jax import export
from simclr_jax import input_pipeline
from simclr_jax import methods
from simclr_jax import models
from simclr_jax import train
from simclr_jax.core import checkpoints
from simclr_jax.core import optim
from simclr_jax.core.sharding import create_mesh
from simclr_jax.evaluators import features
from simclr_jax.methods import dino
from simclr_jax.models.heads import DINOHead


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _numpy_dino_loss(student, teacher, centre, ts, tt):
  """facebookresearch/dino's DINOLoss.forward on crop-major chunks, in float64, with the
  gradient with respect to the student outputs: d/ds of -q . log_softmax(s / ts) is
  (softmax(s / ts) - q) / ts."""
  n, num_crops, _ = student.shape
  student_out = [student[:, v] / ts for v in range(num_crops)]
  teacher_out = [_softmax((teacher[:, i] - centre) / tt) for i in range(2)]
  total, terms = 0.0, 0
  grad = np.zeros_like(student)
  for iq, q in enumerate(teacher_out):
    for v in range(num_crops):
      if v == iq:
        continue
      log_p = student_out[v] - np.log(np.exp(student_out[v]).sum(-1, keepdims=True))
      total += np.mean(np.sum(-q * log_p, axis=-1))
      grad[:, v] += (_softmax(student_out[v]) - q) / ts / n
      terms += 1
  return total / terms, grad / terms


@pytest.mark.parametrize('num_crops', [2, 5])
def test_loss_and_gradient_match_the_authors_loss(num_crops):
  rng = np.random.default_rng(num_crops)
  student = rng.normal(size=(6, num_crops, 11)) * 3
  teacher = rng.normal(size=(6, 2, 11)) * 3
  centre = rng.normal(size=11)
  want, want_grad = _numpy_dino_loss(student, teacher, centre, 0.1, 0.04)
  loss_fn = lambda s, t: dino.dino_loss(s, t, centre, 0.1, 0.04)[0]
  got, (grad, teacher_grad) = jax.value_and_grad(loss_fn, argnums=(0, 1))(
      jnp.float32(student), jnp.float32(teacher)
  )
  np.testing.assert_allclose(got, want, rtol=1e-5)
  np.testing.assert_allclose(grad, want_grad, rtol=1e-4, atol=1e-6 * np.abs(want_grad).max())
  # The loss itself does not stop the teacher's gradient: the step does (test below).
  assert np.abs(teacher_grad).max() > 0
  metrics = dino.dino_loss(student, teacher, centre, 0.1, 0.04)[1]
  q = _softmax((teacher - centre) / 0.04)
  np.testing.assert_allclose(metrics['teacher_entropy'], -np.mean(np.sum(q * np.log(q), -1)), 1e-4)


def test_teacher_temperature_rises_per_epoch_then_stays():
  steps_per_epoch, warmup_epochs = 7, 30
  want = np.concatenate([np.linspace(0.04, 0.07, warmup_epochs), np.full(20, 0.07)])
  for step in (0, 6, 7, 50, 29 * 7 + 3, 30 * 7, 49 * 7):
    got = dino.teacher_temperature(
        step, steps_per_epoch=steps_per_epoch, warmup=0.04, final=0.07, warmup_epochs=30
    )
    np.testing.assert_allclose(got, want[step // steps_per_epoch], rtol=1e-6)
  off = dino.teacher_temperature(3, steps_per_epoch=7, warmup=0.04, final=0.07, warmup_epochs=0)
  assert float(off) == pytest.approx(0.07)


def test_centre_moves_towards_the_mean_teacher_output():
  rng = np.random.default_rng(0)
  teacher, centre = rng.normal(size=(5, 2, 7)), rng.normal(size=7)
  want = 0.9 * centre + 0.1 * teacher.reshape(10, 7).mean(0)
  np.testing.assert_allclose(dino.updated_centre(centre, teacher, 0.9), want, rtol=1e-6)


@pytest.mark.parametrize('norm_last_layer', [True, False])
def test_head_normalises_the_bottleneck_and_the_last_layer(norm_last_layer):
  head = DINOHead(hidden_dim=64, bottleneck_dim=16, output_dim=40, norm_last_layer=norm_last_layer)
  x = np.random.default_rng(0).normal(size=(5, 12)).astype(np.float32)
  variables = head.init(jax.random.PRNGKey(0), x, train=True)
  params = jax.tree.map(np.asarray, variables['params'])
  if not norm_last_layer:  # A learned gain, started at 1: shown here away from it.
    params['last_layer']['scale'] = np.linspace(0.5, 2.0, 40, dtype=np.float32)
  out = head.apply({'params': params}, x, train=True)
  # numpy: 2 x (dense -> exact GELU), dense, L2 normalisation, dense with unit-norm columns.
  from scipy.special import erf  # pylint: disable=g-import-not-at-top

  gelu = lambda y: 0.5 * y * (1 + erf(y / np.sqrt(2)))
  y = x
  for i in (1, 2):
    y = gelu(y @ params[f'dense{i}']['kernel'] + params[f'dense{i}']['bias'])
  y = y @ params['dense3']['kernel'] + params['dense3']['bias']
  y /= np.linalg.norm(y, axis=-1, keepdims=True)
  v = params['last_layer']['kernel']
  w = v / np.linalg.norm(v, axis=0, keepdims=True) * params['last_layer'].get('scale', 1.0)
  np.testing.assert_allclose(out, y @ w, rtol=1e-4, atol=1e-5)
  assert ('scale' in variables['params']['last_layer']) != norm_last_layer
  # Init: normal(0.02) kernels and zero biases; the last layer's v in +-1/sqrt(16).
  kernels = np.concatenate([params[f'dense{i}']['kernel'].ravel() for i in (1, 2, 3)])
  assert 0.018 < kernels.std() < 0.022 and not params['dense1']['bias'].any()
  assert np.abs(v).max() <= 0.25 and np.abs(v).max() > 0.24


def _tiny_dino(**overrides):
  config = load_config('cifar10_dino')
  config.dino.hidden_dim, config.dino.bottleneck_dim, config.dino.output_dim = 32, 8, 24
  config.image_size, config.batch_size, config.warmup_epochs = 16, 8, 0
  for key, value in overrides.items():
    config.dino[key] = value
  return config


def test_step_descends_the_reference_loss_with_teacher_and_centre_held_constant():
  config = _tiny_dino(freeze_last_layer_epochs=0, student_temperature=0.2)
  config.augment.local_crops.number, config.augment.local_crops.size = 2, 8
  # SGD at lr 1 (32 * 8 / 256), no momentum or decay: new params = params - grads.
  config.optimizer, config.learning_rate, config.momentum, config.weight_decay = 'sgd', 32, 0, 0
  config.probe_learning_rate_scale = 1.0
  method = methods.get(config, num_examples=80)
  model = method.create_model(10).clone(encoder=ToyEncoder())
  schedule = optim.learning_rate_schedule(config, 80, 10)
  tx = method.create_optimizer(schedule)
  state = method.init_state(model, tx, jax.random.PRNGKey(0))
  assert not state.method_state['centre'].any()
  keys = iter(jax.random.split(jax.random.PRNGKey(1), 100))
  # A teacher apart from the student and a centre away from 0, as after some steps.
  target = state.method_state['target']
  target = {
      'params': jax.tree.map(
          lambda t: t + 0.1 * jax.random.normal(next(keys), t.shape), target['params']
      ),
      'batch_stats': target['batch_stats'],
  }
  centre = jax.random.normal(next(keys), (24,))
  state = state.replace(method_state={'target': target, 'centre': centre})
  rng = np.random.default_rng(0)
  batch = {
      'views': rng.uniform(size=(8, 2, 16, 16, 3)).astype(np.float32),
      'local_views': rng.uniform(size=(8, 2, 8, 8, 3)).astype(np.float32),
      'label': rng.integers(0, 10, size=8).astype(np.int32),
  }
  old = jax.device_get(state)

  def apply(variables, images, **kw):
    return model.apply(variables, images, train=True, mutable=['batch_stats'], **kw)

  # The teacher's outputs of both global views in one batch, computed apart: constants.
  flat = lambda x: x.reshape((-1,) + x.shape[2:])
  teacher_out, teacher_stats = jax.jit(
      lambda p: apply(
          {'params': p, 'batch_stats': target['batch_stats']},
          flat(batch['views']),
          method='project',
      )
  )(target['params'])
  teacher_z = teacher_out['z'].reshape(8, 2, -1)

  def reference_loss(params, leak=False):
    out, new = apply({'params': params, 'batch_stats': old.batch_stats}, flat(batch['views']))
    local, new = apply(
        {'params': params, 'batch_stats': new['batch_stats']},
        flat(batch['local_views']),
        method='project',
    )
    student = jnp.concatenate([out['z'].reshape(8, 2, -1), local['z'].reshape(8, 2, -1)], 1)
    teacher = out['z'].reshape(8, 2, -1) if leak else teacher_z
    q = jax.nn.softmax((teacher - centre) / 0.07, axis=-1)
    log_p = jax.nn.log_softmax(student / 0.2, axis=-1)
    loss = (
        sum(
            -jnp.mean(jnp.sum(q[:, i] * log_p[:, v], -1))
            for i in range(2)
            for v in range(4)
            if i != v
        )
        / 6
    )
    labels = jnp.repeat(batch['label'], 2)
    logits = out['probe_logits'].reshape(16, -1)
    probe = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))
    return loss + probe, (loss, new['batch_stats'])

  (_, (ref_loss, ref_stats)), ref_grads = jax.jit(jax.value_and_grad(reference_loss, has_aux=True))(
      old.params
  )
  step = method.make_train_step(model, tx, schedule, create_mesh(), total_steps=10)
  new_state, metrics = step(state, batch)
  assert bool(metrics['finite'])
  np.testing.assert_allclose(metrics['dino_loss'], ref_loss, rtol=1e-5)
  new_params = jax.device_get(new_state.params)
  scale = max(np.abs(g).max() for g in jax.tree.leaves(ref_grads))
  for path, got in jax.tree_util.tree_leaves_with_path(
      jax.tree.map(lambda a, b: a - b, old.params, new_params)
  ):
    want = test_siamese._get(ref_grads, path)
    np.testing.assert_allclose(
        got, want, atol=1e-4 * np.abs(want).max() + 1e-5 * scale, err_msg=str(path)
    )
  # A gradient through the teacher differs by far more than that.
  leaky = jax.jit(jax.grad(lambda p: reference_loss(p, leak=True)[0]))(old.params)['head']
  flat_tree = lambda tree: np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])
  exact = flat_tree(ref_grads['head'])
  assert np.linalg.norm(flat_tree(leaky) - exact) > 0.05 * np.linalg.norm(exact)
  jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
      jax.device_get(new_state.batch_stats),
      jax.device_get(ref_stats),
  )
  # The teacher: EMA of the new student, its own BatchNorm statistics; the centre: EMA of
  # this batch's teacher outputs.
  tau = float(metrics['ema_decay'])
  assert tau == pytest.approx(0.9995)
  got = jax.device_get(new_state.method_state)
  jax.tree.map(
      lambda a, t, o: np.testing.assert_allclose(a, tau * t + (1 - tau) * o, 1e-6, 1e-7),
      got['target']['params'],
      target['params'],
      {k: new_params[k] for k in ('encoder', 'head')},
  )
  jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
      got['target']['batch_stats'],
      jax.device_get(teacher_stats['batch_stats']),
  )
  np.testing.assert_allclose(
      got['centre'], 0.9 * centre + 0.1 * teacher_z.mean(axis=(0, 1)), rtol=1e-5, atol=1e-6
  )


def test_last_layer_waits_its_epochs_then_follows_its_schedule():
  config = _tiny_dino(freeze_last_layer_epochs=2, clip_grad=0.5)
  config.optimizer = 'lars'
  method = methods.get(config, num_examples=24)  # 3 steps an epoch: 6 frozen steps.
  params = {
      'head': {'dense1': {'kernel': jnp.ones((3, 4))}, 'last_layer': {'kernel': jnp.ones((4, 5))}}
  }
  schedule = lambda count: 0.1 + 0.01 * count
  tx = method.create_optimizer(schedule)
  state = tx.init(params)
  rng = np.random.default_rng(0)
  grads = [jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape)), params) for _ in range(9)]
  updates = []
  for g in grads:
    u, state = jax.jit(tx.update)(g, state, params)
    updates.append(u)
  for u in updates[:6]:
    assert not u['head']['last_layer']['kernel'].any() and u['head']['dense1']['kernel'].any()
  # From step 6, as the optimiser fresh from init at the schedule's step 6 on, with the
  # per-parameter clipping before it.
  fresh = optax_chain_of(config, lambda count: schedule(count + 6))
  fresh_state = fresh.init(params)
  for g, u in zip(grads[6:], updates[6:]):
    want, fresh_state = fresh.update(g, fresh_state, params)
    np.testing.assert_allclose(
        u['head']['last_layer']['kernel'], want['head']['last_layer']['kernel'], rtol=1e-5
    )


def test_weight_decay_rises_on_a_cosine_for_every_parameter_group():
  config = _tiny_dino(freeze_last_layer_epochs=1, weight_decay_end=0.4)
  config.optimizer, config.weight_decay, config.num_train_steps = 'adamw', 0.04, 10
  method = methods.get(config, num_examples=32)  # 4 steps an epoch: 4 frozen steps.
  params = {
      'head': {'dense1': {'kernel': jnp.ones((3, 4))}, 'last_layer': {'kernel': jnp.ones((4, 5))}}
  }
  tx = method.create_optimizer(lambda count: 1.0)
  state, zeros = tx.init(params), jax.tree.map(jnp.zeros_like, params)
  for step in range(10):
    # Zero gradients: AdamW's update is -lr wd(step) p, their cosine from 0.04 to 0.4.
    wd = 0.4 + (0.04 - 0.4) * 0.5 * (1 + np.cos(np.pi * step / 10))
    updates, state = tx.update(zeros, state, params)
    np.testing.assert_allclose(updates['head']['dense1']['kernel'], -wd, rtol=1e-5)
    np.testing.assert_allclose(updates['head']['last_layer']['kernel'], -wd * (step >= 4), 1e-5)


def optax_chain_of(config, schedule):
  import optax  # pylint: disable=g-import-not-at-top

  return optax.chain(optim.clip_each_by_norm(0.5), optim.create_optimizer(config, schedule))


def _first_batch(config):
  """The first tf.data batch of 4, and the decoded images of the same examples in [0, 1]."""
  batch = input_pipeline.create_pretrain_dataset(config, local_batch_size=4)
  config.augment_on_device = True
  decoded = input_pipeline.create_pretrain_dataset(config, local_batch_size=4)
  config.augment_on_device = False
  first = lambda dataset: next(iter(dataset.as_numpy_iterator()))
  return first(batch), first(decoded)['image'] / 255.0


def test_tf_data_makes_local_crops_a_stream_apart(cifar10_subset):
  # In the train step (augment_on_device): the whole run below.
  config = tiny_config(cifar10_subset)
  config.batch_size = 4
  plain, _ = _first_batch(config)
  config.augment.local_crops.number, config.augment.local_crops.size = 3, 12
  multi, _ = _first_batch(config)
  # The two views as without local crops; local crops of their size, each its own.
  np.testing.assert_array_equal(multi['views'], plain['views'])
  local = multi['local_views']
  assert local.shape == (4, 3, 12, 12, 3) and 0 <= local.min() and local.max() <= 1
  flat = local.reshape(12, -1)
  assert min(np.abs(a - b).mean() for i, a in enumerate(flat) for b in flat[i + 1 :]) > 0.01
  # Their own values of config.augment's keys: the whole image, unflipped and uncoloured,
  # resized to 12 (bicubic).
  for key, value in dict(
      crop_area_min=1.0,
      aspect_ratio_min=1.0,
      aspect_ratio_max=1.0,
      flip_prob=0.0,
      color_jitter_prob=0.0,
      grayscale_prob=0.0,
      solarize_prob=0.0,
  ).items():
    config.augment.local_crops[key] = value
  multi, images = _first_batch(config)
  want = np.clip(jax.image.resize(images, (4, 12, 12, 3), 'cubic', antialias=False), 0, 1)
  for crop in range(3):
    np.testing.assert_allclose(multi['local_views'][:, crop], want, atol=0.02)


def test_vit_takes_crops_of_another_size():
  config = tiny_config('unused')
  config.model.name, config.model.patch_size, config.model.position_embedding = (
      'vit_ti',
      4,
      'learned',
  )
  encoder = models.create_encoder(config.model, image_size=16, dtype=jnp.float32)
  variables = encoder.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))
  assert variables['params']['position_embedding'].shape == (1, 17, 192 // 8)
  small = encoder.apply(variables, jnp.ones((2, 8, 8, 3)))
  assert small.shape == (2, 192 // 8) and np.isfinite(small).all()


def test_pretrains_resumes_exactly_and_its_encoders_are_evaluated(
    cifar10_subset, pretrained_workdir, tmp_path, toy_encoder
):
  config = _tiny_dino()
  small = tiny_config(cifar10_subset)
  small.model.name = toy_encoder
  for key in ('dataset', 'model', 'batch_size', 'num_train_steps', 'shuffle_buffer_size', 'eval'):
    config[key] = small[key]
  config.image_size = 32
  config.augment.local_crops.number, config.augment.local_crops.size = 2, 16
  # The views and local crops made in the step (tf.data's: the pipeline test above).
  config.augment_on_device = True
  config.log_every_steps = config.checkpoint_every_steps = 2
  config.eval_every_steps = 0
  config.dino.warmup_teacher_temperature = 0.04
  config.dino.warmup_teacher_temperature_epochs = 2
  workdir = str(tmp_path / 'dino')
  straight = jax.device_get(train.train_and_evaluate(config, workdir))
  assert straight.method_state['centre'].any()
  manager = checkpoints.create_checkpoint_manager(workdir, config)
  manager.delete(4)
  manager.wait_until_finished()
  resumed = jax.device_get(train.train_and_evaluate(config, workdir))
  assert int(resumed.step) == 4
  jax.tree.map(np.testing.assert_array_equal, resumed, straight)

  eval_config = tiny_config(cifar10_subset)
  eval_config.model = config.model
  eval_model = models.create_model(eval_config.model, image_size=32, num_classes=10)
  variables, _ = features.restore_encoder_variables(eval_config, eval_model, workdir)
  jax.tree.map(
      np.testing.assert_array_equal, variables['params']['encoder'], straight.params['encoder']
  )
  # The teacher's encoder, as the DINO authors evaluate; a run without a target refuses.
  eval_config.eval.weights = 'target'
  variables, _ = features.restore_encoder_variables(eval_config, eval_model, workdir)
  teacher = straight.method_state['target']
  for collection in ('params', 'batch_stats'):
    jax.tree.map(
        np.testing.assert_array_equal,
        variables[collection]['encoder'],
        teacher[collection]['encoder'],
    )
  eval_config.model = tiny_config(cifar10_subset).model
  with pytest.raises(ValueError, match=r'\(simclr\) has no target network.*weights=online'):
    features.restore_encoder_variables(
        eval_config,
        models.create_model(eval_config.model, image_size=32, num_classes=10),
        str(pretrained_workdir),
    )
  path = str(tmp_path / 'dino.npz')
  export.export(workdir, path, 'npz')
  exported, saved_config, _ = export.load(path)
  images = np.random.default_rng(0).uniform(size=(4, 32, 32, 3)).astype(np.float32)
  out = export.inference_model(saved_config).apply(exported, images, train=False, method='project')
  assert out['z'].shape == (4, 24)  # config.dino.output_dim.


def test_bad_configs_are_refused_naming_the_fix(cifar10_subset):
  never = '/nonexistent/never/written'
  config = _tiny_dino(teacher_temperature=0.0)
  config.dataset = str(cifar10_subset)
  with pytest.raises(ValueError, match=r'config.dino.teacher_temperature=0.0 must be > 0'):
    train.train_and_evaluate(config, never)
  config = _tiny_dino(centre_momentum=1.5)
  config.dataset = str(cifar10_subset)
  with pytest.raises(ValueError, match=r'config.dino.centre_momentum=1.5 must be in \[0, 1\]'):
    train.train_and_evaluate(config, never)
  config = tiny_config(cifar10_subset)
  config.augment.local_crops.number = 4
  with pytest.raises(ValueError, match="method='simclr' trains on two views only.*DINO"):
    train.train_and_evaluate(config, never)
  config.augment.local_crops.blur = 0.5
  with pytest.raises(ValueError, match='local_crops sets blur, which config.augment has not'):
    train.train_and_evaluate(config, never)
  config = tiny_config(cifar10_subset)
  config.method = 'dino'
  with pytest.raises(ValueError, match='needs the config.dino section.*cifar10_dino.py'):
    train.train_and_evaluate(config, never)
