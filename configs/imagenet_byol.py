r"""BYOL on ImageNet: ResNet-50, batch 4096, LARS, 1000 epochs (the paper's recipe).

Source: Grill et al. 2020, "Bootstrap your own latent", section 3.3 and appendices B and C,
and deepmind-research/byol (configs/byol.py, utils/augmentations.py): projector and predictor
4096 -> 256, tau 0.996 -> 1 on a cosine, LARS with base lr 0.2 x batch / 256, weight decay
1.5e-6, eta 1e-3, 10 warm-up epochs; colour jitter 0.4, 0.4, 0.2, 0.1 (additive brightness)
with p 0.8, grayscale 0.2, blur p 1.0 / 0.1 and solarisation p 0 / 0.2 on the two views.

Run (TPU/GPU hosts; the prepared TFDS `imagenet2012`, or an image folder):
  python -m simclr_jax.main --config=configs/imagenet_byol.py --workdir=gs://BUCKET/byol_r50 \
      --config.tfds_data_dir=gs://BUCKET/tensorflow_datasets

Expected result: 74.3% top-1 linear evaluation on the validation split after 1000 epochs
(the paper, table 1; 72.5% after 300 epochs with --config.num_epochs=300). Compare with the SGD
linear protocol (configs/imagenet_linear_eval.py, README "Which number to compare with which").
"""

from simclr_jax.config_files import load_sibling_config
from simclr_jax.methods import byol


def get_config():
  """Returns the ImageNet BYOL config; other knobs as configs/imagenet.py and cifar10.py."""
  config = load_sibling_config(__file__, 'imagenet')
  config.method = 'byol'
  config.byol = byol.default_config()  # tau 0.996 -> 1, 4096 -> 256 MLPs.
  config.augment.color_jitter = (0.4, 0.4, 0.2, 0.1)  # (brightness, contrast, sat., hue).
  config.augment.color_jitter_impl = 'simclrv1'  # BYOL's brightness is an offset.
  config.augment.blur_prob = 1.0  # First view: always blurred.
  config.augment.solarize_prob = 0.0  # First view: never solarised.
  config.augment.second_view.blur_prob = 0.1
  config.augment.second_view.solarize_prob = 0.2
  config.learning_rate = 0.2  # Base lr, linearly scaled: 0.2 * 4096 / 256 = 3.2.
  config.lr_scaling = 'linear'
  config.weight_decay = 1.5e-6
  config.lars_trust_coefficient = 0.001
  config.warmup_epochs = 10.0
  config.num_epochs = 1000
  return config
