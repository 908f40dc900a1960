r"""The reference's linear evaluation on ImageNet: frozen ResNet-50, SGD on augmented views.

Source: google-research/simclr README, "Finetuning the linear head (linear eval)" on ImageNet
(fine_tune_after_block=4, zero-initialised head, momentum optimiser, lr 0.1, weight decay 1e-6,
90 epochs, batch 4096, no warm-up).

Run, after pretraining with configs/imagenet.py into PRETRAIN_DIR:
  python -m simclr_jax.main --config=configs/imagenet_linear_eval.py \
      --config.pretrained_workdir=PRETRAIN_DIR --workdir=EVAL_DIR

Expected result: "around 64.5%" top-1 on the validation split after the README's 100-epoch
pretraining (configs/imagenet.py); 69.1% after 1000 epochs (v1 README).
"""

from simclr_jax.config_files import load_sibling_config


def get_config():
  """Returns the ImageNet reference linear-evaluation config."""
  config = load_sibling_config(__file__, 'imagenet')
  config.mode = 'evaluate'  # Evaluate a pretraining run's encoder.
  config.eval.protocol = 'linear_sgd'  # Train a linear layer on augmented views.
  config.finetune.fine_tune_after_block = 4  # The whole encoder frozen (BN in inference mode).
  config.finetune.optimizer = 'momentum'  # Nesterov momentum SGD.
  config.finetune.learning_rate = 0.1  # Linear scaling: 0.1 * 4096 / 256 = 1.6.
  config.finetune.lr_scaling = 'linear'  # The reference's default scaling.
  config.finetune.weight_decay = 1e-6  # The README's command.
  config.finetune.epochs = 90  # The README's command.
  config.finetune.batch_size = 4096  # The README's command.
  config.finetune.warmup_epochs = 0  # The README's command.
  return config
