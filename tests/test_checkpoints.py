import math
import tracemalloc
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import numerics
from tests.npz_formats import (npy_bytes, random_vit_jax_arrays, two_tower_big_vision,
                               vit_jax_to_big_vision, zeros_bomb_npz)
from vit_jax_analytics import checkpoints, model as model_lib
from vit_jax_analytics.errors import CheckpointError

SMALL = dict(width=32, depth=2, heads=4, mlp=64, patch=8, image=32, classes=3)
SMALL_CONFIG = model_lib.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_layers=2,
                                   num_heads=4, mlp_dim=64, num_classes=3)


def save(tmp_path, arrays, name='c.npz'):
  path = tmp_path / name
  np.savez(path, **arrays)
  return path


def logits_of(path, **kw):
  """The loaded model's outputs on two fixed images, computed in float64 (tests/numerics.py):
  loaders that give the same weights give the same outputs to F64_RTOL on any CPU."""
  params, config = checkpoints.load_checkpoint(path, **kw)
  x = np.random.default_rng(0).uniform(-1, 1, (2, config.image_size, config.image_size, 3))
  with numerics.float64():
    return np.asarray(model_lib.apply(numerics.as64(params), config, jnp.asarray(x))), config


def assert_same_model(got, ref, ref_path):
  """Outputs (float64, logits_of) of a converted checkpoint against the original's at
  `ref_path`. big_vision has no class-token position embedding: the converters fold it into
  the class token, a float32 addition (tests/npz_formats.py), so the weights differ by one
  float32 rounding. Its effect is below the float32 noise of the forward itself, measured
  here (the original in float32 against float64): numerics rule (b)."""
  params, config = checkpoints.load_checkpoint(ref_path)
  x = np.random.default_rng(0).uniform(-1, 1, (2, config.image_size, config.image_size, 3))
  f32 = model_lib.apply(params, config, jnp.asarray(x, jnp.float32))
  numerics.assert_within_noise(got, ref, numerics.float32_noise(f32, ref))


@pytest.mark.parametrize('classifier', ['token', 'gap'])
@pytest.mark.parametrize('scan', [False, True])
def test_big_vision_layout_is_the_same_function(tmp_path, classifier, scan):
  arrays = random_vit_jax_arrays(3, classifier=classifier, **SMALL)
  ref, ref_config = logits_of(save(tmp_path, arrays, 'vj.npz'))
  got, config = logits_of(save(tmp_path, vit_jax_to_big_vision(arrays, scan=scan), 'bv.npz'))
  assert config == ref_config
  if classifier == 'token':
    assert_same_model(got, ref, tmp_path / 'vj.npz')
  else:  # the same weights bit for bit
    numerics.assert_close64(got, ref)


def test_inferred_config(tmp_path):
  arrays = random_vit_jax_arrays(0, representation=16, **SMALL)
  _, config = checkpoints.load_checkpoint(save(tmp_path, arrays))
  assert config == SMALL_CONFIG.replace(representation_size=16)


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


def test_incomplete_map_head_is_refused_clearly(tmp_path):
  arrays = vit_jax_to_big_vision(random_vit_jax_arrays(0, classifier='gap', **SMALL))
  arrays['params/MAPHead_0/probe'] = np.zeros((1, 1, 32), np.float32)
  with pytest.raises(CheckpointError) as e:
    checkpoints.load_checkpoint(save(tmp_path, arrays))
  assert "missing key 'MAPHead_0/" in one_line(e)


# --- hostile files: refused at load time, one line naming the file, key and expectation -----

