r"""DINO on ImageNet with a ViT-S/16: batch 512, AdamW, 100 epochs, multi-crop (the authors'
recipe).

Source: facebookresearch/dino, README ("vanilla" ViT-S/16 run on 8 GPUs) and main_dino.py's
defaults: batch 64 x 8, AdamW lr 5e-4 x batch / 256 after 10 warm-up epochs, weight decay
0.04 rising to 0.4 on a cosine, gradient clipping 3.0 per parameter, stochastic depth 0.1 in
the student; head 2048 -> 256 -> 65536 with the last layer's gain fixed and frozen in epoch 1;
student T 0.1, teacher T 0.04; tau 0.996 -> 1; 2 global views of 224 pixels (area 0.4-1; blur
p 1.0 / 0.1, solarisation 0 / 0.2) and 8 local crops of 96 (area 0.05-0.4, blur 0.5), colour
jitter 0.4, 0.4, 0.2, 0.1 with p 0.8, grayscale 0.2. ViT-S: learned position embedding, h the
[CLS] token. Differences: weight decay on the kernels only (theirs: every weight matrix,
position embedding and [CLS] token); the lr falls to 0, not 1e-6. Evaluate the teacher, as the
authors do, with --config.eval.weights=target.

Run (TPU/GPU hosts; the prepared TFDS `imagenet2012`, or an image folder):
  python -m simclr_jax.main --config=configs/imagenet_dino.py --workdir=gs://BUCKET/dino_vits \
      --config.tfds_data_dir=gs://BUCKET/tensorflow_datasets

Expected result: 74.0% top-1 linear evaluation (69.3% kNN) on the validation split after 100
epochs (facebookresearch/dino README, "vanilla DINO" ViT-S/16, 8 GPUs).
"""

from simclr_jax.config_files import load_sibling_config
from simclr_jax.methods import dino


def get_config():
  """Returns the ImageNet DINO ViT-S/16 config: BYOL's views, a ViT, multi-crop."""
  config = load_sibling_config(__file__, 'imagenet_byol')
  del config['byol']
  config.method = 'dino'
  config.dino = dino.default_config()  # The authors' defaults: 65536 prototypes, T 0.04.
  config.dino.clip_grad = 3.0
  config.model = load_sibling_config(__file__, 'imagenet_vit').model
  config.model.name = 'vit_s'  # Width 384, 12 blocks, 6 heads.
  config.model.position_embedding = 'learned'
  config.model.drop_path = 0.1  # The student's; the teacher has none.
  config.augment.color_jitter_impl = 'simclrv2'  # torchvision's brightness is a factor.
  config.augment.crop_area_min = 0.4  # Global crops: area 0.4-1 (--global_crops_scale).
  config.augment.local_crops.number = 8
  config.augment.local_crops.size = 96
  config.augment.local_crops.crop_area_min = 0.05
  config.augment.local_crops.crop_area_max = 0.4
  config.augment.local_crops.blur_prob = 0.5
  config.batch_size = 512
  config.optimizer = 'adamw'  # AdamW: b1 = config.momentum (0.9), b2 0.999.
  config.momentum = 0.9
  config.learning_rate = 5e-4  # Base lr, linearly scaled: 5e-4 * 512 / 256 = 1e-3.
  config.weight_decay = 0.04
  config.dino.weight_decay_end = 0.4  # Rising on a cosine over the run.
  config.warmup_epochs = 10.0
  config.num_epochs = 100
  return config
