"""SimCLR pretraining in PyTorch for a wall-clock budget, then the encoder's features of both
splits: the accuracy reference of benchmarks/cifar10_cpu_budget.py --encoders=torch.

The recipe is the config's (benchmarks/torch_reference.py's network; the reference's
initialisation, LARS with the same decay and trust-ratio masks, warm-up + cosine, NT-Xent on the
reference's scale plus the online probe at probe_learning_rate_scale, the SimCLR augmentation
through torchvision), on an image folder root/<split>/<class>/<image>. The steps are set once
the first `calibration_steps` have run, so that the schedule ends within the budget counted
from this process's start, as the JAX side's calibration run does. A benchmark-only program
(needs the `torchvision` extra); the package never imports it:

  python benchmarks/torch_train.py CONFIG_JSON DATASET BUDGET_SEC OUTPUT.npz [THREADS WORKERS]

writes OUTPUT.npz (train/test features h and labels) and OUTPUT.json (steps, times, losses).
"""

import json
import math
import os
import sys
import time

START = time.perf_counter()

# pylint: disable=g-import-not-at-top,wrong-import-position
import ml_collections
import numpy as np
import torch
from torch import nn
import torch.nn.functional as F
from torchvision import datasets
from torchvision import transforms

import torch_reference


def reference_init(net):
  """The JAX models' initialisation: conv kernels VarianceScaling(1, fan_in, truncated normal),
  dense kernels N(0, 0.01); torch's BatchNorm defaults (and the zero last block scale) kept."""
  for module in net.modules():
    if isinstance(module, nn.Conv2d):
      fan_in = module.weight[0].numel()
      std = math.sqrt(1.0 / fan_in) / 0.87962566103423978  # Unit variance after truncation.
      nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
    elif isinstance(module, nn.Linear):
      nn.init.normal_(module.weight, std=0.01)
      if module.bias is not None:
        nn.init.zeros_(module.bias)


class LARS(torch.optim.Optimizer):
  """optax.lars: u = g + wd p; u *= eta ||p|| / ||u|| (1 if either norm is 0); m = lr u + mom m;
  p -= m. Groups with adapt=False (BatchNorm, biases, the probe) skip decay and trust ratio."""

  def __init__(self, groups, weight_decay, eta, momentum):
    super().__init__(groups, {'lr': 0.0, 'adapt': True, 'lr_scale': 1.0})
    self.weight_decay, self.eta, self.momentum = weight_decay, eta, momentum

  @torch.no_grad()
  def step(self):
    for group in self.param_groups:
      for p in group['params']:
        if p.grad is None:
          continue
        u = p.grad
        if group['adapt']:
          u = u.add(p, alpha=self.weight_decay)
          p_norm, u_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(u)
          ratio = torch.where(
              (p_norm > 0) & (u_norm > 0), self.eta * p_norm / u_norm, torch.ones_like(p_norm)
          )
          u = u * ratio
        state = self.state[p]
        if 'momentum' not in state:
          state['momentum'] = torch.zeros_like(p)
        m = state['momentum'].mul_(self.momentum).add_(u, alpha=group['lr'] * group['lr_scale'])
        p.sub_(m)


def param_groups(net, probe_lr_scale):
  adapted, plain, probe = [], [], []
  for name, p in net.named_parameters():
    if not p.requires_grad:
      continue
    if name.startswith('probe.'):
      probe.append(p)
    elif p.ndim > 1:  # Conv and dense kernels: decay and trust ratio, as decay_mask says.
      adapted.append(p)
    else:
      plain.append(p)
  return [
      {'params': adapted},
      {'params': plain, 'adapt': False},
      {'params': probe, 'adapt': False, 'lr_scale': probe_lr_scale},
  ]


