"""TFRecord framing of event files, with a compiled CRC-32C.

An event file is a sequence of records, each
  uint64 length (little-endian) | uint32 masked CRC-32C of those 8 bytes | data |
  uint32 masked CRC-32C of data
(the framing TensorBoard and TensorFlow read). TensorBoard's own writer and Python reader
compute the CRC in pure Python when TensorFlow is not installed: about 0.3 s per MiB, so
a run with stored attention maps (tens of MiB) spent most of a minute in checksums when
written and again each time it was read. Here the CRC comes from `google_crc32c` (C).
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO, Iterator

import google_crc32c

from vit_jax_analytics.errors import VitAnalyticsError

_MASK_DELTA = 0xA282EAD8
_CHUNK = 1 << 22   # bytes copied out of a memoryview at a time for the CRC


def masked_crc(data: bytes) -> int:
  """The CRC-32C of `data`, rotated right by 15 bits plus a constant (TFRecord's mask)."""
  return _mask(google_crc32c.value(data))


def _mask(crc: int) -> int:
  return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def write_record(f: BinaryIO, data) -> None:
  """One record of `data`: bytes, or a list of pieces (bytes or byte memoryviews) written
  one after the other and never joined (the writer frames a large array's own bytes)."""
  pieces = [data] if isinstance(data, (bytes, bytearray)) else list(data)
  header = struct.pack('<Q', sum(len(p) for p in pieces))
  f.write(header + struct.pack('<I', masked_crc(header)))
  crc = 0
  for p in pieces:
    f.write(p)
    for i in range(0, len(p), _CHUNK):  # google_crc32c takes bytes, not views
      crc = google_crc32c.extend(crc, bytes(p[i:i + _CHUNK]))
  f.write(struct.pack('<I', _mask(crc)))


def read_records(path) -> Iterator[bytes]:
  """The data of every record of the event file at `path`; a truncated or damaged record
  is a one-line VitAnalyticsError naming the file and the record's byte offset (our files
  are written whole and renamed into place, so a damaged one is never a write in
  progress)."""
  path = path if hasattr(path, 'read_bytes') else Path(path)  # or a storage.RemotePath
  buf = path.read_bytes()
  pos = 0
  while pos < len(buf):
    start = pos
    if pos + 12 > len(buf):
      raise _damaged(path, start, 'truncated record header')
    header = buf[pos:pos + 8]
    (length,), (header_crc,) = struct.unpack('<Q', header), struct.unpack('<I', buf[pos + 8:pos + 12])
    if masked_crc(header) != header_crc:
      raise _damaged(path, start, 'record length fails its checksum')
    pos += 12
    if pos + length + 4 > len(buf):
      raise _damaged(path, start, f'record of {length} bytes is truncated')
    data = buf[pos:pos + length]
    (data_crc,) = struct.unpack('<I', buf[pos + length:pos + length + 4])
    if masked_crc(data) != data_crc:
      raise _damaged(path, start, 'record data fails its checksum')
    pos += length + 4
    yield data


def _damaged(path: Path, offset: int, what: str) -> VitAnalyticsError:
  return VitAnalyticsError(f'{path}: damaged event file ({what} at byte {offset}); '
                           f'rerun the analysis that wrote it')
