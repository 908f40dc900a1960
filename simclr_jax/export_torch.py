"""The ResNet encoder as a torchvision state_dict (export --format=torch), and the lines that
load it into torchvision.models.resnetNN.

Our parameter names map onto torchvision's one to one: stem_conv/stem_bn -> conv1/bn1,
stageS_blockB -> layerS.(B-1), Conv_i/BatchNorm_i -> conv(i+1)/bn(i+1), proj_conv/proj_bn ->
downsample.0/1; kernels go from HWIO to OIHW. Where the architectures differ, the loading lines
change torchvision's module instead:
- the CIFAR stem: a 3x3 stride-1 conv1 and no max-pool;
- the ImageNet stem's max-pool: ours pads as TF's 'SAME' (on an even input, one row and column
  after, none before); torchvision's pads one on each side;
- the reference shortcut layout of ResNet-18/34: a projection in layer1.0, which torchvision's
  BasicBlock has only where the shape changes (the bottleneck ResNets have it in both layouts);
- a BatchNorm epsilon other than PyTorch's 1e-5.
"""

import math
import re

import jax
import numpy as np

# torchvision.models constructors of our encoders (resnet200 has none).
TORCHVISION = ('resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet152')
_BN = {'scale': 'weight', 'bias': 'bias', 'mean': 'running_mean', 'var': 'running_var'}
_MODULES = {
    'stem_conv': 'conv1',
    'stem_bn': 'bn1',
    'proj_conv': 'downsample.0',
    'proj_bn': 'downsample.1',
}


def check_exportable(config):
  """Raises ValueError naming why torchvision cannot hold this run's encoder."""
  m = config.model
  if m.name not in TORCHVISION:
    raise ValueError(
        f'--format=torch exports ResNets that torchvision.models builds ({", ".join(TORCHVISION)});'
        f' this run trained {m.name}. Use --format=npz, msgpack or savedmodel.'
    )
  if m.width_multiplier != 1:
    raise ValueError(
        f'--format=torch needs config.model.width_multiplier=1: torchvision.models.{m.name} has '
        f'fixed widths, and this run trained width {m.width_multiplier}. Use --format=npz, '
        'msgpack or savedmodel.'
    )


def _torch_name(path):
  """Our encoder path ('stage1_block1/Conv_0') -> torchvision's module ('layer1.0.conv1')."""
  out = []
  for part in path:
    block = re.fullmatch(r'stage(\d+)_block(\d+)', part)
    layer = re.fullmatch(r'(Conv|BatchNorm)_(\d+)', part)
    if block:
      out.append(f'layer{block[1]}.{int(block[2]) - 1}')
    elif layer:
      out.append(f'{"conv" if layer[1] == "Conv" else "bn"}{int(layer[2]) + 1}')
    else:
      out.append(_MODULES[part])
  return '.'.join(out)


def state_dict(variables) -> dict:
  """{torchvision name: float32 array} of the encoder in `variables` ({'params', 'batch_stats'}
  of the whole model), with each BatchNorm's num_batches_tracked (0) as torchvision has it."""
  out = {}
  collections = (variables['params']['encoder'], variables['batch_stats']['encoder'])
  for tree in collections:
    for path, value in jax.tree_util.tree_leaves_with_path(tree):
      *module, leaf = (k.key for k in path)
      name = _torch_name(module)
      value = np.asarray(value, np.float32)
      if leaf == 'kernel':
        out[f'{name}.weight'] = np.ascontiguousarray(value.transpose(3, 2, 0, 1))
      else:
        out[f'{name}.{_BN[leaf]}'] = value
        out[f'{name}.num_batches_tracked'] = np.zeros((), np.int64)
  return out


def _stem_pool_padding(image_size: int):
  """(before, after) padding of TF 'SAME' 3x3 stride-2 max-pooling after the 7x7 stride-2 stem
  conv (padding 3), whose output side is ceil(image_size / 2)."""
  side = math.ceil(image_size / 2)
  total = max((math.ceil(side / 2) - 1) * 2 + 3 - side, 0)
  return total // 2, total - total // 2


def loading_lines(config, path: str) -> str:
  """Python that builds torchvision's model, adapts it to this run's encoder, and loads `path`."""
  m = config.model
  lines = [
      'import torch, torchvision',
      'from safetensors.torch import load_file',
      f'model = torchvision.models.{m.name}()',
      'model.fc = torch.nn.Identity()  # h: the pooled representation, as exported.',
  ]
  if config.image_size <= 32:
    lines += [
        '# The CIFAR stem: a 3x3 stride-1 conv and no max-pool.',
        'model.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)',
        'model.maxpool = torch.nn.Identity()',
    ]
  else:
    before, after = _stem_pool_padding(config.image_size)
    if (before, after) != (1, 1):
      lines += [
          "# The stem's max-pool pads as TensorFlow's 'SAME' does at this image size.",
          'model.maxpool = torch.nn.Sequential(',
          f"    torch.nn.ConstantPad2d(({before}, {after}, {before}, {after}), float('-inf')),",
          '    torch.nn.MaxPool2d(3, 2))',
      ]
  if m.get('shortcut', 'torchvision') == 'reference' and m.name in ('resnet18', 'resnet34'):
    lines += [
        '# The reference layout: a projection shortcut in the first block, too.',
        'model.layer1[0].downsample = torch.nn.Sequential(',
        '    torch.nn.Conv2d(64, 64, 1, bias=False), torch.nn.BatchNorm2d(64))',
    ]
  if m.bn_epsilon != 1e-5:
    lines += [
        'for module in model.modules():',
        '  if isinstance(module, torch.nn.BatchNorm2d):',
        f'    module.eps = {m.bn_epsilon}',
    ]
  lines += [
      f"model.load_state_dict(load_file('{path}'))",
      'model.eval()',
      '# images: float [N, 3, S, S] in [0, 1] (channels first; no mean/std normalisation).',
      'h = model(images)',
  ]
  return '\n'.join(lines)
