"""methods/: a new method is one class and one registry entry; pretraining then runs it with
the shared data, optimiser, checkpoints, monitors and loop."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
import pytest

from conftest import tiny_config
from simclr_jax import methods
from simclr_jax import train
from simclr_jax.core import train_state
from simclr_jax.methods import core
from simclr_jax.core.sharding import batch_sharded, replicated


class _ToyEncoder(nn.Module):

  @nn.compact
  def __call__(self, images, train: bool):
    x = nn.Dense(8)(images.reshape(images.shape[0], -1))
    return nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)


class _ToyModel(nn.Module):
  encoder: nn.Module

  def __call__(self, images, train: bool):
    return self.encoder(images, train=train)

  def encode(self, images, train: bool = False):
    return self.encoder(images, train=train)


class ViewAgreement(core.Method):
  """A toy method: pull the two views' embeddings together (cosine), nothing against collapse."""

  def create_model(self, num_classes):
    return _ToyModel(_ToyEncoder())

  def make_train_step(self, model, tx, schedule, mesh, total_steps):
    def loss_fn(params, batch_stats, views):
      n = views.shape[0]
      h, updates = model.apply(
          {'params': params, 'batch_stats': batch_stats},
          views.reshape((2 * n,) + views.shape[2:]),
          train=True,
          mutable=['batch_stats'],
      )
      h = h.reshape(n, 2, -1)
      h = h / jnp.linalg.norm(h, axis=-1, keepdims=True)
      loss = 1 - jnp.mean(jnp.sum(h[:, 0] * h[:, 1], axis=-1))
      return loss, updates['batch_stats']

    def step(state, batch):
      (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
          state.params, state.batch_stats, batch['views']
      )
      updates, opt_state = tx.update(grads, state.opt_state, state.params)
      new_state = state.replace(
          step=state.step + 1,
          params=optax.apply_updates(state.params, updates),
          batch_stats=batch_stats,
          opt_state=opt_state,
      )
      return train_state.only_if_finite(loss, grads, new_state, state, {'agreement_loss': loss})

    return jax.jit(
        step,
        in_shardings=(replicated(mesh), batch_sharded(mesh)),
        out_shardings=(replicated(mesh), replicated(mesh)),
        donate_argnums=(0,),
    )


def test_a_registered_method_pretrains_with_the_shared_core(monkeypatch, cifar10_subset, tmp_path):
  monkeypatch.setitem(core.METHODS, 'agreement', f'{__name__}:ViewAgreement')
  config = tiny_config(cifar10_subset)
  config.method, config.num_train_steps = 'agreement', 4
  state = train.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == 4
  records = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
  assert [r['step'] for r in records] == [2, 4]
  assert all(0 <= r['agreement_loss'] <= 2 for r in records)
  assert 0 <= records[-1]['knn_top1'] <= records[-1]['knn_top5'] <= 1  # The kNN monitor.
  assert sorted(p.name for p in (tmp_path / 'checkpoints').iterdir()) == ['2', '4']
  # Run again: it finds the run complete at step 4, as for SimCLR.
  assert int(train.train_and_evaluate(config, str(tmp_path)).step) == 4


def test_unknown_method_is_refused_naming_the_registered_ones(cifar10_subset):
  config = tiny_config(cifar10_subset)
  config.method = 'swav'
  with pytest.raises(
      ValueError, match=r"config.method='swav' is not known; use one of simclr, byol"
  ):
    train.train_and_evaluate(config, '/nonexistent/never/written')
  assert type(methods.get(tiny_config(cifar10_subset))).__name__ == 'SimCLR'
