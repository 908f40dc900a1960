"""The device mesh: one 'data' axis over every device of every host."""

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

DATA_AXIS = 'data'


def create_mesh(devices=None) -> Mesh:
  """1-D mesh named 'data' over all devices of all hosts (or the given ones), host by host.

  Each process's devices are contiguous (in JAX's order within a process), so the rows of a
  batch-sharded global array built from process-local batches are process 0's batch, then
  process 1's, and so on: the global batch does not depend on how devices are numbered.
  """
  devices = jax.devices() if devices is None else devices
  devices = sorted(devices, key=lambda d: d.process_index)  # Stable: keeps the local order.
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over 'data'."""
  return NamedSharding(mesh, P(DATA_AXIS))


def run_once(fn, *args, out_shardings=None):
  """Compiles `fn` for a single call (e.g. initialisation) and runs it.

  XLA's backend optimisations barely matter for a function run once, but its random-number
  code (one threefry per parameter) takes them about 5x longer to compile on CPU.
  """
  compiled = (
      jax.jit(fn, out_shardings=out_shardings)
      .lower(*args)
      .compile({'xla_backend_optimization_level': 0})
  )
  return compiled(*args)
