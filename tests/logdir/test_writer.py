import numpy as np
import pytest

from vit_jax_analytics.errors import OutputError, VitAnalyticsError
from vit_jax_analytics.logdir import reader, records, writer
from vit_jax_analytics.logdir.writer import Value


def values(scale):
  return {'meta': Value.json({'scale': scale}),
          'taylor': Value.array(np.full((2, 3), scale, np.float64), ('layer', 'head')),
          'picture': Value.png(np.zeros((4, 4), np.uint8))}


def test_write_read_and_replace(tmp_path):
  first = writer.write_analysis(tmp_path, 'run', 'importance', values(1.))
  got = reader.read_run(tmp_path / 'run')
  assert got['importance/meta'] == {'scale': 1.}
  assert got['importance/taylor'].dtype == np.float32 and got['importance/taylor'].shape == (2, 3)
  assert got['importance/picture'][:4] == b'\x89PNG'
  # Re-writing an analysis replaces its file; other analyses stay.
  writer.write_analysis(tmp_path, 'run', 'strength', values(3.))
  second = writer.write_analysis(tmp_path, 'run', 'importance', values(2.))
  files = sorted(p.name for p in (tmp_path / 'run').iterdir())
  assert len(files) == 2 and second.name in files and (first == second or first.name not in files)
  got = reader.read_run(tmp_path / 'run')
  assert got['importance/meta'] == {'scale': 2.} and got['strength/meta'] == {'scale': 3.}


def test_float16_arrays_round_trip_as_bytes(tmp_path):
  """float16 arrays (the stored attention maps) go in as raw bytes, written from the array
  itself (the Event framed around them): every value, NaN, inf, subnormals and -0
  included, reads back bit for bit through TensorBoard's own record reader (which checks
  each record's CRC) and decoder, with the plugin metadata; never element by element
  (`half_val`: ~1 s per million values; benchmarks time the writing)."""
  from tensorboard.util import tensor_util
  rng = np.random.default_rng(0)
  special = np.array([np.nan, np.inf, -np.inf, -0., 6e-8, 65504.], np.float16)
  small = np.concatenate([rng.normal(size=94).astype(np.float16), special]).reshape(4, 25)
  big = rng.uniform(size=(4, 1000, 1000)).astype(np.float16)
  empty = np.zeros((0, 3), np.float16)
  proto = writer.array_proto(small)
  assert proto.tensor_content and not proto.half_val
  assert tensor_util.make_ndarray(proto).view(np.uint16).tolist() == small.view(np.uint16).tolist()
  scalar = np.array(1.5, np.float16)
  writer.write_analysis(tmp_path, 'run', 'strength', {
      'small': Value.array(small), 'big': Value.array(big), 'empty': Value.array(empty),
      'strided': Value.array(big[:, ::7, ::3]), 'scalar': Value.array(scalar)})
  got = reader.read_run(tmp_path / 'run')
  for name, want in (('small', small), ('big', big), ('empty', empty),
                     ('strided', big[:, ::7, ::3]), ('scalar', scalar)):
    a = got[f'strength/{name}']
    assert a.dtype == np.float16 and a.shape == want.shape
    assert np.array_equal(a.view(np.uint16), want.view(np.uint16))


def test_framed_float16_event_parses_as_the_plain_event():
  """The Event framed around a float16 array's bytes parses (protobuf's own parser) to
  the same message as the Event built and serialised whole, for several shapes."""
  from tensorboard.compat.proto import event_pb2
  rng = np.random.default_rng(3)
  for shape in ((), (0,), (5,), (3, 200, 7), (2, 1000, 300)):
    v = Value.array(rng.normal(size=shape).astype(np.float16), description='d')
    pieces = writer._event_pieces(v, 'patterns/x', 'patterns', 12.5, 3)
    want = event_pb2.Event(wall_time=12.5, step=3)
    v.fill(want.summary.value.add(), 'patterns/x', 'patterns')
    assert event_pb2.Event.FromString(b''.join(bytes(p) for p in pieces)) == want, shape


def test_record_crc_is_tensorboards():
  """The masked CRC-32C of each record equals TensorBoard's own (pure-Python) one, which
  its reader checks on every record."""
  from tensorboard.compat.tensorflow_stub import pywrap_tensorflow
  rng = np.random.default_rng(2)
  for n in (0, 1, 3, 8, 255, 4096, 100_003):
    data = rng.integers(0, 256, n, np.uint8).tobytes()
    assert records.masked_crc(data) == pywrap_tensorflow.masked_crc32c(data), n


