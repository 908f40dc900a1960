"""models/vit.py: published parameter counts, attention against a numpy loop, the sin-cos
embedding, and SimCLR pretraining and evaluation with a small ViT through the whole stack."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_config, tiny_config
from simclr_jax import config_validation
from simclr_jax import evaluate
from simclr_jax import models
from simclr_jax import report
from simclr_jax import train
from simclr_jax.models import vit


def _encoder_params(name, patch_size, image_size, pool='cls'):
  config = load_config('cifar10')
  config.model.name, config.model.patch_size, config.model.pool = name, patch_size, pool
  encoder = vit.build(config.model, image_size=image_size, dtype=jnp.float32)
  shapes = jax.eval_shape(
      lambda: encoder.init(jax.random.PRNGKey(0), jnp.zeros((1, image_size, image_size, 3)))
  )
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))


@pytest.mark.parametrize(
    'name,patch,size,count',
    [('vit_b', 16, 224, 85_798_656), ('vit_s', 16, 224, 21_665_664)],
)
def test_parameter_counts_are_the_published_ones(name, patch, size, count):
  # timm's vit_base_patch16_224 / vit_small_patch16_224 without the classifier: 85.8M, 21.7M.
  assert _encoder_params(name, patch, size) == count


def test_attention_equals_a_numpy_loop():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 5, 12)).astype(np.float32)
  attention = vit.MultiHeadSelfAttention(heads=3)
  params = attention.init(jax.random.PRNGKey(1), x)['params']
  out = np.asarray(attention.apply({'params': params}, x))
  qkv_w, qkv_b = (np.asarray(params['qkv'][k], np.float64) for k in ('kernel', 'bias'))
  proj_w, proj_b = (np.asarray(params['proj'][k], np.float64) for k in ('kernel', 'bias'))
  expected = np.zeros((2, 5, 12))
  for b in range(2):
    qkv = x[b].astype(np.float64) @ qkv_w + qkv_b  # [5, 36]: q, k, v, each of 3 heads of 4.
    heads = []
    for h in range(3):
      q, k, v = (qkv[:, part * 12 + h * 4 : part * 12 + (h + 1) * 4] for part in range(3))
      logits = q @ k.T / 2.0
      weights = np.exp(logits - logits.max(1, keepdims=True))
      weights /= weights.sum(1, keepdims=True)
      heads.append(weights @ v)
    expected[b] = np.concatenate(heads, axis=1) @ proj_w + proj_b
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


def test_sincos_embedding_by_its_formula():
  table = vit.sincos_position_embedding(3, 8)
  row, col = divmod(5, 3)  # Token 5 of a 3x3 grid.
  omega = 1 / 10000 ** (np.arange(2) / 2)
  expected = np.concatenate(
      [np.sin(row * omega), np.cos(row * omega), np.sin(col * omega), np.cos(col * omega)]
  )
  np.testing.assert_allclose(table[5], expected, rtol=1e-6)


def test_bad_vit_settings_are_named(cifar_config):
  cifar_config.model.name, cifar_config.model.width_multiplier = 'vit_s', 0.01
  with pytest.raises(ValueError, match=r'gives vit_s a width of 4, which its 6 heads'):
    config_validation.validate_config(cifar_config, num_devices=1)
  cifar_config.model.width_multiplier, cifar_config.model.pool = 1.0, 'max'
  with pytest.raises(ValueError, match=r"config.model.pool='max' is not known"):
    config_validation.validate_config(cifar_config, num_devices=1)
  cifar_config.model.pool, cifar_config.model.depth = 'cls', -1
  with pytest.raises(
      ValueError, match=r"config.model.depth=-1 must be an integer >= 0 \(0: vit_s's 12"
  ):
    config_validation.validate_config(cifar_config, num_devices=1)


def _tiny_vit(dataset):
  config = tiny_config(dataset)
  config.model.name, config.model.width_multiplier = 'vit_ti', 0.125  # 24 wide, 3 heads.
  config.model.patch_size = 8  # 16 tokens at 32x32.
  return config


def test_simclr_pretrains_and_evaluates_a_vit(cifar10_subset, tmp_path):
  config = _tiny_vit(cifar10_subset)
  config.model.dropout = config.model.drop_path = 0.1
  config.model.depth = 3  # config.model.depth in use; three blocks compile far faster than 12.
  config.microbatches = 2  # The gradient cache, its dropout keys per micro-batch included.
  state = train.train_and_evaluate(config, str(tmp_path / 'pretrain'))
  # Resumed from step 2, the run draws the same dropout masks as the uninterrupted one.
  shutil.copytree(tmp_path / 'pretrain', tmp_path / 'resumed')
  shutil.rmtree(tmp_path / 'resumed' / 'checkpoints' / '4')
  resumed = train.train_and_evaluate(config, str(tmp_path / 'resumed'))
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(resumed.params)):
    np.testing.assert_array_equal(a, b)
  assert sorted(state.params['encoder']) == sorted(
      ['patch_embedding', 'position_embedding', 'cls', 'norm'] + [f'block{i}' for i in range(1, 4)]
  )
  records = [json.loads(line) for line in open(tmp_path / 'pretrain' / 'metrics.jsonl')]
  assert np.isfinite(records[-1]['contrastive_loss']) and 0 <= records[-1]['knn_top1'] <= 1
  config.mode, config.eval.protocol = 'evaluate', 'knn'
  config.pretrained_workdir = str(tmp_path / 'pretrain')
  results = evaluate.evaluate(config, str(tmp_path / 'knn'))
  assert results['feature_dim'] == 24 and 0 <= results['top1'] <= 1
  # The report (and the notebook, built on report.load_run) rebuild the ViT from config.json.
  run = report.load_run(str(tmp_path / 'pretrain'), max_examples=40, max_iterations=10)
  train_data, test_data = run.embed_splits()
  assert train_data[0].shape == (40, 24) and test_data[0].shape == (40, 24)
  assert 0 <= report.probe_results(run, train_data, test_data)[0]['knn']['top1'] <= 1
  # Freezing counts the embeddings (0) and the blocks; the final LayerNorm goes with the last.
  names = ('patch_embedding', 'cls', 'block1', 'block3', 'norm')
  assert [models.encoder_part_of(config.model)([n]) for n in names] == [0, 0, 1, 3, 3]
  assert models.num_encoder_parts(config.model) == 4
  config.model.depth = 0  # The size's 12 blocks.
  part_of = models.encoder_part_of(config.model)
  assert [part_of([n]) for n in ('block1', 'block12', 'norm')] == [1, 12, 12]
  assert models.num_encoder_parts(config.model) == 13


def test_drop_path_zeroes_whole_examples_and_keeps_the_mean():
  branch = jax.random.normal(jax.random.PRNGKey(1), (2000, 3, 4))
  out = np.asarray(vit.drop_path(branch, 0.3, jax.random.PRNGKey(2)))
  dropped = (out == 0).all((1, 2))
  kept = np.asarray(branch)[~dropped] / 0.7
  np.testing.assert_allclose(out[~dropped], kept, rtol=1e-6)
  # Binomial(2000, 0.3): 4.5 standard deviations are +-92 examples (a rate of 0.25 or 0.35
  # fails).
  assert abs(dropped.sum() - 600) < 4.5 * np.sqrt(2000 * 0.3 * 0.7)


def test_drop_path_rates_grow_linearly_to_the_last_block():
  np.testing.assert_allclose(vit.drop_path_rates(0.1, 12), np.linspace(0, 0.1, 12))
  assert vit.drop_path_rates(0.2, 1) == [0.0]


@pytest.mark.parametrize('remat', [False, True])
def test_dropout_and_drop_path_only_in_training(remat):
  config = load_config('cifar10')
  config.model.name, config.model.width_multiplier, config.model.patch_size = 'vit_ti', 0.0625, 8
  # Three blocks (rates 0, 0.15, 0.3) compile far faster than twelve.
  plain = vit.build(config.model, image_size=32, dtype=jnp.float32, remat=remat).clone(depth=3)
  config.model.dropout, config.model.drop_path = 0.2, 0.3
  regularised = vit.build(config.model, image_size=32, dtype=jnp.float32, remat=remat).clone(
      depth=3
  )
  images = jax.random.uniform(jax.random.PRNGKey(0), (4, 32, 32, 3))
  params = plain.init(jax.random.PRNGKey(1), images)

  def h(model, train, seed=0):
    rngs = {'dropout': jax.random.PRNGKey(seed)}
    return np.asarray(model.apply(params, images, train=train, rngs=rngs))

  np.testing.assert_array_equal(h(regularised, False), h(plain, False))
  np.testing.assert_array_equal(h(plain, True), h(plain, False))
  np.testing.assert_array_equal(h(regularised, True, 3), h(regularised, True, 3))
  assert np.abs(h(regularised, True, 3) - h(regularised, True, 4)).mean() > 1e-3
  assert np.abs(h(regularised, True, 3) - h(plain, False)).mean() > 1e-3


def test_imagenet_vit_config_is_the_moco_v3_vit_recipe():
  """facebookresearch/moco-v3 CONFIG.md's ViT pretraining flags, on SimCLR's ImageNet config."""
  config = load_config('imagenet_vit')
  assert (
      config.model.name,
      config.model.patch_size,
      config.optimizer,
      config.learning_rate,
      config.lr_scaling,
      config.weight_decay,
      config.warmup_epochs,
      config.num_epochs,
      config.batch_size,
      config.temperature,
      config.image_size,
  ) == ('vit_b', 16, 'adamw', 1.5e-4, 'linear', 0.1, 40.0, 300, 4096, 0.2, 224)
  config_validation.validate_config(config, num_devices=8)


def test_cifar10_vit_config_is_the_recipe_at_patch_4():
  config = load_config('cifar10_vit')
  assert (
      config.model.name,
      config.model.patch_size,
      config.model.position_embedding,
      config.optimizer,
      config.learning_rate,
      config.lr_scaling,
      config.weight_decay,
      config.warmup_epochs,
      config.num_epochs,
      config.temperature,
      config.image_size,
  ) == ('vit_s', 4, 'sincos', 'adamw', 1.5e-4, 'linear', 0.1, 40.0, 300, 0.2, 32)
  config_validation.validate_config(config, num_devices=8)
