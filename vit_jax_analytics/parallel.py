"""Data parallelism over local devices: a 1-D mesh over the batch axis.

Parameters are replicated, batches split along their first axis; jitted functions then run
on every device and XLA inserts the reductions. Results do not depend on the device count.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def batch_mesh(devices=None) -> Mesh:
  return Mesh(np.asarray(devices if devices is not None else jax.local_devices()), ('batch',))


def device_batch_size(batch_size: int, mesh: Mesh) -> int:
  """The smallest multiple of the device count >= batch_size (padding is marked invalid)."""
  n = mesh.devices.size
  return -(-batch_size // n) * n


def shard_batch(mesh: Mesh, tree):
  """Splits every array of `tree` along its first axis over the mesh."""
  return jax.device_put(tree, NamedSharding(mesh, P('batch')))


def replicate(mesh: Mesh, tree):
  return jax.device_put(tree, NamedSharding(mesh, P()))
