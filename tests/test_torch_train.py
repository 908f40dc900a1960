"""benchmarks/torch_train.py, the PyTorch accuracy reference, against the JAX side: its LARS
step equals optax.lars with the package's masks, its learning rate our schedule, its
initialisation the reference's. Runs where torch and torchvision are installed (the
`torchvision` extra), else skips."""

import os
import sys

import ml_collections
import numpy as np
import optax
import pytest

from simclr_jax.core import optim

pytest.importorskip('torch')
pytest.importorskip('torchvision')
import torch  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), 'benchmarks'))
import torch_reference  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
import torch_train  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position


def test_lars_step_equals_optax_lars():
  rng = np.random.default_rng(7)
  shapes = {'kernel': (3, 3, 4, 8), 'dense_kernel': (8, 5), 'bias': (8,), 'zero_kernel': (4, 4)}
  params = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
  params['zero_kernel'][:] = 0  # ||p|| = 0: trust ratio 1, as optax.
  mask = {k: v.ndim > 1 for k, v in params.items()}
  lrs = [0.0, 0.7, 0.3, 1.1]
  weight_decay, eta, momentum = 1e-2, 1e-3, 0.9
  tx = optax.lars(
      lambda step: np.asarray(lrs)[step],
      weight_decay=weight_decay,
      weight_decay_mask=mask,
      trust_coefficient=eta,
      trust_ratio_mask=mask,
      momentum=momentum,
  )
  jax_params, state = dict(params), tx.init(params)
  torch_params = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in params.items()}
  groups = [
      {'params': [p for k, p in torch_params.items() if mask[k]]},
      {'params': [p for k, p in torch_params.items() if not mask[k]], 'adapt': False},
  ]
  optimizer = torch_train.LARS(groups, weight_decay, eta, momentum)
  for lr in lrs:
    grads = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()}
    updates, state = tx.update(grads, state, jax_params)
    jax_params = optax.apply_updates(jax_params, updates)
    for k, p in torch_params.items():
      p.grad = torch.tensor(grads[k])
    for group in optimizer.param_groups:
      group['lr'] = lr
    optimizer.step()
    for k, p in torch_params.items():
      np.testing.assert_allclose(p.detach().numpy(), jax_params[k], rtol=1e-5, atol=1e-6)
  # The parameters moved: the comparison was not of two no-ops.
  assert not np.allclose(jax_params['kernel'], params['kernel'], atol=1e-4)


def test_learning_rate_equals_the_package_schedule():
  config = ml_collections.ConfigDict(
      {
          'batch_size': 128,
          'learning_rate': 0.075,
          'lr_scaling': 'sqrt',
          'warmup_epochs': 0.2,
      }
  )
  total, examples = 900, 50_000
  schedule = optim.learning_rate_schedule(config, examples, total)
  for step in [0, 1, 40, 77, 78, 79, 500, 899, 900, 950]:
    np.testing.assert_allclose(
        torch_train.learning_rate(config, step, total, examples),
        float(schedule(step)),
        rtol=1e-5,
        atol=1e-6,
    )
  config.lr_scaling = 'linear'
  schedule = optim.learning_rate_schedule(config, examples, total)
  np.testing.assert_allclose(
      torch_train.learning_rate(config, 300, total, examples), float(schedule(300)), rtol=1e-5
  )


def test_reference_initialisation():
  torch.manual_seed(3)
  model = ml_collections.ConfigDict(
      {
          'name': 'resnet18',
          'width_multiplier': 0.5,
          'head_layers': 3,
          'head_output_dim': 64,
      }
  )
  net = torch_reference.SimCLRNet(model, 32)
  torch_train.reference_init(net)
  conv = net.encoder[3].conv2.weight.detach().numpy()  # 3x3, 32 -> 32: fan-in 288.
  std = np.sqrt(1 / 288)
  assert abs(conv.std() / std - 1) < 0.05
  assert np.abs(conv).max() <= 2 * std / 0.87962566 + 1e-6
  dense = net.head[0].weight.detach().numpy()
  assert abs(dense.std() / 0.01 - 1) < 0.05
