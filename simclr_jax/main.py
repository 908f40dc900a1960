r"""Command-line entry point.

  python -m simclr_jax.main --config=configs/cifar10.py --workdir=/tmp/simclr_cifar10

Evaluate a pretraining run's encoder (see README.md for the protocols and baselines):

  python -m simclr_jax.main --config=configs/cifar10.py --config.mode=linear_eval \
      --config.pretrained_workdir=/tmp/simclr_cifar10 --workdir=/tmp/simclr_cifar10_eval

Any config value can be overridden, e.g. `--config.batch_size=256`. Running the same command
again on the same workdir resumes from its latest checkpoint.

On several hosts, every host runs the same command on a shared workdir; under SLURM (srun) and
on Cloud TPU VMs the processes find one another by themselves, elsewhere add
`--coordinator_address=HOST:PORT --num_processes=N --process_id=I` (launch/ has scripts).
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from simclr_jax import config_validation
from simclr_jax import distributed
from simclr_jax import evaluate
from simclr_jax import finetune
from simclr_jax import train
from simclr_jax import writers

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and the saved config.')
config_flags.DEFINE_config_file('config', None, 'Path to a ml_collections config file.',
                                lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])
flags.DEFINE_string('coordinator_address', None,
                    'Multi-process runs: HOST:PORT of process 0, where the processes meet '
                    '(not needed under SLURM or on Cloud TPU VMs).')
flags.DEFINE_integer('num_processes', None, 'Multi-process runs: the number of processes.')
flags.DEFINE_integer('process_id', None, 'Multi-process runs: this process, in [0, N).')
flags.DEFINE_list('local_device_ids', None,
                  'Multi-process runs: the local devices this process uses (default: all).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                         [int(i) for i in FLAGS.local_device_ids or ()])
  writers.quiet_orbax_logs()
  logging.info('Config:\n%s', FLAGS.config)
  config = FLAGS.config
  if config.mode == 'pretrain':
    train.train_and_evaluate(config, FLAGS.workdir)
  elif config_validation.trains_classifier(config):
    finetune.finetune(config, FLAGS.workdir)
  else:
    evaluate.evaluate(config, FLAGS.workdir)


if __name__ == '__main__':
  app.run(main)
