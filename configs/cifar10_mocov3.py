r"""MoCo v3 on CIFAR-10: ResNet-18, batch 256, LARS, 1000 epochs (solo-learn's CIFAR recipe).

Source: vturrisi/solo-learn, scripts/pretrain/cifar/mocov3.yaml and augmentations/asymmetric.yaml
(projector and predictor 4096 -> 256, temperature 0.2, momentum 0.99 -> 1, LARS lr 0.3 at batch
256, eta 0.02, weight decay 1e-6, classifier lr 0.3, 10 warm-up epochs; the augmentation of
configs/cifar10_byol.py). Differences: the MLPs are the authors' (facebookresearch/moco-v3:
bias-free dense layers), our LARS does not clip its lr (solo-learn's clip_lr), and the probe and
kNN monitor read h as for SimCLR.

Run:
  python -m simclr_jax.main --config=configs/cifar10_mocov3.py --workdir=/tmp/mocov3_cifar10 \
      --config.dataset=../shared/data/cifar10-jpeg

Expected result: 93.10% top-1 online linear accuracy after 1000 epochs (solo-learn README,
CIFAR-10 table, ResNet-18); `probe_accuracy` tracks it. Evaluate like a SimCLR run
(configs/cifar10_linear_eval.py with --config.pretrained_workdir).
Every knob not set here is documented in configs/cifar10.py.
"""

from simclr_jax.config_files import load_sibling_config
from simclr_jax.methods import mocov3


def get_config():
  """Returns the CIFAR-10 MoCo v3 config: BYOL's CIFAR augmentation and schedule."""
  config = load_sibling_config(__file__, 'cifar10_byol')
  del config['byol']
  config.method = 'mocov3'
  config.mocov3 = mocov3.default_config()  # ResNet MLPs, 4096 -> 256.
  config.mocov3.temperature = 0.2  # solo-learn's CIFAR temperature.
  config.mocov3.base_ema = 0.99  # solo-learn's base_tau.
  config.learning_rate = 0.3  # Base lr, linearly scaled: 0.3 * 256 / 256.
  config.weight_decay = 1e-6
  config.lars_trust_coefficient = 0.02  # solo-learn's eta.
  config.probe_learning_rate_scale = 1.0  # solo-learn's classifier lr 0.3, as the lr.
  return config
