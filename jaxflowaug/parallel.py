"""Device mesh, shardings and multi-host data feeding.

Data parallelism with `jax.jit` and `NamedSharding` over a 1-D `('data',)` mesh of every device
of every process (no `pmap`): batches are sharded along their leading axis, parameters and
optimiser state are replicated, and GSPMD inserts the cross-device reductions (so BatchNorm
statistics and losses are over the global batch).

Multi-host: every process calls `initialize_distributed` first, then feeds only its own share
of each global batch (`process_batch_size` rows); `global_batch` assembles the global array
with `jax.make_array_from_process_local_data`.
"""
from typing import Any, Optional

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def initialize_distributed(coordinator_address: Optional[str] = None,
                           num_processes: Optional[int] = None,
                           process_id: Optional[int] = None) -> None:
  """Starts `jax.distributed` when several processes are configured.

  With all three arguments None, JAX's cluster auto-detection (TPU pods, SLURM, Open MPI, or
  the `JAX_COORDINATOR_ADDRESS`/`JAX_NUM_PROCESSES`/`JAX_PROCESS_ID` environment) decides; a
  single-process run outside a cluster does nothing. Must run before any other JAX call.
  """
  if coordinator_address is None and num_processes is None and process_id is None:
    try:
      jax.distributed.initialize()
    except (ValueError, RuntimeError):
      pass  # Not in a detectable cluster: a single-process run.
    return
  if None in (coordinator_address, num_processes, process_id):
    raise ValueError(
        "distributed: set all of coordinator_address, num_processes and process_id, or none "
        f"of them (got {coordinator_address!r}, {num_processes!r}, {process_id!r}).")
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)


def make_mesh() -> jax.sharding.Mesh:
  """A 1-D mesh over every device of every process, axis name `'data'`.

  The axis is `Auto`: XLA's GSPMD propagates shardings through the model (no sharding in the
  types, so library code needs no `out_sharding` annotations).
  """
  return jax.make_mesh((jax.device_count(),), (DATA_AXIS,),
                       axis_types=(jax.sharding.AxisType.Auto,))


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Leading (batch) axis split over `'data'`, other axes whole."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  """The same full value on every device."""
  return NamedSharding(mesh, P())


def check_batch_size(global_batch_size: int, field: str) -> None:
  """Raises unless the global batch splits evenly over devices and processes."""
  devices, processes = jax.device_count(), jax.process_count()
  if global_batch_size < 1 or global_batch_size % devices:
    raise ValueError(
        f"{field}={global_batch_size} must be a positive multiple of the device count "
        f"({devices}); set {field} to a multiple of {devices}.")
  if global_batch_size % processes:
    raise ValueError(f"{field}={global_batch_size} must be divisible by the process count "
                     f"({processes}).")


def process_batch_size(global_batch_size: int) -> int:
  """Rows of each global batch that this process loads."""
  return global_batch_size // jax.process_count()


def global_batch(local: Any, mesh: jax.sharding.Mesh) -> Any:
  """Host-local numpy batch (a pytree of arrays, rows = this process's share) -> global arrays.

  Shapes: each local leaf (b, ...) with b = global_batch / process_count becomes a global
  `jax.Array` (global_batch, ...) sharded over `'data'`.
  """
  sharding = batch_sharding(mesh)
  n = jax.process_count()

  def make(x):
    x = np.asarray(x)
    return jax.make_array_from_process_local_data(sharding, x, (x.shape[0] * n,) + x.shape[1:])

  return jax.tree.map(make, local)


def replicate(tree: Any, mesh: jax.sharding.Mesh) -> Any:
  """Places a pytree (same values on every process) replicated over the mesh."""
  return jax.device_put(tree, replicated(mesh))


def to_host(tree: Any) -> Any:
  """Fully replicated or addressable arrays -> numpy (for logging and results)."""
  return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)


def gather(x: jax.Array) -> np.ndarray:
  """A batch-sharded global array -> the whole array as numpy on every process."""
  if x.is_fully_addressable:
    return np.asarray(jax.device_get(x))
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))