@pytest.mark.parametrize('bad', [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize('layout', ['vit_jax', 'big_vision'])
def test_non_finite_weight_is_refused(tmp_path, bad, layout):
  arrays = random_vit_jax_arrays(0, **SMALL)
  key = 'Transformer/encoderblock_1/MlpBlock_3/Dense_0/kernel'
  arrays[key][3, 5] = bad
  if layout == 'big_vision':
    arrays = vit_jax_to_big_vision(arrays, scan=True)
    key = 'params/Transformer/encoderblock/MlpBlock_0/Dense_0/kernel'
  with pytest.raises(CheckpointError) as e:
    checkpoints.load_checkpoint(save(tmp_path, arrays))
  msg = one_line(e)
  assert 'c.npz' in msg and repr(key) in msg and '1 non-finite' in msg


def test_non_finite_weight_in_orbax_is_refused(tmp_path):
  arrays = random_vit_jax_arrays(0, **SMALL)
  arrays['cls'][0, 0, :2] = np.nan
  path = checkpoints.save_checkpoint(tmp_path / 'ckpt', checkpoints.unflatten(arrays),
                                     SMALL_CONFIG)
  with pytest.raises(CheckpointError) as e:
    checkpoints.load_checkpoint(path)
  assert 'ckpt' in one_line(e) and "'cls' holds 2 non-finite" in one_line(e)


@pytest.mark.parametrize('value,dtype', [
    (np.ones(3, np.complex64) * 1j, 'complex64'),
    (np.array(['a', 'b', 'c']), '<U1'),
    (np.array([b'a', b'b', b'c']), '|S1'),
    (np.array([1, 'b', None], object), 'object'),
    (np.arange(3, dtype=np.int32), 'int32'),
    (np.ones(3, bool), 'bool'),
    (np.zeros(3, 'V4'), '|V4'),
])
def test_non_float_dtype_is_refused(tmp_path, value, dtype):
  arrays = random_vit_jax_arrays(0, **SMALL)
  arrays['head/bias'] = value
  path = tmp_path / 'c.npz'
  np.savez(path, **arrays)  # object arrays are pickled; the loader never unpickles
  with pytest.raises(CheckpointError) as e:
    checkpoints.load_checkpoint(path)
  msg = one_line(e)
  assert 'c.npz' in msg and f"key 'head/bias' has dtype {dtype}" in msg
  assert 'expected real floating-point weights' in msg


def test_float64_weights_and_integer_optimizer_state_load(tmp_path):
  arrays = random_vit_jax_arrays(0, **SMALL)
  ref, _ = logits_of(save(tmp_path, arrays, 'f32.npz'))
  bv = vit_jax_to_big_vision({k: v.astype(np.float64) for k, v in arrays.items()})
  bv['opt/step'] = np.int32(7)  # not a parameter: never read, so its dtype does not matter
  got, _ = logits_of(save(tmp_path, bv, 'f64.npz'))
  assert_same_model(got, ref, tmp_path / 'f32.npz')


def bfloat16_bits(a):
  """float32 -> bfloat16 bits, rounded to nearest even (independently of ml_dtypes)."""
  bits = np.asarray(a, np.float32).view(np.uint32).astype(np.uint64)
  return ((bits + 0x7fff + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


@pytest.mark.parametrize('storage', ['ml_dtypes.bfloat16', 'V2', 'float16'])
@pytest.mark.parametrize('layout', ['vit_jax', 'big_vision'])
def test_half_precision_storage_loads_exactly(tmp_path, storage, layout):
  ml_dtypes = pytest.importorskip('ml_dtypes')
  flat = random_vit_jax_arrays(0, **SMALL)
  if layout == 'big_vision':
    flat = vit_jax_to_big_vision(flat, scan=True)
  if storage == 'float16':
    stored = {k: v.astype(np.float16) for k, v in flat.items()}
    widened = {k: v.astype(np.float32) for k, v in stored.items()}
  else:
    bits = {k: bfloat16_bits(v) for k, v in flat.items()}
    widened = {k: (b.astype(np.uint32) << 16).view(np.float32) for k, b in bits.items()}
    view = ml_dtypes.bfloat16 if storage == 'ml_dtypes.bfloat16' else np.dtype('V2')
    stored = {k: b.view(view) for k, b in bits.items()}
  if storage == 'ml_dtypes.bfloat16':  # our rounding is ml_dtypes' rounding
    for k, v in flat.items():
      np.testing.assert_array_equal(stored[k], v.astype(ml_dtypes.bfloat16))
  expected = (checkpoints.big_vision_to_vit_jax(widened, 'ref') if layout == 'big_vision'
              else widened)
  params, config = checkpoints.load_checkpoint(save(tmp_path, stored))
  assert config == SMALL_CONFIG
  loaded = checkpoints.flatten(params)
  assert sorted(loaded) == sorted(expected)
  for k, v in loaded.items():
    assert v.dtype == np.float32, k
    np.testing.assert_array_equal(v, expected[k], err_msg=k)
  x = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  logits = np.asarray(model_lib.apply(params, config, x))
  assert logits.shape == (2, 3) and np.isfinite(logits).all()


def test_bfloat16_orbax_checkpoint_loads_exactly(tmp_path):
  ml_dtypes = pytest.importorskip('ml_dtypes')
  arrays = random_vit_jax_arrays(0, **SMALL)
  stored = {k: v.astype(ml_dtypes.bfloat16) for k, v in arrays.items()}
  path = checkpoints.save_checkpoint(tmp_path / 'ckpt', checkpoints.unflatten(stored),
                                     SMALL_CONFIG)
  params, _ = checkpoints.load_checkpoint(path)
  for k, v in checkpoints.flatten(params).items():
    np.testing.assert_array_equal(v, stored[k].astype(np.float32), err_msg=k)
    assert v.dtype == np.float32


def write_zip(path, members, compression=zipfile.ZIP_STORED):
  with zipfile.ZipFile(path, 'w', compression) as z:
    for name, data in members.items():
      z.writestr(name, data)


def member_data_offset(path, name):
  with zipfile.ZipFile(path) as z:
    info = z.getinfo(name)
  return info.header_offset + 30 + len(info.filename)  # local header, name, no extra field


DAMAGED = 'Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel.npy'  # 8 KiB of data


@pytest.mark.parametrize('case,expected', [
    ('truncated', 'not a zip or is truncated (BadZipFile'),
    ('empty zip', 'the archive holds no arrays'),
    ('zip of text', "member 'readme.txt' is not an .npy array"),
    ('bad npy magic', "cannot read the header of member 'head/bias.npy' (ValueError"),
    ('npy cut short', "member 'head/bias.npy' is corrupt"),
    ('damaged deflate start', f"cannot read the header of member '{DAMAGED}' (error: Error -3"),
    ('damaged deflate data', f"cannot read member '{DAMAGED}' (BadZipFile: Bad CRC-32"),
    ('damaged stored data', f"cannot read member '{DAMAGED}' (BadZipFile: Bad CRC-32"),
])
def test_damaged_archive_is_refused(tmp_path, case, expected):
  arrays = random_vit_jax_arrays(0, **SMALL)
  path = tmp_path / 'bad.npz'
  if case == 'truncated':
    whole = save(tmp_path, arrays, 'whole.npz').read_bytes()
    path.write_bytes(whole[:len(whole) // 2])
  elif case == 'empty zip':
    write_zip(path, {})
  elif case == 'zip of text':
    write_zip(path, {'readme.txt': b'hello'})
  elif case == 'bad npy magic':
    write_zip(path, {'head/bias.npy': b'not an npy header at all'})
  elif case == 'npy cut short':
    write_zip(path, {'head/bias.npy': npy_bytes((3,), data=b'\0' * 5)})
  else:  # overwrite bytes inside one member's data; the zip directory stays intact
    compression = zipfile.ZIP_DEFLATED if 'deflate' in case else zipfile.ZIP_STORED
    write_zip(path, {f'{k}.npy': npy_bytes(v.shape, v.dtype.str, v.tobytes())
                     for k, v in arrays.items()}, compression)
    data = bytearray(path.read_bytes())
    at = member_data_offset(path, DAMAGED) + (0 if 'start' in case else 1000)
    data[at:at + 64] = b'\xff' * 64  # at the start: an invalid deflate block type
    path.write_bytes(bytes(data))
  with pytest.raises(CheckpointError) as e:
    checkpoints.load_checkpoint(path)
  msg = one_line(e)
  assert 'bad.npz' in msg and expected in msg, msg


def traced_peak(fn):
  """Peak bytes allocated through Python and numpy while `fn` runs."""
  tracemalloc.start()
  try:
    fn()
    return tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()


def refuse(path):
  with pytest.raises(CheckpointError) as e:
    checkpoints.load_checkpoint(path)
  return one_line(e)


def test_absurd_declared_size_is_refused_before_reading(tmp_path):
  path = tmp_path / 'huge.npz'
  write_zip(path, {'embedding/kernel.npy': npy_bytes((10**13,), data=bytes(64))})
  msgs = []
  peak = traced_peak(lambda: msgs.append(refuse(path)))
  assert "member 'embedding/kernel.npy' is corrupt" in msgs[0]
  assert 'shape (10000000000000,) of float32 (40000000000000 bytes)' in msgs[0]
  assert 'holds 64 bytes' in msgs[0] and 'huge.npz' in msgs[0]
  assert peak < 8 << 20


@pytest.fixture(scope='module')
def bomb(tmp_path_factory):
  """7 MB on disk; np.load would inflate it to a 1.5 GiB 'embedding/kernel' of zeros."""
  path = tmp_path_factory.mktemp('bomb') / 'bomb.npz'
  return zeros_bomb_npz(path, 'embedding/kernel', 3 << 29)


@pytest.mark.parametrize('limit,expected', [
    # Over the memory budget: refused from the header alone.
    (1 << 30, 'its arrays declare 1610612736 bytes (1.50 GiB), more than the limit of '
              '1073741824 bytes (1.00 GiB, checkpoints.npz.MAX_NPZ_BYTES)'),
    # Within the budget, but not a ViT: the shapes alone say so, before any data is inflated.
    (1 << 40, "'embedding/kernel' has shape (402653184,); expected 4 dimensions"),
])
def test_small_file_inflating_to_1_5_gib_is_refused_without_inflating(bomb, monkeypatch,
                                                                       limit, expected):
  assert bomb.stat().st_size < 16 << 20
  monkeypatch.setattr(checkpoints.npz, 'MAX_NPZ_BYTES', limit)
  msgs = []
  peak = traced_peak(lambda: msgs.append(refuse(bomb)))
  assert expected in msgs[0] and 'bomb.npz' in msgs[0], msgs[0]
  assert peak < 16 << 20


def test_default_budget_is_half_the_available_memory(tmp_path, monkeypatch):
  monkeypatch.setattr(checkpoints.npz, '_available_memory', lambda: 2 * 40000)
  arrays = random_vit_jax_arrays(0, **SMALL)  # about 0.1 MB
  with pytest.raises(CheckpointError, match='limit of 40000 bytes .*half the available memory'):
    checkpoints.load_checkpoint(save(tmp_path, arrays))
  monkeypatch.setattr(checkpoints.npz, '_available_memory', lambda: None)
  checkpoints.load_checkpoint(save(tmp_path, arrays))


@pytest.mark.parametrize('change,expected', [
    ({'foo': 1}, "unknown field(s) ['foo']"),
    ({'num_heads': 'twelve'}, "field 'num_heads' is 'twelve' (str); expected an integer"),
    ({'gelu_approximate': 1}, "field 'gelu_approximate' is 1 (int); expected true or false"),
    ({'num_heads': True}, "field 'num_heads' is True (bool); expected an integer"),
    ({'num_heads': 5}, 'hidden_size 32 is not divisible by num_heads 5'),
    ({'num_heads': 0}, 'modulo by zero'),
])
def test_bad_orbax_config_is_named(tmp_path, change, expected):
  path = checkpoints.save_orbax(tmp_path / 'ckpt', random_vit_jax_arrays(0, **SMALL),
                                {**SMALL_CONFIG.to_dict(), **change})
  with pytest.raises(CheckpointError) as e:
    checkpoints.load_checkpoint(path)
  msg = one_line(e)
  assert f'{path}/config: ' in msg and expected in msg, msg


def test_two_tower_file_loads_its_image_tower(tmp_path):
  arrays = random_vit_jax_arrays(0, **SMALL)
  ref, ref_config = logits_of(save(tmp_path, arrays, 'vj.npz'))
  path = save(tmp_path, two_tower_big_vision(vit_jax_to_big_vision(arrays, scan=True)),
              'siglip.npz')
  for spec in (path, f'{path}:img', f'{path}:params/img'):
    got, config = logits_of(spec)
    # The tower's head is a projection into the shared space: the output is an embedding.
    assert config == ref_config.replace(output='embedding')
    assert_same_model(got, ref, tmp_path / 'vj.npz')
  assert "missing key 'embedding/kernel'" in refuse(f'{path}:txt')
  msg = refuse(f'{path}:vision')
  assert "siglip.npz: no arrays under 'params/vision/'" in msg and "['img', 'txt']" in msg


def test_two_tower_file_with_an_incomplete_map_head_is_refused_clearly(tmp_path):
  arrays = vit_jax_to_big_vision(random_vit_jax_arrays(0, classifier='gap', **SMALL))
  arrays['params/MAPHead_0/probe'] = np.zeros((1, 1, 32), np.float32)
  msg = refuse(save(tmp_path, two_tower_big_vision(arrays), 'siglip.npz'))
  assert "siglip.npz does not match the model config: missing key 'MAPHead_0/" in msg


@pytest.mark.parametrize('key,value,expected', [
    ('embedding/kernel', np.zeros((8, 8, 3), np.float32), 'expected 4 dimensions'),
    ('Transformer/posembed_input/pos_embedding', np.zeros((17, 32), np.float32),
     'expected 3 dimensions'),
    ('Transformer/posembed_input/pos_embedding', np.zeros((1, 1, 32), np.float32),
     'has 0 patch positions, not a square grid'),
    ('head/kernel', np.zeros(32, np.float32), 'expected 2 dimensions'),
    ('Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel',
     np.zeros((32, 32), np.float32), 'expected 3 dimensions'),
    ('Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel',
     np.zeros((32, 0, 8), np.float32), 'modulo by zero'),
])
def test_key_of_the_wrong_rank_is_named(tmp_path, key, value, expected):
  arrays = random_vit_jax_arrays(0, **SMALL)
  arrays[key] = value
  msg = refuse(save(tmp_path, arrays))
  assert 'c.npz' in msg and expected in msg, msg


def test_scanned_scalar_and_sincos_without_embedding_are_named(tmp_path):
  arrays = vit_jax_to_big_vision(random_vit_jax_arrays(0, **SMALL), scan=True)
  del arrays['params/pos_embedding'], arrays['params/embedding/kernel']
  assert "missing key 'embedding/kernel'" in refuse(save(tmp_path, arrays))
  arrays['params/Transformer/encoderblock/LayerNorm_0/scale'] = np.float32(1.)
  assert 'is a scalar; expected a leading layer axis' in refuse(save(tmp_path, arrays))


def test_colon_in_an_existing_file_name_is_not_a_subtree(tmp_path):
  path = tmp_path / 'c.npz:img'
  with open(path, 'wb') as f:  # np.savez would append '.npz' to a path
    np.savez(f, **random_vit_jax_arrays(0, **SMALL))
  _, config = checkpoints.load_checkpoint(path)
  assert config.num_layers == 2
