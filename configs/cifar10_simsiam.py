r"""SimSiam on CIFAR-10: ResNet-18, batch 256, SGD, 1000 epochs (solo-learn's CIFAR recipe).

Source: vturrisi/solo-learn, scripts/pretrain/cifar/simsiam.yaml and
augmentations/symmetric_weak.yaml (projector 3 layers 2048 -> 2048, predictor bottleneck 512,
SGD lr 0.5 at batch 256 with momentum 0.9, weight decay 1e-5, classifier lr 0.1, 10 warm-up
epochs then cosine, the predictor at a fixed lr; torchvision colour jitter 0.4, 0.4, 0.4, 0.1
with p 0.8, grayscale 0.2, blur p 0.5, both views alike). Differences: weight decay skips
BatchNorm parameters and biases (solo-learn decays them), and the probe and kNN monitor read h
as for SimCLR.

Run:
  python -m simclr_jax.main --config=configs/cifar10_simsiam.py --workdir=/tmp/simsiam_cifar10 \
      --config.dataset=../shared/data/cifar10-jpeg

Expected result: 90.51% top-1 online linear accuracy after 1000 epochs (solo-learn README,
CIFAR-10 table, ResNet-18); `probe_accuracy` tracks it. Evaluate like a SimCLR run
(configs/cifar10_linear_eval.py with --config.pretrained_workdir).
Every knob not set here is documented in configs/cifar10.py.
"""

from simclr_jax.config_files import load_sibling_config
from simclr_jax.methods import simsiam


def get_config():
  """Returns the CIFAR-10 SimSiam config."""
  config = load_sibling_config(__file__, 'cifar10')
  config.method = 'simsiam'
  config.simsiam = simsiam.default_config()  # 2048 -> 2048 projector (h is 512 wide here).
  config.augment.color_jitter = (0.4, 0.4, 0.4, 0.1)  # torchvision-style maxima (b, c, s, h).
  config.augment.color_jitter_impl = 'simclrv2'  # torchvision's brightness is a factor.
  config.augment.blur_prob = 0.5  # symmetric_weak: blur p 0.5 on both views, even at 32x32.
  config.batch_size = 256  # solo-learn's batch.
  config.optimizer = 'sgd'
  config.momentum = 0.9
  config.learning_rate = 0.5  # Base lr, linearly scaled: 0.5 * 256 / 256.
  config.lr_scaling = 'linear'
  config.weight_decay = 1e-5  # solo-learn's.
  config.warmup_epochs = 10.0
  config.num_epochs = 1000
  config.probe_learning_rate_scale = 0.2  # solo-learn's classifier lr 0.1 against lr 0.5.
  return config
