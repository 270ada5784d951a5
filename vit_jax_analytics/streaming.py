"""The batch stream every analysis reads its images through, and the clocks of its stages.

`open_stream` makes the mesh (every device of every process; with mask_shards K > 1 the 2-D
('batch', 'masks') mesh of parallel.py), sizes the per-process batch (no bigger than the
images need: a padded batch computes its padding too), takes this process's shard of the
source when the mesh spans several processes, and casts and replicates the params once. A
`BatchStream` then yields the batches, puts each on the mesh (images in the params'
precision), and brings results back to the host. strength.py, patterns/ and importance
read their images only through it; only this module makes meshes for the analyses (and,
for in-training analysis, places a probe batch where global params are: `ProbePlacement`).

A `StageClock` times one stage's batches (its first apart: compilation) and records a typed
`StageTiming`, which the cost report (pipeline.py) reads.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vit_jax_analytics import parallel, precision
from vit_jax_analytics.batches import Batch, BatchSource, process_shard
from vit_jax_analytics.errors import OptionError


def analysis_mesh(mask_shards: int = 1):
  """The mesh analyses run on: every device of every process, ('batch',) or, with
  mask_shards K > 1, ('batch', 'masks') (OptionError when K does not divide the devices)."""
  return parallel.batch_mesh(mask_shards=mask_shards)


@dataclasses.dataclass(frozen=True)
class BatchStream:
  """One analysis's images on a mesh. source: this process's shard (all of it on one
  process); batch_size: images per batch on this process; params: cast to the analysis's
  precision and replicated over the mesh."""
  mesh: Any
  source: BatchSource
  batch_size: int
  params: Any

  def over(self, source: BatchSource, batch_size: int) -> 'BatchStream':
    """The same mesh and params over another source (e.g. a subset of the images)."""
    return _open(self.mesh, source, batch_size, self.params)

  def batches(self, first_batch: int = 0, *, progress: bool = True,
              desc: str = 'images') -> Iterator[Batch]:
    return self.source.batches(self.batch_size, first_batch, progress=progress, desc=desc)

  def cast(self, images):
    """Images [B, ...] in the params' precision (on the host)."""
    return precision.like_params(images, self.params)

  def put(self, images, *arrays):
    """(images in the params' precision, *arrays), each split over the mesh's 'batch'
    axis along its first axis (with several processes, this process's part)."""
    return parallel.shard_batch(self.mesh, (self.cast(images),) + arrays)

  def fetch(self, tree):
    """Every array of `tree` as NumPy (an array spread over processes at its global shape,
    this process's rows filled: see global_batch)."""
    return parallel.to_host(tree)

  def global_batch(self, batch: Batch) -> Batch:
    """This process's batch at its rows of the global batch (the others invalid)."""
    if not parallel.is_multiprocess(self.mesh):
      return batch
    mesh = self.mesh
    return batch._replace(valid=parallel.global_rows(batch.valid, mesh),
                          labels=parallel.global_rows(batch.labels, mesh, -1),
                          index=parallel.global_rows(batch.index, mesh, -1))

  @property
  def multiprocess(self) -> bool:
    return parallel.is_multiprocess(self.mesh)


def _open(mesh, source: BatchSource, batch_size: int, params) -> BatchStream:
  # No bigger batch than the images need (a padded batch computes its padding too).
  batch_size = parallel.local_batch_size(min(batch_size, max(len(source), 1)), mesh)
  if parallel.is_multiprocess(mesh):
    if hasattr(source, 'grids'):  # naflex.NaFlexSource: each process's grids would differ
      raise OptionError('distributed', 'NaFlex images (a batch per patch grid) are analysed '
                                       'on one process; run without --distributed')
    source = process_shard(source, batch_size, jax.process_index(),
                           parallel.process_count(mesh))
  return BatchStream(mesh, source, batch_size, params)