def learning_rate(config, step, total_steps, num_examples):
  """simclr_jax.core.optim's warm-up + cosine at `step` (updates so far)."""
  batch = config.batch_size
  if config.lr_scaling == 'sqrt':
    peak = config.learning_rate * math.sqrt(batch)
  else:
    peak = config.learning_rate * batch / 256
  warmup = int(round(config.warmup_epochs * num_examples // batch))
  if step < warmup:
    return peak * step / max(warmup, 1)
  progress = min(max((step - warmup) / max(total_steps - warmup, 1), 0.0), 1.0)
  return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


def augmentation(augment, size):
  s = augment.color_strength
  return transforms.Compose(
      [
          transforms.RandomResizedCrop(
              size,
              scale=(augment.crop_area_min, augment.crop_area_max),
              ratio=(augment.aspect_ratio_min, augment.aspect_ratio_max),
          ),
          transforms.RandomHorizontalFlip(augment.flip_prob),
          transforms.RandomApply(
              [transforms.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)],
              p=augment.color_jitter_prob,
          ),
          transforms.RandomGrayscale(augment.grayscale_prob),
          transforms.ToTensor(),
      ]
  )


class TwoViews:

  def __init__(self, transform):
    self.transform = transform

  def __call__(self, image):
    return torch.stack([self.transform(image), self.transform(image)])


def loader(folder, transform, batch, shuffle, workers):
  return torch.utils.data.DataLoader(
      datasets.ImageFolder(folder, transform),
      batch_size=batch,
      shuffle=shuffle,
      drop_last=shuffle,
      num_workers=workers,
      persistent_workers=workers > 0,
  )


def train(config, dataset, budget_sec, workers, calibration_steps=20):
  """(network, run record): SimCLR pretraining whose schedule ends within budget_sec."""
  torch.manual_seed(config.seed)
  net = torch_reference.SimCLRNet(config.model, config.image_size)
  reference_init(net)
  net.train()
  optimizer = LARS(
      param_groups(net, config.probe_learning_rate_scale),
      config.weight_decay,
      config.lars_trust_coefficient,
      config.momentum,
  )
  # Pretraining views of config.pretrain_image_size (0: image_size), as simclr_jax's.
  views = TwoViews(
      augmentation(config.augment, config.get('pretrain_image_size', 0) or config.image_size)
  )
  data = loader(os.path.join(dataset, config.train_split), views, config.batch_size, True, workers)
  num_examples = len(data.dataset)
  total_steps, step, losses = None, 0, []
  while total_steps is None or step < total_steps:
    for images, labels in data:
      batch = images.shape[0]
      _, z, logits = net(images.transpose(0, 1).reshape((2 * batch,) + images.shape[2:]))
      # The reference's scale: mean over the anchors of view a plus that of view b.
      contrastive = 2 * torch_reference.nt_xent(z[:batch], z[batch:], config.temperature)
      probe = F.cross_entropy(logits, labels.repeat(2))
      optimizer.zero_grad(set_to_none=True)
      (contrastive + probe).backward()
      for group in optimizer.param_groups:
        group['lr'] = learning_rate(config, step, total_steps or 10**9, num_examples)
      optimizer.step()
      step += 1
      losses.append(contrastive.item())
      if step == calibration_steps:
        calibration_start = time.perf_counter()
      if step == 2 * calibration_steps:
        elapsed = time.perf_counter() - START
        steps_per_sec = calibration_steps / (time.perf_counter() - calibration_start)
        total_steps = step + int((budget_sec - elapsed) * steps_per_sec)
        print(
            f'{steps_per_sec:.2f} steps/s: {total_steps} steps fit {budget_sec:.0f} s', flush=True
        )
      if total_steps is not None and step >= total_steps:
        break
  return net, {
      'steps': step,
      'epochs': step * config.batch_size / num_examples,
      'calibrated_steps_per_sec': steps_per_sec,
      'pretrain_wall_sec': time.perf_counter() - START,
      'final_contrastive_loss': float(np.mean(losses[-20:])),
  }


@torch.no_grad()
def embed(net, folder, workers):
  net.eval()
  features, labels = [], []
  for images, y in loader(folder, transforms.ToTensor(), 500, False, workers):
    features.append(net(images)[0].numpy())
    labels.append(y.numpy())
  return np.concatenate(features), np.concatenate(labels)


def main(argv):
  config = ml_collections.ConfigDict(json.loads(argv[1]))
  dataset, budget_sec, output = argv[2], float(argv[3]), argv[4]
  torch.set_num_threads(int(argv[5]) if len(argv) > 5 else len(os.sched_getaffinity(0)))
  workers = int(argv[6]) if len(argv) > 6 else 1
  net, record = train(config, dataset, budget_sec, workers)
  start = time.perf_counter()
  train_x, train_y = embed(net, os.path.join(dataset, config.train_split), workers)
  test_x, test_y = embed(net, os.path.join(dataset, config.eval.split), workers)
  record['embed_sec'] = time.perf_counter() - start
  record['torch'] = torch.__version__
  record['threads'] = torch.get_num_threads()
  np.savez(output, train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y)
  with open(os.path.splitext(output)[0] + '.json', 'w') as f:
    json.dump(record, f, indent=2)
  print(json.dumps(record), flush=True)


if __name__ == '__main__':
  main(sys.argv)
