"""DINO (Caron et al. 2021): a student network is trained to match, over crops of one image, the
sharpened and centred output distribution of a teacher, an EMA of the student; no negatives.

As in the authors' code (facebookresearch/dino, main_dino.py and vision_transformer.py):
- the teacher sees the two global views, the student those and the local crops (multi-crop,
  config.augment.local_crops); each student crop is scored against each teacher view but its
  own: loss = mean over the 2V - 2 pairs of CE(softmax((t - c) / T_t), log_softmax(s / T_s));
- the centre c is an EMA (momentum 0.9) of the teacher's outputs, their mean over the global
  batch (all-reduced), updated after the loss, which uses the previous step's;
- T_t rises linearly per epoch from warmup_teacher_temperature over its epochs, then stays;
- crops of one size go through the encoder together (BatchNorm statistics over all of them),
  the teacher in training mode (batch statistics) without stochastic depth or dropout;
- the head is MLP -> L2 normalisation -> weight-normalised layer ('last_layer'), whose updates
  are skipped in the first freeze_last_layer_epochs (optim.frozen_for); gradients may be
  clipped per parameter (clip_grad).
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import optax

from simclr_jax import models
from simclr_jax.core import optim
from simclr_jax.core import train_state
from simclr_jax.core.sharding import batch_sharded
from simclr_jax.methods import core
from simclr_jax.methods import probe
from simclr_jax.methods import siamese
from simclr_jax.methods import simclr
from simclr_jax.models.heads import DINOHead

# The head's weight-normalised output layer, frozen in the first epoch(s).
LAST_LAYER = 'last_layer'


def default_config():
  """config.dino: the authors' ImageNet defaults (configs/*_dino.py)."""
  c = ml_collections.ConfigDict()
  c.hidden_dim = 2048  # The head's MLP width.
  c.bottleneck_dim = 256  # Its output, L2-normalised before the last layer.
  c.output_dim = 65536  # K, the last layer's outputs (prototypes).
  c.head_layers = 3  # Dense layers before the last one.
  c.use_bn_in_head = False  # BatchNorm after the hidden dense layers (their ResNet-50 run).
  c.norm_last_layer = True  # Last layer's gain fixed at 1 (False: learned; ViT-S).
  c.student_temperature = 0.1
  c.teacher_temperature = 0.04  # T_t after the warm-up.
  c.warmup_teacher_temperature = 0.04  # T_t in epoch 1, rising linearly.
  c.warmup_teacher_temperature_epochs = 0  # 0: T_t = teacher_temperature throughout.
  c.centre_momentum = 0.9
  c.base_ema = 0.996  # The teacher's EMA decay at step 0, rising to 1 (cosine).
  c.freeze_last_layer_epochs = 1.0  # Epochs without updates of the last layer.
  c.clip_grad = 0.0  # Per-parameter gradient norm bound; 0 = no clipping.
  # Weight decay at the end of a cosine from config.weight_decay (their ViTs: 0.04 -> 0.4);
  # < 0: config.weight_decay throughout.
  c.weight_decay_end = -1.0
  return c


def teacher_temperature(step, *, steps_per_epoch, warmup, final, warmup_epochs):
  """T_t of the epoch of `step`: numpy's linspace(warmup, final, warmup_epochs) over the first
  warmup_epochs epochs, then `final`."""
  if warmup_epochs <= 0:
    return jnp.float32(final)
  epoch = jnp.asarray(step, jnp.float32) // steps_per_epoch
  rising = warmup + (final - warmup) * epoch / max(warmup_epochs - 1, 1)
  return jnp.where(epoch < warmup_epochs, rising, final).astype(jnp.float32)


def dino_loss(student, teacher, centre, student_temperature, teacher_temperature):
  """DINO's loss of student outputs [n, V, K] (the 2 global crops first) against teacher
  outputs [n, 2, K] of the global crops; returns (loss, metrics)."""
  student, teacher = models.at_least_float32(student), models.at_least_float32(teacher)
  targets = jax.nn.softmax((teacher - centre) / teacher_temperature, axis=-1)
  log_probs = jax.nn.log_softmax(student / student_temperature, axis=-1)
  # cross_entropy[i, v]: teacher view i against student crop v, averaged over the batch.
  cross_entropy = -jnp.einsum('nik,nvk->iv', targets, log_probs) / student.shape[0]
  num_crops = student.shape[1]
  not_same = 1.0 - jnp.eye(2, num_crops, dtype=cross_entropy.dtype)
  loss = jnp.sum(cross_entropy * not_same) / (2 * num_crops - 2)
  entropy = -jnp.sum(targets * jnp.log(jnp.maximum(targets, 1e-30)), axis=-1).mean()
  return loss, {'dino_loss': loss, 'teacher_entropy': entropy}


