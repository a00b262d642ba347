"""Batches over devices: a 1-D `data` mesh, batches sharded on it, parameters replicated.

Global batches are padded with empty rows to a multiple of the device count (input_pipeline) and
the loss ignores empty rows, so results do not depend on how many devices there are. In a
multi-host job every process computes the same batch order and hands only its own rows to its own
devices.
"""
import jax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

from muse_jax.errors import MuseError


def make_mesh(num_devices: int = 0) -> Mesh:
  """1-D `data` mesh over the first num_devices devices (0 = all, across every process)."""
  devices = jax.devices()
  if num_devices > len(devices):
    raise MuseError(f'config.num_devices={num_devices}, but only {len(devices)} devices exist')
  return Mesh(np.array(devices[:num_devices or len(devices)]), ('data',))


def platform(mesh: Mesh) -> str:
  """'cpu', 'gpu' or 'tpu': what the mesh's devices are (decides the CPU-specific defaults)."""
  return mesh.devices.flat[0].platform


def shard(batch: dict, mesh: Mesh) -> dict:
  """Global batch (same on every process) -> arrays sharded on the `data` axis.

  Every process computes the same deterministic batch order but hands only its own contiguous
  block of rows to its own devices (`jax.devices()` is ordered by process).
  """
  sharding = NamedSharding(mesh, P('data'))
  if jax.process_count() == 1:
    return {k: jax.device_put(v, sharding) for k, v in batch.items()}
  n, i = jax.process_count(), jax.process_index()
  out = {}
  for k, v in batch.items():
    rows = v.shape[0] // n
    out[k] = jax.make_array_from_process_local_data(sharding, v[i * rows:(i + 1) * rows],
                                                    v.shape)
  return out


def to_host(x) -> np.ndarray:
  """A (possibly multi-process sharded) array as one numpy array on every process."""
  if jax.process_count() == 1:
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def replicate(tree, mesh: Mesh):
  sharding = NamedSharding(mesh, P())
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)
  # Multi-host: build each global array from host values (identical on every process).
  def put(x):
    x = np.asarray(jax.device_get(x))
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])
  return jax.tree.map(put, tree)
