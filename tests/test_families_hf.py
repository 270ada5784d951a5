"""Hugging Face transformers ViT families (random tiny models saved with save_pretrained)
loaded without torch, against transformers' own forward (float64 on both sides).

Loaded in JAX's 64-bit mode, every fold done at load (LayerScale, the distillation token's
position embedding, resized position embeddings) is computed in float64, so the two sides
agree to float64 rounding. transformers' eager attention takes its softmax in float32
whatever the input: the reference runs it in float64 (`_reference`)."""

import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

import contextlib
from unittest import mock

import jax

from vit_jax_analytics import checkpoints, model as model_lib
import vit_jax_analytics.checkpoints.posemb as posemb

KW = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
          image_size=28, patch_size=7, attn_implementation='eager')


def _models():
  T = transformers
  return {
      'vit': lambda: T.ViTForImageClassification(T.ViTConfig(**KW, num_labels=5)),
      'vit_model': lambda: T.ViTModel(T.ViTConfig(**KW)),
      'deit_teacher': lambda: T.DeiTForImageClassificationWithTeacher(
          T.DeiTConfig(**KW, num_labels=5)),
      'deit': lambda: T.DeiTForImageClassification(T.DeiTConfig(**KW, num_labels=5)),
      # LayerScale 0.3: not a float32 number, so a fold rounded to float32 shows (0.5 hid it)
      'dinov2': lambda: T.Dinov2ForImageClassification(
          T.Dinov2Config(**KW, num_labels=5, layerscale_value=0.3)),
      'dinov2_model': lambda: T.Dinov2Model(T.Dinov2Config(**KW, layerscale_value=0.5)),
      'dinov2_registers': lambda: T.Dinov2WithRegistersForImageClassification(
          T.Dinov2WithRegistersConfig(**KW, num_register_tokens=2, num_labels=5,
                                      layerscale_value=0.3)),
      'clip': lambda: T.CLIPVisionModel(T.CLIPVisionConfig(**KW)),
      'clip_projection': lambda: T.CLIPVisionModelWithProjection(
          T.CLIPVisionConfig(**KW, projection_dim=16)),
  }


@contextlib.contextmanager
def _softmax_in_float64():
  """transformers' eager attention calls softmax(..., dtype=torch.float32) then casts back:
  a float64 forward rounded to float32 in every attention. Keep float64 inputs float64."""
  softmax = torch.nn.functional.softmax

  def float64_softmax(x, dim=None, _stacklevel=3, dtype=None):
    return softmax(x, dim=dim, dtype=None if x.dtype == torch.float64 else dtype)
  with mock.patch.object(torch.nn.functional, 'softmax', float64_softmax):
    yield


def _load64(path, **kw):
  """The checkpoint loaded in JAX's 64-bit mode: float64 params, folds in float64."""
  with jax.enable_x64(True):
    params, config = checkpoints.load_checkpoint(path, **kw)
  assert {a.dtype for a in jax.tree.leaves(params)} == {np.dtype(np.float64)}
  return params, config


def _reference(m, x, **kw):
  with torch.no_grad(), _softmax_in_float64():
    o = m.double().eval()(pixel_values=torch.tensor(x), output_attentions=True, **kw)
  out = (o.logits if hasattr(o, 'logits') else o.image_embeds if hasattr(o, 'image_embeds')
         else o.pooler_output)
  return out.numpy(), [a.numpy() for a in o.attentions]


def _ours(params, config, x, dtype=np.float64):
  p = jax.tree.map(lambda a: np.asarray(a, dtype), params)
  with jax.enable_x64(dtype == np.float64):
    out, att = model_lib.apply(p, config, np.asarray(x.transpose(0, 2, 3, 1), dtype),
                               return_attention=True)
    return np.asarray(out), np.asarray(att)


def _rel(a, b):
  return float(np.abs(np.asarray(a) - b).max() / np.abs(b).max())


def save(name, tmp_path, seed=0):
  torch.manual_seed(seed)
  m = _models()[name]()
  m.save_pretrained(tmp_path / name)
  return m, tmp_path / name


@pytest.mark.parametrize('name', list(_models()))
def test_family_matches_transformers(name, tmp_path):
  m, path = save(name, tmp_path)
  x = np.random.default_rng(1).normal(size=(2, 3, 28, 28))
  ref, ref_att = _reference(m, x)
  params, config, source = checkpoints.load_with_source(path)
  assert source['format'] == 'transformers safetensors' and not source['ignored']
  params, config = _load64(path)
  out, att = _ours(params, config, x)
  assert _rel(out, ref) <= 1e-13  # float64 rounding (measured <= 1.1e-15)
  for layer, a in enumerate(ref_att):
    assert _rel(att[:, layer], a) <= 1e-13
  out32, _ = _ours(params, config, x, np.float32)
  assert _rel(out32, ref) <= 1e-4
  if name == 'deit_teacher':
    assert config.token_layout()['distillation'] == [1]
  if name == 'dinov2_registers':
    assert config.token_layout()['registers'] == [1, 2]


