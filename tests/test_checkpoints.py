import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.npz_formats import random_vit_jax_arrays, vit_jax_to_big_vision
from vit_jax_analytics import checkpoints, model as model_lib
from vit_jax_analytics.errors import CheckpointError

SMALL = dict(width=32, depth=2, heads=4, mlp=64, patch=8, image=32, classes=3)


def save(tmp_path, arrays, name='c.npz'):
  path = tmp_path / name
  np.savez(path, **arrays)
  return path


def logits_of(path, **kw):
  params, config = checkpoints.load_checkpoint(path, **kw)
  x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, config.image_size,
                                                             config.image_size, 3)), jnp.float32)
  return np.asarray(model_lib.apply(params, config, x)), config


@pytest.mark.parametrize('classifier', ['token', 'gap'])
@pytest.mark.parametrize('scan', [False, True])
def test_big_vision_layout_is_the_same_function(tmp_path, classifier, scan):
  arrays = random_vit_jax_arrays(3, classifier=classifier, **SMALL)
  ref, ref_config = logits_of(save(tmp_path, arrays, 'vj.npz'))
  got, config = logits_of(save(tmp_path, vit_jax_to_big_vision(arrays, scan=scan), 'bv.npz'))
  assert config == ref_config
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_inferred_config(tmp_path):
  arrays = random_vit_jax_arrays(0, representation=16, **SMALL)
  _, config = checkpoints.load_checkpoint(save(tmp_path, arrays))
  assert config == model_lib.ViTConfig(
      image_size=32, patch_size=8, hidden_size=32, num_layers=2, num_heads=4, mlp_dim=64,
      num_classes=3, classifier='token', representation_size=16)


def test_big_vision_sincos_posemb_matches_definition(tmp_path):
  arrays = vit_jax_to_big_vision(random_vit_jax_arrays(0, classifier='gap', **SMALL))
  del arrays['params/pos_embedding']
  params, config = checkpoints.load_checkpoint(save(tmp_path, arrays), image_size=32)
  pe = params['Transformer']['posembed_input']['pos_embedding'][0]
  width, grid = 32, 4
  quarter = width // 4
  for y in range(grid):
    for x in range(grid):
      row = pe[y * grid + x]
      for d in range(quarter):
        omega = 1. / 10000 ** (d / (quarter - 1))
        expected = [math.sin(x * omega), math.cos(x * omega), math.sin(y * omega),
                    math.cos(y * omega)]
        np.testing.assert_allclose(row[d::quarter], expected, rtol=1e-5, atol=1e-6)


def test_resize_position_embedding_keeps_cls_and_corners():
  rng = np.random.default_rng(0)
  pe = rng.normal(size=(1, 1 + 16, 5)).astype(np.float32)
  out = checkpoints.resize_position_embedding(pe, 7, has_cls=True)
  assert out.shape == (1, 50, 5)
  np.testing.assert_array_equal(out[:, 0], pe[:, 0])
  old, new = pe[0, 1:].reshape(4, 4, 5), out[0, 1:].reshape(7, 7, 5)
  for (i, j), (a, b) in {(0, 0): (0, 0), (0, 3): (0, 6), (3, 3): (6, 6)}.items():
    np.testing.assert_allclose(new[a, b], old[i, j], rtol=1e-6)
  # Halfway between grid points 1 and 2 of the old grid is new point 3 (3 * 3/6 = 1.5).
  np.testing.assert_allclose(new[3, 0], (old[1, 0] + old[2, 0]) / 2, rtol=1e-5)


def test_orbax_roundtrip_and_atomic_overwrite(tmp_path):
  config = model_lib.get_config('demo')
  params = model_lib.init_params(config, jax.random.key(0))
  path = checkpoints.save_checkpoint(tmp_path / 'ckpt', params, config)
  loaded, loaded_config = checkpoints.load_checkpoint(path)
  assert loaded_config == config
  jax.tree.map(np.testing.assert_array_equal, loaded, jax.tree.map(np.asarray, params))
  # Overwriting replaces the directory whole and leaves no temporary folders behind.
  params2 = jax.tree.map(lambda a: a + 1., params)
  checkpoints.save_checkpoint(path, params2, config)
  loaded2, _ = checkpoints.load_checkpoint(path)
  np.testing.assert_allclose(loaded2['cls'], np.asarray(params['cls']) + 1.)
  assert sorted(p.name for p in tmp_path.iterdir()) == ['ckpt']


