"""Hugging Face `transformers` ViT-family checkpoints (safetensors + config.json), without torch.

Supported (model_type in config.json): `vit` (ViTModel, ViTForImageClassification), `deit`
(DeiTModel, DeiTForImageClassification, ...WithTeacher: class + distillation token), `dinov2`
(Dinov2Model, Dinov2ForImageClassification: LayerScale), `dinov2_with_registers`, `dinov3_vit`
(hf_dinov3.py: RoPE, registers, gated MLPs), SigLIP 2 image towers (`siglip2_vision_model`,
`siglip2`; hf_siglip2.py: NaFlex), and CLIP's vision tower (`clip_vision_model`,
or the `vision_model.` part of a `clip` checkpoint).

How each source maps onto `model.py` (all exact in real arithmetic):
  LayerScale (DINOv2)          folded into the attention's `out` and the MLP's `Dense_1`
  distillation token (DeiT)    the first register, its position embedding added to it
  registers (DINOv2-reg)       `registers` (no position embedding, after the class token)
  CLIP pre_layrnorm            `Transformer/pre_norm` (ViTConfig.pre_norm)
  CLIP post_layernorm          `encoder_norm` (CLIP normalises the pooled class token only;
                               on the class token the two are the same)
  CLIP patch conv (no bias)    a zero bias
  ViT/DeiT pooler (tanh)       `pre_logits` (representation_size = hidden size)
  Dinov2 classifier            pooling 'token_gap' (class token ++ mean patch token)
  DeiT teacher heads           pooling 'token_dist', one head = the average of the two
Position embeddings resize as the source does (`checkpoints/posemb.py`): bicubic for ViT, DeiT, CLIP,
Dinov2; bicubic with antialiasing for Dinov2WithRegisters.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

import numpy as np

from vit_jax_analytics.errors import CheckpointError
import vit_jax_analytics.checkpoints.posemb as posemb
from vit_jax_analytics.families import common
from vit_jax_analytics.families.common import Mapped, block, f32
from vit_jax_analytics.model import ViTConfig

POSEMB_KEY = 'Transformer/posembed_input/pos_embedding'
MODEL_TYPES = ('vit', 'deit', 'dinov2', 'dinov2_with_registers', 'dinov3_vit', 'clip_vision_model',
               'clip', 'siglip2_vision_model', 'siglip2')
RESIZE = {'vit': 'bicubic', 'deit': 'bicubic', 'dinov2': 'bicubic',
          'dinov2_with_registers': 'bicubic_antialias', 'clip_vision_model': 'bicubic'}
FAMILY = {'vit': 'ViT (Hugging Face)', 'deit': 'DeiT (Hugging Face)',
          'dinov2': 'DINOv2 (Hugging Face)',
          'dinov2_with_registers': 'DINOv2 with registers (Hugging Face)',
          'clip_vision_model': 'CLIP vision tower (Hugging Face)'}

# Per family: the names of one encoder layer's parts, relative to the layer prefix.
_LAYER = {
    'bert': dict(norm1='layernorm_before', norm2='layernorm_after',
                 q='attention.attention.query', k='attention.attention.key',
                 v='attention.attention.value', o='attention.output.dense',
                 fc1='intermediate.dense', fc2='output.dense'),
    'dinov2': dict(norm1='norm1', norm2='norm2', q='attention.attention.query',
                   k='attention.attention.key', v='attention.attention.value',
                   o='attention.output.dense', fc1='mlp.fc1', fc2='mlp.fc2',
                   ls1='layer_scale1.lambda1', ls2='layer_scale2.lambda1'),
    'clip': dict(norm1='layer_norm1', norm2='layer_norm2', q='self_attn.q_proj',
                 k='self_attn.k_proj', v='self_attn.v_proj', o='self_attn.out_proj',
                 fc1='mlp.fc1', fc2='mlp.fc2'),
}
_STYLE = {'vit': 'bert', 'deit': 'bert', 'dinov2': 'dinov2', 'dinov2_with_registers': 'dinov2',
          'clip_vision_model': 'clip'}


def _base_prefix(keys, model_type: str) -> str:
  """The prefix before `embeddings.` of the backbone ('' for a bare model, 'vit.',
  'dinov2.', 'vision_model.', 'backbone.', ...)."""
  marks = ('embeddings.patch_embeddings.projection.weight', 'embeddings.patch_embedding.weight')
  found = sorted({k[:-len(m)] for k in keys for m in marks if k.endswith(m)}, key=len)
  if not found:
    raise KeyError('no patch embedding (embeddings.patch_embeddings.projection.weight or '
                   'embeddings.patch_embedding.weight)')
  return found[0]


# transformers 5 names its modules differently from the files it writes (save_pretrained
# converts back); state dicts taken from the live module and ONNX exports carry the new names.
_V5_NAMES = {
    'bert': [(r'(^|\.)layers\.(\d+)\.', r'\1encoder.layer.\2.'),
             (r'\.attention\.q_proj\.', '.attention.attention.query.'),
             (r'\.attention\.k_proj\.', '.attention.attention.key.'),
             (r'\.attention\.v_proj\.', '.attention.attention.value.'),
             (r'\.attention\.o_proj\.', '.attention.output.dense.'),
             (r'\.mlp\.fc1\.', '.intermediate.dense.'), (r'\.mlp\.fc2\.', '.output.dense.')],
    'dinov2': [(r'\.attention\.q_proj\.', '.attention.attention.query.'),
               (r'\.attention\.k_proj\.', '.attention.attention.key.'),
               (r'\.attention\.v_proj\.', '.attention.attention.value.'),
               (r'\.attention\.o_proj\.', '.attention.output.dense.')],
    'clip': [],
}


def legacy_names(tensors: dict, style: str) -> dict:
  """transformers-5 module names -> the names its checkpoints carry."""
  out = {}
  for k, v in tensors.items():
    for pattern, repl in _V5_NAMES[style]:
      k = re.sub(pattern, repl, k)
    out[k] = v
  return out


_HEADS = ('classifier', 'cls_classifier', 'distillation_classifier', 'visual_projection')


def wrapper_prefix(base: str) -> str:
  """The prefix of the module that holds the backbone: '' for 'vit.' or '' (the model's
  own), 'm.' for 'm.vit.' (a wrapper's attribute `m` holding a ViTForImageClassification)."""
  parts = base.rstrip('.').split('.')
  return '.'.join(parts[:-1]) + '.' if len(parts) > 1 else ''


def hf_to_vit_jax(tensors: dict, hf_config: dict, path='checkpoint',
                  image_size=None, resize_method: Optional[str] = None) -> Mapped:
  """Pure mapping: {name: array} of a transformers state dict + its config.json dict ->
  Mapped(flat vit_jax params, ViTConfig, source). image_size: S or (h, w) to run at (the
  position embedding resampled as the source model does); default the config's."""
  model_type = hf_config.get('model_type')
  if model_type == 'dinov3_vit':
    from vit_jax_analytics.families import hf_dinov3
    return hf_dinov3.dinov3_to_vit_jax(tensors, hf_config, path, image_size)
  if model_type in ('siglip2_vision_model', 'siglip2'):
    from vit_jax_analytics.families import hf_siglip2
    return hf_siglip2.siglip2_to_vit_jax(tensors, hf_config, path, image_size)
  if model_type == 'clip':
    hf_config = {**hf_config.get('vision_config', {}), 'model_type': 'clip_vision_model',
                 'architectures': hf_config.get('architectures')}
    tensors = {k: v for k, v in tensors.items() if k.startswith('vision_model.')}
    model_type = 'clip_vision_model'
  if model_type not in _STYLE:
    raise CheckpointError(f'{path}: model_type {model_type!r} is not supported; expected one '
                          f'of {MODEL_TYPES}')
  style = _STYLE[model_type]
  tensors = legacy_names(tensors, style)
  try:
    pre = _base_prefix(tensors, model_type)
  except KeyError as e:
    raise CheckpointError(f'{path}: {e.args[0]}; expected a {model_type} checkpoint') from None
  heads = _positive_int(hf_config, 'num_attention_heads', path)
  take = common.TensorReader(tensors, pre, path, 'a Hugging Face checkpoint of the class '
                                                 'named in config.json')
  used = take.used
  t = {}

  # Embeddings.
  if style == 'clip':
    w = take('embeddings.patch_embedding.weight')
    t['embedding/kernel'], t['embedding/bias'] = common.patch_kernel(w)
    cls = f32(take('embeddings.class_embedding')).reshape(1, 1, -1)
    pe = f32(take('embeddings.position_embedding.weight'))[None]
  else:
    w = take('embeddings.patch_embeddings.projection.weight')
    t['embedding/kernel'], t['embedding/bias'] = common.patch_kernel(
        w, take('embeddings.patch_embeddings.projection.bias', True))
    cls = f32(take('embeddings.cls_token'))
    pe = f32(take('embeddings.position_embeddings'))
    take('embeddings.mask_token', True)  # masked-image-modelling only
  width, patch = t['embedding/kernel'].shape[-1], t['embedding/kernel'].shape[0]
  t['cls'] = cls
  registers = []
  if model_type == 'deit':  # [cls, dist, patches]: dist + its posemb becomes a register
    registers.append(f32(take('embeddings.distillation_token')) + pe[:, 1:2])
    pe = np.concatenate([pe[:, :1], pe[:, 2:]], axis=1)
  if model_type == 'dinov2_with_registers':
    registers.append(f32(take('embeddings.register_tokens')))
  if registers:
    t['registers'] = np.concatenate(registers, axis=1)

  # Blocks.
  names = _LAYER[style]
  layer_word = 'encoder.layers.' if style == 'clip' else 'encoder.layer.'
  layers = sorted({int(m.group(1)) for k in tensors
                   if (m := re.match(re.escape(pre + layer_word) + r'(\d+)\.', k))})
  if not layers or layers != list(range(len(layers))):
    raise CheckpointError(f'{path}: expected layers {pre}{layer_word}0..N-1, found {layers}')
  if width % heads:
    raise CheckpointError(f'{path}: config.json num_attention_heads {heads} does not divide '
                          f'the width {width}')
  if any(f'{pre}{layer_word}0.mlp.weights_in' in k for k in tensors):
    raise CheckpointError(f'{path}: SwiGLU MLPs (use_swiglu_ffn) are not supported')
  for i in layers:
    lp = f'{layer_word}{i}.'
    lin = lambda n: (take(f'{lp}{names[n]}.weight'), take(f'{lp}{names[n]}.bias', True))
    common.put_norm(t, f'{block(i)}/LayerNorm_0', *lin('norm1'))
    common.put_norm(t, f'{block(i)}/LayerNorm_2', *lin('norm2'))
    common.put_attention(t, i, heads, lin('q'), lin('k'), lin('v'), lin('o'))
    common.put_linear(t, f'{block(i)}/MlpBlock_3/Dense_0', *lin('fc1'))
    common.put_linear(t, f'{block(i)}/MlpBlock_3/Dense_1', *lin('fc2'))
    if 'ls1' in names:
      common.fold_layer_scale(t, i, take(f'{lp}{names["ls1"]}', True),
                              take(f'{lp}{names["ls2"]}', True))
  if style == 'clip':
    common.put_norm(t, 'Transformer/pre_norm', take('pre_layrnorm.weight'),
                    take('pre_layrnorm.bias'))
    common.put_norm(t, 'Transformer/encoder_norm', take('post_layernorm.weight'),
                    take('post_layernorm.bias'))
  else:
    common.put_norm(t, 'Transformer/encoder_norm', take('layernorm.weight'),
                    take('layernorm.bias'))

  # Pooling and heads (outside the backbone prefix: beside it, under the same wrapper as
  # the backbone, e.g. 'm.classifier' beside 'm.vit.' when a module wraps the model).
  outer = wrapper_prefix(pre)
  head = next((p for p in dict.fromkeys((outer, '')) if any(
      f'{p}{h}.weight' in tensors for h in _HEADS)), '')
  if head:
    tensors = {(k[len(head):] if k.startswith(head) and k[len(head):].split('.')[0] in _HEADS
                else k): v for k, v in tensors.items()}
  classifier, num_classes, representation, output = 'token', 0, None, 'embedding'
  pooler = take('pooler.dense.weight', True)
  if pooler is not None:
    if hf_config.get('pooler_act', 'tanh') != 'tanh':
      raise CheckpointError(f"{path}: pooler_act {hf_config.get('pooler_act')!r} is not "
                            f"supported; expected 'tanh'")
    common.put_linear(t, 'pre_logits', pooler, take('pooler.dense.bias'))
    representation = t['pre_logits/kernel'].shape[1]
  if 'cls_classifier.weight' in tensors and 'distillation_classifier.weight' in tensors:
    wc, wd = f32(tensors['cls_classifier.weight']), f32(tensors['distillation_classifier.weight'])
    t['head/kernel'] = np.concatenate([wc.T, wd.T], axis=0) / 2
    t['head/bias'] = (f32(tensors['cls_classifier.bias']) +
                      f32(tensors['distillation_classifier.bias'])) / 2
    used.update(f'{n}_classifier.{p}' for n in ('cls', 'distillation') for p in ('weight', 'bias'))
    classifier, output = 'token_dist', 'logits'
  elif 'classifier.weight' in tensors:
    common.put_linear(t, 'head', tensors['classifier.weight'], tensors.get('classifier.bias'))
    used.update({'classifier.weight', 'classifier.bias'})
    output = 'logits'
    if style == 'dinov2':
      classifier = 'token_gap'
  if 'visual_projection.weight' in tensors:  # CLIPVisionModelWithProjection
    common.put_linear(t, 'head', tensors['visual_projection.weight'], None)
    used.add('visual_projection.weight')
  num_classes = t['head/kernel'].shape[1] if 'head/kernel' in t else 0
  if classifier == 'token' and model_type == 'deit' and output == 'logits':
    pass  # DeiTForImageClassification: the class token alone

  # Grid and position embedding.
  prefix = 1
  grid_tokens = pe.shape[1] - prefix
  side = int(round(np.sqrt(grid_tokens)))
  if side * side != grid_tokens:
    raise CheckpointError(f'{path}: position embedding has {grid_tokens} patch positions, not '
                          f'a square grid')
  cfg_size = _image_size(hf_config, path) or side * patch
  target = image_size if image_size is not None else cfg_size
  th, tw = (target, target) if np.isscalar(target) else tuple(target)
  if th % patch or tw % patch:
    raise CheckpointError(f'{path}: image size {target} is not a multiple of the patch size '
                          f'{patch}')
  method = resize_method or RESIZE[model_type]
  pe = posemb.resize_posemb(pe, prefix, (side, side), (th // patch, tw // patch), method)
  t[POSEMB_KEY] = pe

  try:
    act = common.activation_of(hf_config.get('hidden_act', 'gelu'))
  except ValueError as e:
    raise CheckpointError(f'{path}: config.json hidden_act: {e}') from None
  mlp_dim = t[f'{block(0)}/MlpBlock_3/Dense_0/kernel'].shape[1]
  _check_config_against_weights(hf_config, path, {
      'num_hidden_layers': len(layers), 'hidden_size': width, 'patch_size': patch,
      'num_channels': t['embedding/kernel'].shape[2],
      # Dinov2 sizes its MLP by mlp_ratio (an intermediate_size there is unused)
      **({'mlp_ratio': mlp_dim / width} if style == 'dinov2' else {'intermediate_size': mlp_dim}),
      'num_labels': num_classes if output == 'logits' and 'visual_projection.weight' not in tensors
                    else None})
  try:
    config = ViTConfig(
        image_size=(th, tw), patch_size=patch, hidden_size=width, num_layers=len(layers),
        num_heads=heads, mlp_dim=t[f'{block(0)}/MlpBlock_3/Dense_0/kernel'].shape[1],
        num_classes=num_classes, classifier=classifier, representation_size=representation,
        gelu_approximate=act == 'gelu_tanh', activation=act,
        layer_norm_epsilon=float(hf_config.get('layer_norm_eps', 1e-12)),
        num_registers=t['registers'].shape[1] if 'registers' in t else 0, output=output,
        pre_norm=style == 'clip', distillation_token=model_type == 'deit')
  except ValueError as e:
    raise CheckpointError(f'{path}: {e}') from None
  common.check_float(tensors, used, path)
  ignored = sorted(set(tensors) - used)
  source = {'family': FAMILY[model_type], 'format': 'transformers safetensors',
            'architecture': (hf_config.get('architectures') or [None])[0],
            'model_type': model_type, 'posemb_resize': method,
            'posemb_grid': [side, side], 'ignored': ignored}
  return Mapped(t, config, source)


def _positive_int(hf_config: dict, field: str, path) -> int:
  """config.json's `field`, which must be a positive integer."""
  value = hf_config.get(field)
  if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
    raise CheckpointError(f'{path}: config.json {field} is {value!r}; expected a positive '
                          f'integer')
  return value


def _image_size(hf_config: dict, path):
  """config.json's image_size: a positive integer or [height, width] of them; None if
  absent."""
  value = hf_config.get('image_size')
  if value is None:
    return None
  sizes = list(value) if isinstance(value, (list, tuple)) else [value]
  if (len(sizes) not in (1, 2) or
      not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in sizes)):
    raise CheckpointError(f'{path}: config.json image_size is {value!r}; expected a positive '
                          f'integer or [height, width]')
  return sizes[0] if len(sizes) == 1 else tuple(sizes)


def _check_config_against_weights(hf_config: dict, path, from_weights: dict) -> None:
  """Refuses a config.json field that contradicts the weights: `transformers` builds its
  model from the config, so it would compute another model (or fail to load) while we would
  run the weights' one. num_labels is the count of id2label when not given."""
  declared = dict(hf_config)
  if 'num_labels' not in declared and isinstance(declared.get('id2label'), dict):
    declared['num_labels'] = len(declared['id2label'])
  for field, actual in from_weights.items():
    value = declared.get(field)
    if actual is None or value is None:
      continue
    if value != actual:
      raise CheckpointError(f'{path}: config.json {field} is {value!r} but the weights have '
                            f'{actual}; a model built from this config.json (as transformers '
                            f'does) would differ from these weights: fix one of them')


def read_safetensors(files, path) -> dict:
  """All tensors of the given .safetensors files as NumPy arrays (safetensors' NumPy API;
  bfloat16 read as its bits and widened)."""
  try:
    from safetensors import safe_open
  except ImportError:
    raise CheckpointError(f'{path}: reading .safetensors needs the safetensors package '
                          f'(pip install safetensors)') from None
  out = {}
  for f in files:
    try:
      with safe_open(str(f), framework='numpy') as st:
        for k in st.keys():
          try:
            out[k] = st.get_tensor(k)
          except TypeError:  # bfloat16: NumPy has no such dtype
            out[k] = _read_bfloat16(f, k)
    except CheckpointError:
      raise
    except Exception as e:  # safetensors raises its own error types for damaged files
      msg = str(e).splitlines()[0] if str(e) else ''
      raise CheckpointError(f'{f}: cannot read safetensors file ({type(e).__name__}: '
                            f'{msg})') from None
  return out


def _read_bfloat16(path, key) -> np.ndarray:
  """One BF16 tensor of a .safetensors file, widened exactly to float32 (its bits are the top
  half of a float32), with its header entry checked against the file."""
  with open(path, 'rb') as f:
    n = int.from_bytes(f.read(8), 'little')
    size = Path(path).stat().st_size
    if n <= 0 or 8 + n > size:
      raise CheckpointError(f'{path}: corrupt safetensors header (length {n})')
    header = json.loads(f.read(n))
    entry = header.get(key)
    if not isinstance(entry, dict) or entry.get('dtype') != 'BF16':
      raise CheckpointError(f'{path}: tensor {key!r} has dtype '
                            f'{entry.get("dtype") if isinstance(entry, dict) else None}; '
                            f'expected a floating-point type NumPy reads, or BF16')
    begin, end = entry['data_offsets']
    shape = tuple(int(d) for d in entry['shape'])
    if not 0 <= begin <= end <= size - 8 - n or end - begin != 2 * int(np.prod(shape)):
      raise CheckpointError(f'{path}: tensor {key!r} declares offsets {begin}..{end} for shape '
                            f'{shape}; expected {2 * int(np.prod(shape))} bytes inside the file')
    f.seek(8 + n + begin)
    bits = np.frombuffer(f.read(end - begin), '<u2')
  return (bits.astype(np.uint32) << 16).view(np.float32).reshape(shape)


def safetensors_files(path: Path) -> list:
  """The weight files of a checkpoint directory (sharded ones through the index) or file."""
  if path.is_file():
    return [path]
  index = path / 'model.safetensors.index.json'
  if index.exists():
    shards = sorted(set(json.loads(index.read_text())['weight_map'].values()))
    return [path / s for s in shards]
  files = sorted(path.glob('*.safetensors'))
  if not files:
    raise CheckpointError(f'{path}: no .safetensors file in this directory')
  return files


def read_config(path: Path) -> Optional[dict]:
  cfg = (path if path.is_dir() else path.parent) / 'config.json'
  if not cfg.exists():
    return None
  try:
    d = json.loads(cfg.read_text())
  except (OSError, ValueError) as e:
    raise CheckpointError(f'{cfg}: cannot read JSON ({e})') from None
  if not isinstance(d, dict):
    raise CheckpointError(f'{cfg}: expected a JSON object')
  return d


def load(path, image_size=None) -> Mapped:
  """A transformers checkpoint: a .safetensors file (config.json beside it) or a directory."""
  path = Path(path)
  hf_config = read_config(path)
  tensors = read_safetensors(safetensors_files(path), path)
  from vit_jax_analytics.families import timm_hub
  if timm_hub.is_timm_hub_config(hf_config):
    return timm_hub.load(tensors, hf_config, path, image_size)
  if hf_config is None:
    from vit_jax_analytics.families import timm
    if timm.looks_like_timm(tensors):
      return timm.load_state_dict(tensors, path, image_size)
    raise CheckpointError(f'{path}: no config.json beside the weights; expected a Hugging '
                          f'Face checkpoint directory (config.json gives the number of heads)')
  return hf_to_vit_jax(tensors, hf_config, path, image_size)
