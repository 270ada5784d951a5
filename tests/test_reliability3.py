"""The last tracebacks and silent surprises of a hostile round (issue 23), each end to end
through the CLI: a one-line `error: ...` (exit 2) naming the file, field or flag and what
was expected, a warning, or the right result. Fixtures are tiny: a 2-layer HF ViT written
by `transformers`, a timm-layout state dict written here, the bundled demo model."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from vit_jax_analytics import cli

ROOT = Path(__file__).resolve().parents[1]
DEMO_CKPT, DEMO_IMAGES = ROOT / 'checkpoints/demo_vit', ROOT / 'checkpoints/demo_images'


def run(capsys, *argv):
  code = cli.main([str(a) for a in argv])
  out = capsys.readouterr()
  return code, out.out, out.err


def one_line_error(code, err, *words):
  assert code == 2, err
  assert err.startswith('error: ') and err.strip().count('\n') == 0, err
  assert 'Traceback' not in err
  for w in words:
    assert w in err, (w, err)


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def hf_vit(tmp_path_factory):
  """A 2-layer ViTForImageClassification (5 classes) written by transformers."""
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  torch.manual_seed(0)
  m = transformers.ViTForImageClassification(transformers.ViTConfig(
      hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
      image_size=28, patch_size=7, num_labels=5))
  path = tmp_path_factory.mktemp('hf') / 'vit'
  m.save_pretrained(path)
  return path


def hf_variant(hf_vit, tmp_path, **config):
  """A copy of the HF checkpoint with config.json fields changed."""
  path = tmp_path / 'variant'
  shutil.copytree(hf_vit, path)
  c = json.loads((path / 'config.json').read_text())
  c.update(config)
  (path / 'config.json').write_text(json.dumps(c))
  return path


def timm_state_dict(width=64, layers=2, grid=4, patch=7, classes=5, seed=0):
  """A random timm VisionTransformer state dict (vit_* layout: class token, fused qkv)."""
  rng = np.random.default_rng(seed)
  r = lambda *s: rng.normal(0, 0.2, s).astype(np.float32)
  sd = {'patch_embed.proj.weight': r(width, 3, patch, patch), 'patch_embed.proj.bias': r(width),
        'cls_token': r(1, 1, width), 'pos_embed': r(1, 1 + grid * grid, width),
        'norm.weight': 1 + r(width), 'norm.bias': r(width),
        'head.weight': r(classes, width), 'head.bias': r(classes)}
  for i in range(layers):
    b = f'blocks.{i}.'
    sd.update({b + 'norm1.weight': 1 + r(width), b + 'norm1.bias': r(width),
               b + 'norm2.weight': 1 + r(width), b + 'norm2.bias': r(width),
               b + 'attn.qkv.weight': r(3 * width, width), b + 'attn.qkv.bias': r(3 * width),
               b + 'attn.proj.weight': r(width, width), b + 'attn.proj.bias': r(width),
               b + 'mlp.fc1.weight': r(2 * width, width), b + 'mlp.fc1.bias': r(2 * width),
               b + 'mlp.fc2.weight': r(width, 2 * width), b + 'mlp.fc2.bias': r(width)})
  return sd


def save_safetensors(sd, path):
  from safetensors.numpy import save_file
  save_file(sd, str(path))
  return path


# --- 1, 7: config.json against the weights, and its malformed fields --------------------------


@pytest.mark.parametrize('field, value, words', [
    ('num_hidden_layers', 1, ['num_hidden_layers is 1', 'the weights have 2']),
    ('hidden_size', 64, ['hidden_size is 64', 'the weights have 32']),
    ('num_labels', 7, ['num_labels is 7', 'the weights have 5']),
    ('num_channels', 1, ['num_channels is 1', 'the weights have 3']),
    ('patch_size', 14, ['patch_size is 14', 'the weights have 7']),
    ('hidden_act', 'relu', ['config.json hidden_act', "'relu' is not supported"]),
    ('num_attention_heads', -4, ['num_attention_heads is -4', 'positive integer']),
    ('image_size', 0, ['image_size is 0', 'positive integer']),
])
def test_hf_config_contradicting_or_malformed_is_one_line(hf_vit, tmp_path, capsys, field,
                                                          value, words):
  path = hf_variant(hf_vit, tmp_path, **{field: value})
  code, _, err = run(capsys, 'info', '--checkpoint', path)
  one_line_error(code, err, str(path), *words)


def test_hf_config_that_agrees_loads(hf_vit, capsys):
  code, out, err = run(capsys, 'info', '--checkpoint', hf_vit)
  assert code == 0, err
  assert json.loads(out)['config']['num_layers'] == 2


# --- 2: integer weights -----------------------------------------------------------------------


def test_integer_safetensors_weights_are_refused(hf_vit, tmp_path, capsys):
  from safetensors.numpy import load_file
  path = tmp_path / 'int'
  shutil.copytree(hf_vit, path)
  sd = load_file(str(path / 'model.safetensors'))
  name = 'vit.encoder.layer.0.attention.attention.query.weight'
  sd[name] = (sd[name] * 1e9).astype(np.int32)
  save_safetensors(sd, path / 'model.safetensors')
  code, _, err = run(capsys, 'evaluate', '--checkpoint', path, '--images', DEMO_IMAGES,
                     '--max-images', 2)
  one_line_error(code, err, name, 'int32', 'floating-point')


# --- 8: timm qkv ------------------------------------------------------------------------------


def test_timm_qkv_rows_not_three_widths_is_one_line(tmp_path, capsys):
  sd = timm_state_dict()
  sd['blocks.1.attn.qkv.weight'] = sd['blocks.1.attn.qkv.weight'][:-1]
  path = save_safetensors(sd, tmp_path / 'model.safetensors')
  code, _, err = run(capsys, 'info', '--checkpoint', path)
  one_line_error(code, err, 'blocks.1.attn.qkv.weight', '[191, 64]', '[192, 64]')


def test_timm_state_dict_written_here_loads(tmp_path, capsys):
  path = save_safetensors(timm_state_dict(), tmp_path / 'model.safetensors')
  code, out, err = run(capsys, 'info', '--checkpoint', path)
  assert code == 0, err
  assert json.loads(out)['config']['num_layers'] == 2
