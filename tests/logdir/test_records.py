"""The event-file record framing against TensorBoard's own pure-Python writer and reader
(an independent implementation of the same format)."""

import io
import os

import pytest
from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
from tensorboard.summary.writer.record_writer import RecordWriter

from vit_jax_analytics.errors import VitAnalyticsError
from vit_jax_analytics.logdir import records

PAYLOADS = [b'', b'x', os.urandom(1000), bytes(range(256)) * 300]


def test_records_are_byte_identical_to_tensorboards_writer_and_read_by_its_reader(tmp_path):
  ours, theirs = io.BytesIO(), io.BytesIO()
  tb = RecordWriter(theirs)
  for data in PAYLOADS:
    records.write_record(ours, data)
    tb.write(data)
  assert ours.getvalue() == theirs.getvalue()
  path = tmp_path / 'events.out.tfevents.1'
  path.write_bytes(ours.getvalue())
  assert list(RawEventFileLoader(str(path)).Load()) == PAYLOADS
  assert list(records.read_records(path)) == PAYLOADS


@pytest.mark.parametrize('damage,what', [
    (lambda b: b[:-3], 'truncated'),
    (lambda b: b[:5], 'truncated record header'),
    (lambda b: b[:20] + bytes([b[20] ^ 1]) + b[21:], 'data fails its checksum'),
    (lambda b: bytes([b[0] ^ 4]) + b[1:], 'length fails its checksum'),
])
def test_a_damaged_file_is_one_line_naming_it(tmp_path, damage, what):
  f = io.BytesIO()
  for data in PAYLOADS[2:]:
    records.write_record(f, data)
  path = tmp_path / 'events.out.tfevents.2'
  path.write_bytes(damage(f.getvalue()))
  with pytest.raises(VitAnalyticsError, match=what) as e:
    list(records.read_records(path))
  assert str(path) in str(e.value) and '\n' not in str(e.value)
