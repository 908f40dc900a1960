"""The accelerator programs lower for GPU and TPU on this CPU-only machine.

jax.export lowers the pretraining step, the fine-tuning step and the feature extractor for
'cuda' and 'tpu' without such a device, so nothing CPU-only (a host callback, a CPU custom
call, the CPU patch-matmul convolutions) can enter the path an accelerator takes by default.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_config
from simclr_jax.evaluators import finetune
from simclr_jax import models
from simclr_jax.models import resnet
from simclr_jax.core import optim
from simclr_jax.core import train_state
from simclr_jax import methods
from simclr_jax.evaluators import features
from simclr_jax.core.sharding import batch_sharded, create_mesh, replicated

PLATFORMS = ('cuda', 'tpu')
SIZE, BATCH = 16, 8
# Custom-call targets that mean the same on every backend: the sharding annotations of the
# GSPMD partitioner. None is expected here (Shardy writes sdy ops instead); anything else,
# e.g. xla_ffi_python_cpu_callback or a lapack_* kernel, only exists on the CPU.
PORTABLE_CUSTOM_CALLS = frozenset({'Sharding', 'SPMDFullToShardShape', 'SPMDShardToFullShape'})
PROGRAMS = ('pretrain', 'pretrain_augment_on_device', 'pretrain_bfloat16', 'finetune', 'features')


def custom_call_targets(module_text: str) -> set[str]:
  """Targets of the custom calls in MLIR text, in pretty and in generic form."""
  return set(re.findall(r'custom_call @([\w.$-]+)', module_text)) | set(
      re.findall(r'call_target_name = "([^"]+)"', module_text)
  )


def tiny_config(platform: str, **overrides):
  """configs/cifar10.py at 1/8 width on 16-pixel images, conv_impl resolved for `platform`."""
  config = load_config('cifar10')
  config.model.conv_impl = resnet.conv_impl_for(config.model.conv_impl, platform)
  config.model.width_multiplier = 0.125
  config.image_size, config.batch_size = SIZE, BATCH
  config.update(overrides)
  return config


def abstract(tree, sharding):
  """ShapeDtypeStructs of `tree`'s leaves (arrays or shapes), placed by `sharding`."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def pretrain_program(config, mesh):
  """(jitted train step, abstract args) as train.train_and_evaluate builds them."""
  method = methods.get(config)
  model = method.create_model(10)
  schedule = optim.learning_rate_schedule(config, 1000, 10)
  tx = method.create_optimizer(schedule)
  state = jax.eval_shape(functools.partial(method.init_state, model, tx, jax.random.PRNGKey(0)))
  if config.augment_on_device:
    batch = {
        'image': jax.ShapeDtypeStruct((BATCH, SIZE, SIZE, 3), jnp.uint8),
        'seed': jax.ShapeDtypeStruct((BATCH, 2), jnp.uint32),
    }
  else:
    batch = {'views': jax.ShapeDtypeStruct((BATCH, 2, SIZE, SIZE, 3), jnp.float32)}
  batch['label'] = jax.ShapeDtypeStruct((BATCH,), jnp.int32)
  step = method.make_train_step(model, tx, schedule, mesh, 10)
  return step, (abstract(state, replicated(mesh)), abstract(batch, batch_sharded(mesh)))


def finetune_program(config, mesh):
  """(jitted fine-tuning step, abstract args) as finetune.finetune builds them."""
  settings = config.finetune
  model = models.create_classifier(
      config.model,
      image_size=SIZE,
      num_classes=10,
      fine_tune_after_block=settings.fine_tune_after_block,
      keep_head_layers=settings.keep_head_layers,
  )
  schedule = optim.warmup_cosine_schedule(0.1, 0, 10)
  tx = optim.create_finetune_optimizer(settings, schedule, models.encoder_part_of(config.model))
  state = jax.eval_shape(
      functools.partial(train_state.init_train_state, model, tx, jax.random.PRNGKey(0), SIZE)
  )
  batch = {
      'image': jax.ShapeDtypeStruct((BATCH, SIZE, SIZE, 3), jnp.float32),
      'label': jax.ShapeDtypeStruct((BATCH,), jnp.int32),
  }
  step = finetune.make_finetune_step(model, tx, schedule, mesh)
  return step, (abstract(state, replicated(mesh)), abstract(batch, batch_sharded(mesh)))


def features_program(config, mesh):
  """(jitted feature extractor of the pretrained encoder, abstract args)."""
  model = models.create_model(config.model, image_size=SIZE, num_classes=10)
  variables = jax.eval_shape(lambda: models.init_variables(model, jax.random.PRNGKey(0), SIZE))
  images = jax.ShapeDtypeStruct((BATCH, SIZE, SIZE, 3), jnp.float32)
  return (
      features.make_feature_fn(model, mesh, 'pretrained'),
      (abstract(variables, replicated(mesh)), abstract(images, batch_sharded(mesh))),
  )


def build(program: str, platform: str, mesh):
  if program == 'finetune':
    return finetune_program(tiny_config(platform), mesh)
  if program == 'features':
    return features_program(tiny_config(platform), mesh)
  overrides = {
      'pretrain_augment_on_device': {'augment_on_device': True},
      'pretrain_bfloat16': {'dtype': 'bfloat16'},
  }.get(program, {})
  return pretrain_program(tiny_config(platform, **overrides), mesh)


@pytest.fixture(scope='module')
def mesh():
  return create_mesh(jax.devices()[:1])


@pytest.fixture(
    scope='module',
    params=[(p, q) for p in PROGRAMS for q in PLATFORMS],
    ids=lambda param: '-'.join(param),
)
def exported(request, mesh):
  """(platform, jax.export.Exported) of one program exported for one platform."""
  program, platform = request.param
  fn, args = build(program, platform, mesh)
  return platform, jax.export.export(fn, platforms=(platform,))(*args)


def test_auto_conv_impl_is_xla_on_accelerators():
  assert load_config('cifar10').model.conv_impl == 'auto'
  assert [resnet.conv_impl_for('auto', p) for p in PLATFORMS] == ['xla', 'xla']
  assert resnet.conv_impl_for('auto', 'cpu') == 'matmul'


def test_exports_with_xla_convolutions_and_no_cpu_only_calls(exported):
  platform, exp = exported
  assert exp.platforms == (platform,)
  text = exp.mlir_module()
  # The default 'auto' gives the accelerator XLA's convolutions (cuDNN, the MXU).
  assert 'stablehlo.convolution' in text
  assert custom_call_targets(text) <= PORTABLE_CUSTOM_CALLS
  assert 'callback' not in text


def test_cpu_conv_impl_has_no_convolutions(mesh):
  # The CPU's resolution of 'auto' (patch matmuls) exported for a GPU: what the check above
  # would catch, were 'auto' to pick it there.
  fn, args = features_program(tiny_config('cpu'), mesh)
  text = jax.export.export(fn, platforms=('cuda',))(*args).mlir_module()
  assert 'stablehlo.convolution' not in text


def test_custom_call_targets_finds_host_callbacks():
  # The parser sees what a CPU-only program looks like in the text it is given.
  fn = jax.jit(lambda x: jax.pure_callback(np.sin, jax.ShapeDtypeStruct((4,), jnp.float32), x))
  text = fn.lower(jnp.zeros(4, jnp.float32)).as_text()
  targets = custom_call_targets(text)
  assert targets and not targets <= PORTABLE_CUSTOM_CALLS, targets
