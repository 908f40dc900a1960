"""Checks a config before any expensive work, with messages that name the value and the fix."""

from simclr_jax import augment
from simclr_jax import augment_jax
from simclr_jax import evaluators
from simclr_jax import methods
from simclr_jax import models
from simclr_jax.models import encoders
from simclr_jax.core import optim


def _require(ok: bool, message: str):
  if not ok:
    raise ValueError(message)


MODES = ('pretrain', 'evaluate', *evaluators.LEGACY_MODES)
EVAL_ENCODERS = ('pretrained', 'random', 'pixels')
LINEAR_PROTOCOLS = ('lbfgs', 'sgd')
COLOR_JITTER_IMPLS = ('simclrv2', 'simclrv1')


def trains_classifier(config) -> bool:
  """Whether config runs the fine-tuning program (protocols finetune and linear_sgd)."""
  protocol = evaluators.protocol(config)
  return (
      config.mode != 'pretrain'
      and protocol in evaluators.EVALUATORS
      and evaluators.trains(protocol)
  )


def _validate_crop(node, prefix, source, area, aspect):
  """The crop keys of config.augment (or of a policy's section): probabilities and ranges."""
  _require(
      0 < node.crop_area_min <= node.crop_area_max <= 1,
      f'{prefix}.crop_area_min={node.crop_area_min} and crop_area_max={node.crop_area_max} '
      f'must satisfy 0 < min <= max <= 1 ({source}: {area}).',
  )
  _require(
      0 < node.aspect_ratio_min <= node.aspect_ratio_max,
      f'{prefix}.aspect_ratio_min={node.aspect_ratio_min} and aspect_ratio_max='
      f'{node.aspect_ratio_max} must satisfy 0 < min <= max ({source}: {aspect}).',
  )


def _validate_weak_policy(weak):
  for name in ('crop_branch_prob', 'flip_prob'):
    _require(0 <= weak[name] <= 1, f'config.augment.weak.{name}={weak[name]} must be in [0, 1].')
  _validate_crop(weak, 'config.augment.weak', 'the study', '0.7, 1.0', '0.8, 1.2')
  for name in ('brightness', 'contrast', 'saturation'):
    _require(weak[name] >= 0, f'config.augment.weak.{name}={weak[name]} must be >= 0.')
  _require(0 <= weak.hue <= 0.5, f'config.augment.weak.hue={weak.hue} must be in [0, 0.5].')


def _validate_view_augment(aug, where):
  """The knobs of one pretraining view (augment_jax.view_configs)."""
  for name in ('flip_prob', 'color_jitter_prob', 'grayscale_prob', 'blur_prob', 'solarize_prob'):
    value = aug.get(name, 0.0)
    _require(0 <= value <= 1, f'{where}.{name}={value} must be in [0, 1].')
  _validate_crop(aug, where, 'reference', '0.08, 1.0', '3/4, 4/3')
  _require(
      aug.color_jitter_impl in COLOR_JITTER_IMPLS,
      f'{where}.color_jitter_impl={aug.color_jitter_impl!r} is not known; use one '
      f'of {COLOR_JITTER_IMPLS} (simclrv2: multiplicative brightness; simclrv1: additive).',
  )
  _require(
      aug.color_strength >= 0,
      f'{where}.color_strength={aug.color_strength} must be >= 0 (0.5 for CIFAR, 1.0 for '
      'ImageNet).',
  )
  jitter = tuple(aug.get('color_jitter', ()))
  _require(
      not jitter or (len(jitter) == 4 and all(x >= 0 for x in jitter)),
      f'{where}.color_jitter={jitter} must be () (use color_strength) or 4 maxima >= 0: '
      "(brightness, contrast, saturation, hue), e.g. BYOL's (0.4, 0.4, 0.2, 0.1).",
  )
  _require(
      0 < aug.blur_sigma_min <= aug.blur_sigma_max,
      f'{where}.blur_sigma_min={aug.blur_sigma_min} and blur_sigma_max='
      f'{aug.blur_sigma_max} must satisfy 0 < min <= max (reference: 0.1, 2.0).',
  )


