"""Checkpoints as JAX pipelines write them: orbax PyTree checkpoints (StandardCheckpointer,
PyTreeCheckpointer), a CheckpointManager run analysed step by step into the plugin's
over-training view, and Flax msgpack files (flax.training.checkpoints, flax.serialization)."""

import json
from pathlib import Path

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from tests.npz_formats import vit_jax_to_big_vision
from tests.tiny import TINY, tiny_params, write_images
from vit_jax_analytics import checkpoint_steps, checkpoints, cli, importance, pipeline, strength
from vit_jax_analytics.checkpoints import flatten, unflatten
from vit_jax_analytics.errors import CheckpointError, OptionError
from vit_jax_analytics.logdir import reader


def train_state(params, step):
  """A train state as a JAX training loop keeps it: params, optax Adam state, step."""
  opt_state = optax.adam(1e-3).init(params)
  return {'params': params, 'opt_state': opt_state, 'step': np.int64(step)}


def same_params(a, b):
  fa, fb = flatten(a), flatten(b)
  assert set(fa) == set(fb)
  for k in fa:
    np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=k)


@pytest.mark.parametrize('saver', ['standard', 'pytree'])
@pytest.mark.parametrize('tree', ['bare', 'under_params', 'train_state', 'big_vision_state'])
def test_orbax_pytree_checkpoint_loads_with_inferred_config(tmp_path, saver, tree):
  params = tiny_params()
  saved = {'bare': lambda: params, 'under_params': lambda: {'params': params},
           'train_state': lambda: train_state(params, 7),
           'big_vision_state': lambda: {**unflatten(vit_jax_to_big_vision(
               flatten(params), scan=True)), 'mu': params}}[tree]()
  path = tmp_path / 'ckpt'
  with (ocp.StandardCheckpointer() if saver == 'standard' else ocp.PyTreeCheckpointer()) as c:
    c.save(path, saved)
  loaded, config, source = checkpoints.load_with_source(path)
  assert config == TINY
  if tree == 'big_vision_state':  # the class token's position embedding baked into cls
    pe = params['Transformer']['posembed_input']['pos_embedding']
    params = {**params, 'cls': params['cls'] + pe[:, :1]}
    params['Transformer'] = {**params['Transformer'], 'posembed_input': {
        'pos_embedding': np.concatenate([np.zeros_like(pe[:, :1]), pe[:, 1:]], 1)}}
  same_params(loaded, params)
  assert source['layout'] == ('big_vision' if tree == 'big_vision_state' else 'vit_jax')
  assert source['params_at'] == ('/' if tree == 'bare' else 'params')
  if tree == 'train_state':
    assert source['ignored'] == ['opt_state', 'step']
  if tree == 'big_vision_state':  # a copy of the params as optimizer state: not a candidate
    assert source['ignored'] == ['mu', 'opt']


def test_ambiguous_or_missing_params_are_one_line_errors(tmp_path):
  params = tiny_params()
  with ocp.StandardCheckpointer() as c:
    c.save(tmp_path / 'two', {'params': params, 'ema_params': params})
    c.save(tmp_path / 'none', {'weights': {'w': np.ones(3, np.float32)}})
  with pytest.raises(CheckpointError) as e:
    checkpoints.load_checkpoint(tmp_path / 'two')
  msg = str(e.value)
  assert '\n' not in msg and "['params', 'ema_params']" in msg and ':SUBTREE' in msg
  loaded, config = checkpoints.load_checkpoint(f'{tmp_path / "two"}:ema_params')
  assert config == TINY
  with pytest.raises(CheckpointError, match=r"found no ViT params .*\['weights'\]"):
    checkpoints.load_checkpoint(tmp_path / 'none')


@pytest.mark.parametrize('writer', ['flax_checkpoints', 'to_bytes'])
def test_flax_msgpack_checkpoint_loads(tmp_path, writer):
  import flax
  from flax import serialization
  params = tiny_params()
  state = train_state(params, 5)
  if writer == 'to_bytes':
    path = tmp_path / 'state.msgpack'
    path.write_bytes(serialization.to_bytes(state))
  else:
    from flax.training import checkpoints as flax_checkpoints
    old = flax.config.flax_use_orbax_checkpointing
    flax.config.update('flax_use_orbax_checkpointing', False)  # the msgpack writer
    try:
      path = flax_checkpoints.save_checkpoint(tmp_path / 'run', state, step=5)
    finally:
      flax.config.update('flax_use_orbax_checkpointing', old)
  loaded, config, source = checkpoints.load_with_source(path)
  assert config == TINY and source['format'].startswith('Flax msgpack')
  same_params(loaded, params)
  if writer == 'flax_checkpoints':  # its directory is a run's checkpoints by step
    assert checkpoint_steps.training_steps(tmp_path / 'run') == {5: Path(path)}


def analysis_options():
  return {'importance': importance.ImportanceOptions(
              progress=False, curve_points=3, random_orders=1, batch_size=4,
              save_every_seconds=0.),
          'strength': strength.StrengthOptions(progress=False, batch_size=4, map_images=1)}


def manager_run(path, steps=(100, 200, 300)):
  """A CheckpointManager run: train states whose params differ at each step."""
  with ocp.CheckpointManager(path) as manager:
    for k, step in enumerate(steps):
      manager.save(step, args=ocp.args.StandardSave(train_state(tiny_params(seed=k), step)))
  return path


