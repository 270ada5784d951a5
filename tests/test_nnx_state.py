"""An NNX model's saved state as a params tree (families/nnx_state.py): jax-image-models'
ViT, CLIP and SigLIP vision towers, DINOv2 and DINOv3, saved as JAX pipelines save them
(`nnx.state(model)` with orbax's StandardCheckpointer: `<name>/value` leaves and RNG state;
its pure dict; inside a train state beside an nnx.Optimizer's state; Flax msgpack; a
CheckpointManager run) and loaded with the config from the shapes. In float64 the project's
forward on the loaded checkpoint equals the jimm module's own __call__ (output), and every
layer's attention equals the module's, as NNX interception reads it (tests/
test_families_nnx.py, test_nnx_declared.py check that interception against the module).
"""

import json

import numpy as np
import orbax.checkpoint as ocp
import pytest

pytest.importorskip('jimm', reason='test extra: pip install -e .[test] (jax-image-models)')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from tests import jimm_models, numerics  # noqa: E402
from tests.test_checkpoint_steps import analysis_options  # noqa: E402
from tests.tiny import write_images  # noqa: E402
from vit_jax_analytics import (checkpoint_steps, checkpoints, cli, model as model_lib,  # noqa: E402
                               pipeline)
from vit_jax_analytics.errors import CheckpointError  # noqa: E402
from vit_jax_analytics.families import intercept_nnx, nnx_declared  # noqa: E402
from vit_jax_analytics.logdir import reader  # noqa: E402

FAMILY = {'vit': 'ViT', 'clip': 'CLIP vision tower', 'siglip': 'SigLIP vision tower',
          'dinov2': 'DINOv2', 'dinov3': 'DINOv3'}
LAYOUT = {'vit': {'cls': [0], 'grid': (4, 4)}, 'siglip': {'cls': [], 'grid': (4, 4)},
          'dinov3': {'cls': [0], 'registers': [1, 2], 'grid': (4, 4)}}


@pytest.fixture
def rope64(monkeypatch):
  import jimm.common.vit
  monkeypatch.setattr(jimm.common.vit, 'rope_cos_sin', jimm_models.rope_cos_sin64)


def saved(m, form):
  return {'state': lambda: nnx.state(m), 'split': lambda: nnx.split(m)[1],
          'pure': lambda: nnx.to_pure_dict(nnx.state(m, nnx.Param))}[form]()


def module_attention(m, kind, x):
  """Each layer's attention [B, L, H, T, T] of the module, by NNX interception."""
  keep = lambda path, node: 'map_head' not in path
  declared = nnx_declared.jimm_block() if kind == 'dinov3' else None
  params, config = intercept_nnx.nnx_config(m, x, LAYOUT.get(kind, LAYOUT['vit']), 'embedding',
                                            attention_filter=keep, attention=declared)
  return np.asarray(model_lib.apply(params, config, x, return_attention=True)[1])


@pytest.mark.parametrize('form', ['state', 'pure'])
@pytest.mark.parametrize('kind', jimm_models.KINDS)
@numerics.in_float64
def test_nnx_state_loads_and_equals_the_modules_own_call(tmp_path, kind, form, rope64):
  m = jimm_models.build(kind)
  x = np.random.default_rng(1).normal(size=(2, 16, 16, 3))
  with ocp.StandardCheckpointer() as c:
    c.save(tmp_path / 'ckpt', saved(m, form))
  params, config, source = checkpoints.load_with_source(tmp_path / 'ckpt', image_size=16)
  assert source['family'] == f'{FAMILY[kind]} (jax-image-models, NNX)'
  assert source['params_at'] == '/' and config.num_heads == 2 and config.num_layers == 2
  if form == 'state':   # RNG state (dropout keys and counts) and position ids: not read
    assert any(k.endswith('rngs/key') for k in source['ignored'])
  got, att = model_lib.apply(params, config, x, return_attention=True)
  numerics.assert_close64(got, np.asarray(jimm_models.call(m, x)), f'{kind} output')
  want_att = module_attention(m, kind, x)
  numerics.assert_close64(att, want_att, f'{kind} attention')
  assert want_att.max(axis=-1).min() > 1.5 / config.num_tokens   # far from uniform