def _validate_local_crops(config):
  """config.augment.local_crops: DINO's multi-crop, made as the first view with its values."""
  local = config.augment.get('local_crops')
  if local is None or not local.number:
    return
  where = 'config.augment.local_crops'
  _require(
      isinstance(local.number, int) and local.number > 0 and local.size > 0,
      f'{where}.number={local.number} and size={local.size} must be positive integers (DINO: '
      '8 or 10 crops of 96 pixels for 224-pixel views).',
  )
  unknown = sorted(set(local) - set(config.augment) - {'number', 'size'})
  _require(
      not unknown,
      f'{where} sets {", ".join(unknown)}, which config.augment has not; it takes number, size '
      'and config.augment keys (e.g. crop_area_min, blur_prob) whose values the local crops use.',
  )
  _validate_view_augment(augment_jax.local_crops(config.augment)[2], where)
  _require(
      config.mode != 'pretrain'
      or config.method not in methods.METHODS
      or methods.get(config).uses_local_crops,
      f'{where}.number={local.number}: config.method={config.method!r} trains on two views '
      'only; multi-crop is for DINO (configs/*_dino.py). Set it to 0.',
  )


def validate_config(config, *, num_devices: int, num_processes: int = 1):
  """Raises ValueError naming the first bad value in `config` and what is allowed."""
  _require(config.mode in MODES, f'config.mode={config.mode!r} is not known; use one of {MODES}.')
  encoders.family(config.model).validate(config.model)
  _require(
      config.model.width_multiplier > 0,
      f'config.model.width_multiplier={config.model.width_multiplier} must be > 0 '
      '(1.0 is the standard width; 0.25 gives a 16-channel stem).',
  )
  _require(
      config.dtype in models.DTYPES,
      f'config.dtype={config.dtype!r} is not known; use one of {", ".join(models.DTYPES)}.',
  )
  _require(isinstance(config.remat, bool), f'config.remat={config.remat!r} must be true or false.')
  _require(
      config.model.head_layers >= 1,
      f'config.model.head_layers={config.model.head_layers} must be >= 1 (SimCLRv2: 3).',
  )
  _require(
      config.model.head_output_dim >= 1,
      f'config.model.head_output_dim={config.model.head_output_dim} must be >= 1 (128).',
  )
  _require(
      isinstance(config.image_size, int) and config.image_size >= 8,
      f'config.image_size={config.image_size!r} must be an integer >= 8 '
      '(32 for CIFAR, 224 for ImageNet).',
  )
  pretrain_size = config.get('pretrain_image_size', 0)
  _require(
      isinstance(pretrain_size, int) and (pretrain_size == 0 or pretrain_size >= 8),
      f'config.pretrain_image_size={pretrain_size!r} must be 0 (the image_size) or an '
      'integer >= 8.',
  )
  _require(
      isinstance(config.batch_size, int) and config.batch_size >= 2,
      f'config.batch_size={config.batch_size!r} must be an integer >= 2.',
  )
  _require(
      config.batch_size % num_devices == 0,
      f'config.batch_size={config.batch_size} is not divisible by the {num_devices} '
      'devices; use a multiple of the device count (e.g. '
      f'{max(1, config.batch_size // num_devices) * num_devices}).',
  )
  _require(
      config.probe_learning_rate_scale >= 0,
      f'config.probe_learning_rate_scale={config.probe_learning_rate_scale} must be >= 0.',
  )
  _require(
      config.optimizer in optim.OPTIMIZERS,
      f'config.optimizer={config.optimizer!r} is not known; use one of {optim.OPTIMIZERS}.',
  )
  _validate_schedule(config, 'config.')
  _require(
      config.num_train_steps > 0 or config.num_epochs > 0,
      f'config.num_epochs={config.num_epochs} must be > 0 ' '(or set config.num_train_steps > 0).',
  )
  _require(
      config.eval_every_steps >= 0,
      f'config.eval_every_steps={config.eval_every_steps} must be >= 0 (0 = no monitors).',
  )
  _require(
      isinstance(config.skip_bad_images, bool),
      f'config.skip_bad_images={config.skip_bad_images!r} must be true or false.',
  )
  _require(
      isinstance(config.huge_page_malloc, bool),
      f'config.huge_page_malloc={config.huge_page_malloc!r} must be true or false.',
  )
  _require(
      isinstance(config.augment_on_device, bool),
      f'config.augment_on_device={config.augment_on_device!r} must be true or false.',
  )
  for name in (
      'log_every_steps',
      'checkpoint_every_steps',
      'keep_checkpoints',
      'shuffle_buffer_size',
      'prefetch_batches',
  ):
    _require(config[name] >= 1, f'config.{name}={config[name]} must be >= 1.')
  _require(
      config.progress_every_secs > 0,
      f'config.progress_every_secs={config.progress_every_secs} must be > 0.',
  )

  aug = config.augment
  _require(
      aug.policy in augment.POLICIES,
      f'config.augment.policy={aug.policy!r} is not known; use one of '
      f'{", ".join(augment.POLICIES)}.',
  )
  _require(
      aug.policy == 'simclr' or not config.augment_on_device,
      f'config.augment.policy={aug.policy!r} runs in tf.data only; set '
      '--config.augment_on_device=false (or use the simclr policy).',
  )
  _validate_weak_policy(aug.weak)
  unknown = sorted(set(aug.get('second_view', {})) - set(aug) - {'second_view'})
  _require(
      not unknown and 'second_view' not in aug.get('second_view', {}),
      f'config.augment.second_view sets {", ".join(unknown) or "second_view"}, which '
      'config.augment has not; it takes config.augment keys (e.g. blur_prob, solarize_prob) '
      'whose values the second view of each pair uses instead.',
  )
  first, second = augment_jax.view_configs(aug)
  _validate_view_augment(first, 'config.augment')
  _validate_view_augment(second, 'config.augment (second view)')
  _validate_local_crops(config)
  if config.mode == 'pretrain':
    _require(
        config.method in methods.METHODS,
        f'config.method={config.method!r} is not known; use one of '
        f'{", ".join(methods.METHODS)}.',
    )
    methods.get(config).validate(num_devices)
    _validate_data_shards(config, config.batch_size, 'config.batch_size', num_processes)
    if config.eval_every_steps:
      scoring = [n for n in evaluators.EVALUATORS if not evaluators.trains(n)]
      for name in evaluators.monitors(config):
        _require(
            name in scoring,
            f'config.eval.monitors names {name!r}, which is not an evaluator of features; use '
            f'names among {", ".join(scoring)}, comma-separated.',
        )
        evaluators.get(name).validate(config)
  else:
    _validate_eval_config(config, num_devices)
  if trains_classifier(config):
    _validate_finetune_config(config, num_devices)
    _validate_data_shards(
        config, config.finetune.batch_size, 'config.finetune.batch_size', num_processes
    )


