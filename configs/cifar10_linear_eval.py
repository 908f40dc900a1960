r"""The reference's linear evaluation on CIFAR-10: frozen encoder, SGD on augmented views.

Source: google-research/simclr README, "Finetuning the linear head (linear eval)" on CIFAR-10
(fine_tune_after_block=4, zero-initialised head, momentum optimiser, lr 0.1, weight decay 0,
100 epochs, batch 512, no warm-up).

Run, after pretraining with configs/cifar10.py into PRETRAIN_DIR:
  python -m simclr_jax.main --config=configs/cifar10_linear_eval.py \
      --config.pretrained_workdir=PRETRAIN_DIR --workdir=EVAL_DIR \
      [--config.dataset=../shared/data/cifar10-jpeg]

Expected result: "around 91%" top-1 on the test split after the full 1000-epoch pretraining
(reference README). This is the protocol to compare that figure with; the default
protocol, eval.protocol=linear (L-BFGS on frozen features), is the paper's transfer protocol.
"""

from simclr_jax.config_files import load_sibling_config


def get_config():
  """Returns the CIFAR-10 reference linear-evaluation config."""
  config = load_sibling_config(__file__, 'cifar10')
  config.mode = 'evaluate'  # Evaluate a pretraining run's encoder.
  config.eval.protocol = 'linear_sgd'  # Train a linear layer on augmented views.
  config.finetune.fine_tune_after_block = 4  # The whole encoder frozen (BN in inference mode).
  config.finetune.optimizer = 'momentum'  # Nesterov momentum SGD.
  config.finetune.learning_rate = 0.1  # Linear scaling: 0.1 * 512 / 256 = 0.2.
  config.finetune.lr_scaling = 'linear'  # The reference's default scaling.
  config.finetune.weight_decay = 0.0  # The README's command.
  config.finetune.epochs = 100  # The README's command.
  config.finetune.batch_size = 512  # The README's command.
  config.finetune.warmup_epochs = 0  # The README's command.
  return config
