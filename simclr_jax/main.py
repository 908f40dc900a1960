r"""Command-line entry point.

  python -m simclr_jax.main --config=configs/cifar10.py --workdir=/tmp/simclr_cifar10

Evaluate a pretraining run's encoder (see README.md for the protocols and baselines):

  python -m simclr_jax.main --config=configs/cifar10.py --config.mode=evaluate \
      --config.pretrained_workdir=/tmp/simclr_cifar10 --workdir=/tmp/simclr_cifar10_eval

Any config value can be overridden, e.g. `--config.batch_size=256`. Running the same command
again on the same workdir resumes from its latest checkpoint.

On several hosts, every host runs the same command on a shared workdir; under SLURM (srun) and
on Cloud TPU VMs the processes find one another by themselves, elsewhere add
`--coordinator_address=HOST:PORT --num_processes=N --process_id=I` (launch/ has scripts).

Every key of the config can be overridden as --config.KEY=VALUE; to list them with their values:

  python -m simclr_jax.main --config=configs/cifar10.py --show_config

Known errors (a bad config value, missing data, a workdir in use, a full disk) end the program
with a sentence that names the fix and exit status 2; --verbose adds the traceback.
"""

import os
import sys

# Before TensorFlow and XLA load: their C++ INFO lines (oneDNN notices) are noise to a user.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from simclr_jax import cli_errors
from simclr_jax.core import distributed_flags

# The programs are imported when a run starts (JAX and TensorFlow take seconds to load), so
# that --help, --show_config and flag errors answer at once.
# pylint: disable=g-import-not-at-top

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and the saved config.')
config_flags.DEFINE_config_file(
    'config', None, 'Path to a ml_collections config file.', lock_config=True
)
flags.DEFINE_bool(
    'show_config',
    False,
    'Print the config (every key, overridable as --config.KEY=VALUE) and exit.',
)
flags.DEFINE_bool(
    'verbose',
    False,
    'Show the traceback of known errors (bad config, missing data, workdir in '
    'use, disk full), not only the sentence that explains them.',
)
distributed_flags.define()


_HELP_FLAGS = ('-h', '-?', '--help', '-help', '--helpshort', '--helpfull')


def _parse_flags(argv):
  """absl's flag parsing, with --help exiting 0 and flag errors said in one sentence."""
  if any(arg in _HELP_FLAGS for arg in argv[1:]):
    print(__doc__)
    print(FLAGS.module_help(sys.modules[__name__]))
    print(FLAGS.module_help(distributed_flags))
    sys.exit(0)
  try:
    argv = FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    cli_errors.fail(_flag_error(e))
  missing = [
      name
      for name in ('config', 'workdir')
      if FLAGS[name].value is None and not (name == 'workdir' and FLAGS.show_config)
  ]
  if missing:
    cli_errors.fail(
        f'{" and ".join("--" + m for m in missing)} missing: e.g. '
        'python -m simclr_jax.main --config=configs/cifar10_cpu.py --workdir=/tmp/run '
        '(--help lists the flags).'
    )
  return argv


def _flag_error(error) -> str:
  """The sentence in a flag-parsing error, unwrapped from ml_collections' KeyError repr."""
  cause = error.args[0] if error.args else error
  if isinstance(cause, KeyError) and cause.args:  # An unknown --config.KEY.
    key, *hint = str(cause.args[0]).splitlines()
    return (f'the config has no key {key}. {" ".join(hint)} --show_config lists the keys.').replace(
        '  ', ' '
    )
  return f'{error} (--help lists the flags).'


def main(argv):
  if len(argv) > 1:
    cli_errors.fail(
        f'unexpected arguments {argv[1:]}: flags are written --name=value ' '(--help lists them).'
    )
  if FLAGS.show_config:
    print(FLAGS.config)
    return
  if FLAGS.config.huge_page_malloc:
    from simclr_jax.core import huge_pages

    huge_pages.reexec_with_huge_pages()
  from simclr_jax.core import workdir_lock
  from simclr_jax.core import writers

  with cli_errors.as_sentences(FLAGS.verbose):
    distributed_flags.initialize(FLAGS)
    writers.quiet_orbax_logs()
    logging.info('Config:\n%s', FLAGS.config)
    with workdir_lock.hold(FLAGS.workdir):
      run(FLAGS.config, FLAGS.workdir)


def run(config, workdir: str):
  """Runs the program config.mode names: pretraining, or the evaluation protocol's."""
  from simclr_jax import evaluators

  from simclr_jax.core import run_config

  config = run_config.with_absolute_paths(config)
  if evaluators.legacy_mode_notice(config):
    logging.warning(evaluators.legacy_mode_notice(config))
  if config.mode == 'pretrain':
    from simclr_jax import train

    train.train_and_evaluate(config, workdir)
  else:
    from simclr_jax import evaluate

    evaluate.evaluate(config, workdir)


if __name__ == '__main__':
  app.run(main, flags_parser=_parse_flags)
