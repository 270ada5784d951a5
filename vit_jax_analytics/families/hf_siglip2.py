"""Hugging Face `transformers` SigLIP 2 image towers (model_type `siglip2_vision_model`:
Siglip2VisionModel; `siglip2`: the `vision_model.` part of Siglip2Model or
Siglip2ForImageClassification) -> `model.py`, NaFlex included.

  patch embedding (a Linear on   `embedding` conv kernel [p, p, 3, D] (the processor flattens
  patchified pixels)             each patch as (row, column, channel): the conv's order)
  position embedding [N, D]      stored at its sqrt(N) x sqrt(N) grid (ViTConfig.posemb_grid),
                                 resized in the forward to each image's grid (NaFlex)
  MAP head (vision_use_head)     `MAPHead_0` (pooling 'map'); nn.MultiheadAttention's
                                 in_proj split into query / key / value
  ForImageClassification         pooling 'gap' (the mean over the image's patches) + `head`
  post_layernorm                 `encoder_norm`

NaFlex: the processor resizes each image, keeping its aspect ratio, to the largest grid
(h, w) with h * w <= max_num_patches (preprocessor_config.json beside the weights; else the
processor's default 256), and pads every image's patches to max_num_patches with a mask.
Here a batch holds images of one grid (naflex.py groups them), so no padding exists: the
attention over the valid tokens is that of the padded, masked model.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from vit_jax_analytics.errors import CheckpointError
from vit_jax_analytics.families import common
from vit_jax_analytics.families.common import Mapped, block, f32
from vit_jax_analytics.model import ViTConfig

MARK = 'embeddings.patch_embedding.weight'
DEFAULT_MAX_PATCHES = 256  # Siglip2ImageProcessor's default
MAP = 'MAPHead_0'


def max_num_patches(path, image_size, patch: int) -> int:
  """The patch budget of an image: (h / p) * (w / p) of --image-size when given, else the
  processor's max_num_patches (preprocessor_config.json beside the weights), else 256."""
  if image_size is not None:
    h, w = (image_size, image_size) if np.isscalar(image_size) else tuple(image_size)
    return max(1, (int(h) // patch) * (int(w) // patch))
  if path is not None:
    pre = (Path(path) if Path(path).is_dir() else Path(path).parent) / 'preprocessor_config.json'
    if pre.is_file():
      try:
        value = json.loads(pre.read_text()).get('max_num_patches')
      except (OSError, ValueError) as e:
        raise CheckpointError(f'{pre}: cannot read JSON ({e})') from None
      if value is not None:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
          raise CheckpointError(f'{pre}: max_num_patches is {value!r}; expected a positive '
                                f'integer')
        return value
  return DEFAULT_MAX_PATCHES


def canvas_grid(max_patches: int) -> tuple:
  """A square canvas (n, n) holding the grids of a patch budget's square images: the config's
  grid until the images are known (naflex.canvas_config then bounds their grids)."""
  n = max(1, int(np.floor(np.sqrt(max_patches))))
  return n, n


def siglip2_to_vit_jax(tensors: dict, hf_config: dict, path='checkpoint',
                       image_size=None) -> Mapped:
  """Pure mapping of a SigLIP 2 state dict + its config.json dict -> Mapped."""
  model_type = hf_config.get('model_type')
  if model_type == 'siglip2':
    hf_config = {**hf_config.get('vision_config', {}),
                 'architectures': hf_config.get('architectures'), 'model_type': model_type}
  pres = sorted({k[:-len(MARK)] for k in tensors if k.endswith(MARK)}, key=len)
  pres = [p for p in pres if 'text_model' not in p]
  if not pres:
    raise CheckpointError(f'{path}: no {MARK}; expected a SigLIP 2 vision checkpoint')
  pre = pres[0]
  take = common.TensorReader(tensors, pre, path, 'a SigLIP 2 checkpoint')
  used = take.used

  heads = hf_config.get('num_attention_heads')
  patch = hf_config.get('patch_size')
  channels = hf_config.get('num_channels', 3)
  for name, v in (('num_attention_heads', heads), ('patch_size', patch),
                  ('num_channels', channels)):
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
      raise CheckpointError(f'{path}: config.json {name} is {v!r}; expected a positive integer')
  t = {}
  w = f32(take(MARK))
  width = w.shape[0]
  if w.shape[1] != patch * patch * channels:
    raise CheckpointError(f'{path}: {pre}{MARK} has {w.shape[1]} inputs; expected patch_size^2 '
                          f'x num_channels = {patch * patch * channels}')
  t['embedding/kernel'] = w.reshape(width, patch, patch, channels).transpose(1, 2, 3, 0)
  t['embedding/bias'] = f32(take('embeddings.patch_embedding.bias'))
  pe = f32(take('embeddings.position_embedding.weight'))
  side = int(round(np.sqrt(pe.shape[0])))
  if side * side != pe.shape[0]:
    raise CheckpointError(f'{path}: the position embedding has {pe.shape[0]} rows; expected '
                          f'a square grid (num_patches)')
  t['Transformer/posembed_input/pos_embedding'] = pe[None]

  layers = sorted({int(m.group(1)) for k in tensors
                   if (m := re.match(re.escape(pre) + r'encoder\.layers\.(\d+)\.', k))})
  if not layers or layers != list(range(len(layers))):
    raise CheckpointError(f'{path}: expected layers {pre}encoder.layers.0..N-1, found {layers}')
  if width % heads:
    raise CheckpointError(f'{path}: config.json num_attention_heads {heads} does not divide '
                          f'the width {width}')
  for i in layers:
    lin = lambda n: (take(f'encoder.layers.{i}.{n}.weight'), take(f'encoder.layers.{i}.{n}.bias'))
    common.put_norm(t, f'{block(i)}/LayerNorm_0', *lin('layer_norm1'))
    common.put_norm(t, f'{block(i)}/LayerNorm_2', *lin('layer_norm2'))
    common.put_attention(t, i, heads, lin('self_attn.q_proj'), lin('self_attn.k_proj'),
                         lin('self_attn.v_proj'), lin('self_attn.out_proj'))
    common.put_linear(t, f'{block(i)}/MlpBlock_3/Dense_0', *lin('mlp.fc1'))
    common.put_linear(t, f'{block(i)}/MlpBlock_3/Dense_1', *lin('mlp.fc2'))
  common.put_norm(t, 'Transformer/encoder_norm', take('post_layernorm.weight'),
                  take('post_layernorm.bias'))

  # ForImageClassification averages the patch tokens into its classifier (its vision
  # model's MAP head, if any, is unused: left out, listed as ignored).
  classifier, num_classes, output = 'gap', 0, 'embedding'
  outer = pre[:-len('vision_model.')] if pre.endswith('vision_model.') else pre
  if take('classifier.weight', optional=True, prefix=outer) is not None:
    common.put_linear(t, 'head', take('classifier.weight', prefix=outer),
                      take('classifier.bias', optional=True, prefix=outer))
    num_classes, output = t['head/kernel'].shape[1], 'logits'
  elif pre + 'head.probe' in tensors:
    classifier = 'map'
    _put_map_head(t, take, heads, width)
  else:
    raise CheckpointError(f'{path}: neither an attention-pooling head (vision_use_head) nor a '
                          f'classifier; expected Siglip2VisionModel or '
                          f'Siglip2ForImageClassification')
  try:
    act = common.activation_of(hf_config.get('hidden_act', 'gelu_pytorch_tanh'))
  except ValueError as e:
    raise CheckpointError(f'{path}: config.json hidden_act: {e}') from None
  budget = max_num_patches(path if isinstance(path, (str, Path)) else None, image_size, patch)
  ch, cw = canvas_grid(budget)
  try:
    config = ViTConfig(
        image_size=(ch * patch, cw * patch), patch_size=patch, hidden_size=width,
        num_layers=len(layers), num_heads=heads,
        mlp_dim=t[f'{block(0)}/MlpBlock_3/Dense_0/kernel'].shape[1], num_classes=num_classes,
        classifier=classifier, activation=act, gelu_approximate=act == 'gelu_tanh',
        layer_norm_epsilon=float(hf_config.get('layer_norm_eps', 1e-6)), output=output,
        naflex_max_patches=budget, posemb_grid=(side, side))
  except ValueError as e:
    raise CheckpointError(f'{path}: {e}') from None
  common.check_float(tensors, used, path)
  source = {'family': 'SigLIP 2 NaFlex image tower (Hugging Face)',
            'format': 'transformers safetensors',
            'architecture': (hf_config.get('architectures') or [None])[0],
            'model_type': model_type, 'position': config.position_scheme,
            'posemb_resize': 'bilinear_antialias (per image grid, in the forward)',
            'posemb_grid': [side, side], 'max_num_patches': budget,
            'ignored': sorted(k for k in set(tensors) - used if 'text_model' not in k)}
  return Mapped(t, config, source)


def _put_map_head(t: dict, take, heads: int, width: int) -> None:
  """nn.MultiheadAttention pooling (probe, in_proj, out_proj, layernorm, mlp) -> MAPHead_0."""
  t[f'{MAP}/probe'] = f32(take('head.probe')).reshape(1, 1, width)
  w_in, b_in = f32(take('head.attention.in_proj_weight')), f32(take('head.attention.in_proj_bias'))
  att = f'{MAP}/MultiHeadDotProductAttention_0'
  for j, name in enumerate(('query', 'key', 'value')):
    wj, bj = w_in[j * width:(j + 1) * width], b_in[j * width:(j + 1) * width]
    t[f'{att}/{name}/kernel'] = wj.T.reshape(width, heads, width // heads)
    t[f'{att}/{name}/bias'] = bj.reshape(heads, width // heads)
  w_out = f32(take('head.attention.out_proj.weight')).T
  t[f'{att}/out/kernel'] = w_out.reshape(heads, width // heads, width)
  t[f'{att}/out/bias'] = f32(take('head.attention.out_proj.bias'))
  common.put_norm(t, f'{MAP}/LayerNorm_0', take('head.layernorm.weight'),
                  take('head.layernorm.bias'))
  common.put_linear(t, f'{MAP}/MlpBlock_0/Dense_0', take('head.mlp.fc1.weight'),
                    take('head.mlp.fc1.bias'))
  common.put_linear(t, f'{MAP}/MlpBlock_0/Dense_1', take('head.mlp.fc2.weight'),
                    take('head.mlp.fc2.bias'))
