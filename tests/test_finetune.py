"""Fine-tuning and the reference (SGD) linear evaluation: freezing, optimiser, end to end."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from conftest import load_config, tiny_config
from simclr_jax.evaluators import finetune
from simclr_jax import models
from simclr_jax.models import resnet
from simclr_jax.core import optim


def _model_config():
  config = load_config('cifar10')
  config.model.width_multiplier = 0.0625
  return config


def _classifier(fine_tune_after_block):
  model = models.create_classifier(
      _model_config().model,
      image_size=16,
      num_classes=3,
      fine_tune_after_block=fine_tune_after_block,
  )
  images = jax.random.uniform(jax.random.PRNGKey(0), (4, 16, 16, 3))
  # Jitted: op by op, a ResNet-18 dispatches (and compiles) hundreds of small kernels.
  variables = jax.jit(lambda: model.init(jax.random.PRNGKey(1), images, train=False))()
  return model, variables, images


def _part(path):
  names = [str(getattr(k, 'key', k)) for k in path]
  if names[0] != 'encoder':
    return names[0]
  return 0 if names[1].startswith('stem') else int(names[1][len('stage')])


@pytest.mark.parametrize('after', [-1, 2, 4])
def test_frozen_parts_get_no_gradient_and_keep_their_statistics(after):
  model, variables, images = _classifier(after)
  # Random classifier weights and BN scales, so every trainable parameter has a gradient.
  params = jax.tree.map(lambda p: p + 0.3, variables['params'])

  def loss(params):
    logits, updates = model.apply(
        {'params': params, 'batch_stats': variables['batch_stats']},
        images,
        train=True,
        mutable=['batch_stats'],
    )
    return jnp.sum(jnp.sin(logits)), updates['batch_stats']

  grads, stats = jax.jit(jax.grad(loss, has_aux=True))(params)
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    frozen = isinstance(_part(path), int) and _part(path) <= after
    assert (np.abs(g).max() == 0) == frozen, jax.tree_util.keystr(path)
  old = dict(jax.tree_util.tree_leaves_with_path(variables['batch_stats']))
  for path, new in jax.tree_util.tree_leaves_with_path(stats):
    frozen = _part(path) <= after
    assert np.array_equal(new, old[path]) == frozen, jax.tree_util.keystr(path)


def test_kept_head_layer_and_pretrained_weights_are_loaded():
  # Two one-block stages: the copying does not depend on the depth, the compile time does.
  shallow = lambda model: model.clone(encoder=model.encoder.clone(stage_sizes=(1, 1)))
  classifier = shallow(
      models.create_classifier(
          _model_config().model,
          image_size=16,
          num_classes=3,
          fine_tune_after_block=-1,
          keep_head_layers=1,
      )
  )
  images = jnp.zeros((2, 16, 16, 3))
  variables = jax.jit(lambda: classifier.init(jax.random.PRNGKey(1), images, train=False))()
  assert sorted(variables['params']['head']) == ['bn1', 'dense1']
  simclr = shallow(models.create_model(_model_config().model, image_size=16, num_classes=3))
  pretrained = jax.jit(lambda: simclr.init(jax.random.PRNGKey(5), images, train=False))()
  loaded = finetune.with_pretrained(variables, pretrained)
  for collection in ('params', 'batch_stats'):
    jax.tree.map(
        np.testing.assert_array_equal,
        loaded[collection]['encoder'],
        pretrained[collection]['encoder'],
    )
    jax.tree.map(
        np.testing.assert_array_equal,
        loaded[collection]['head']['bn1'],
        pretrained[collection]['head']['bn1'],
    )
  np.testing.assert_array_equal(
      loaded['params']['head']['dense1']['kernel'], pretrained['params']['head']['dense1']['kernel']
  )
  # The linear layer starts at zero: uniform predictions.
  assert not np.any(loaded['params']['classifier']['kernel'])


def test_optimizer_is_nesterov_sgd_and_leaves_frozen_parameters_alone():
  settings = load_config('cifar10').finetune
  settings.fine_tune_after_block, settings.weight_decay, settings.momentum = 1, 0.01, 0.9
  params = {
      'encoder': {
          'stem_conv': {'kernel': jnp.ones((2, 2))},
          'stage1_block1': {'kernel': jnp.ones((2,))},
          'stage2_block1': {'kernel': jnp.full((2,), 2.0), 'bias': jnp.full((2,), 3.0)},
      },
      'classifier': {'kernel': jnp.full((3,), -1.0)},
  }
  lr = 0.5
  part_of = functools.partial(resnet.part_of, None)
  tx = optim.create_finetune_optimizer(settings, optax.constant_schedule(lr), part_of)
  state = tx.init(params)
  rng = np.random.default_rng(0)
  expected = {
      k: np.asarray(v)
      for k, v in {
          's2k': params['encoder']['stage2_block1']['kernel'],
          's2b': params['encoder']['stage2_block1']['bias'],
          'clf': params['classifier']['kernel'],
      }.items()
  }
  momentum = {k: np.zeros_like(v) for k, v in expected.items()}
  current = params
  for _ in range(3):
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
    updates, state = tx.update(grads, state, current)
    current = optax.apply_updates(current, updates)
    g = {
        's2k': grads['encoder']['stage2_block1']['kernel'],
        's2b': grads['encoder']['stage2_block1']['bias'],
        'clf': grads['classifier']['kernel'],
    }
    for k in expected:
      # Weight decay on kernels only; Nesterov: m = mu m + g, step = g + mu m.
      d = np.asarray(g[k]) + (0.01 * expected[k] if k != 's2b' else 0)
      momentum[k] = 0.9 * momentum[k] + d
      expected[k] = expected[k] - lr * (d + 0.9 * momentum[k])
  np.testing.assert_allclose(
      current['encoder']['stage2_block1']['kernel'], expected['s2k'], rtol=1e-5
  )
  np.testing.assert_allclose(
      current['encoder']['stage2_block1']['bias'], expected['s2b'], rtol=1e-5
  )
  np.testing.assert_allclose(current['classifier']['kernel'], expected['clf'], rtol=1e-5)
  for frozen in ('stem_conv', 'stage1_block1'):
    jax.tree.map(
        np.testing.assert_array_equal, current['encoder'][frozen], params['encoder'][frozen]
    )


def _finetune_config(dataset, workdir, mode, **settings):
  config = tiny_config(dataset)
  config.mode, config.pretrained_workdir = mode, str(workdir)
  config.eval.linear_protocol = 'sgd'
  config.eval.max_examples = 0
  config.finetune.batch_size = 16
  config.log_every_steps = config.checkpoint_every_steps = 2
  for key, value in settings.items():
    config.finetune[key] = value
  return config


_FIELDS = {
    'protocol',
    'dataset',
    'encoder',
    'checkpoint_step',
    'top1',
    'top5',
    'wall_time_sec',
    'label_fraction',
    'num_labelled_examples',
    'num_eval_examples',
    'fine_tune_after_block',
    'keep_head_layers',
    'epochs',
    'steps',
}


def test_label_fraction_finetuning_end_to_end(cifar10_subset, pretrained_workdir, tmp_path):
  # 10% of 26 images per class: 3 per class; 2 epochs of batch 16 over 30 images: 4 steps.
  config = _finetune_config(
      cifar10_subset,
      pretrained_workdir,
      'finetune',
      label_fraction=0.1,
      keep_head_layers=1,
      fine_tune_after_block=2,
      epochs=2,
  )
  results = finetune.finetune(config, str(tmp_path))
  saved = json.loads((tmp_path / 'eval_results.json').read_text())
  assert saved == json.loads(json.dumps(results)) and _FIELDS <= set(saved)
  assert saved['protocol'] == 'finetune' and saved['checkpoint_step'] == 4
  assert saved['num_labelled_examples'] == 30 and saved['steps'] == 4
  assert saved['num_eval_examples'] == 100 and 0 <= saved['top1'] <= saved['top5'] <= 1
  lines = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert [line['step'] for line in lines] == [2, 4]
  assert {'loss', 'accuracy', 'learning_rate'} <= set(lines[-1])


def test_reference_linear_eval_trains_only_the_linear_layer(
    cifar10_subset, pretrained_workdir, tmp_path
):
  config = _finetune_config(
      cifar10_subset,
      pretrained_workdir,
      'linear_eval',
      epochs=0.1,
      label_fraction=0.01,
      fine_tune_after_block=-1,
      keep_head_layers=2,
  )
  results = finetune.finetune(config, str(tmp_path))
  # linear_sgd overrides the fine-tuning settings: all labels, whole encoder frozen, no head.
  assert results['protocol'] == 'linear_sgd' and results['num_labelled_examples'] == 260
  assert results['fine_tune_after_block'] == 4 and results['keep_head_layers'] == 0
  assert results['steps'] == 2

  def latest(workdir):
    manager = ocp.CheckpointManager(
        workdir / 'checkpoints', options=ocp.CheckpointManagerOptions(read_only=True)
    )
    return manager.restore(manager.latest_step())

  pretrained, tuned = latest(pretrained_workdir), latest(tmp_path)
  for collection in ('params', 'batch_stats'):
    jax.tree.map(
        np.testing.assert_array_equal,
        tuned[collection]['encoder'],
        pretrained[collection]['encoder'],
    )
  assert np.any(tuned['params']['classifier']['kernel'])