def test_failed_write_leaves_nothing(tmp_path):
  bad = {'ok': Value.array(np.zeros(2)), 'bad': Value.json({'x': float('nan')})}
  with pytest.raises(ValueError):
    writer.write_analysis(tmp_path, 'run', 'importance', bad)
  assert list((tmp_path / 'run').iterdir()) == []


@pytest.mark.parametrize('run', ['../escape', '.hidden', 'a/b', '', 'x' * 200])
def test_run_names_are_validated(tmp_path, run):
  with pytest.raises(VitAnalyticsError, match='run name'):
    writer.write_analysis(tmp_path, run, 'importance', values(1.))


def test_unwritable_places_are_one_line_errors_before_any_work(tmp_path):
  (tmp_path / 'file').write_text('x')
  for logdir, run in ((tmp_path / 'file', 'run'), (tmp_path, 'file')):
    with pytest.raises(OutputError, match='cannot write') as e:
      writer.check_writable(logdir, run)
    assert '\n' not in str(e.value)


def test_read_only_logdir_is_one_line_error(tmp_path, monkeypatch):
  """Root ignores permission bits, so the refusal a read-only mount gives is simulated."""
  import pathlib

  def refuse(self, data):
    raise PermissionError(13, 'Permission denied', str(self))
  monkeypatch.setattr(pathlib.Path, 'write_bytes', refuse)
  with pytest.raises(OutputError, match='Permission denied') as e:
    writer.check_writable(tmp_path / 'logs', 'run')
  assert str(tmp_path / 'logs' / 'run') in str(e.value) and '\n' not in str(e.value)


def test_steps_are_kept_and_replaced_one_at_a_time(tmp_path):
  for step, scale in ((0, 1.), (10, 2.), (20, 3.)):
    writer.write_analysis(tmp_path, 'run', 'importance', values(scale), step=step)
  writer.write_analysis(tmp_path, 'run', 'strength', values(9.), step=10)
  assert reader.steps(tmp_path / 'run') == {'importance': [0, 10, 20], 'strength': [10]}
  # Re-writing step 10 replaces that step only.
  writer.write_analysis(tmp_path, 'run', 'importance', values(5.), step=10)
  assert len(writer.existing_analysis_files(tmp_path / 'run', 'importance')) == 3
  assert reader.read_run(tmp_path / 'run', 10)['importance/meta'] == {'scale': 5.}
  assert reader.read_run(tmp_path / 'run', 0)['importance/meta'] == {'scale': 1.}
  latest = reader.read_run(tmp_path / 'run')  # each analysis at its latest step
  assert latest['importance/meta'] == {'scale': 3.} and latest['strength/meta'] == {'scale': 9.}
  series = reader.read_series(tmp_path / 'run', 'importance/taylor')
  assert sorted(series) == [0, 10, 20] and float(series[10][0, 0]) == 5.
  # Files sort in the order they were written (TensorBoard reads them in name order).
  names = [p.name for p in sorted((tmp_path / 'run').glob('events.out.tfevents.*'),
                                  key=lambda p: p.stat().st_mtime_ns)]
  assert names == sorted(names)
  from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
  path = writer.existing_analysis_files(tmp_path / 'run', 'importance', 20)[0]
  assert {e.step for e in EventFileLoader(str(path)).Load() if e.summary.value} == {20}
  with pytest.raises(ValueError, match='step'):
    writer.write_analysis(tmp_path, 'run', 'importance', values(1.), step=-1)


def test_version_1_files_read_as_step_0_and_are_replaced_by_it(tmp_path):
  """A logdir written by format version 1: `...<analysis>` files, values at step 0, plugin
  metadata version 1."""
  import json
  from vit_jax_analytics.logdir import metadata
  run = tmp_path / 'run'
  path = writer.write_analysis(tmp_path, 'run', 'importance', values(1.))
  old = run / path.name.replace('.step0', '').replace(path.name.split('.')[3], '1700000000')
  path.rename(old)
  assert writer.file_analysis_step(old) == ('importance', 0)
  assert reader.steps(run) == {'importance': [0]}
  assert reader.read_run(run)['importance/meta'] == {'scale': 1.}
  v1 = metadata.create_summary_metadata('importance', 'array').plugin_data.content
  content = {**json.loads(v1), 'version': 1}
  assert metadata.parse_plugin_metadata(json.dumps(content).encode())['version'] == 1
  writer.write_analysis(tmp_path, 'run', 'importance', values(2.), step=0)
  assert not old.exists() and reader.read_run(run)['importance/meta'] == {'scale': 2.}
  writer.write_analysis(tmp_path, 'run', 'importance', values(3.), step=5)
  assert reader.steps(run) == {'importance': [0, 5]}