@numerics.in_float64
def test_towers_of_a_two_tower_model_and_train_states(tmp_path):
  """CLIP's vision tower inside the whole CLIP state (text tower beside it); a train state
  with an nnx.Optimizer's state (Adam's mu / nu hold copies of the params: not candidates);
  the same as Flax msgpack."""
  import jimm
  import optax
  from flax import serialization
  with jax.set_mesh(jimm_models.MESH):
    clip = jimm.CLIP(image_resolution=16, vision_layers=2, vision_hidden_size=128,
                     vision_patch_size=4, context_length=8, vocab_size=32,
                     text_hidden_size=64, num_text_heads=2, num_text_layers=1,
                     attention_fn=jimm_models.plain_attention, rngs=nnx.Rngs(0),
                     dtype=jnp.float64, param_dtype=jnp.float64)
  x = np.random.default_rng(1).normal(size=(2, 16, 16, 3))
  with ocp.StandardCheckpointer() as c:
    c.save(tmp_path / 'clip', nnx.state(clip))
  params, config, source = checkpoints.load_with_source(tmp_path / 'clip')
  assert source['params_at'] == 'vision_model'
  assert source['family'] == 'CLIP vision tower (jax-image-models, NNX)'
  with jax.set_mesh(jimm_models.MESH):
    want = np.asarray(clip.vision_model(jnp.asarray(x)))
  numerics.assert_close64(model_lib.apply(params, config, x), want, 'CLIP tower')

  m = jimm_models.build('vit')
  with jax.set_mesh(jimm_models.MESH):
    opt = nnx.Optimizer(m, optax.adam(1e-3), wrt=nnx.Param)
  state = {'model': nnx.state(m), 'optimizer': nnx.state(opt), 'step': np.int64(3)}
  with ocp.StandardCheckpointer() as c:
    c.save(tmp_path / 'train', state)
  params, config, source = checkpoints.load_with_source(tmp_path / 'train')
  assert source['params_at'] == 'model'
  want = np.asarray(jimm_models.call(m, x))
  numerics.assert_close64(model_lib.apply(params, config, x), want, 'train state')
  (tmp_path / 'm.msgpack').write_bytes(serialization.to_bytes(
      {'params': nnx.to_pure_dict(nnx.state(m, nnx.Param)), 'step': 3}))
  params, config, source = checkpoints.load_with_source(tmp_path / 'm.msgpack')
  assert source['format'].endswith('Flax msgpack')
  numerics.assert_close64(model_lib.apply(params, config, x), want, 'msgpack')


def test_a_damaged_state_is_a_one_line_error(tmp_path):
  m = jimm_models.build('vit', dtype=jnp.float32)
  pure = nnx.to_pure_dict(nnx.state(m, nnx.Param))
  del pure['encoder']['ln_post']
  with ocp.StandardCheckpointer() as c:
    c.save(tmp_path / 'bad', pure)
  with pytest.raises(CheckpointError) as e:
    checkpoints.load_checkpoint(tmp_path / 'bad')
  assert '\n' not in str(e.value) and "missing 'encoder/ln_post/scale'" in str(e.value)


def test_checkpoint_manager_run_of_nnx_states(tmp_path, capsys):
  """A CheckpointManager run of NNX states (params and optimizer state per step):
  `info` names the family, and `--steps` writes each step at its step with the numbers of
  analysing that step alone."""
  import optax
  write_images(tmp_path / 'images', n=8)
  with ocp.CheckpointManager(tmp_path / 'ckpts') as manager:
    for k, step in enumerate((10, 20, 30)):
      m = jimm_models.build('vit', dtype=jnp.float32, seed=k)
      with jax.set_mesh(jimm_models.MESH):
        opt = nnx.Optimizer(m, optax.adam(1e-3), wrt=nnx.Param)
      manager.save(step, args=ocp.args.StandardSave(
          {'model': nnx.state(m), 'optimizer': nnx.state(opt)}))
  assert cli.main(['info', '--checkpoint', str(tmp_path / 'ckpts')]) == 0
  info = json.loads(capsys.readouterr().out)
  assert info['family'] == 'ViT (jax-image-models, NNX)'
  assert info['format'] == 'Flax NNX state, orbax CheckpointManager step'
  assert info['position'] == 'learned absolute position embedding'
  assert info['source']['steps'] == [10, 20, 30] and info['source']['params_at'] == 'default/model'
  inputs = pipeline.Inputs(checkpoint=tmp_path / 'ckpts', images=tmp_path / 'images')
  written = checkpoint_steps.run_steps(inputs, tmp_path / 'logs', 'run', analysis_options(),
                                       ('importance',), steps='10,30')
  assert sorted(written) == [10, 30]
  for step in (10, 30):
    pipeline.run_analysis(pipeline.Inputs(checkpoint=tmp_path / 'ckpts' / str(step),
                                          images=tmp_path / 'images'),
                          tmp_path / 'alone', f's{step}', analysis_options(), ('importance',))
    alone = reader.read_run(tmp_path / 'alone' / f's{step}', 0)
    by_step = reader.read_run(tmp_path / 'logs' / 'run', step)
    np.testing.assert_array_equal(by_step['importance/taylor'], alone['importance/taylor'])
  taylor = reader.read_series(tmp_path / 'logs' / 'run', 'importance/taylor')
  assert not np.array_equal(taylor[10], taylor[30])