@pytest.mark.parametrize('name', ['vit', 'dinov2', 'dinov2_registers', 'clip'])
def test_position_embedding_resized_as_the_source(name, tmp_path):
  """At 42 x 28 (from a 4 x 4 grid to 6 x 4) the source interpolates its position
  embedding (bicubic; antialiased for Dinov2WithRegisters); loading at that size must agree:
  to float64 rounding, but for Dinov2, whose interpolate_pos_encoding resamples in float32
  (measured 3e-9; ViT and CLIP resample in the input's dtype)."""
  m, path = save(name, tmp_path)
  x = np.random.default_rng(2).normal(size=(1, 3, 42, 28))
  kw = {} if name.startswith('dinov2') else {'interpolate_pos_encoding': True}
  ref, ref_att = _reference(m, x, **kw)
  params, config = _load64(path, image_size=(42, 28))
  assert config.grid_shape == (6, 4)
  out, att = _ours(params, config, x)
  tolerance = 1e-7 if name.startswith('dinov2') else 1e-13
  assert _rel(out, ref) <= tolerance
  assert _rel(att[:, -1], ref_att[-1]) <= tolerance


@pytest.mark.parametrize('old,new', [((4, 4), (7, 7)), ((7, 7), (4, 4)), ((37, 37), (16, 16)),
                                     ((5, 6), (9, 3))])
@pytest.mark.parametrize('antialias', [False, True])
def test_bicubic_matches_torch_interpolate(old, new, antialias):
  g = np.random.default_rng(0).normal(size=(*old, 3))
  ref = torch.nn.functional.interpolate(
      torch.tensor(g.transpose(2, 0, 1)[None]), size=new, mode='bicubic',
      align_corners=False, antialias=antialias)[0].numpy().transpose(1, 2, 0)
  out = posemb.resize_grid(g, new, 'bicubic_antialias' if antialias else 'bicubic')
  np.testing.assert_allclose(out, ref, atol=1e-6)


def test_missing_config_and_unknown_type_are_one_line_errors(tmp_path):
  from vit_jax_analytics.errors import CheckpointError
  _, path = save('vit', tmp_path)
  (path / 'config.json').write_text('{"model_type": "swin"}')
  with pytest.raises(CheckpointError, match="model_type 'swin' is not supported"):
    checkpoints.load_checkpoint(path)
  (path / 'config.json').unlink()
  with pytest.raises(CheckpointError, match='no config.json'):
    checkpoints.load_checkpoint(path)


def test_info_names_family_and_format(tmp_path, capsys):
  import json
  from vit_jax_analytics import cli
  _, path = save('dinov2_registers', tmp_path)
  assert cli.main(['info', '--checkpoint', str(path)]) == 0
  info = json.loads(capsys.readouterr().out)
  assert info['family'] == 'DINOv2 with registers (Hugging Face)'
  assert info['format'] == 'transformers safetensors'
  assert info['source']['posemb_resize'] == 'bicubic_antialias'
  assert info['token_layout']['registers'] == [1, 2]


def test_bfloat16_and_float16_checkpoints_load(tmp_path):
  m, path = save('dinov2', tmp_path)
  for dtype in (torch.bfloat16, torch.float16):
    m.to(dtype).save_pretrained(tmp_path / str(dtype))
    params, config = checkpoints.load_checkpoint(tmp_path / str(dtype))
    ref = {k: v.float().numpy() for k, v in m.state_dict().items()}
    got = params['Transformer']['encoderblock_0']['LayerNorm_0']['scale']
    np.testing.assert_array_equal(got, ref['dinov2.encoder.layer.0.norm1.weight'])
    assert got.dtype == np.float32


def test_bilinear_matches_the_vit_jax_resize():
  g = np.random.default_rng(0).normal(size=(5, 6, 3)).astype(np.float32)
  ref = checkpoints.resize_position_embedding(g.reshape(1, 30, 3), (7, 4), False, (5, 6))
  np.testing.assert_allclose(posemb.resize_grid(g, (7, 4), 'bilinear'), ref.reshape(7, 4, 3),
                             atol=1e-6)
