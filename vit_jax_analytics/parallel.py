"""Data parallelism: a 1-D mesh over the batch axis, on one process or many.

Parameters are replicated, batches split along their first axis; jitted functions then run
on every device and XLA inserts the reductions. Results do not depend on the device count.

With several processes (`jax.distributed.initialize`), the mesh spans every device of every
process (`jax.devices()`): each process reads only its shard of the images
(`batches.process_shard`), feeds its part of each global batch
(`jax.make_array_from_process_local_data`), reads back only its own rows (`to_host`), and
the float64 sums of all processes are added in process order (`allreduce_sums`) — sums and
counts, never means of means — so every process ends with the same result and process 0
writes it.

For large models with small batches, importance's single-head ablation scan can also split
its heads over a second mesh axis: `batch_mesh(mask_shards=K)` is a 2-D ('batch', 'masks')
mesh of (devices / K) x K, each row one process's devices; batches are split over 'batch'
(and replicated over 'masks'), the scan's heads over 'masks' (`importance.taylor_ablation_batch`).
Everything else runs as on a 1-D mesh of the 'batch' axis, repeated along 'masks'.
"""

from __future__ import annotations

import jax
import numpy as np
from vit_jax_analytics.errors import OptionError
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def batch_mesh(devices=None, mask_shards: int = 1) -> Mesh:
  """A 1-D ('batch') mesh over `devices`, by default every device of every process; with
  mask_shards K > 1 a 2-D ('batch', 'masks') mesh of (devices / K) x K, whose rows each
  lie within one process (K must divide every process's device count)."""
  devices = np.asarray(devices if devices is not None else jax.devices())
  if mask_shards == 1:
    return Mesh(devices, ('batch',))
  n = devices.size
  per_process = sorted({sum(d.process_index == p for d in devices.flat)
                        for p in {d.process_index for d in devices.flat}})
  if (isinstance(mask_shards, bool) or not isinstance(mask_shards, int) or mask_shards < 1
      or any(c % mask_shards for c in per_process)):
    several = len({d.process_index for d in devices.flat}) > 1
    where = (f'the {n} device' + ('s' if n != 1 else '')
             + (f' ({"/".join(map(str, per_process))} per process)' if several else ''))
    raise OptionError('mask_shards', f'expected a divisor of {where}, got {mask_shards!r}')
  grid = devices.reshape(n // mask_shards, mask_shards)
  if any(len({d.process_index for d in row}) > 1 for row in grid):
    raise OptionError('mask_shards', f'{mask_shards}: the devices are not grouped by '
                      f'process, so a row of the (batch x masks) mesh would span processes')
  return Mesh(grid, ('batch', 'masks'))


def mask_shards(mesh: Mesh) -> int:
  """The size of the mesh's 'masks' axis (1 for a 1-D batch mesh)."""
  return dict(mesh.shape).get('masks', 1)


def is_multiprocess(mesh: Mesh) -> bool:
  return any(d.process_index != jax.process_index() for d in mesh.devices.flat)


def process_count(mesh: Mesh) -> int:
  return len({d.process_index for d in mesh.devices.flat})


def device_batch_size(batch_size: int, mesh: Mesh) -> int:
  """The smallest multiple of the 'batch' axis's device count >= batch_size (padding is
  marked invalid)."""
  n = dict(mesh.shape)['batch']
  return -(-batch_size // n) * n


def local_batch_size(batch_size: int, mesh: Mesh) -> int:
  """This process's rows of a global batch of `device_batch_size(batch_size)`."""
  return device_batch_size(batch_size, mesh) // process_count(mesh)


def shard_batch(mesh: Mesh, tree):
  """Splits every array of `tree` along its first axis over the mesh. With several
  processes, `tree` holds this process's rows of the global batch."""
  sharding = NamedSharding(mesh, P('batch'))
  if not is_multiprocess(mesh):
    return jax.device_put(tree, sharding)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                      tree)


def replicate(mesh: Mesh, tree):
  sharding = NamedSharding(mesh, P())
  if not is_multiprocess(mesh):
    return jax.device_put(tree, sharding)

  def put(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return jax.device_put(x, sharding)  # already global: reshard on the devices
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
  return jax.tree.map(put, tree)


def local_copy(tree):
  """A replicated global tree as arrays on one local device (for work one process does
  alone, such as the few stored attention maps)."""
  return jax.tree.map(lambda x: x.addressable_data(0) if isinstance(x, jax.Array) else x, tree)


def to_host(tree):
  """Every array as NumPy. An array spread over processes comes back at its global shape
  with this process's shards filled and the rest zero: pair it with `global_valid`."""
  def host(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
      return np.asarray(x)
    out = np.zeros(x.shape, x.dtype)
    for shard in x.addressable_shards:
      out[shard.index] = np.asarray(shard.data)
    return out
  return jax.tree.map(host, tree)


def global_rows(local: np.ndarray, mesh: Mesh, fill=0) -> np.ndarray:
  """This process's rows of a global batch at their place in it (others `fill`): with
  the 1-D mesh over jax.devices(), process p owns rows [p * b, (p + 1) * b)."""
  if not is_multiprocess(mesh):
    return local
  count, p = process_count(mesh), jax.process_index()
  out = np.full((len(local) * count,) + local.shape[1:], fill, local.dtype)
  out[p * len(local):(p + 1) * len(local)] = local
  return out


def local_rows(x: np.ndarray, mesh: Mesh) -> np.ndarray:
  """This process's rows of a global batch [B, ...] read back by `to_host` (the inverse of
  `global_rows`): rows [p * b, (p + 1) * b) of process p."""
  if not is_multiprocess(mesh):
    return x
  b = len(x) // process_count(mesh)
  p = jax.process_index()
  return x[p * b:(p + 1) * b]


def allgather_concat(arrays: list, mesh: Mesh) -> list:
  """Each array [n_p, ...] (n_p may differ between processes; the same trailing shapes and
  dtypes everywhere) concatenated over the processes of `mesh` in process order, the same
  on every process. One collective: the rows travel as bytes (padded to the longest)."""
  if not is_multiprocess(mesh):
    return arrays
  from jax.experimental import multihost_utils
  arrays = [np.ascontiguousarray(a) for a in arrays]
  n = len(arrays[0])
  if any(len(a) != n for a in arrays):
    raise ValueError('allgather_concat: the arrays differ in their first dimension')
  widths = [a[:1].nbytes if n else a.dtype.itemsize * int(np.prod(a.shape[1:]))
            for a in arrays]
  row = -(-sum(widths) // 4) * 4
  counts = np.asarray(multihost_utils.process_allgather(np.asarray(n, np.int64))).reshape(-1)
  if not counts.max():
    return arrays
  packed = np.zeros((int(counts.max()), row), np.uint8)
  start = 0
  for a, w in zip(arrays, widths):
    if n:
      packed[:n, start:start + w] = a.reshape(n, -1).view(np.uint8).reshape(n, w)
    start += w
  gathered = np.asarray(multihost_utils.process_allgather(packed.view(np.uint32)))
  gathered = np.ascontiguousarray(gathered).view(np.uint8)      # [P, max n, row]
  rows = np.concatenate([gathered[p, :c] for p, c in enumerate(counts)])
  out, start = [], 0
  for a, w in zip(arrays, widths):
    part = np.ascontiguousarray(rows[:, start:start + w]).view(a.dtype)
    out.append(part.reshape((len(rows),) + a.shape[1:]))
    start += w
  return out


def allreduce_sums(sums: dict, mesh: Mesh) -> dict:
  """{name: float64 array} summed over the processes of `mesh`, exactly the same on every
  process (added in process order, in float64: the bits travel as uint32)."""
  if not is_multiprocess(mesh):
    return sums
  from jax.experimental import multihost_utils
  names = sorted(sums)
  flat = [np.asarray(sums[k], np.float64).reshape(-1) for k in names]
  sizes = [f.size for f in flat]
  packed = np.concatenate(flat).view(np.uint32) if flat else np.zeros(0, np.uint32)
  gathered = np.asarray(multihost_utils.process_allgather(packed))   # [P, 2 * total]
  per_process = np.ascontiguousarray(gathered).view(np.float64)      # [P, total]
  total = np.zeros(per_process.shape[1], np.float64)
  for row in per_process:
    total = total + row
  out, start = {}, 0
  for k, size in zip(names, sizes):
    out[k] = total[start:start + size].reshape(np.shape(sums[k]))
    start += size
  return out


def allgather_rows(local: np.ndarray, mesh: Mesh, fill=np.nan) -> np.ndarray:
  """Per-image rows [N, ...] (`fill` where this process has none) merged over processes."""
  if not is_multiprocess(mesh):
    return local
  from jax.experimental import multihost_utils
  gathered = np.asarray(multihost_utils.process_allgather(np.asarray(local)))
  out = gathered[0]
  for other in gathered[1:]:
    missing = np.isnan(out) if fill is np.nan or fill != fill else out == fill
    out = np.where(missing, other, out)
  return out


def agree(value: int, mesh: Mesh) -> bool:
  """Whether every process of `mesh` holds the same integer."""
  if not is_multiprocess(mesh):
    return True
  from jax.experimental import multihost_utils
  values = np.asarray(multihost_utils.process_allgather(np.asarray(value, np.int32)))
  return bool((values == values.reshape(-1)[0]).all())
