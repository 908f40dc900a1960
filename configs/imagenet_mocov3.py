r"""MoCo v3 on ImageNet: ResNet-50, batch 4096, LARS, 1000 epochs (the authors' recipe).

Source: Chen, Xie, He 2021, "An empirical study of training self-supervised vision
transformers", and facebookresearch/moco-v3 (CONFIG.md "ResNet-50, 1000-epoch pre-training",
main_moco.py, moco/builder.py, moco/optimizer.py): projector 2 layers and predictor 2 layers
4096 -> 256, temperature 1.0, momentum 0.996 -> 1 on a cosine, LARS (eta 0.001, momentum 0.9,
no decay or trust ratio for biases and norms) with lr 0.3 x batch / 256, weight decay 1.5e-6,
10 warm-up epochs; BYOL's asymmetric augmentation with torchvision colour jitter and crops
from area 0.2 (--crop-min=.2).

Run (TPU/GPU hosts; the prepared TFDS `imagenet2012`, or an image folder):
  python -m simclr_jax.main --config=configs/imagenet_mocov3.py \
      --workdir=gs://BUCKET/mocov3_r50 --config.tfds_data_dir=gs://BUCKET/tensorflow_datasets

Expected result: 74.6% top-1 linear evaluation on the validation split after 1000 epochs
(CONFIG.md; 72.8% after 300 epochs with --config.num_epochs=300 --config.weight_decay=1e-6
--config.mocov3.base_ema=0.99), with their linear protocol (SGD, 90 epochs; here
configs/imagenet_linear_eval.py).
"""

from simclr_jax.config_files import load_sibling_config
from simclr_jax.methods import mocov3


def get_config():
  """Returns the ImageNet MoCo v3 ResNet-50 config: BYOL's views, torchvision's jitter."""
  config = load_sibling_config(__file__, 'imagenet_byol')
  del config['byol']
  config.method = 'mocov3'
  config.mocov3 = mocov3.default_config()  # ResNet MLPs, 4096 -> 256, T 1.0.
  config.mocov3.base_ema = 0.996  # The 1000-epoch momentum.
  config.augment.color_jitter_impl = 'simclrv2'  # torchvision's brightness is a factor.
  config.augment.crop_area_min = 0.2  # --crop-min=.2.
  config.learning_rate = 0.3  # Base lr, linearly scaled: 0.3 * 4096 / 256 = 4.8.
  config.weight_decay = 1.5e-6
  config.lars_trust_coefficient = 0.001
  return config
