"""timm VisionTransformer state dicts (safetensors, no torch): fused `qkv`, LayerScale
`ls1/ls2`, `reg_token`, `no_embed_class`, `norm_pre`.

A state dict does not record the number of heads: timm's ViTs all use 64-wide heads
(Ti/3, S/6, B/12, L/16, H/16), which is the default here (`num_heads` overrides it).
Position embeddings resample as timm's `resample_abs_pos_embed` does: bicubic with
antialiasing. With `no_embed_class` (position embedding over the patches only) the class
token gets a zero position embedding; otherwise register tokens carry their position
embedding folded in.
Not supported: `fc_norm` (a LayerNorm after average pooling), q/k norms, SwiGLU MLPs.
"""

from __future__ import annotations

import re

import numpy as np

from vit_jax_analytics.errors import CheckpointError
import vit_jax_analytics.checkpoints.posemb as posemb
from vit_jax_analytics.families import common
from vit_jax_analytics.families.common import Mapped, block, f32
from vit_jax_analytics.model import ViTConfig

POSEMB_KEY = 'Transformer/posembed_input/pos_embedding'


def looks_like_timm(tensors) -> bool:
  return 'patch_embed.proj.weight' in tensors and any(k.startswith('blocks.') for k in tensors)


def timm_to_vit_jax(sd: dict, path='checkpoint', image_size=None, num_heads=None,
                    activation='gelu', layer_norm_epsilon=1e-6) -> Mapped:
  """Pure mapping of a timm VisionTransformer state dict -> Mapped."""
  used = set()

  def take(k, optional=False):
    if k in sd:
      used.add(k)
      return sd[k]
    if optional:
      return None
    raise CheckpointError(f'{path}: missing tensor {k!r}; expected a timm VisionTransformer '
                          f'state dict')

  for bad, what in (('fc_norm.weight', 'fc_norm (LayerNorm after pooling)'),
                    ('blocks.0.attn.q_norm.weight', 'q/k norms'),
                    ('blocks.0.mlp.fc1_g.weight', 'SwiGLU MLPs')):
    if bad in sd:
      raise CheckpointError(f'{path}: timm {what} is not supported')
  t = {}
  t['embedding/kernel'], t['embedding/bias'] = common.patch_kernel(
      take('patch_embed.proj.weight'), take('patch_embed.proj.bias', True))
  patch, width = t['embedding/kernel'].shape[0], t['embedding/kernel'].shape[-1]
  heads = num_heads or max(width // 64, 1)
  if width % heads:
    raise CheckpointError(f'{path}: {heads} heads do not divide the width {width}')
  cls = take('cls_token', True)
  reg = take('reg_token', True)
  pe = f32(take('pos_embed'))
  n_cls, n_reg = int(cls is not None), 0 if reg is None else reg.shape[1]
  grid_tokens = pe.shape[1]
  side = int(round(np.sqrt(grid_tokens)))
  if side * side != grid_tokens:  # the posemb covers the prefix tokens too
    grid_tokens -= n_cls + n_reg
    side = int(round(np.sqrt(grid_tokens)))
    if side * side != grid_tokens:
      raise CheckpointError(f'{path}: pos_embed has {pe.shape[1]} entries; expected a square '
                            f'grid, with or without the {n_cls + n_reg} prefix tokens')
    pre_pe = pe[:, :n_cls + n_reg]
    pe = pe[:, n_cls + n_reg:]
    no_embed_class = False
  else:  # no_embed_class
    pre_pe = common.zeros((1, n_cls + n_reg, width))
    no_embed_class = True
  if cls is not None:
    t['cls'] = f32(cls)
  if reg is not None:
    t['registers'] = f32(reg) + pre_pe[:, n_cls:]
  layers = sorted({int(m.group(1)) for k in sd if (m := re.match(r'blocks\.(\d+)\.', k))})
  if not layers or layers != list(range(len(layers))):
    raise CheckpointError(f'{path}: expected blocks.0..N-1, found {layers}')
  for i in layers:
    b = f'blocks.{i}.'
    common.put_norm(t, f'{block(i)}/LayerNorm_0', take(b + 'norm1.weight'), take(b + 'norm1.bias'))
    common.put_norm(t, f'{block(i)}/LayerNorm_2', take(b + 'norm2.weight'), take(b + 'norm2.bias'))
    qkv_w = f32(take(b + 'attn.qkv.weight'))
    qkv_b = take(b + 'attn.qkv.bias', True)
    qkv_b = common.zeros(qkv_w.shape[0]) if qkv_b is None else f32(qkv_b)
    if qkv_w.shape != (3 * width, width) or qkv_b.shape != (3 * width,):
      raise CheckpointError(f'{path}: {b}attn.qkv.weight / .bias have shapes '
                            f'{list(qkv_w.shape)} / {list(qkv_b.shape)}; expected [3 x width, '
                            f'width] = {[3 * width, width]} / {[3 * width]} (query, key, value)')
    q, k, v = ((w, bb) for w, bb in zip(np.split(qkv_w, 3), np.split(qkv_b, 3)))
    common.put_attention(t, i, heads, q, k, v,
                         (take(b + 'attn.proj.weight'), take(b + 'attn.proj.bias', True)))
    common.put_linear(t, f'{block(i)}/MlpBlock_3/Dense_0', take(b + 'mlp.fc1.weight'),
                      take(b + 'mlp.fc1.bias', True))
    common.put_linear(t, f'{block(i)}/MlpBlock_3/Dense_1', take(b + 'mlp.fc2.weight'),
                      take(b + 'mlp.fc2.bias', True))
    common.fold_layer_scale(t, i, take(b + 'ls1.gamma', True), take(b + 'ls2.gamma', True))
  pre_norm = 'norm_pre.weight' in sd
  if pre_norm:
    common.put_norm(t, 'Transformer/pre_norm', take('norm_pre.weight'), take('norm_pre.bias'))
  common.put_norm(t, 'Transformer/encoder_norm', take('norm.weight'), take('norm.bias'))
  if 'head.weight' in sd:
    common.put_linear(t, 'head', take('head.weight'), take('head.bias', True))
  th, tw = (side * patch,) * 2 if image_size is None else (
      (image_size,) * 2 if np.isscalar(image_size) else tuple(image_size))
  grid = posemb.resize_grid(pe[0].reshape(side, side, width), (th // patch, tw // patch),
                            'bicubic_antialias')
  cls_pe = pre_pe[:, :n_cls]
  t[POSEMB_KEY] = np.concatenate([cls_pe, grid.reshape(1, -1, width)], axis=1)
  num_classes = t['head/kernel'].shape[1] if 'head/kernel' in t else 0
  try:
    config = ViTConfig(
        image_size=(th, tw), patch_size=patch, hidden_size=width, num_layers=len(layers),
        num_heads=heads, mlp_dim=t[f'{block(0)}/MlpBlock_3/Dense_0/kernel'].shape[1],
        num_classes=num_classes, classifier='token' if cls is not None else 'gap',
        gelu_approximate=activation == 'gelu_tanh', activation=activation,
        layer_norm_epsilon=layer_norm_epsilon, num_registers=n_reg, pre_norm=pre_norm,
        output='logits' if num_classes else 'embedding')
  except ValueError as e:
    raise CheckpointError(f'{path}: {e}') from None
  common.check_float(sd, used, path)
  source = {'family': 'ViT (timm)', 'format': 'timm state dict (safetensors)',
            'posemb_resize': 'bicubic_antialias', 'posemb_grid': [side, side],
            'no_embed_class': no_embed_class,
            'num_heads_assumed': num_heads is None,
            'ignored': sorted(set(sd) - used)}
  return Mapped(t, config, source)


def load_state_dict(tensors, path, image_size=None, num_heads=None) -> Mapped:
  return timm_to_vit_jax(tensors, path, image_size, num_heads)
