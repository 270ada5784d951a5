import numpy as np
import pytest

from vit_jax_analytics.logdir import progress_store


def test_roundtrip_and_clear(tmp_path):
  store = progress_store.LogdirProgressStore(tmp_path, 'run', 'importance', 'k')
  assert store.load() is None
  store.save(3, {'a': np.arange(4.)})
  step, arrays = store.load()
  assert step == 3 and arrays['a'].tolist() == [0., 1., 2., 3.]
  assert not list(store.path.parent.glob('*.tmp.npz'))
  store.clear()
  assert not progress_store.state_directory(tmp_path, 'run').exists()


@pytest.mark.parametrize('damage', ['truncated', 'empty', 'no_next_batch', 'junk'])
def test_damaged_file_is_set_aside_and_the_run_starts_over(tmp_path, capsys, damage):
  store = progress_store.LogdirProgressStore(tmp_path, 'run', 'importance', 'k')
  store.save(2, {'a': np.arange(1000.)})
  data = store.path.read_bytes()
  if damage == 'truncated':
    store.path.write_bytes(data[:len(data) // 2])
  elif damage == 'empty':
    store.path.write_bytes(b'')
  elif damage == 'junk':
    store.path.write_bytes(b'not a zip at all')
  else:
    np.savez(store.path, a=np.arange(3.))
  assert store.load() is None
  err = capsys.readouterr().err
  assert 'damaged progress file' in err and 'starting over' in err
  assert store.path.with_suffix('.damaged').exists() and not store.path.exists()
  store.save(1, {'a': np.zeros(2)})  # the run goes on and saves again
  assert store.load()[0] == 1
