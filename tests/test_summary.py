import numpy as np
import pytest

from vit_jax_analytics import summary
from vit_jax_analytics.errors import VitAnalyticsError


def values(scale):
  return {'meta': summary.Value.json({'scale': scale}),
          'taylor': summary.Value.array(np.full((2, 3), scale, np.float64), ('layer', 'head')),
          'picture': summary.Value.png(np.zeros((4, 4), np.uint8))}


def test_write_read_and_replace(tmp_path):
  first = summary.write_analysis(tmp_path, 'run', 'importance', values(1.))
  got = summary.read_run(tmp_path / 'run')
  assert got['importance/meta'] == {'scale': 1.}
  assert got['importance/taylor'].dtype == np.float32 and got['importance/taylor'].shape == (2, 3)
  assert got['importance/picture'][:4] == b'\x89PNG'
  # Re-writing an analysis replaces its file; other analyses stay.
  summary.write_analysis(tmp_path, 'run', 'strength', values(3.))
  second = summary.write_analysis(tmp_path, 'run', 'importance', values(2.))
  files = sorted(p.name for p in (tmp_path / 'run').iterdir())
  assert len(files) == 2 and second.name in files and (first == second or first.name not in files)
  got = summary.read_run(tmp_path / 'run')
  assert got['importance/meta'] == {'scale': 2.} and got['strength/meta'] == {'scale': 3.}


def test_failed_write_leaves_nothing(tmp_path):
  bad = {'ok': summary.Value.array(np.zeros(2)), 'bad': summary.Value.json({'x': float('nan')})}
  with pytest.raises(ValueError):
    summary.write_analysis(tmp_path, 'run', 'importance', bad)
  assert list((tmp_path / 'run').iterdir()) == []


@pytest.mark.parametrize('run', ['../escape', '.hidden', 'a/b', '', 'x' * 200])
def test_run_names_are_validated(tmp_path, run):
  with pytest.raises(VitAnalyticsError, match='run name'):
    summary.write_analysis(tmp_path, run, 'importance', values(1.))


def test_progress_roundtrip(tmp_path):
  assert summary.load_progress(tmp_path, 'run', 'importance', 'k') is None
  summary.save_progress(tmp_path, 'run', 'importance', 'k', 3, {'a': np.arange(4.)})
  step, arrays = summary.load_progress(tmp_path, 'run', 'importance', 'k')
  assert step == 3 and arrays['a'].tolist() == [0., 1., 2., 3.]
  summary.clear_progress(tmp_path, 'run', 'importance', 'k')
  assert not (tmp_path / 'run' / summary.STATE_DIR).exists()
