"""export --format=torch: the state_dict, loaded by the model card's own lines into torchvision's
ResNet, gives our h. With the `torchvision` extra installed (README, "Exporting the encoder")
the lines run against the real torchvision; with PyTorch alone (the `torch_reference` extra,
whose torch build PyPI's torchvision does not load beside), against an independent PyTorch
ResNet written here from torchvision's definition (the same module names and structure), put in
torchvision's place. SIMCLR_REQUIRE_TORCHVISION=1 makes the real one a requirement."""

import importlib.util
import os
import sys
import types

import jax
import numpy as np
import pytest

from conftest import load_config
from simclr_jax import export
from simclr_jax import models
from simclr_jax.core.sharding import run_once

if os.environ.get('SIMCLR_REQUIRE_TORCHVISION') == '1':
  import torchvision  # noqa: F401  An error here, not a skip.
torch = pytest.importorskip('torch')
nn = torch.nn


class _BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, inplanes, planes, stride, downsample):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = downsample

  def forward(self, x):
    y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
    return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class _Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, inplanes, planes, stride, downsample):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)  # Stride here (v1.5).
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * 4)
    self.downsample = downsample

  def forward(self, x):
    y = torch.relu(self.bn1(self.conv1(x)))
    y = self.bn3(self.conv3(torch.relu(self.bn2(self.conv2(y)))))
    return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class _ResNet(nn.Module):
  """torchvision.models.ResNet's structure: a projection only where the shape changes."""

  def __init__(self, block, layers):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    inplanes = 64
    for i, blocks in enumerate(layers):
      planes, stride = 64 * 2**i, 1 if i == 0 else 2
      stage = []
      for b in range(blocks):
        downsample = None
        if b == 0 and (stride != 1 or inplanes != planes * block.expansion):
          downsample = nn.Sequential(
              nn.Conv2d(inplanes, planes * block.expansion, 1, stride, bias=False),
              nn.BatchNorm2d(planes * block.expansion),
          )
        stage.append(block(inplanes, planes, stride if b == 0 else 1, downsample))
        inplanes = planes * block.expansion
      setattr(self, f'layer{i + 1}', nn.Sequential(*stage))
    self.fc = nn.Linear(inplanes, 1000)

  def forward(self, x):
    x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
    for i in range(4):
      x = getattr(self, f'layer{i + 1}')(x)
    return self.fc(torch.flatten(x.mean((2, 3)), 1))


def _torchvision():
  """torchvision if installed, else a stand-in whose models are _ResNet."""
  if importlib.util.find_spec('torchvision') is not None:
    import torchvision  # pylint: disable=g-import-not-at-top

    return torchvision
  stand_in = types.ModuleType('torchvision')
  stand_in.models = types.SimpleNamespace(
      resnet18=lambda: _ResNet(_BasicBlock, [2, 2, 2, 2]),
      resnet50=lambda: _ResNet(_Bottleneck, [3, 4, 6, 3]),
  )
  return stand_in


@pytest.mark.parametrize(
    'name,image_size,bn_epsilon',
    [
        ('resnet18', 32, 1e-5),  # CIFAR stem; the reference layout's layer1.0 projection.
        ('resnet50', 64, 1e-3),  # ImageNet stem, TF's max-pool padding, another epsilon.
    ],
)
def test_model_card_lines_load_the_state_dict_into_torchvisions_resnet(
    tmp_path, monkeypatch, name, image_size, bn_epsilon
):
  config = load_config('cifar10')
  config.model.name, config.image_size, config.model.bn_epsilon = name, image_size, bn_epsilon
  config.model.conv_impl = 'xla'
  model = models.create_model(config.model, image_size=image_size)
  rng = np.random.default_rng(0)

  variables = jax.device_get(
      run_once(lambda: models.init_variables(model, jax.random.PRNGKey(0), image_size))
  )
  # Every BatchNorm away from its initial values (the zeroed last scales would hide blocks).
  noise = lambda x: x + 0.2 * rng.standard_normal(x.shape).astype(np.float32)
  variables = {
      'params': {
          'encoder': jax.tree_util.tree_map_with_path(
              lambda path, x: x if path[-1].key == 'kernel' else noise(x),
              variables['params']['encoder'],
          )
      },
      'batch_stats': {
          'encoder': jax.tree.map(
              lambda x: np.abs(noise(x)) + 0.1, variables['batch_stats']['encoder']
          )
      },
  }
  images = rng.uniform(size=(3, image_size, image_size, 3)).astype(np.float32)
  h = np.asarray(
      run_once(lambda v, x: model.apply(v, x, train=False, method='encode'), variables, images)
  )

  path = tmp_path / 'encoder.safetensors'
  path.write_bytes(export.serialize(export.exported_variables(variables), config, 7, 'torch'))
  card = export.model_card(str(tmp_path), variables, config, 7, 'torch', str(path))
  code = card.split('```python\n')[1].split('```')[0]
  monkeypatch.setitem(sys.modules, 'torchvision', _torchvision())
  monkeypatch.chdir(tmp_path)
  namespace = {'images': torch.from_numpy(images.transpose(0, 3, 1, 2).copy())}
  with torch.no_grad():
    exec(code, namespace)  # pylint: disable=exec-used
  torch_h = namespace['h'].numpy()
  assert torch_h.shape == h.shape
  np.testing.assert_allclose(torch_h, h, rtol=0, atol=1e-4 * np.abs(h).max())
  if name == 'resnet50':  # Not blind: torchvision's own max-pool padding gives another h.
    namespace['model'].maxpool = nn.MaxPool2d(3, 2, 1)
    with torch.no_grad():
      other = namespace['model'](namespace['images']).numpy()
    assert np.abs(other - h).max() > 1e-2 * np.abs(h).max()


def test_refusals_are_named(pretrained_workdir, tmp_path):
  with pytest.raises(ValueError, match=r'must end with .safetensors for --format=torch'):
    export.export(str(pretrained_workdir), str(tmp_path / 'e.pt'), 'torch')
  with pytest.raises(ValueError, match=r'needs config.model.width_multiplier=1: torchvision'):
    export.export(str(pretrained_workdir), str(tmp_path / 'e.safetensors'), 'torch')
  assert not list(tmp_path.iterdir())