def updated_centre(centre, teacher, momentum):
  """The centre's EMA towards the mean teacher output over the (global) batch and both views."""
  batch_centre = jnp.mean(models.at_least_float32(teacher), axis=(0, 1))
  return momentum * centre + (1.0 - momentum) * batch_centre


def crops_forward(variables, crops, *, model, mesh, method=None, dropout_rng=None):
  """`model` on crops [n, V, H, W, C] of one size, all in one batch (BatchNorm statistics over
  the n V crops, as DINO's multi-crop wrapper); returns (outputs [n, V, ...], batch_stats)."""
  n, num_crops = crops.shape[:2]
  images = jax.lax.with_sharding_constraint(
      crops.reshape((n * num_crops,) + crops.shape[2:]), batch_sharded(mesh)
  )
  out, updates = model.apply(
      variables,
      images,
      train=True,
      mutable=['batch_stats'],
      method=method,
      rngs={} if dropout_rng is None else {'dropout': dropout_rng},
  )
  out = jax.tree.map(lambda x: x.reshape((n, num_crops) + x.shape[1:]), out)
  return out, updates.get('batch_stats', {})  # {}: a model without BatchNorm.


def train_step(
    state: train_state.TrainState,
    batch,
    *,
    student,
    teacher,
    tx,
    schedule,
    ema_schedule,
    temperature_schedule,
    student_temperature,
    centre_momentum,
    mesh,
    augment=None,
    weight_decay=0.0,
    dropout_seed=0,
):
  """One step: the teacher on the global views, the student on every crop, the update, then
  the teacher's EMA towards the new student and the centre's towards this batch."""
  if augment is not None:
    batch = augment(batch)
  global_rng, local_rng = jax.random.split(train_state.step_rng(dropout_seed, state.step))
  target, centre = state.method_state['target'], state.method_state['centre']
  forward = functools.partial(crops_forward, mesh=mesh)
  teacher_out, teacher_stats = forward(target, batch['views'], model=teacher, method='project')
  teacher_z = jax.lax.stop_gradient(teacher_out['z'])
  temperature = temperature_schedule(state.step)

  def loss_fn(params):
    out, batch_stats = forward(
        {'params': params, 'batch_stats': state.batch_stats},
        batch['views'],
        model=student,
        dropout_rng=global_rng,
    )
    student_z = out['z']
    if 'local_views' in batch:
      local, batch_stats = forward(
          {'params': params, 'batch_stats': batch_stats},
          batch['local_views'],
          model=student,
          method='project',
          dropout_rng=local_rng,
      )
      student_z = jnp.concatenate([student_z, local['z']], axis=1)
    loss, metrics = dino_loss(student_z, teacher_z, centre, student_temperature, temperature)
    if 'probe_logits' in out:
      loss, probe_metrics = probe.add_loss(
          loss, params, out['probe_logits'], batch.get('label'), weight_decay
      )
      metrics.update(probe_metrics)
    metrics['loss'] = loss
    return loss, (metrics, batch_stats)

  (loss, (metrics, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  tau = ema_schedule(state.step)
  method_state = {
      'target': {
          'params': siamese.ema_update(target['params'], params, tau),
          'batch_stats': teacher_stats,
      },
      'centre': updated_centre(centre, teacher_z, centre_momentum),
  }
  metrics.update(learning_rate=schedule(state.step), ema_decay=tau, teacher_temperature=temperature)
  new_state = state.replace(
      step=state.step + 1,
      params=params,
      batch_stats=batch_stats,
      opt_state=opt_state,
      method_state=method_state,
  )
  return train_state.only_if_finite(loss, grads, new_state, state, metrics)


def teacher_of(student):
  """The student's networks without stochastic depth or dropout (the authors' teacher)."""
  encoder = student.encoder
  rates = {k: 0.0 for k in ('dropout', 'drop_path') if hasattr(encoder, k)}
  return student.clone(encoder=encoder.clone(**rates), num_classes=0)


def _last_layer_labels(params):
  return jax.tree_util.tree_map_with_path(
      lambda path, _: LAST_LAYER if LAST_LAYER in optim.names(path) else 'rest', params
  )


class DINO(core.Method):
  """DINO with its head (config.dino), multi-crop and the online probe."""

  uses_local_crops = True

  def validate(self, num_devices):
    del num_devices
    siamese.validate_section(
        self.config,
        'dino',
        'configs/cifar10_dino.py or configs/imagenet_dino.py',
        ('hidden_dim', 'bottleneck_dim', 'output_dim', 'head_layers'),
    )
    c = self.config.dino
    for name in ('student_temperature', 'teacher_temperature', 'warmup_teacher_temperature'):
      if not c[name] > 0:
        raise ValueError(f'config.dino.{name}={c[name]} must be > 0 (e.g. 0.1 and 0.04).')
    for name in ('base_ema', 'centre_momentum'):
      if not 0 <= c[name] <= 1:
        raise ValueError(f'config.dino.{name}={c[name]} must be in [0, 1] (e.g. 0.996, 0.9).')
    for name in ('warmup_teacher_temperature_epochs', 'freeze_last_layer_epochs', 'clip_grad'):
      if not c[name] >= 0:
        raise ValueError(f'config.dino.{name}={c[name]} must be >= 0 (0: off).')

  @property
  def steps_per_epoch(self) -> int:
    """Steps in an epoch of the pretraining split (for the per-epoch schedules)."""
    if not self.num_examples:
      raise ValueError('DINO counts epochs: give methods.get the number of training examples.')
    return max(self.num_examples // self.config.batch_size, 1)

  def create_model(self, num_classes):
    config, c = self.config, self.config.dino
    dtype = models.DTYPES[config.dtype]
    return siamese.SiameseModel(
        encoder=models.create_encoder(
            config.model, image_size=config.image_size, dtype=dtype, remat=config.remat
        ),
        head=DINOHead(
            hidden_dim=c.hidden_dim,
            bottleneck_dim=c.bottleneck_dim,
            output_dim=c.output_dim,
            num_layers=c.head_layers,
            use_bn=c.use_bn_in_head,
            norm_last_layer=c.norm_last_layer,
            bn_momentum=config.model.bn_momentum,
            bn_epsilon=config.model.bn_epsilon,
            dtype=dtype,
            name='head',
        ),
        num_classes=num_classes,
    )

  def create_optimizer(self, schedule):
    config, c = self.config, self.config.dino
    decay = None
    if c.weight_decay_end >= 0:
      total_steps = optim.total_train_steps(config, self.num_examples)
      decay = optim.cosine_between(config.weight_decay, c.weight_decay_end, total_steps)
    tx = simclr.create_optimizer(config, schedule, decay)
    frozen_steps = int(c.freeze_last_layer_epochs * self.steps_per_epoch)
    if frozen_steps:
      # The last layer's own optimiser starts at step frozen_steps: its schedules from there.
      shifted = lambda fn: fn if fn is None else (lambda count: fn(count + frozen_steps))
      last = optim.create_optimizer(config, shifted(schedule), weight_decay=shifted(decay))
      tx = optax.multi_transform(
          {'rest': tx, LAST_LAYER: optim.frozen_for(last, frozen_steps)}, _last_layer_labels
      )
    if c.clip_grad:
      tx = optax.chain(optim.clip_each_by_norm(c.clip_grad), tx)
    return tx

  def init_state(self, model, tx, rng):
    centre = jnp.zeros((self.config.dino.output_dim,), jnp.float32)
    return train_state.init_train_state(
        model,
        tx,
        rng,
        self.config.image_size,
        method_state=lambda variables: {**siamese.target_of(variables), 'centre': centre},
    )

  def make_train_step(self, model, tx, schedule, mesh, total_steps):
    config, c = self.config, self.config.dino
    step_fn = functools.partial(
        train_step,
        student=model,
        teacher=teacher_of(model),
        tx=tx,
        schedule=schedule,
        ema_schedule=functools.partial(
            siamese.ema_decay, base_ema=c.base_ema, total_steps=total_steps
        ),
        temperature_schedule=functools.partial(
            teacher_temperature,
            steps_per_epoch=self.steps_per_epoch,
            warmup=c.warmup_teacher_temperature,
            final=c.teacher_temperature,
            warmup_epochs=c.warmup_teacher_temperature_epochs,
        ),
        student_temperature=c.student_temperature,
        centre_momentum=c.centre_momentum,
        mesh=mesh,
        augment=simclr.device_augment(config, mesh),
        weight_decay=config.weight_decay,
        dropout_seed=config.seed,
    )
    return train_state.jit_step(step_fn, mesh)
