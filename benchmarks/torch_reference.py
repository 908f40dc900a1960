"""The SimCLR train step in PyTorch, as a speed reference for benchmarks/throughput.py (CPU).

Same network as simclr_jax.models for a config (ResNet v1 with CIFAR or ImageNet stem and
width multiplier, SimCLRv2 projection head, linear probe on the detached representation),
NT-Xent on both views, and a momentum-SGD update. A benchmark-only dependency: the package
never imports it. Run as a script in its own process (PyTorch and TensorFlow clash when loaded
together): `python benchmarks/torch_reference.py CONFIG_JSON STEPS WARMUP_STEPS [THREADS]` prints
images/s.
"""

import json
import statistics
import sys
import time

import ml_collections

import torch
from torch import nn
import torch.nn.functional as F


class BasicBlock(nn.Module):

  def __init__(self, cin, cout, stride):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(cout)
    self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(cout)
    nn.init.zeros_(self.bn2.weight)
    self.proj = None
    if stride != 1 or cin != cout:
      self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

  def forward(self, x):
    y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
    return F.relu(y + (x if self.proj is None else self.proj(x)))


class Bottleneck(nn.Module):

  def __init__(self, cin, filters, stride):
    super().__init__()
    cout = 4 * filters
    self.branch = nn.Sequential(
        nn.Conv2d(cin, filters, 1, bias=False),
        nn.BatchNorm2d(filters),
        nn.ReLU(),
        nn.Conv2d(filters, filters, 3, stride, 1, bias=False),
        nn.BatchNorm2d(filters),
        nn.ReLU(),
        nn.Conv2d(filters, cout, 1, bias=False),
        nn.BatchNorm2d(cout),
    )
    nn.init.zeros_(self.branch[-1].weight)
    self.proj = None
    if stride != 1 or cin != cout:
      self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

  def forward(self, x):
    return F.relu(self.branch(x) + (x if self.proj is None else self.proj(x)))


_STAGES = {
    'resnet18': ([2, 2, 2, 2], False),
    'resnet34': ([3, 4, 6, 3], False),
    'resnet50': ([3, 4, 6, 3], True),
    'resnet101': ([3, 4, 23, 3], True),
}


class SimCLRNet(nn.Module):
  """Encoder, projection head (SimCLRv2) and linear probe, as in simclr_jax.models."""

  def __init__(self, model_config, image_size, num_classes=10):
    super().__init__()
    stage_sizes, bottleneck = _STAGES[model_config.name]
    width = max(1, int(round(64 * model_config.width_multiplier)))
    if image_size <= 32:
      layers = [nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
    else:
      layers = [
          nn.Conv2d(3, width, 7, 2, 3, bias=False),
          nn.BatchNorm2d(width),
          nn.ReLU(),
          nn.MaxPool2d(3, 2, 1),
      ]
    channels = width
    for stage, num_blocks in enumerate(stage_sizes):
      filters = width * 2**stage
      for block in range(num_blocks):
        stride = 2 if stage > 0 and block == 0 else 1
        if bottleneck:
          layers.append(Bottleneck(channels, filters, stride))
          channels = 4 * filters
        else:
          layers.append(BasicBlock(channels, filters, stride))
          channels = filters
    self.encoder = nn.Sequential(*layers)
    head = []
    for i in range(model_config.head_layers):
      last = i == model_config.head_layers - 1
      out = model_config.head_output_dim if last else channels
      head += [nn.Linear(channels, out, bias=False), nn.BatchNorm1d(out)]
      if last:
        head[-1].bias.requires_grad_(False)  # Uncentred last BN, as in the reference.
      else:
        head.append(nn.ReLU())
    self.head = nn.Sequential(*head)
    self.probe = nn.Linear(channels, num_classes)

  def forward(self, images):
    h = self.encoder(images).mean(dim=(2, 3))
    return h, self.head(h), self.probe(h.detach())


def nt_xent(z1, z2, temperature):
  z = F.normalize(torch.cat([z1, z2]), dim=1)
  n = z1.shape[0]
  logits = z @ z.t() / temperature
  logits.fill_diagonal_(float('-inf'))
  targets = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
  return F.cross_entropy(logits, targets)


def images_per_sec(config, steps=10, warmup_steps=2, threads=None) -> float:
  """Median images/s of the PyTorch train step at config.batch_size on this CPU."""
  if threads:
    torch.set_num_threads(threads)
  torch.manual_seed(0)
  size, batch = config.image_size, config.batch_size
  net = SimCLRNet(config.model, size).train()
  params = [p for p in net.parameters() if p.requires_grad]
  optimizer = torch.optim.SGD(
      params, lr=0.1, momentum=config.momentum, weight_decay=config.weight_decay
  )
  views = torch.rand(2 * batch, 3, size, size)
  labels = torch.randint(0, 10, (2 * batch,))
  times = []
  for i in range(warmup_steps + steps):
    start = time.perf_counter()
    _, z, logits = net(views)
    loss = nt_xent(z[:batch], z[batch:], config.temperature) + F.cross_entropy(logits, labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if i >= warmup_steps:
      times.append(time.perf_counter() - start)
  return batch / statistics.median(times)


if __name__ == '__main__':
  print(
      images_per_sec(
          ml_collections.ConfigDict(json.loads(sys.argv[1])),
          steps=int(sys.argv[2]),
          warmup_steps=int(sys.argv[3]),
          threads=int(sys.argv[4]) if len(sys.argv) > 4 else None,
      )
  )
