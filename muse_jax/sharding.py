"""Batches over devices: a 1-D `data` mesh, batches sharded on it, parameters replicated.

With config.member_devices = M > 1 the mesh is 2-D (`member` x `data`): the seed (member) axis of
parameters, optimiser state and per-member values is sharded over `member` (each device holds
S / M members), batches over `data` (replicated over `member`): a sweep's members on different
devices, data parallel within.

Global batches are padded with empty rows to a multiple of the device count (input_pipeline) and
the loss ignores empty rows, so results do not depend on how many devices there are. In a
multi-host job every process computes the same batch order and hands only its own rows to its own
devices.
"""

import jax
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from muse_jax.errors import MuseError


def make_mesh(num_devices: int = 0, member_devices: int = 1) -> Mesh:
  """1-D `data` mesh over the first num_devices devices (0 = all, across every process); with
  member_devices > 1, a 2-D (`member`, `data`) one."""
  devices = jax.devices()
  if num_devices > len(devices):
    raise MuseError(f'config.num_devices={num_devices}, but only {len(devices)} devices exist')
  devices = np.array(devices[: num_devices or len(devices)])
  if member_devices <= 1:
    return Mesh(devices, ('data',))
  if len(devices) % member_devices:
    raise MuseError(
      f'config.member_devices={member_devices} does not divide the {len(devices)} '
      'devices of the mesh (config.num_devices)'
    )
  return Mesh(devices.reshape(member_devices, -1), ('member', 'data'))


def data_devices(mesh: Mesh) -> int:
  """Devices a batch is split over (the `data` axis)."""
  return mesh.shape['data']


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
    out[k] = jax.make_array_from_process_local_data(sharding, v[i * rows : (i + 1) * rows], v.shape)
  return out


def to_host(x) -> np.ndarray:
  """A (possibly multi-process sharded) array as one numpy array on every process."""
  if jax.process_count() == 1:
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def place_members(tree, mesh: Mesh, n_members: int):
  """Leaves with a leading member axis of n_members: sharded over `member` (2-D mesh), else
  replicated; other leaves (the step counter) replicated."""
  if 'member' not in mesh.axis_names:
    return replicate(tree, mesh)
  return jax.tree.map(
    lambda x: replicate(
      x, mesh, P('member') if np.ndim(x) and np.shape(x)[0] == n_members else P()
    ),
    tree,
  )


def replicate(tree, mesh: Mesh, spec=None):
  sharding = NamedSharding(mesh, P() if spec is None else spec)
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)

  # Multi-host: build each global array from host values (identical on every process).
  def put(x):
    x = np.asarray(jax.device_get(x))
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

  return jax.tree.map(put, tree)