def test_checkpoint_manager_run_in_the_over_training_view(tmp_path, capsys):
  """Three steps of a CheckpointManager run: each step's stored numbers equal those of
  analysing that step's checkpoint alone, and the plugin's /steps and /series (the
  over-training view) show the three steps with those numbers."""
  from tests.tb_plugin.test_steps import client_for, get
  from tb_plugin.vit_analytics_plugin import unpack

  write_images(tmp_path / 'images', n=8)
  run_dir = manager_run(tmp_path / 'ckpts')
  inputs = pipeline.Inputs(checkpoint=run_dir, images=tmp_path / 'images')
  analyses = ('importance', 'strength')
  written = checkpoint_steps.run_steps(inputs, tmp_path / 'logs', 'train', analysis_options(),
                                       analyses)
  assert sorted(written) == [100, 200, 300] and all(len(f) == 2 for f in written.values())
  assert reader.steps(tmp_path / 'logs' / 'train') == {a: [100, 200, 300] for a in analyses}
  for step in (100, 200, 300):  # the step's checkpoint alone, into another logdir
    pipeline.run_analysis(pipeline.Inputs(checkpoint=run_dir / str(step),
                                          images=tmp_path / 'images'),
                          tmp_path / 'alone', f's{step}', analysis_options(), analyses)
    by_step = reader.read_run(tmp_path / 'logs' / 'train', step)
    alone = reader.read_run(tmp_path / 'alone' / f's{step}', 0)
    assert set(by_step) == set(alone)
    for tag, value in alone.items():
      if tag.endswith('/meta'):
        assert by_step[tag]['step'] == step
        assert by_step[tag]['config'] == value['config']
      elif isinstance(value, np.ndarray):
        np.testing.assert_array_equal(by_step[tag], value, err_msg=tag)
  # The steps differ (else the equality above proves little).
  taylor = reader.read_series(tmp_path / 'logs' / 'train', 'importance/taylor')
  assert not np.array_equal(taylor[100], taylor[300])

  client = client_for(tmp_path / 'logs')
  code, body = get(client, '/steps', run='train')
  assert code == 200 and body['steps'] == {a: [100, 200, 300] for a in analyses}
  for tag in ('importance/taylor', 'strength/mean_distance'):
    code, body = get(client, '/series', run='train', tag=tag)
    assert code == 200 and body['steps'] == [100, 200, 300]
    series = unpack(body)
    for k, step in enumerate((100, 200, 300)):
      alone = reader.read_run(tmp_path / 'alone' / f's{step}', 0)[tag]
      np.testing.assert_array_equal(series[k], alone, err_msg=f'{tag} at {step}')


def test_steps_are_resumable_and_chosen(tmp_path, capsys):
  write_images(tmp_path / 'images', n=5)
  run_dir = manager_run(tmp_path / 'ckpts', steps=(10, 20, 30, 40))
  inputs = pipeline.Inputs(checkpoint=run_dir, images=tmp_path / 'images')
  opts = {'strength': analysis_options()['strength']}
  first = checkpoint_steps.run_steps(inputs, tmp_path / 'logs', 'r', opts, ('strength',),
                                     steps='10,30:40')
  assert sorted(first) == [10, 30, 40]
  again = checkpoint_steps.run_steps(inputs, tmp_path / 'logs', 'r', opts, ('strength',))
  assert again[10] == again[30] == again[40] == [] and len(again[20]) == 1
  assert 'step 10 (1/4): already written, skipped' in capsys.readouterr().err
  assert reader.steps(tmp_path / 'logs' / 'r') == {'strength': [10, 20, 30, 40]}
  assert checkpoint_steps.select_steps([10, 20, 30], 'last') == [30]
  with pytest.raises(OptionError, match='no checkpoint at step 15'):
    checkpoint_steps.select_steps([10, 20, 30], '15')
  # An unfinished orbax step (no commit_success.txt; orbax's tmp name) is not a step.
  (run_dir / '50.orbax-checkpoint-tmp-1').mkdir()
  assert list(checkpoint_steps.training_steps(run_dir)) == [10, 20, 30, 40]


def test_cli_analyze_steps_and_info(tmp_path, capsys):
  write_images(tmp_path / 'images', n=5)
  run_dir = manager_run(tmp_path / 'ckpts', steps=(1, 2))
  assert cli.main(['info', '--checkpoint', str(run_dir)]) == 0
  info = json.loads(capsys.readouterr().out)
  assert info['family'] == 'ViT (vit_jax)' and info['token_layout']
  assert info['source']['steps'] == [1, 2] and info['source']['step'] == 2
  assert info['source']['params_at'] == 'default/params'
  assert info['source']['position'].startswith('learned')
  assert cli.main(['strength', '--checkpoint', str(run_dir), '--images',
                   str(tmp_path / 'images'), '--logdir', str(tmp_path / 'logs'),
                   '--steps', 'last', '--no-progress', '--no-compile-cache']) == 0
  assert reader.steps(tmp_path / 'logs' / 'ckpts') == {'strength': [2]}
  assert cli.main(['strength', '--checkpoint', str(run_dir / '1'), '--images',
                   str(tmp_path / 'images'), '--logdir', str(tmp_path / 'logs'),
                   '--steps', 'last', '--no-compile-cache']) == 2
  assert 'error: --steps:' in capsys.readouterr().err
  with pytest.raises(SystemExit):
    cli.main(['strength', '--checkpoint', str(run_dir), '--steps', 'x', '--logdir', 'l'])
