r"""MoCo v3 on ImageNet with a ViT-B/16: batch 4096, AdamW, 300 epochs (the authors' recipe).

Source: facebookresearch/moco-v3, CONFIG.md "ViT-Base, 8-node (64-GPU) pre-training"
(--optimizer=adamw --lr=1.5e-4 --weight-decay=.1 --epochs=300 --warmup-epochs=40
--stop-grad-conv1 --moco-m-cos --moco-t=.2), moco/builder.py (ViT: projector 3 layers,
predictor 2 layers ending in BN, 4096 -> 256), vits.py (fixed 2-D sin-cos position embedding,
[CLS] token); BYOL's asymmetric augmentation with torchvision colour jitter, crops from area
0.08. Differences: AdamW decays the kernels only (theirs: every parameter).

Run (TPU/GPU hosts; the prepared TFDS `imagenet2012`, or an image folder):
  python -m simclr_jax.main --config=configs/imagenet_mocov3_vit.py \
      --workdir=gs://BUCKET/mocov3_vitb --config.tfds_data_dir=gs://BUCKET/tensorflow_datasets
ViT-S/16: add --config.model.name=vit_s.

Expected result: 76.7% (ViT-B/16) and 73.2% (ViT-S/16) top-1 linear evaluation on the
validation split after 300 epochs (CONFIG.md), with their linear protocol (SGD lr 3, 90 epochs).
"""

from simclr_jax.config_files import load_sibling_config


def get_config():
  """Returns the ImageNet MoCo v3 ViT config: the ResNet one with imagenet_vit's encoder."""
  config = load_sibling_config(__file__, 'imagenet_mocov3')
  config.model = load_sibling_config(__file__, 'imagenet_vit').model  # ViT-B/16, sin-cos, cls.
  config.augment.crop_area_min = 0.08  # The ViT runs keep --crop-min's default.
  config.mocov3.projector_layers = 3  # ViTs: a 3-layer projector,
  config.mocov3.predictor_output_bn = True  # and a predictor ending in BN.
  config.mocov3.temperature = 0.2
  config.mocov3.base_ema = 0.99
  config.mocov3.freeze_patch_embedding = True  # --stop-grad-conv1: a random patch projection.
  config.optimizer = 'adamw'  # AdamW: b1 = config.momentum (0.9), b2 0.999.
  config.momentum = 0.9
  config.learning_rate = 1.5e-4  # Base lr, linearly scaled: 1.5e-4 * 4096 / 256 = 2.4e-3.
  config.weight_decay = 0.1
  config.warmup_epochs = 40.0
  config.num_epochs = 300
  return config
