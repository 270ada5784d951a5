"""What the analyses consume: batches of decoded images, and a store to resume from.

An analysis never reads files. It is given a `BatchSource` (decoded images, labels, their
indices and validity) and, to resume an interrupted run, a `ProgressStore`. The sources are
`data.ImageFolderSource` (a folder on disk) and `ArraySource` (arrays in memory); the store
is `logdir.progress_store.LogdirProgressStore`.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Mapping, NamedTuple, Optional, Protocol

import numpy as np

UNLABELLED = -1
# One default for every analysis (and the CLI's --batch-size).
DEFAULT_BATCH_SIZE = 64


class Batch(NamedTuple):
  """images [B, S, S, 3]; labels [B] (UNLABELLED where unknown); index [B] into the
  source (-1 for padding); valid [B] (False for padding and unreadable images)."""
  images: np.ndarray
  labels: np.ndarray
  index: np.ndarray
  valid: np.ndarray


def num_batches(n_images: int, batch_size: int) -> int:
  return -(-n_images // batch_size)


class BatchSource(Protocol):
  """N images served as fixed-size batches.

  `batches(b, first_batch=k)` yields batch k, k+1, ... where batch j always holds images
  [j*b, (j+1)*b) (the last padded with invalid entries), so a run can resume at any batch.
  """

  def __len__(self) -> int: ...

  def batches(self, batch_size: int, first_batch: int = 0, *, progress: bool = True,
              desc: str = 'images') -> Iterator[Batch]: ...

  def take(self, n: Optional[int]) -> 'BatchSource': ...


@dataclasses.dataclass(frozen=True)
class ArraySource:
  """Images already in memory: images [N, S, S, 3] normalised as the model expects,
  labels [N] (default: all UNLABELLED)."""
  images: np.ndarray
  labels: Optional[np.ndarray] = None

  def __len__(self):
    return len(self.images)

  def take(self, n: Optional[int]) -> 'ArraySource':
    if n is None or n >= len(self):
      return self
    return ArraySource(self.images[:n], None if self.labels is None else self.labels[:n])

  def select(self, indices) -> 'ArraySource':
    """The images at `indices`, in that order."""
    indices = np.asarray(indices, np.int64)
    return ArraySource(self.images[indices],
                       None if self.labels is None else np.asarray(self.labels)[indices])

  def slice(self, start: int, stop: int) -> 'ArraySource':
    return ArraySource(self.images[start:stop],
                       None if self.labels is None else self.labels[start:stop])

  def batches(self, batch_size: int, first_batch: int = 0, *, progress: bool = True,
              desc: str = 'images') -> Iterator[Batch]:
    n = len(self)
    labels = (np.full(n, UNLABELLED, np.int32) if self.labels is None
              else np.asarray(self.labels, np.int32))
    for start in range(first_batch * batch_size, n, batch_size):
      idx = np.arange(start, start + batch_size)
      real = idx < n
      images = np.zeros((batch_size,) + self.images.shape[1:], np.float32)
      images[real] = self.images[idx[real]]
      batch_labels = np.full(batch_size, UNLABELLED, np.int32)
      batch_labels[real] = labels[idx[real]]
      yield Batch(images, batch_labels, np.where(real, idx, -1).astype(np.int32), real)


class ProgressStore(Protocol):
  """Saved accumulators of one computation (the store is keyed by what changes its
  results), so an interrupted run continues after its last saved batch."""

  def load(self) -> Optional[tuple]:
    """(next_batch, {name: array}) saved earlier, or None."""

  def save(self, next_batch: int, arrays: Mapping[str, np.ndarray]) -> None: ...


@dataclasses.dataclass(frozen=True)
class SubsetSource:
  """The images `indices` (ascending) of `parent`, as a BatchSource of their own: batch
  j holds subset positions [j*b, (j+1)*b), and `Batch.index` is the position in the subset
  (indices[position] is the image's index in the parent).

  The parent's batches are read in order and the selected rows repacked, so any source
  works; sources with a `select(indices)` method (ArraySource, data.ImageFolderSource)
  decode only the selected images."""
  parent: 'BatchSource'
  indices: np.ndarray

  def __len__(self):
    return len(self.indices)

  def take(self, n: Optional[int]) -> 'SubsetSource':
    return self if n is None else SubsetSource(self.parent, self.indices[:n])

  def slice(self, start: int, stop: int) -> 'SubsetSource':
    """Subset positions [start, stop) (a process's shard); positions restart at 0."""
    return SubsetSource(self.parent, self.indices[start:stop])

  def batches(self, batch_size: int, first_batch: int = 0, *, progress: bool = True,
              desc: str = 'images') -> Iterator[Batch]:
    if hasattr(self.parent, 'select'):
      yield from self.parent.select(self.indices).batches(
          batch_size, first_batch, progress=progress, desc=desc)
      return
    wanted = np.asarray(self.indices)[first_batch * batch_size:]
    position = {int(i): p for p, i in enumerate(wanted, start=first_batch * batch_size)}
    rows = []

    def pack(rows):
      images = np.zeros((batch_size,) + rows[0][0].shape, np.float32)
      labels = np.full(batch_size, UNLABELLED, np.int32)
      index = np.full(batch_size, -1, np.int32)
      valid = np.zeros(batch_size, bool)
      for r, (image, label, pos, ok) in enumerate(rows):
        images[r], labels[r], index[r], valid[r] = image, label, pos, ok
      return Batch(images, labels, index, valid)

    for batch in self.parent.batches(batch_size, 0, progress=progress, desc=desc):
      for r in range(len(batch.index)):
        pos = position.get(int(batch.index[r]))
        if pos is not None:
          rows.append((batch.images[r], batch.labels[r], pos, bool(batch.valid[r])))
          if len(rows) == batch_size:
            yield pack(rows)
            rows = []
    if rows:
      yield pack(rows)


def subset_source(source: 'BatchSource', indices) -> 'BatchSource':
  """`source` itself when `indices` are all its images in order, else a SubsetSource."""
  indices = np.asarray(indices, np.int64)
  if len(indices) == len(source) and np.array_equal(indices, np.arange(len(source))):
    return source
  return SubsetSource(source, indices)


def shard_range(n: int, process: int, count: int) -> tuple:
  """[start, stop) of process `process`'s contiguous shard of n images."""
  per = -(-n // count)
  return min(n, process * per), min(n, (process + 1) * per)


@dataclasses.dataclass(frozen=True)
class ProcessShard:
  """This process's contiguous shard [start, stop) of a source's `total` images, served
  as `num_batches` batches (padded with invalid batches so that every process runs the
  same number), indices into the whole source. `len()` is the whole source's."""
  shard: 'BatchSource'
  start: int
  total: int
  num_batches: int

  def __len__(self):
    return self.total

  def take(self, n):
    raise NotImplementedError('take() before sharding')

  def batches(self, batch_size: int, first_batch: int = 0, *, progress: bool = True,
              desc: str = 'images') -> Iterator[Batch]:
    k = first_batch
    for batch in self.shard.batches(batch_size, first_batch, progress=progress, desc=desc):
      yield batch._replace(index=np.where(batch.index >= 0, batch.index + self.start, -1)
                           .astype(np.int32))
      k += 1
    for _ in range(k, self.num_batches):  # this shard is shorter: empty batches
      yield Batch(np.zeros((batch_size,) + self.image_shape(), np.float32),
                  np.full(batch_size, UNLABELLED, np.int32), np.full(batch_size, -1, np.int32),
                  np.zeros(batch_size, bool))

  def image_shape(self) -> tuple:
    for batch in self.shard.batches(1, progress=False):
      return batch.images.shape[1:]
    raise ValueError('cannot pad an empty shard')


def process_shard(source, batch_size: int, process: int, count: int):
  """The BatchSource of process `process` of `count`: only its images are read (the
  source must have `slice(start, stop)`); `batch_size` is the per-process batch."""
  n = len(source)
  start, stop = shard_range(n, process, count)
  per = -(-n // count)
  return ProcessShard(source.slice(start, stop), start, n, num_batches(per, batch_size))
