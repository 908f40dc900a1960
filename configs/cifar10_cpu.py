r"""SimCLR on CIFAR-10 sized for a CPU: ResNet-18 at width 0.25, batch 128, a few epochs.

Run (2 epochs, the CIFAR-10 image folder, then evaluate the encoder):
  python -m simclr_jax.main --config=configs/cifar10_cpu.py --workdir=/tmp/simclr_cpu \
      --config.dataset=../shared/data/cifar10-jpeg
  python -m simclr_jax.main --config=configs/cifar10_cpu.py --workdir=/tmp/simclr_cpu_eval \
      --config.dataset=../shared/data/cifar10-jpeg --config.mode=evaluate \
      --config.pretrained_workdir=/tmp/simclr_cpu

Two processes with 2 CPU devices each on this machine (launch/local.sh); data_shards=2 makes
the run equal that of one process with the same setting:
  launch/local.sh 2 2 --config=configs/cifar10_cpu.py --workdir=/tmp/simclr_cpu2 \
      --config.dataset=../shared/data/cifar10-jpeg --config.data_shards=2

benchmarks/cifar10_cpu_budget.py pretrains this config within a wall-clock budget and evaluates
it against a random encoder and raw pixels: 20 minutes on 2 CPU cores gave 53.72% linear and
52.17% kNN top-1 (one run, 2026-12-03; BENCHMARKS.md, with the trials behind each value). Short
runs favour a small batch, square-root learning-rate scaling, a lower temperature and a short
warm-up (SimCLR paper, appendix B.1 and figure 9), an easier positive pair, and pretraining on
smaller views than the images evaluated (FixRes: more steps in the budget).
"""

from simclr_jax.config_files import load_sibling_config


def get_config():
  """Returns the CPU-sized CIFAR-10 config; every knob is documented in cifar10.py."""
  config = load_sibling_config(__file__, 'cifar10')
  config.model.width_multiplier = 0.25  # 16-channel stem, 128-d representation h.
  config.batch_size = 128  # Small batches: more updates per CPU-minute.
  config.num_epochs = 2  # A few CPU-hours at most; the benchmark sets num_train_steps.
  config.learning_rate = 0.075  # Base lr, sqrt-scaled: 0.075 * sqrt(128) = 0.85.
  config.lr_scaling = 'sqrt'  # Better than linear scaling for small batches and short runs.
  config.temperature = 0.1  # Lower than 0.5 (and 0.2): better for short runs.
  config.augment.crop_area_min = 0.2  # Larger than 0.08: easier positives, better for short runs.
  config.pretrain_image_size = 24  # 24x24 views, ~1.3-1.75x the steps; evaluation stays at 32.
  config.warmup_epochs = 0.2  # A short warm-up for a short run.
  config.eval.batch_size = 500  # Feature-extraction batch; divides the 50k/10k splits.
  config.eval_every_steps = 0  # No kNN monitor: it would cost a large part of the budget.
  config.log_every_steps = 20  # Steps between metric writes.
  config.checkpoint_every_steps = 200  # Steps between checkpoints.
  return config
