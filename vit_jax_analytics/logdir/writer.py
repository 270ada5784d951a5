"""Writes tagged values to a TensorBoard logdir — the only writer of that format.

Each (analysis, step) of a run is one TensorBoard event file,
`<logdir>/<run>/events.out.tfevents.<time>.<host>.<pid>.<analysis>.step<step>`, holding one
value per tag at that step, each with our plugin metadata (`<time>` in microseconds, so
files sort in the order they were written). The file is written under a name TensorBoard
ignores and renamed into place when complete; the run's previous file of the same analysis
and step is then removed, and only that one: other steps stay. On an object store (a
`gs://`, `s3://`, ... logdir: `storage.py`) the file is put whole, as one object, under its
final name (no rename there). Format version 1 wrote
`...<analysis>` (no step suffix), every value at step 0; such a file is step 0 here.
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
from tensorboard.compat.proto import (event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2,
                                      types_pb2)
from tensorboard.util import tensor_util

from vit_jax_analytics import storage
from vit_jax_analytics.errors import OutputError, VitAnalyticsError
from vit_jax_analytics.logdir import metadata, records

_RUN_NAME = re.compile(r'^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$')


def check_run_name(run: str) -> str:
  if not isinstance(run, str) or not _RUN_NAME.fullmatch(run) or '..' in run:  # not match: '$' matches before a final newline
    raise VitAnalyticsError(f'run name {run!r}: expected letters, digits, ".", "_" or "-" '
                            f'(at most 128, not starting with a dot)')
  return run


def run_directory(logdir, run: str):
  """<logdir>/<run>: a Path, or a storage.RemotePath on an object store."""
  try:
    return storage.location(logdir) / check_run_name(run)
  except ValueError as e:  # an unknown scheme or a missing fsspec implementation
    if isinstance(e, VitAnalyticsError):
      raise
    raise OutputError(str(e)) from None


def check_writable(logdir, run: str) -> Path:
  """Creates <logdir>/<run> and proves a file can be written there, before any work is
  done; OutputError (one line, naming the path) otherwise."""
  directory = run_directory(logdir, run)
  probe = directory / f'.write-check.{os.getpid()}'
  if storage.is_url(directory):
    try:
      probe.write_bytes(b'')
      probe.unlink(missing_ok=True)
    except Exception as e:  # fsspec implementations raise their own types (auth, network)
      raise OutputError(f'{directory}: cannot write results there ({type(e).__name__}: '
                        f'{str(e).splitlines()[0][:200] if str(e) else ""})') from None
    return directory
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
    proto = summary_pb2.Summary.Value()
    self.fill(proto, tag, analysis)
    return proto

  def fill(self, proto: summary_pb2.Summary.Value, tag: str, analysis: str) -> None:
    """Sets `proto` in place (inside an Event: a message built apart and then put into
    the Event held one more copy of the values) to this value under `tag`."""
    proto.tag = tag
    proto.metadata.CopyFrom(
        metadata.create_summary_metadata(analysis, self.kind, self.description, self.axes))
    if self.kind == 'array' and self.data.dtype == np.float16:
      _fill_half(proto.tensor, self.data)
    elif self.kind == 'array':
      proto.tensor.CopyFrom(tensor_util.make_tensor_proto(self.data))
    elif self.kind == 'json':
      proto.tensor.CopyFrom(tensor_util.make_tensor_proto(
          np.array(json.dumps(self.data, allow_nan=False).encode(), dtype=object)))
    else:
      proto.tensor.CopyFrom(tensor_util.make_tensor_proto(np.array(self.data, dtype=object)))


def array_proto(data: np.ndarray) -> tensor_pb2.TensorProto:
  """`tensor_util.make_tensor_proto`, except that float16 arrays go in as their bytes
  (`tensor_content`, as TensorFlow writes them) rather than through TensorBoard's
  element-by-element `half_val` loop, which took ~1 s per million values (the stored
  attention maps are millions). Readers (`tensor_util.make_ndarray`) take either."""
  if data.dtype != np.float16:
    return tensor_util.make_tensor_proto(data)
  proto = tensor_pb2.TensorProto()
  _fill_half(proto, data)
  return proto


def _fill_half(proto: tensor_pb2.TensorProto, data: np.ndarray) -> None:
  proto.dtype = types_pb2.DT_HALF
  proto.tensor_shape.dim.extend(
      tensor_shape_pb2.TensorShapeProto.Dim(size=int(s)) for s in data.shape)
  proto.tensor_content = np.require(data, np.dtype('<f2'), 'C').tobytes()


def write_analysis(logdir, run: str, analysis: str, values: Mapping[str, Value],
                   step: int = 0) -> Path:
  """Writes `values` as tags `<analysis>/<name>` at `step` into one event file in
  <logdir>/<run>, atomically, replacing the previous file of the same analysis and step
  (other steps stay). Returns its path."""
  if analysis not in metadata.ANALYSES:
    raise ValueError(f'analysis must be one of {metadata.ANALYSES}, got {analysis!r}')
  if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or not 0 <= step < 2**62:
    raise ValueError(f'step must be an integer >= 0, got {step!r}')
  step = int(step)
  directory = run_directory(logdir, run)
  now = time.time()
  # Microseconds, and never before the newest file of the run: TensorBoard's loaders read a
  # directory's files in name order.
  stamp = max(int(now * 1e6), _newest_stamp(directory) + 1)
  final = directory / (f'events.out.tfevents.{stamp:016d}.{socket.gethostname()}.'
                       f'{os.getpid()}.{analysis}.step{step}')
  if storage.is_url(directory):
    return _put_analysis(directory, final, analysis, values, now, step)
  tmp = directory / f'.{analysis}.{os.getpid()}.partial'  # no 'tfevents': TensorBoard skips it
  try:
    directory.mkdir(parents=True, exist_ok=True)
    _write_events(tmp, analysis, values, now, step)
    previous = existing_analysis_files(directory, analysis, step)
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


def _put_analysis(directory, final, analysis, values, now, step):
  """write_analysis on an object store: the event file put as one object under its final
  name (an object appears whole or not at all), then the previous one removed."""
  buf = io.BytesIO()
  _write_event_stream(buf, analysis, values, now, step)
  previous = existing_analysis_files(directory, analysis, step)
  try:
    final.write_bytes(buf.getbuffer())
  except Exception as e:  # fsspec implementations raise their own types (auth, network)
    raise OutputError(f'{directory}: cannot write the {analysis} results ({type(e).__name__}: '
                      f'{str(e).splitlines()[0][:200] if str(e) else ""})') from None
  for old in previous:
    if old != final:
      old.unlink(missing_ok=True)
  return final


def _varint(n: int) -> bytes:
  out = bytearray()
  while n > 0x7F:
    out.append(n & 0x7F | 0x80)
    n >>= 7
  out.append(n)
  return bytes(out)


def _field(number: int, length: int) -> bytes:
  """The key and length prefix of a length-delimited protobuf field."""
  return _varint(number << 3 | 2) + _varint(length)


def _event_pieces(value: Value, tag: str, analysis: str, now: float, step: int) -> list:
  """The serialised Event of one value, as pieces. A float16 array's bytes are not copied:
  the Event is serialised without them, and they follow as a second `tensor` field
  (Summary.Value field 8) holding only `tensor_content` (TensorProto field 4), which
  protobuf parsers merge into the first (a singular message field seen twice is merged).
  Otherwise: the Event serialised whole (at most two copies of the data at once)."""
  event = event_pb2.Event(wall_time=now, step=step)
  proto = event.summary.value.add()
  if not (value.kind == 'array' and value.data.dtype == np.float16):
    value.fill(proto, tag, analysis)
    return [event.SerializeToString()]
  data = np.require(value.data, np.dtype('<f2'), 'C')
  content = memoryview(data.reshape(-1)).cast('B') if data.size else b''
  empty = Value('array', np.zeros(0, np.float16), value.axes, value.description)
  empty.fill(proto, tag, analysis)
  proto.tensor.ClearField('tensor_shape')
  proto.tensor.tensor_shape.dim.extend(
      tensor_shape_pb2.TensorShapeProto.Dim(size=int(s)) for s in data.shape)
  value_head = proto.SerializeToString()
  tensor_tail = _field(4, len(content))
  value_tail = _field(8, len(tensor_tail) + len(content)) + tensor_tail
  value_len = len(value_head) + len(value_tail) + len(content)
  summary = _field(1, value_len)
  event_head = (event_pb2.Event(wall_time=now, step=step).SerializeToString()
                + _field(5, len(summary) + value_len))
  return [event_head + summary + value_head + value_tail, content]


def _write_events(path: Path, analysis: str, values: Mapping[str, Value], now: float,
                  step: int) -> None:
  with open(path, 'wb') as f:
    _write_event_stream(f, analysis, values, now, step)
    f.flush()
    os.fsync(f.fileno())


def _write_event_stream(f, analysis: str, values: Mapping[str, Value], now: float,
                        step: int) -> None:
  records.write_record(f, event_pb2.Event(wall_time=now,
                                          file_version='brain.Event:2').SerializeToString())
  for name, value in values.items():
    records.write_record(f, _event_pieces(value, f'{analysis}/{name}', analysis, now, step))


_STEP_SUFFIX = re.compile(r'\.step([0-9]+)$')


def file_analysis_step(path) -> tuple:
  """(analysis, step) of one of our event files by its name, or (None, None). A version-1
  file (`...<analysis>`, no step suffix) is step 0."""
  name = path.name if isinstance(path, (Path, storage.RemotePath)) else Path(path).name
  if 'tfevents' not in name:
    return None, None
  m = _STEP_SUFFIX.search(name)
  step, stem = (int(m.group(1)), name[:m.start()]) if m else (0, name)
  analysis = stem.rsplit('.', 1)[-1]
  return (analysis, step) if analysis in metadata.ANALYSES else (None, None)


def existing_analysis_files(directory, analysis: str, step=None) -> list:
  """The run's event files of `analysis` (at `step`, or at every step when None)."""
  return sorted(p for p in storage.location(directory).glob('events.out.tfevents.*')
                if file_analysis_step(p)[0] == analysis
                and (step is None or file_analysis_step(p)[1] == step))


def _newest_stamp(directory: Path) -> int:
  stamps = [0]
  for p in storage.location(directory).glob('events.out.tfevents.*'):
    part = p.name.split('.')[3] if p.name.count('.') >= 3 else ''
    if part.isdigit():
      stamp = int(part)
      stamps.append(stamp * 10**6 if len(part) <= 10 else stamp)  # version 1: seconds
  return max(stamps)
