r"""DINO on CIFAR-10: ResNet-18, batch 256, LARS, 1000 epochs (solo-learn's CIFAR recipe).

Source: vturrisi/solo-learn, scripts/pretrain/cifar/dino.yaml, augmentations/asymmetric.yaml and
solo/methods/dino.py (head 2048 wide to a 256 bottleneck and 4096 prototypes, last layer's gain
fixed, no BN in the head; student T 0.1, teacher T 0.07 from the start; tau 0.9995 -> 1; last
layer frozen for 1 epoch; no gradient clipping; LARS lr 0.3 at batch 256, eta 0.02, weight
decay 1e-6, classifier lr 0.1, 10 warm-up epochs; two 32-pixel views, torchvision colour jitter
0.4, 0.4, 0.2, 0.1 with p 0.8, grayscale 0.2, no blur, solarisation only on the second view,
p 0.2; no local crops). Differences: our LARS does not clip its lr (solo-learn's clip_lr);
evaluation reads the student's encoder (as solo-learn's online and offline linear; the DINO
authors evaluate the teacher: --config.eval.weights=target).
Multi-crop: add e.g. --config.augment.local_crops.number=6 (16-pixel crops of area 0.05-0.4,
blur as the first view), which solo-learn's CIFAR run does not use.

Run:
  python -m simclr_jax.main --config=configs/cifar10_dino.py --workdir=/tmp/dino_cifar10 \
      --config.dataset=../shared/data/cifar10-jpeg

Expected result: 89.52% top-1 online linear accuracy after 1000 epochs (solo-learn README,
CIFAR-10 table, ResNet-18); `probe_accuracy` tracks it. Evaluate like a SimCLR run
(configs/cifar10_linear_eval.py with --config.pretrained_workdir).
Every knob not set here is documented in configs/cifar10.py.
"""

from simclr_jax.config_files import load_sibling_config
from simclr_jax.methods import dino


def get_config():
  """Returns the CIFAR-10 DINO config: BYOL's CIFAR augmentation and schedule."""
  config = load_sibling_config(__file__, 'cifar10_byol')
  del config['byol']
  config.method = 'dino'
  config.dino = dino.default_config()
  config.dino.output_dim = 4096  # solo-learn's num_prototypes.
  config.dino.teacher_temperature = 0.07
  config.dino.warmup_teacher_temperature = 0.07  # No warm-up (solo-learn's 0 epochs).
  config.dino.base_ema = 0.9995  # solo-learn's base_tau.
  config.learning_rate = 0.3  # Base lr, linearly scaled: 0.3 * 256 / 256.
  config.weight_decay = 1e-6
  config.probe_learning_rate_scale = 0.1 / 0.3  # solo-learn's classifier lr 0.1.
  return config