def _require_device_multiple(batch_size, name, num_devices):
  _require(
      isinstance(batch_size, int) and batch_size > 0 and batch_size % num_devices == 0,
      f'{name}={batch_size!r} must be a positive multiple of the {num_devices} devices.',
  )


def _validate_data_shards(config, batch_size, batch_name, num_processes):
  """config.data_shards: 0, or a multiple of the process count that divides the batch."""
  shards = config.data_shards
  _require(
      isinstance(shards, int) and shards >= 0,
      f'config.data_shards={shards!r} must be an integer >= 0 (0: one shard per process).',
  )
  if shards:
    suggestion = -(-shards // num_processes) * num_processes
    _require(
        shards % num_processes == 0,
        f'config.data_shards={shards} is not a multiple of the {num_processes} processes; '
        f'use a multiple of the process count (e.g. {suggestion}), or 0 for one shard per '
        'process.',
    )
    _require(
        batch_size % shards == 0,
        f'{batch_name}={batch_size} is not divisible by config.data_shards={shards}: each '
        f'shard gives batch / data_shards examples to every batch; use a batch that is a '
        'multiple of data_shards, or fewer shards.',
    )


def _validate_schedule(section, prefix):
  """Learning rate, its scaling, weight decay and warm-up of pretraining or fine-tuning."""
  _require(
      section.lr_scaling in optim.LR_SCALINGS,
      f'{prefix}lr_scaling={section.lr_scaling!r} is not known; '
      f'use one of {optim.LR_SCALINGS}.',
  )
  _require(section.learning_rate > 0, f'{prefix}learning_rate={section.learning_rate} must be > 0.')
  _require(section.weight_decay >= 0, f'{prefix}weight_decay={section.weight_decay} must be >= 0.')
  _require(
      section.warmup_epochs >= 0, f'{prefix}warmup_epochs={section.warmup_epochs} must be >= 0.'
  )


def _validate_eval_config(config, num_devices):
  ev = config.eval
  _require(
      isinstance(ev.dataset, str),
      f"config.eval.dataset={ev.dataset!r} must be a TFDS name or a folder ('': config.dataset).",
  )
  _require(
      ev.encoder in EVAL_ENCODERS,
      f'config.eval.encoder={ev.encoder!r} is not known; use one of {EVAL_ENCODERS}.',
  )
  _require(
      ev.get('weights', 'online') in ('online', 'target'),
      f"config.eval.weights={ev.get('weights')!r} is not known; use online (the trained "
      'encoder) or target (the EMA target: BYOL, MoCo v3, DINO).',
  )
  _require(
      ev.encoder != 'pretrained' or config.pretrained_workdir,
      'config.pretrained_workdir is empty; set it to the workdir of a pretraining run '
      '(or evaluate a baseline with --config.eval.encoder=random or pixels).',
  )
  _require_device_multiple(ev.batch_size, 'config.eval.batch_size', num_devices)
  _require(
      ev.max_examples >= 0, f'config.eval.max_examples={ev.max_examples} must be >= 0 (0 = all).'
  )
  _require(
      isinstance(ev.pca_dim, int) and ev.pca_dim >= 0,
      f'config.eval.pca_dim={ev.pca_dim!r} must be an integer >= 0 (0 = no PCA).',
  )
  _require(
      ev.linear_protocol in LINEAR_PROTOCOLS,
      f'config.eval.linear_protocol={ev.linear_protocol!r} is not known; use one of '
      f'{LINEAR_PROTOCOLS}.',
  )
  _require(
      config.mode != 'evaluate' or ev.linear_protocol == 'lbfgs',
      f'config.eval.linear_protocol={ev.linear_protocol!r} only applies to the older '
      '--config.mode=linear_eval; with --config.mode=evaluate set the protocol as '
      '--config.eval.protocol=linear_sgd (or linear: L-BFGS).',
  )
  protocol = evaluators.protocol(config)
  _require(
      protocol in evaluators.EVALUATORS,
      f'config.eval.protocol={protocol!r} is not known; use one of '
      f'{", ".join(evaluators.EVALUATORS)}.',
  )
  if not evaluators.trains(protocol):
    evaluators.get(protocol).validate(config)


def _validate_finetune_config(config, num_devices):
  ft = config.finetune
  _require(
      config.eval.encoder != 'pixels',
      f'config.eval.encoder=pixels has nothing to train in {config.mode} with SGD; use '
      '--config.eval.encoder=random for the from-scratch baseline, or the lbfgs linear '
      'protocol for raw pixels.',
  )
  _require(
      0 < ft.label_fraction <= 1,
      f'config.finetune.label_fraction={ft.label_fraction} must be in (0, 1] '
      '(SimCLR: 0.01, 0.1 or 1.0).',
  )
  last_part = models.num_encoder_parts(config.model) - 1
  _require(
      -1 <= ft.fine_tune_after_block <= last_part,
      f'config.finetune.fine_tune_after_block={ft.fine_tune_after_block} must be -1 '
      f'(fine-tune everything) or 0-{last_part} (freeze the encoder parts up to this one; '
      'ResNet: 0 is the stem, k stage k).',
  )
  _require(
      0 <= ft.keep_head_layers < config.model.head_layers,
      f'config.finetune.keep_head_layers={ft.keep_head_layers} must be in '
      f'[0, config.model.head_layers - 1 = {config.model.head_layers - 1}] (SimCLRv2: 1).',
  )
  _require(ft.epochs > 0, f'config.finetune.epochs={ft.epochs} must be > 0.')
  _require_device_multiple(ft.batch_size, 'config.finetune.batch_size', num_devices)
  _validate_schedule(ft, 'config.finetune.')
  _require(
      ft.optimizer in optim.FINETUNE_OPTIMIZERS,
      f'config.finetune.optimizer={ft.optimizer!r} is not known; use one of '
      f'{optim.FINETUNE_OPTIMIZERS} (momentum: linear evaluation; lars: fine-tuning).',
  )
  _require(0 <= ft.momentum < 1, f'config.finetune.momentum={ft.momentum} must be in [0, 1).')
