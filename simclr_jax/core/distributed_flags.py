"""The multi-process flags every program shares, defined without loading JAX (--help stays quick).

Every process of a multi-host job runs the same command plus these flags (launch/ has scripts);
under SLURM (srun) and on Cloud TPU VMs they are not needed (core/distributed.py).
"""

from absl import flags


def define(flag_values=flags.FLAGS):
  """--coordinator_address, --num_processes, --process_id and --local_device_ids."""
  flags.DEFINE_string(
      'coordinator_address',
      None,
      'Multi-process runs: HOST:PORT of process 0, where the processes meet '
      '(not needed under SLURM or on Cloud TPU VMs).',
      flag_values=flag_values,
  )
  flags.DEFINE_integer(
      'num_processes', None, 'Multi-process runs: the number of processes.', flag_values=flag_values
  )
  flags.DEFINE_integer(
      'process_id', None, 'Multi-process runs: this process, in [0, N).', flag_values=flag_values
  )
  flags.DEFINE_list(
      'local_device_ids',
      None,
      'Multi-process runs: the local devices this process uses (default: all).',
      flag_values=flag_values,
  )


def initialize(flag_values=flags.FLAGS):
  """core.distributed.initialize with the values of the flags `define` made."""
  from simclr_jax.core import distributed  # pylint: disable=g-import-not-at-top

  distributed.initialize(
      flag_values.coordinator_address,
      flag_values.num_processes,
      flag_values.process_id,
      [int(i) for i in flag_values.local_device_ids or ()],
  )
