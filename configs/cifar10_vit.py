r"""SimCLR on CIFAR-10 with a ViT-S/4 and the contrastive ViT optimiser recipe (AdamW).

Source of the optimiser recipe: facebookresearch/moco-v3 CONFIG.md, "ViT Models" (MoCo v3,
Chen, Xie, He 2021): AdamW, lr 1.5e-4 x batch / 256, weight decay 0.1, 40 warm-up epochs then
cosine to 0, 300 epochs, temperature 0.2, fixed 2-D sin-cos position embeddings, h = [CLS].
Adapted to CIFAR-10's 32x32 images with 4x4 patches (64 tokens), as ViTs trained from scratch on
CIFAR use; augmentations and head are SimCLR's CIFAR-10 ones (configs/cifar10.py). As in
configs/imagenet_vit.py, LayerNorm parameters, biases, the position embedding and the [CLS]
token are left out of weight decay.

Run (a GPU or TPU host; the CIFAR-10 image folder or TFDS `cifar10`):
  python -m simclr_jax.main --config=configs/cifar10_vit.py --workdir=/tmp/simclr_cifar10_vit \
      --config.dataset=../shared/data/cifar10-jpeg
ViT-Ti: add --config.model.name=vit_ti. On a CPU, benchmarks/cifar10_study.py trains ViT-Ti with
this config for a short budget (BENCHMARKS.md, "The down-scaled CIFAR-10 study").

Expected result: no published figure of SimCLR with a ViT-S/4 on CIFAR-10 under this recipe
has been found to check against; MoCo v3 reports its recipe on ImageNet only (73.2% linear top-1
for ViT-S/16 after 300 epochs). What our runs of this config gave is in BENCHMARKS.md.
"""

from simclr_jax.config_files import load_sibling_config


def get_config():
  """Returns the CIFAR-10 ViT pretraining config; other knobs are documented in cifar10.py."""
  config = load_sibling_config(__file__, 'cifar10')
  config.model.name = 'vit_s'  # ViT-S: width 384, 12 blocks, 6 heads.
  config.model.patch_size = 4  # 64 tokens at 32x32.
  config.model.pool = 'cls'  # h is the [CLS] token, as MoCo v3's linear probe reads it.
  config.model.position_embedding = 'sincos'  # Fixed 2-D sin-cos, as MoCo v3's ViTs.
  config.optimizer = 'adamw'  # AdamW: b1 = config.momentum, b2 0.999, as torch's default.
  config.momentum = 0.9  # AdamW's b1.
  config.learning_rate = 1.5e-4  # Base lr, linearly scaled: 1.5e-4 * 512 / 256 = 3e-4.
  config.lr_scaling = 'linear'  # MoCo v3: lr * batch / 256.
  config.weight_decay = 0.1  # MoCo v3's ViT weight decay.
  config.warmup_epochs = 40.0  # MoCo v3's ViT warm-up.
  config.num_epochs = 300  # MoCo v3's ViT schedule.
  config.temperature = 0.2  # MoCo v3's ViT temperature.
  return config
