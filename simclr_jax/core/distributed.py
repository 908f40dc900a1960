"""Multi-process start-up: jax.distributed from flags, SLURM or a Cloud TPU VM, before any JAX work.

Every host runs the same command. The processes find one another through a coordinator (the
address of process 0), given either explicitly (--coordinator_address, --num_processes,
--process_id) or by JAX's cluster detection under SLURM (srun) and on Cloud TPU VMs.
"""

import os
from collections.abc import Sequence

from absl import logging
import jax
from jax._src import cloud_tpu_init  # No public API tells a TPU VM before the backend starts.
from jax._src import distributed as jax_distributed  # The coordination service's barrier.


def detected_cluster() -> str | None:
  """The multi-process environment JAX configures itself in ('SLURM', 'Cloud TPU VM'), or None.

  SLURM counts only with more than one task (srun starts one process per task); a TPU VM
  always counts, as a pod slice's hosts cannot be told from a single host's without asking the
  metadata server, and one process initialises as a cluster of one at no cost.
  """
  if 'SLURM_JOB_ID' in os.environ and int(os.environ.get('SLURM_NTASKS', '1')) > 1:
    return 'SLURM'
  # Set by `import jax` when libtpu and TPU chips are present, as JAX's own detection checks.
  if cloud_tpu_init.running_in_cloud_tpu_vm:
    return 'Cloud TPU VM'
  return None


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: Sequence[int] | None = None,
):
  """Joins the processes of a multi-host run and logs where this process stands.

  With coordinator_address, num_processes and process_id (all three or none), calls
  jax.distributed.initialize with them (and local_device_ids, the devices this process
  uses); without, initialises by JAX's cluster detection under SLURM and on Cloud TPU VMs.
  Must run before any JAX computation. On CPU, cross-process collectives use gloo, JAX's
  default (`jax_cpu_collectives_implementation`). Processes other than 0 then log warnings and
  errors only: process 0 speaks for the run.
  """
  explicit = {
      'coordinator_address': coordinator_address,
      'num_processes': num_processes,
      'process_id': process_id,
  }
  missing = [name for name, value in explicit.items() if value is None]
  if missing and len(missing) < len(explicit):
    raise ValueError(
        f'--{" and --".join(missing)} missing: give --coordinator_address, '
        '--num_processes and --process_id together (or none of them, to run '
        'one process or let SLURM or a Cloud TPU VM configure the processes).'
    )
  if local_device_ids and missing:
    raise ValueError(
        '--local_device_ids needs --coordinator_address, --num_processes and ' '--process_id.'
    )
  if not missing:
    jax.distributed.initialize(
        coordinator_address, num_processes, process_id, local_device_ids=local_device_ids or None
    )
    source = f'coordinator {coordinator_address}'
  elif cluster := detected_cluster():
    jax.distributed.initialize()
    source = f'{cluster} detected'
  else:
    source = 'single process'
  logging.info(
      'Process %d of %d (%s): %d local devices of %d.',
      jax.process_index(),
      jax.process_count(),
      source,
      jax.local_device_count(),
      jax.device_count(),
  )
  if jax.process_index() > 0:
    logging.set_verbosity(logging.WARNING)


def barrier(name: str, timeout_s: int = 1800):
  """Waits until every process gets here (a no-op in a single process).

  Through the coordination service, not a device collective: gloo, JAX's CPU collectives,
  gives up on a peer after 30 s, while processes can reach their first collective minutes
  apart (compilation on a loaded host). `name` must be new for each use in a run.
  """
  if jax.process_count() > 1:
    jax_distributed.global_state.client.wait_at_barrier(name, timeout_in_ms=timeout_s * 1000)


def all_gather_text(name: str, text: str, timeout_s: int = 1800) -> list[str]:
  """The `text` of every process, in process order ([text] in a single process).

  Through the coordination service's key-value store, like `barrier` (which it also is: it
  returns once every process got here). `name` must be new for each use in a run.
  """
  if jax.process_count() == 1:
    return [text]
  client = jax_distributed.global_state.client
  client.key_value_set(f'{name}/{jax.process_index()}', text)
  return [
      client.blocking_key_value_get(f'{name}/{i}', timeout_s * 1000)
      for i in range(jax.process_count())
  ]