def open_stream(params, source: BatchSource, batch_size: int, dtype: str = 'float32',
                mesh=None) -> BatchStream:
  """The stream of `source` in batches of at most `batch_size` images on `mesh` (default
  analysis_mesh()), the params cast to `dtype` (precision.py) and replicated."""
  mesh = analysis_mesh() if mesh is None else mesh
  return _open(mesh, source, batch_size,
               parallel.replicate(mesh, precision.cast(params, dtype)))


@dataclasses.dataclass(frozen=True)
class StageTiming:
  """What one stage took: wall seconds, its first batch's (which includes compilation),
  batches, valid images, the compilation's seconds (None: unknown), and the
  forward-equivalents per image of what it evaluated (None: as planned). A stage resumed
  past its last batch ran none: only what it evaluated is known."""
  seconds: Optional[float] = None
  first_batch_seconds: Optional[float] = None
  batches: int = 0
  images: Optional[int] = None
  compile_seconds: Optional[float] = None
  forward_eq: Optional[float] = None


class StageClock:
  """Wall time of a stage, its first batch (which includes compilation) apart."""

  def __init__(self):
    self.start = self.last = time.perf_counter()
    self.batches, self.images, self.first = 0, 0, None
    self.compile_seconds = None

  def compile(self, fn, *args, **kwargs) -> None:
    """Compiles jitted `fn` for `args` ahead of its first call, timing it (the call then
    finds the compiled program in JAX's cache; with the persistent cache on, a second run
    loads it from disk instead)."""
    if self.compile_seconds is None and hasattr(fn, 'lower'):
      t0 = time.perf_counter()
      fn.lower(*args, **kwargs).compile()
      self.compile_seconds = time.perf_counter() - t0

  def batch(self, valid) -> None:
    now = time.perf_counter()
    if self.first is None:
      self.first = now - self.last
    self.last = now
    self.batches += 1
    self.images += int(np.sum(valid))

  def timing(self, **evaluated) -> Optional[StageTiming]:
    """The stage's StageTiming (None when it ran no batch); `evaluated` sets its other
    fields (images, forward_eq)."""
    if not self.batches:
      return None
    # Up to the stage's last batch: a clock read after a later stage ran (importance reads
    # stage 1's after stage 2) must not count that stage.
    total = self.last - self.start
    steady = (total - self.first) / (self.batches - 1) if self.batches > 1 else None
    return StageTiming(
        seconds=total, first_batch_seconds=self.first, batches=self.batches,
        **{'images': self.images, **evaluated},
        # The first batch's excess over a later one: compilation (or a cache load).
        compile_seconds=self.compile_seconds if self.compile_seconds is not None else
        max(self.first - steady, 0.) if steady is not None else None)


# --- in-training analysis: a probe batch placed where global params are ---------------------

def global_devices(params):
  """The devices of the first leaf of `params` that spans several processes (a global
  jax.Array, not fully addressable), or None when every leaf is on this process."""
  for leaf in jax.tree.leaves(params):
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
      return leaf.sharding.device_set
  return None


class ProbePlacement:
  """How the probe batch meets the params. On one process: as before (arrays on the default
  device; jit moves them to the params' devices). With global params: the probe goes to
  the params' devices as a replicated global array (every process holds the same probe),
  and results come back to every process through an all-gather (`fetch`)."""

  def __init__(self, params):
    devices = global_devices(params)
    self.sharding = None
    if devices is not None:
      mesh = Mesh(np.asarray(sorted(devices, key=lambda d: d.id)), ('probe',))
      self.sharding = NamedSharding(mesh, P())

  def put(self, x):
    if self.sharding is None:
      return jnp.asarray(x)
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, self.sharding, lambda index: x[index])

  def fetch(self, tree):
    """NumPy arrays of every leaf (each a global array under global params)."""
    if self.sharding is None:
      return jax.tree.map(np.asarray, tree)
    return jax.tree.map(lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True))
                        if isinstance(x, jax.Array) and not x.is_fully_addressable
                        else np.asarray(x), tree)