# --- errors: one line, naming the file and the key -------------------------------------------

def one_line(excinfo):
  msg = str(excinfo.value)
  assert '\n' not in msg
  return msg


def test_missing_key_is_named(tmp_path):
  arrays = random_vit_jax_arrays(0, **SMALL)
  del arrays['Transformer/encoderblock_1/LayerNorm_2/bias']
  with pytest.raises(CheckpointError) as e:
    checkpoints.load_checkpoint(save(tmp_path, arrays))
  msg = one_line(e)
  assert 'c.npz' in msg and "missing key 'Transformer/encoderblock_1/LayerNorm_2/bias'" in msg
  assert '(32,)' in msg


def test_extra_key_is_named(tmp_path):
  arrays = random_vit_jax_arrays(0, **SMALL)
  arrays['Transformer/encoderblock_0/Surprise/kernel'] = np.zeros((2, 2), np.float32)
  with pytest.raises(CheckpointError) as e:
    checkpoints.load_checkpoint(save(tmp_path, arrays))
  assert "unexpected key 'Transformer/encoderblock_0/Surprise/kernel'" in one_line(e)


def test_shape_mismatch_against_given_config_names_both_shapes(tmp_path):
  arrays = random_vit_jax_arrays(0, **SMALL)
  wrong = model_lib.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_layers=2,
                              num_heads=4, mlp_dim=128, num_classes=3)
  with pytest.raises(CheckpointError) as e:
    checkpoints.load_checkpoint(save(tmp_path, arrays), config=wrong)
  msg = one_line(e)
  assert "'Transformer/encoderblock_0/MlpBlock_3/Dense_0/bias'" in msg
  assert '(64,)' in msg and '(128,)' in msg


def test_inconsistent_shapes_in_file(tmp_path):
  arrays = random_vit_jax_arrays(0, **SMALL)
  arrays['Transformer/encoderblock_1/MultiHeadDotProductAttention_1/out/kernel'] = np.zeros(
      (4, 8, 31), np.float32)
  with pytest.raises(CheckpointError) as e:
    checkpoints.load_checkpoint(save(tmp_path, arrays))
  assert 'out/kernel' in one_line(e) and '(4, 8, 31)' in one_line(e)


@pytest.mark.parametrize('content,name', [
    (b'definitely not a zip', 'junk.npz'),
    (b'', 'empty.npz'),
    (None, 'single.npy'),
])
def test_not_a_checkpoint(tmp_path, content, name):
  path = tmp_path / name
  if content is None:
    np.save(path, np.zeros(3))
  else:
    path.write_bytes(content)
  with pytest.raises(CheckpointError) as e:
    checkpoints.load_checkpoint(path)
  assert 'is not a checkpoint' in one_line(e) and name in one_line(e)


def test_directory_that_is_not_orbax_and_missing_file(tmp_path):
  (tmp_path / 'd').mkdir()
  with pytest.raises(CheckpointError, match='is not a checkpoint'):
    checkpoints.load_checkpoint(tmp_path / 'd')
  with pytest.raises(CheckpointError, match='no such checkpoint'):
    checkpoints.load_checkpoint(tmp_path / 'nope.npz')


def test_npz_of_something_else(tmp_path):
  path = save(tmp_path, {'weights': np.zeros(3, np.float32)})
  with pytest.raises(CheckpointError) as e:
    checkpoints.load_checkpoint(path)
  assert "missing key 'embedding/kernel'" in one_line(e)


def test_map_head_is_refused_clearly(tmp_path):
  arrays = vit_jax_to_big_vision(random_vit_jax_arrays(0, classifier='gap', **SMALL))
  arrays['params/MAPHead_0/probe'] = np.zeros((1, 1, 32), np.float32)
  with pytest.raises(CheckpointError, match='MAP-head'):
    checkpoints.load_checkpoint(save(tmp_path, arrays))
