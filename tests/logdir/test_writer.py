import numpy as np
import pytest

from vit_jax_analytics.errors import OutputError, VitAnalyticsError
from vit_jax_analytics.logdir import reader, writer
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
