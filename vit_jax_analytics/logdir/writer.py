"""Writes tagged values to a TensorBoard logdir — the only writer of that format.

Each analysis of a run is one TensorBoard event file,
`<logdir>/<run>/events.out.tfevents.<time>.<host>.<pid>.<analysis>`, holding one value per
tag at step 0 (so TensorBoard's per-tag sampling drops nothing), each with our plugin
metadata. The file is written under a name TensorBoard ignores and renamed into place when
complete; the run's previous file of the same analysis is then removed.
"""

from __future__ import annotations

import io
import json
import os
import re
import socket
import time
from pathlib import Path
from typing import Mapping

import numpy as np
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter
from tensorboard.util import tensor_util

from vit_jax_analytics.errors import OutputError, VitAnalyticsError
from vit_jax_analytics.logdir import metadata

_RUN_NAME = re.compile(r'^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$')


def check_run_name(run: str) -> str:
  if not _RUN_NAME.match(run or '') or '..' in run:
    raise VitAnalyticsError(f'run name {run!r}: expected letters, digits, ".", "_" or "-" '
                            f'(at most 128, not starting with a dot)')
  return run


def run_directory(logdir, run: str) -> Path:
  return Path(logdir) / check_run_name(run)


def check_writable(logdir, run: str) -> Path:
  """Creates <logdir>/<run> and proves a file can be written there, before any work is
  done; OutputError (one line, naming the path) otherwise."""
  directory = run_directory(logdir, run)
  probe = directory / f'.write-check.{os.getpid()}'
  try:
    directory.mkdir(parents=True, exist_ok=True)
    probe.write_bytes(b'')
    probe.unlink()
  except OSError as e:
    raise OutputError(f'{directory}: cannot write results there ({e.strerror or e})') from None
  return directory


class Value:
  """One tagged value of an analysis: an array, a JSON-able object, or PNG bytes."""

  def __init__(self, kind, data, axes=None, description=''):
    self.kind, self.data, self.axes, self.description = kind, data, axes, description

  @classmethod
  def array(cls, data, axes=None, description=''):
    data = np.asarray(data)
    if axes is not None and len(axes) != data.ndim:
      raise ValueError(f'axes {axes} do not match an array of shape {data.shape}')
    if data.dtype == np.float64:
      data = data.astype(np.float32)
    return cls('array', data, axes, description)

  @classmethod
  def json(cls, obj, description=''):
    return cls('json', obj, None, description)

  @classmethod
  def png(cls, image_u8, description=''):
    """image_u8: [H, W] or [H, W, 3|4] uint8."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image_u8, np.uint8)).save(buf, format='PNG')
    return cls('png', buf.getvalue(), None, description)

  def to_proto(self, tag: str, analysis: str) -> summary_pb2.Summary.Value:
    if self.kind == 'array':
      tensor = tensor_util.make_tensor_proto(self.data)
    elif self.kind == 'json':
      tensor = tensor_util.make_tensor_proto(
          np.array(json.dumps(self.data, allow_nan=False).encode(), dtype=object))
    else:
      tensor = tensor_util.make_tensor_proto(np.array(self.data, dtype=object))
    meta = metadata.create_summary_metadata(analysis, self.kind, self.description, self.axes)
    return summary_pb2.Summary.Value(tag=tag, tensor=tensor, metadata=meta)


def write_analysis(logdir, run: str, analysis: str, values: Mapping[str, Value]) -> Path:
  """Writes `values` as tags `<analysis>/<name>` of one event file in <logdir>/<run>,
  atomically, replacing the previous file of the same analysis. Returns its path."""
  if analysis not in metadata.ANALYSES:
    raise ValueError(f'analysis must be one of {metadata.ANALYSES}, got {analysis!r}')
  directory = run_directory(logdir, run)
  now = time.time()
  final = directory / (f'events.out.tfevents.{int(now):010d}.{socket.gethostname()}.'
                       f'{os.getpid()}.{analysis}')
  tmp = directory / f'.{analysis}.{os.getpid()}.partial'  # no 'tfevents': TensorBoard skips it
  try:
    directory.mkdir(parents=True, exist_ok=True)
    _write_events(tmp, analysis, values, now)
    previous = existing_analysis_files(directory, analysis)
    os.replace(tmp, final)
  except OSError as e:  # a full disk, a read-only directory: say where, keep nothing half
    raise OutputError(f'{directory}: cannot write the {analysis} results '
                      f'({e.strerror or e})') from None
  finally:
    tmp.unlink(missing_ok=True)
  for old in previous:
    if old != final:
      old.unlink(missing_ok=True)
  return final


def _write_events(path: Path, analysis: str, values: Mapping[str, Value], now: float) -> None:
  with open(path, 'wb') as f:
    writer = RecordWriter(f)
    writer.write(event_pb2.Event(wall_time=now, file_version='brain.Event:2').SerializeToString())
    for name, value in values.items():
      summary = summary_pb2.Summary(value=[value.to_proto(f'{analysis}/{name}', analysis)])
      writer.write(event_pb2.Event(wall_time=now, step=0, summary=summary).SerializeToString())
    f.flush()
    os.fsync(f.fileno())


def existing_analysis_files(directory: Path, analysis: str) -> list:
  return sorted(Path(directory).glob(f'events.out.tfevents.*.{analysis}'))
