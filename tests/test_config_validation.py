"""Bad configs fail before anything is compiled or written, naming the value and the fix."""

import pytest

from simclr_jax import config_validation
from simclr_jax import train


@pytest.mark.parametrize(
    'field,value,message',
    [
        (
            'model.name',
            'resnet19',
            r"config.model.name='resnet19' is not a known model; use one " r'of resnet18, resnet34',
        ),
        ('temperature', 0.0, r'config.temperature=0.0 must be > 0'),
        ('model.width_multiplier', -0.5, r'config.model.width_multiplier=-0.5 must be > 0'),
        ('optimizer', 'adam', r"config.optimizer='adam' is not known; use one of \('lars'"),
        ('lr_scaling', 'cubic', r"config.lr_scaling='cubic' is not known"),
        ('augment.grayscale_prob', 1.5, r'config.augment.grayscale_prob=1.5 must be in \[0, 1\]'),
        (
            'augment.second_view.solarize_prob',
            -0.2,
            r'config.augment \(second view\).solarize_prob=-0.2 must be in \[0, 1\]',
        ),
        (
            'augment.second_view.solarise_prob',
            0.2,
            r'second_view sets solarise_prob, which config.augment has not',
        ),
        (
            'augment.color_jitter',
            (0.4, 0.4, 0.2),
            r'config.augment.color_jitter=\(0.4, 0.4, 0.2\) must be \(\) \(use color_strength\)',
        ),
        ('augment.crop_area_min', 0.0, r'config.augment.crop_area_min=0.0 and crop_area_max=1.0'),
        ('image_size', 4, r'config.image_size=4 must be an integer >= 8'),
        ('pretrain_image_size', 4, r'config.pretrain_image_size=4 must be 0 \(the image_size\)'),
        ('augment.policy', 'strong', r"config.augment.policy='strong' is not known; use one of"),
        ('augment.weak.hue', 0.6, r'config.augment.weak.hue=0.6 must be in \[0, 0.5\]'),
        (
            'augment.weak.aspect_ratio_min',
            1.5,
            r'config.augment.weak.aspect_ratio_min=1.5 and aspect_ratio_max=1.2',
        ),
        (
            'dataset',
            '/nonexistent/cifar',
            r"config.dataset='/nonexistent/cifar' does not exist; "
            r'point --config.dataset at a folder',
        ),
    ],
)
def test_bad_config_fails_before_any_work(cifar_config, tmp_path, field, value, message):
  node = cifar_config
  *parents, leaf = field.split('.')
  for name in parents:
    node = node[name]
  node[leaf] = value
  workdir = tmp_path / 'workdir'
  with pytest.raises(ValueError, match=message):
    train.train_and_evaluate(cifar_config, str(workdir))
  assert not workdir.exists()  # Nothing was written, so nothing was compiled either.


def test_weak_policy_is_refused_on_device(cifar_config):
  cifar_config.augment.policy = 'weak'
  config_validation.validate_config(cifar_config, num_devices=1)
  cifar_config.augment_on_device = True
  with pytest.raises(
      ValueError, match=r"policy='weak' runs in tf.data only; set --config.augment_on_device=false"
  ):
    config_validation.validate_config(cifar_config, num_devices=1)


def test_batch_not_divisible_by_device_count(cifar_config):
  cifar_config.batch_size = 100
  with pytest.raises(
      ValueError,
      match=r'config.batch_size=100 is not divisible by the 8 '
      r'devices; use a multiple of the device count',
  ):
    config_validation.validate_config(cifar_config, num_devices=8)
  cifar_config.batch_size = 96
  config_validation.validate_config(cifar_config, num_devices=8)


def test_contrastive_chunk_must_divide_images_per_device(cifar_config):
  cifar_config.batch_size = 96
  cifar_config.contrastive_chunk_size = 8
  with pytest.raises(
      ValueError,
      match=r'config.contrastive_chunk_size=8 must be 0 \(no '
      r'chunks\) or divide the 12 images per device',
  ):
    config_validation.validate_config(cifar_config, num_devices=8)
  cifar_config.contrastive_chunk_size = 4
  config_validation.validate_config(cifar_config, num_devices=8)


def test_shipped_configs_are_valid(cifar_config):
  from conftest import load_config

  for config in (cifar_config, load_config('imagenet'), load_config('cifar10_cpu')):
    config_validation.validate_config(config, num_devices=8)


@pytest.mark.parametrize(
    'mode,field,value,message',
    [
        (
            'finetune',
            'finetune.label_fraction',
            0.0,
            r'config.finetune.label_fraction=0.0 must be in \(0, 1\]',
        ),
        (
            'finetune',
            'finetune.fine_tune_after_block',
            5,
            r'config.finetune.fine_tune_after_block=5 must be -1',
        ),
        (
            'finetune',
            'finetune.keep_head_layers',
            3,
            r'config.finetune.keep_head_layers=3 must be in '
            r'\[0, config.model.head_layers - 1 = 2\]',
        ),
        (
            'finetune',
            'finetune.batch_size',
            100,
            r'config.finetune.batch_size=100 must be a positive multiple of the 8 devices',
        ),
        ('finetune', 'finetune.lr_scaling', 'cubic', r"config.finetune.lr_scaling='cubic'"),
        ('finetune', 'eval.encoder', 'pixels', r'config.eval.encoder=pixels has nothing to train'),
        (
            'linear_eval',
            'eval.linear_protocol',
            'adam',
            r"config.eval.linear_protocol='adam' is not known",
        ),
        (
            'linear_eval',
            'finetune.momentum',
            1.0,
            r'config.finetune.momentum=1.0 must be in \[0, 1\)',
        ),
    ],
)
def test_bad_evaluation_settings_are_named(cifar_config, mode, field, value, message):
  cifar_config.mode, cifar_config.pretrained_workdir = mode, '/some/run'
  cifar_config.eval.linear_protocol = 'sgd'
  section, leaf = field.split('.')
  cifar_config[section][leaf] = value
  with pytest.raises(ValueError, match=message):
    config_validation.validate_config(cifar_config, num_devices=8)


@pytest.mark.parametrize(
    'mode,overrides,processes,message',
    [
        (
            'pretrain',
            {'data_shards': 3},
            2,
            r'config.data_shards=3 is not a multiple of the 2 processes; use a multiple of the '
            r'process count \(e.g. 4\)',
        ),
        (
            'pretrain',
            {'data_shards': 3, 'batch_size': 512},
            1,
            r'config.batch_size=512 is not divisible by config.data_shards=3',
        ),
        ('pretrain', {'data_shards': -1}, 1, r'config.data_shards=-1 must be an integer >= 0'),
        (
            'finetune',
            {'data_shards': 8, 'batch_size': 100},
            1,  # Pretraining's batch: unused.
            r'config.finetune.batch_size=500 is not divisible by config.data_shards=8',
        ),
    ],
)
def test_data_shards_must_fit_processes_and_batch(
    cifar_config, mode, overrides, processes, message
):
  cifar_config.mode, cifar_config.pretrained_workdir = mode, '/some/run'
  cifar_config.finetune.batch_size = 500
  for key, value in overrides.items():
    cifar_config[key] = value
  with pytest.raises(ValueError, match=message):
    config_validation.validate_config(cifar_config, num_devices=4, num_processes=processes)
  cifar_config.data_shards = 4
  config_validation.validate_config(cifar_config, num_devices=4, num_processes=processes)
