"""Hugging Face `transformers` DINOv3 (model_type `dinov3_vit`: DINOv3ViTModel,
DINOv3ViTBackbone) -> `model.py`.

  RoPE                      'centered' (patch centres in [-1, 1]), rotate-half pairs,
                            temperature `rope_theta`; no absolute position embedding
  registers                 `registers` (after the class token, no position embedding)
  LayerScale                folded into the attention's `out` and the MLP's `Dense_1`
  gated MLP (use_gated_mlp) `Dense_gate` / `Dense_0` / `Dense_1` (SwiGLU with hidden_act silu)
  no key bias               a zero bias
  pooler                    the normalised class token (pooling 'token'; an embedding)
The training-time RoPE augmentations (pos_embed_shift / jitter / rescale) do not run in eval.
"""

from __future__ import annotations

import re

import numpy as np

from vit_jax_analytics.errors import CheckpointError
from vit_jax_analytics.families import common
from vit_jax_analytics.families.common import Mapped, block, f32
from vit_jax_analytics.model import ViTConfig

MARK = 'embeddings.patch_embeddings.weight'


def dinov3_to_vit_jax(tensors: dict, hf_config: dict, path='checkpoint',
                      image_size=None) -> Mapped:
  """Pure mapping of a dinov3_vit state dict + its config.json dict -> Mapped."""
  pres = sorted({k[:-len(MARK)] for k in tensors if k.endswith(MARK)}, key=len)
  if not pres:
    raise CheckpointError(f'{path}: no {MARK}; expected a dinov3_vit checkpoint')
  pre = pres[0]
  take = common.TensorReader(tensors, pre, path, 'a dinov3_vit checkpoint')
  used = take.used

  heads = hf_config.get('num_attention_heads')
  if not isinstance(heads, int) or heads <= 0:
    raise CheckpointError(f'{path}: config.json num_attention_heads is {heads!r}; expected a '
                          f'positive integer')
  t = {}
  t['embedding/kernel'], t['embedding/bias'] = common.patch_kernel(
      take('embeddings.patch_embeddings.weight'), take('embeddings.patch_embeddings.bias', True))
  patch, width = t['embedding/kernel'].shape[0], t['embedding/kernel'].shape[-1]
  t['cls'] = f32(take('embeddings.cls_token'))
  take('embeddings.mask_token', True)  # masked-image modelling only
  reg = take('embeddings.register_tokens', True)
  n_reg = 0 if reg is None or reg.shape[1] == 0 else reg.shape[1]
  if n_reg:
    t['registers'] = f32(reg)
  word = next((w for w in ('layer.', 'model.layer.') if any(
      k.startswith(pre + w) for k in tensors)), 'layer.')
  layers = sorted({int(m.group(1)) for k in tensors
                   if (m := re.match(re.escape(pre + word) + r'(\d+)\.', k))})
  if not layers or layers != list(range(len(layers))):
    raise CheckpointError(f'{path}: expected layers {pre}{word}0..N-1, found {layers}')
  if width % heads or (width // heads) % 4:
    raise CheckpointError(f'{path}: num_attention_heads {heads} must divide the width {width} '
                          f'into heads whose width is a multiple of 4 (RoPE)')
  gated = any(k.startswith(f'{pre}{word}0.mlp.gate_proj.') for k in tensors)
  for i in layers:
    lp = f'{word}{i}.'
    lin = lambda n: (take(f'{lp}{n}.weight'), take(f'{lp}{n}.bias', True))
    common.put_norm(t, f'{block(i)}/LayerNorm_0', *lin('norm1'))
    common.put_norm(t, f'{block(i)}/LayerNorm_2', *lin('norm2'))
    common.put_attention(t, i, heads, lin('attention.q_proj'), lin('attention.k_proj'),
                         lin('attention.v_proj'), lin('attention.o_proj'))
    m = f'{block(i)}/MlpBlock_3/'
    if gated:
      common.put_linear(t, m + 'Dense_gate', *lin('mlp.gate_proj'))
    common.put_linear(t, m + 'Dense_0', *lin('mlp.up_proj'))
    common.put_linear(t, m + 'Dense_1', *lin('mlp.down_proj'))
    common.fold_layer_scale(t, i, take(f'{lp}layer_scale1.lambda1', True),
                            take(f'{lp}layer_scale2.lambda1', True))
  common.put_norm(t, 'Transformer/encoder_norm', take('norm.weight'), take('norm.bias'))
  size = image_size if image_size is not None else hf_config.get('image_size', 224)
  th, tw = (size, size) if np.isscalar(size) else tuple(size)
  try:
    act = common.activation_of(hf_config.get('hidden_act', 'gelu'))
  except ValueError as e:
    raise CheckpointError(f'{path}: config.json hidden_act: {e}') from None
  try:
    config = ViTConfig(
        image_size=(th, tw), patch_size=patch, hidden_size=width, num_layers=len(layers),
        num_heads=heads, mlp_dim=t[f'{block(0)}/MlpBlock_3/Dense_0/kernel'].shape[1],
        num_classes=0, classifier='token', output='embedding', gelu_approximate=False,
        activation=act, layer_norm_epsilon=float(hf_config.get('layer_norm_eps', 1e-5)),
        num_registers=n_reg, position_embedding=False, rope='centered',
        rope_temperature=float(hf_config.get('rope_theta', 100.)), rope_half=True,
        mlp_gated=gated)
  except ValueError as e:
    raise CheckpointError(f'{path}: {e}') from None
  common.check_float(tensors, used, path)
  source = {'family': 'DINOv3 (Hugging Face)', 'format': 'transformers safetensors',
            'architecture': (hf_config.get('architectures') or [None])[0],
            'model_type': 'dinov3_vit', 'position': config.position_scheme,
            'posemb_resize': None, 'ignored': sorted(set(tensors) - used)}
  return Mapped(t, config, source)
