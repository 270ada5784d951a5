"""Checkpoints and logdirs on object stores, offline through fsspec's in-memory filesystem
(`memory://`): what is written is what a local run writes, each event file is one put under
its final name (no rename), TensorBoard's own file layer (what the plugin reads through)
sees it, and an unknown scheme is a one-line error naming the flag."""

import json

import fsspec
import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests.test_checkpoint_steps import analysis_options, manager_run
from tests.tiny import TINY, tiny_images, tiny_params, write_images
from vit_jax_analytics import checkpoint_steps, checkpoints, cli, pipeline, storage, training
from vit_jax_analytics.errors import OutputError
from vit_jax_analytics.logdir import progress_store, reader, writer
from vit_jax_analytics.logdir.writer import Value


@pytest.fixture
def memory():
  fs = fsspec.filesystem('memory')
  fs.store.clear()
  fs.pseudo_dirs.clear()
  fs.pseudo_dirs.append('')
  yield fs
  fs.store.clear()


def upload(fs, local, prefix):
  for p in sorted(local.rglob('*')):
    if p.is_file():
      fs.pipe_file(f'{prefix}/{p.relative_to(local)}', p.read_bytes())


def same_values(a, b):
  assert set(a) == set(b)
  for tag in a:
    if isinstance(a[tag], np.ndarray):
      np.testing.assert_array_equal(a[tag], b[tag], err_msg=tag)


def test_analyze_to_and_from_an_object_store(tmp_path, memory, capsys, monkeypatch):
  """A run with --checkpoint and --logdir on memory://: the same values as the local run,
  nothing written locally, every event file put once under its final name, and
  TensorBoard's loader (the plugin's data) reads it."""
  from tests.tb_plugin.test_steps import client_for, get
  from tb_plugin.vit_analytics_plugin import unpack

  write_images(tmp_path / 'images', n=5)
  ckpt = checkpoints.save_checkpoint(tmp_path / 'ckpt', tiny_params(), TINY)
  upload(memory, ckpt, '/models/ckpt')
  puts, renames = [], []
  real_pipe = memory.pipe_file
  monkeypatch.setattr(memory, 'pipe_file', lambda path, data, **k: (puts.append(path),
                                                                   real_pipe(path, data, **k)))
  monkeypatch.setattr(memory, 'mv', lambda *a, **k: renames.append(a))
  flags = ['--images', str(tmp_path / 'images'), '--no-progress', '--no-compile-cache',
           '--batch-size', '4', '--curve-points', '3', '--random-orders', '1',
           '--skip-patterns']
  monkeypatch.chdir(tmp_path)
  assert cli.main(['analyze', '--checkpoint', 'memory://models/ckpt', '--logdir',
                   'memory://logs', '--run', 'r', *flags]) == 0
  assert 'wrote memory://logs/r/events.out.tfevents.' in capsys.readouterr().out
  assert not (tmp_path / 'memory:').exists()
  events = [p for p in puts if 'tfevents' in p]
  assert len(events) == 2 and not renames and not any('partial' in p for p in puts)
  assert cli.main(['analyze', '--checkpoint', str(ckpt), '--logdir', str(tmp_path / 'logs'),
                   '--run', 'r', *flags]) == 0
  remote, local = reader.read_run('memory://logs/r'), reader.read_run(tmp_path / 'logs' / 'r')
  same_values(remote, local)
  assert remote['importance/meta']['checkpoint'] == 'memory://models/ckpt'

  client = client_for('memory://logs')  # TensorBoard's multiplexer over its gfile layer
  code, body = get(client, '/steps', run='r')
  assert code == 200 and body['steps'] == {'importance': [0], 'strength': [0]}
  code, body = get(client, '/array', run='r', tag='importance/taylor')
  assert code == 200
  np.testing.assert_array_equal(unpack(body), local['importance/taylor'])

  capsys.readouterr()
  assert cli.main(['info', '--checkpoint', 'memory://models/ckpt']) == 0
  info = json.loads(capsys.readouterr().out)
  assert info['source']['remote'] == 'memory://models/ckpt' and info['config'] == TINY.to_dict()


