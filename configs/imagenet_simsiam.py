r"""SimSiam on ImageNet: ResNet-50, batch 512, SGD, 100 epochs (the paper's recipe).

Source: Chen & He 2021, "Exploring simple Siamese representation learning", section 4 and
appendix A, and facebookresearch/simsiam (main_simsiam.py, simsiam/builder.py): projector
3 layers 2048 -> 2048 ending in BN without affine, predictor bottleneck 512; SGD with momentum
0.9, lr 0.05 x batch / 256, weight decay 1e-4, cosine decay without warm-up, the predictor at a
fixed lr (--fix-pred-lr); MoCo v2's augmentation: crop area 0.2 to 1, colour jitter 0.4, 0.4,
0.4, 0.1 with p 0.8, grayscale 0.2, blur p 0.5 (sigma 0.1 to 2), flips. Differences: weight
decay skips BatchNorm parameters and biases (the authors' SGD decays every parameter).

Run (TPU/GPU hosts; the prepared TFDS `imagenet2012`, or an image folder):
  python -m simclr_jax.main --config=configs/imagenet_simsiam.py \
      --workdir=gs://BUCKET/simsiam_r50 --config.tfds_data_dir=gs://BUCKET/tensorflow_datasets

Expected result: 68.1% top-1 linear evaluation on the validation split after 100 epochs (the
paper, table 4; 70.0% after 200 epochs with --config.num_epochs=200), with the paper's linear
protocol (LARS, batch 4096, 90 epochs; here configs/imagenet_linear_eval.py).
"""

from simclr_jax.config_files import load_sibling_config
from simclr_jax.methods import simsiam


def get_config():
  """Returns the ImageNet SimSiam config; other knobs as configs/imagenet.py and cifar10.py."""
  config = load_sibling_config(__file__, 'imagenet')
  config.method = 'simsiam'
  config.simsiam = simsiam.default_config()
  config.augment.crop_area_min = 0.2  # MoCo v2's crop scale (0.2, 1).
  config.augment.color_jitter = (0.4, 0.4, 0.4, 0.1)  # torchvision maxima (b, c, s, h).
  config.augment.color_jitter_impl = 'simclrv2'  # torchvision's brightness is a factor.
  config.augment.blur_prob = 0.5
  config.batch_size = 512
  config.optimizer = 'sgd'
  config.momentum = 0.9
  config.learning_rate = 0.05  # Base lr, linearly scaled: 0.05 * 512 / 256 = 0.1.
  config.lr_scaling = 'linear'
  config.weight_decay = 1e-4
  config.warmup_epochs = 0.0  # Cosine decay from the start.
  config.num_epochs = 100
  return config
