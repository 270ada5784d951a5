"""Progress of interrupted runs, for resuming: `<logdir>/<run>/.vit_analytics_state/`.

Implements `batches.ProgressStore` for one computation, keyed by everything that changes
its results. Not part of the data a reader sees. On an object store each save is one put of
the whole file (no rename).
"""

from __future__ import annotations

import io
import os
import sys
import zipfile
from pathlib import Path
from typing import Mapping, Optional

import numpy as np

from vit_jax_analytics import storage
from vit_jax_analytics.errors import OutputError
from vit_jax_analytics.logdir.writer import run_directory

STATE_DIR = '.vit_analytics_state'


class _Foreign(ValueError):
  """A readable progress file without what this computation saves."""


class LogdirProgressStore:
  """Accumulators of the computation `key` of `analysis` in <logdir>/<run>."""

  def __init__(self, logdir, run: str, analysis: str, key: str,
               required: Optional[Mapping[str, tuple]] = None):
    """required: {array name: its shape} that a saved file must hold (else it is set
    aside like a damaged one: e.g. a file left by another version)."""
    self.path = run_directory(logdir, run) / STATE_DIR / f'{analysis}-{key}.npz'
    self.required = dict(required or {})

  def save(self, next_batch: int, arrays: Mapping[str, np.ndarray]) -> None:
    """Atomically records the accumulators after `next_batch` batches."""
    if storage.is_url(self.path):
      buf = io.BytesIO()
      np.savez(buf, __next_batch__=np.asarray(next_batch), **arrays)
      try:
        self.path.write_bytes(buf.getbuffer())
      except Exception as e:  # fsspec implementations raise their own types
        raise OutputError(f'{self.path}: cannot save progress ({type(e).__name__}: '
                          f'{str(e).splitlines()[0][:200] if str(e) else ""})') from None
      return
    tmp = self.path.with_suffix(f'.{os.getpid()}.tmp.npz')
    try:
      self.path.parent.mkdir(parents=True, exist_ok=True)
      np.savez(tmp, __next_batch__=np.asarray(next_batch), **arrays)
      os.replace(tmp, self.path)
    except OSError as e:
      raise OutputError(f'{self.path}: cannot save progress ({e.strerror or e})') from None
    finally:
      tmp.unlink(missing_ok=True)

  def load(self) -> Optional[tuple]:
    """(next_batch, arrays) saved by an interrupted run, or None. A damaged file is set
    aside (renamed *.damaged, with a warning) and the run starts over."""
    if not self.path.exists():
      return None
    try:
      source = (io.BytesIO(self.path.read_bytes()) if storage.is_url(self.path)
                else self.path)
      with np.load(source, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files if k != '__next_batch__'}
        next_batch = f['__next_batch__']
        if next_batch.shape != () or next_batch.dtype.kind not in 'iu' or next_batch < 0:
          raise ValueError(f'__next_batch__ is {next_batch!r}')
        for name, shape in self.required.items():
          if name not in arrays or arrays[name].shape != tuple(shape):
            raise _Foreign(f'lacks {name} of shape {tuple(shape)}: another version\'s?')
        return int(next_batch), arrays
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
      damaged = self.path.with_suffix('.damaged')
      storage.replace(self.path, damaged)
      reason = str(e) if isinstance(e, _Foreign) else type(e).__name__
      print(f'warning: {self.path}: damaged progress file ({reason}) moved to '
            f'{damaged.name}; starting over', file=sys.stderr)
      return None

  def clear(self) -> None:
    self.path.unlink(missing_ok=True)
    try:
      self.path.parent.rmdir()
    except OSError:
      pass  # other analyses' progress, or a damaged file kept for the user


def state_directory(logdir, run: str):
  return run_directory(logdir, run) / STATE_DIR