def test_remote_checkpoint_formats_and_steps(tmp_path, memory, capsys):
  """An .npz object, a Flax msgpack object and a CheckpointManager run on the store; the
  run analysed step by step from the store into a store logdir, resumably."""
  from flax import serialization
  from vit_jax_analytics.checkpoints import flatten
  params = tiny_params()
  memory.pipe_file('/m/vit.msgpack', serialization.to_bytes({'params': params}))
  import io
  buf = io.BytesIO()
  np.savez(buf, **flatten(params))
  memory.pipe_file('/m/vit.npz', buf.getvalue())
  for name in ('vit.msgpack', 'vit.npz'):
    loaded, config = checkpoints.load_checkpoint(f'memory://m/{name}')
    assert config == TINY
    np.testing.assert_array_equal(loaded['head']['kernel'], params['head']['kernel'])

  write_images(tmp_path / 'images', n=5)
  upload(memory, manager_run(tmp_path / 'ckpts', steps=(1, 2, 3)), '/runs/a')
  assert list(checkpoint_steps.training_steps('memory://runs/a')) == [1, 2, 3]
  inputs = pipeline.Inputs(checkpoint='memory://runs/a', images=tmp_path / 'images')
  opts = {'strength': analysis_options()['strength']}
  done = checkpoint_steps.run_steps(inputs, 'memory://logs', 'a', opts, ('strength',),
                                    steps='1:2')
  assert sorted(done) == [1, 2]
  again = checkpoint_steps.run_steps(inputs, 'memory://logs', 'a', opts, ('strength',))
  assert again[1] == again[2] == [] and len(again[3]) == 1
  assert reader.steps('memory://logs/a') == {'strength': [1, 2, 3]}
  local = pipeline.run_analysis(pipeline.Inputs(checkpoint=tmp_path / 'ckpts' / '2',
                                                images=tmp_path / 'images'),
                                tmp_path / 'logs', 's2', opts, ('strength',))
  assert local
  same_values(reader.read_run('memory://logs/a', 2), reader.read_run(tmp_path / 'logs' / 's2'))


def test_analyse_step_and_progress_on_an_object_store(memory, capsys):
  params, images = tiny_params(), tiny_images(6)
  probe = training.Probe(images, np.arange(6) % TINY.num_classes)
  for step in (0, 5):
    training.analyse_step(params, TINY, probe, 'memory://train-logs', 'run', step)
  assert reader.steps('memory://train-logs/run') == {'importance': [0, 5], 'strength': [0, 5]}
  store = progress_store.LogdirProgressStore('memory://train-logs', 'run', 'importance', 'k')
  store.save(3, {'a': np.arange(4.)})
  next_batch, arrays = store.load()
  assert next_batch == 3 and arrays['a'].tolist() == [0, 1, 2, 3]
  store.clear()
  assert store.load() is None


def test_unknown_scheme_is_one_line_naming_the_flag(tmp_path, capsys, monkeypatch):
  monkeypatch.chdir(tmp_path)
  for flag, argv in (('--logdir', ['strength', '--logdir', 'nosuch://b/logs']),
                     ('--checkpoint', ['info', '--checkpoint', 'nosuch://b/m.npz'])):
    with pytest.raises(SystemExit) as e:
      cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert '\n' not in err and f'argument {flag}: nosuch://' in err
    assert "unknown storage scheme 'nosuch://'" in err
  assert not list(tmp_path.iterdir())  # no local folder named 'nosuch:'
  with pytest.raises(OutputError, match="unknown storage scheme 'nosuch://'"):
    writer.write_analysis('nosuch://b', 'r', 'strength', {'meta': Value.json({})})
  with pytest.raises(SystemExit):
    cli.main(['train-demo', '--logdir', 'gs://b/logs'])
  assert 'train-demo writes local paths only' in capsys.readouterr().err


def test_failed_put_leaves_no_object(memory, monkeypatch):
  def broken(path, data, **k):
    raise PermissionError('403 Forbidden')
  monkeypatch.setattr(memory, 'pipe_file', broken)
  with pytest.raises(OutputError, match=r'memory://logs/r: cannot write the strength results '
                                        r'\(PermissionError: 403 Forbidden\)'):
    writer.write_analysis('memory://logs', 'r', 'strength', {'meta': Value.json({})})
  assert not memory.find('/logs')
  assert storage.split_url_subtree('gs://b/m.npz:img') == ('gs://b/m.npz', 'img')
  assert storage.split_url_subtree('gs://b/m.npz') == ('gs://b/m.npz', None)
