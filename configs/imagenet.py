r"""SimCLR on ImageNet: ResNet-50, batch 4096, LARS: the reference README's pretraining command.

Source: google-research/simclr README, "Pretraining" on ImageNet (batch 4096, 100 epochs,
temperature 0.1, lr 0.075 with sqrt scaling, weight decay 1e-4).

Run (TPU/GPU hosts; needs the prepared TFDS `imagenet2012`, or an image folder):
  python -m simclr_jax.main --config=configs/imagenet.py --workdir=gs://BUCKET/simclr_r50 \
      --config.tfds_data_dir=gs://BUCKET/tensorflow_datasets

On a pod slice or cluster, every host runs this command (launch/ has TPU, SLURM and local scripts);
`--config.data_shards=64` (say) makes the batches the same on any host count dividing 64.
On fewer accelerators, keep the batch of 4096 and its negatives with the gradient cache:
`--config.microbatches=16` runs 256 images (512 views) at a time, about 78 GB on one device by
XLA's CPU memory analysis, against about 1.1 TB for the whole batch (BENCHMARKS.md); BatchNorm
then normalises each micro-batch by itself (README, "Big batches on few devices").

Expected result: the reference README says this command followed by its linear evaluation
(configs/imagenet_linear_eval.py) "should give around 64.5%" top-1; it reports 69.1% for
ResNet-50 (1x) after 1000 epochs (--config.num_epochs=1000). Compare both with the SGD linear
protocol, not the default L-BFGS one (README: "Which number to compare with which").

Every knob is documented in configs/cifar10.py; only the ImageNet differences are set here.
"""

from simclr_jax.config_files import load_sibling_config


def get_config():
  """Returns the ImageNet pretraining config."""
  config = load_sibling_config(__file__, 'cifar10')
  config.dataset = 'imagenet2012'  # TFDS name (or an image folder root/<split>/<class>/<img>).
  config.image_size = 224  # > 32: ImageNet stem (7x7 stride-2 conv + max-pool).
  config.augment.color_strength = 1.0  # Full colour distortion strength.
  config.augment.blur_prob = 0.5  # Gaussian blur on, p = 0.5.
  config.model.name = 'resnet50'  # 2048-d representation.
  config.model.patch_size = 16  # With a ViT (--config.model.name=vit_b): 196 tokens.
  config.temperature = 0.1  # Best for large batches on ImageNet.
  config.batch_size = 4096  # Global batch size.
  config.num_epochs = 100  # 100 epochs by default; the headline results use 1000.
  config.learning_rate = 0.075  # Base lr, sqrt-scaled: 0.075 * sqrt(4096) = 4.8.
  config.lr_scaling = 'sqrt'  # The README's; equal to 0.3 linear at 4096, better below it.
  config.weight_decay = 1e-4  # The README's command; the v1 paper (and run.py's default) say 1e-6.
  config.warmup_epochs = 10.0  # Linear warm-up epochs.
  config.eval.split = 'validation'  # ImageNet's labelled held-out split.
  config.eval_every_steps = 0  # A kNN bank of 1.28M images is too costly to monitor often.
  config.log_every_steps = 100  # Steps between metric writes.
  config.checkpoint_every_steps = 2000  # Steps between checkpoints.
  return config
