r"""BYOL on CIFAR-10: ResNet-18, batch 256, LARS, 1000 epochs (solo-learn's CIFAR recipe).

Source: vturrisi/solo-learn, scripts/pretrain/cifar/byol.yaml and augmentations/asymmetric.yaml
(projector and predictor 4096 -> 256, tau 0.99 -> 1, LARS lr 1.0 at batch 256, eta 0.02,
weight decay 1e-5, classifier lr 0.1, 10 warm-up epochs; torchvision colour jitter 0.4, 0.4,
0.2, 0.1 with p 0.8, grayscale 0.2, no blur, solarisation only on the second view, p 0.2).
Differences: our LARS does not clip its lr (solo-learn's clip_lr), and the probe and kNN
monitor read h as for SimCLR.

Run:
  python -m simclr_jax.main --config=configs/cifar10_byol.py --workdir=/tmp/byol_cifar10 \
      --config.dataset=../shared/data/cifar10-jpeg

Expected result: 92.58% top-1 online linear accuracy after 1000 epochs (solo-learn README,
CIFAR-10 table, ResNet-18); `probe_accuracy` tracks it. Evaluate like a SimCLR run
(configs/cifar10_linear_eval.py with --config.pretrained_workdir).
Every knob not set here is documented in configs/cifar10.py.
"""

from simclr_jax.config_files import load_sibling_config
from simclr_jax.methods import byol


def get_config():
  """Returns the CIFAR-10 BYOL config."""
  config = load_sibling_config(__file__, 'cifar10')
  config.method = 'byol'
  config.byol = byol.default_config()
  config.byol.base_ema = 0.99  # solo-learn's CIFAR base_tau (the paper's ImageNet: 0.996).
  config.augment.color_jitter = (0.4, 0.4, 0.2, 0.1)  # torchvision-style maxima (b, c, s, h).
  config.augment.color_jitter_impl = 'simclrv2'  # torchvision's brightness is a factor.
  config.augment.blur_prob = 0.0  # No blur on 32x32 images (both views).
  config.augment.solarize_prob = 0.0  # First view: no solarisation.
  config.augment.second_view.solarize_prob = 0.2  # Second view: p 0.2.
  config.batch_size = 256  # solo-learn's batch.
  config.optimizer = 'lars'
  config.learning_rate = 1.0  # Base lr, linearly scaled: 1.0 * 256 / 256.
  config.lr_scaling = 'linear'
  config.weight_decay = 1e-5  # solo-learn's.
  config.lars_trust_coefficient = 0.02  # solo-learn's eta.
  config.warmup_epochs = 10.0
  config.num_epochs = 1000
  config.probe_learning_rate_scale = 0.1  # solo-learn's classifier lr 0.1 against lr 1.0.
  return config
