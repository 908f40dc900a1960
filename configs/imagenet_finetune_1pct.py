r"""The reference's semi-supervised fine-tuning on 1% of ImageNet's labels (SimCLRv2).

Source: google-research/simclr README, "Semi-supervised learning and fine-tuning the whole
network" (fine_tune_after_block=-1, zero-initialised head, global BN, LARS, lr 0.005 with sqrt
scaling, weight decay 0, 60 epochs, batch 1024, no warm-up, the first projection-head layer
kept: num_proj_layers=3, ft_proj_selector=1), on TFDS imagenet2012_subset/1pct.

Run, after pretraining with configs/imagenet.py into PRETRAIN_DIR:
  python -m simclr_jax.main --config=configs/imagenet_finetune_1pct.py \
      --config.pretrained_workdir=PRETRAIN_DIR --workdir=FT_DIR
10% of the labels: add --config.dataset=imagenet2012_subset/10pct (the README changes only the
dataset). With an image folder of the full train split instead, set --config.dataset=FOLDER
and --config.finetune.label_fraction=0.01 (a class-balanced seeded subset, not the official one).

Expected result: the SimCLRv2 paper reports 57.9% top-1 for ResNet-50 (1x, 3-layer head) with
1% of the labels and 68.4% with 10% (after 800-epoch pretraining; the README's 100-epoch
pretraining gives less); SimCLRv1 reported 48.3% / 65.6%.
"""

from simclr_jax.config_files import load_sibling_config


def get_config():
  """Returns the ImageNet 1%-label fine-tuning config."""
  config = load_sibling_config(__file__, 'imagenet')
  config.mode = 'evaluate'  # Evaluate a pretraining run's encoder:
  config.eval.protocol = 'finetune'  # by fine-tuning it.
  config.dataset = 'imagenet2012_subset/1pct'  # TFDS: the official 1% subset as train split.
  config.finetune.label_fraction = 1.0  # All of the subset's labels.
  config.finetune.fine_tune_after_block = -1  # Fine-tune the whole encoder.
  config.finetune.keep_head_layers = 1  # Fine-tune from the first projection-head layer.
  config.finetune.optimizer = 'lars'  # LARS, the classifier excluded from its adaptation.
  config.finetune.learning_rate = 0.005  # sqrt scaling: 0.005 * sqrt(1024) = 0.16.
  config.finetune.lr_scaling = 'sqrt'  # The README's command.
  config.finetune.weight_decay = 0.0  # The README's command.
  config.finetune.epochs = 60  # The README's command.
  config.finetune.batch_size = 1024  # The README's command.
  config.finetune.warmup_epochs = 0  # The README's command.
  return config
