r"""SimCLR on ImageNet with a ViT-B/16 and the contrastive ViT optimiser recipe (AdamW).

Source of the optimiser recipe: facebookresearch/moco-v3 CONFIG.md, "ViT Models" (MoCo v3,
Chen, Xie, He 2021): AdamW, lr 1.5e-4 x batch / 256, weight decay 0.1, 40 warm-up epochs then
cosine, 300 epochs, batch 4096, temperature 0.2. Their AdamW decays every parameter; here
LayerNorm parameters, biases, the position embedding and the [CLS] token are left out of weight
decay (the kernels only, as for the ResNets). The augmentations are SimCLR's ImageNet ones
(configs/imagenet.py). MoCo v3's --stop-grad-conv1 (a frozen patch projection) is not used.

Run (TPU/GPU hosts; needs the prepared TFDS `imagenet2012`, or an image folder):
  python -m simclr_jax.main --config=configs/imagenet_vit.py --workdir=gs://BUCKET/simclr_vitb \
      --config.tfds_data_dir=gs://BUCKET/tensorflow_datasets
ViT-S/16: add --config.model.name=vit_s.

Expected result: no figure for SimCLR with exactly this recipe has been checked here. With this
optimiser recipe, MoCo v3 reports 76.7% (ViT-B/16) and 73.2% (ViT-S/16) ImageNet linear top-1
after 300 epochs (CONFIG.md's tables), with its own linear protocol (SGD, lr 3, 90 epochs).
"""

from simclr_jax.config_files import load_sibling_config


def get_config():
  """Returns the ImageNet ViT pretraining config."""
  config = load_sibling_config(__file__, 'imagenet')
  config.model.name = 'vit_b'  # ViT-B: width 768, 12 blocks, 12 heads.
  config.model.patch_size = 16  # 196 tokens at 224x224.
  config.model.pool = 'cls'  # h is the [CLS] token, as MoCo v3's linear probe reads it.
  config.model.position_embedding = 'sincos'  # Fixed 2-D sin-cos, as MoCo v3's ViTs.
  config.optimizer = 'adamw'  # AdamW: b1 = config.momentum (0.9), b2 0.999, as torch's default.
  config.momentum = 0.9  # AdamW's b1.
  config.learning_rate = 1.5e-4  # Base lr, linearly scaled: 1.5e-4 * 4096 / 256 = 2.4e-3.
  config.lr_scaling = 'linear'  # MoCo v3: lr * batch / 256.
  config.weight_decay = 0.1  # MoCo v3's ViT weight decay.
  config.warmup_epochs = 40.0  # MoCo v3's ViT warm-up.
  config.num_epochs = 300  # MoCo v3's ViT schedule.
  config.temperature = 0.2  # MoCo v3's ViT temperature (SimCLR's ImageNet ResNets: 0.1).
  return config
