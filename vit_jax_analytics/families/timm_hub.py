"""timm's hub layout: a directory holding `config.json` (`architecture`, `model_args`,
`global_pool`, `pretrained_cfg`; as timm's `save_for_hf` / `push_to_hf_hub` write it) beside
`model.safetensors`.

config.json records only the arguments the model was created with beyond its registered
architecture's (`model_args`); what the architecture itself fixes and the weights do not show
(the RoPE scheme, the LayerNorm epsilon, the pooling default) is in `ARCHITECTURES` below,
read from timm 1.0's `models/eva.py` and `models/vision_transformer.py` registrations. The
first rule whose pattern matches the architecture's name applies; `model_args` override it.
"""

from __future__ import annotations

import re
from typing import Optional

from vit_jax_analytics.errors import CheckpointError
from vit_jax_analytics.families import timm
from vit_jax_analytics.families.common import Mapped

# (pattern, family, settings): rope_* as ViTConfig fields; 'pool' the default global_pool.
ARCHITECTURES = (
    (r'^eva02_.*_clip', None, None),  # attention-output norms: refused by the mapper
    (r'^eva02_', 'EVA-02 (timm)',
     dict(rope='axial', rope_temperature=10000., rope_ref_grid=(16, 16), pool='avg')),
    (r'^vit_.*_rope_.*_gap_', 'ViT with axial RoPE (timm SBB)',
     dict(rope='axial', rope_temperature=10000., rope_ref_grid=(16, 16), pool='avg')),
    (r'^vit_.*_rope_mixed', 'ROPE-ViT mixed (timm)',
     dict(rope='mixed', rope_temperature=10., rope_xy=True, pool='token')),
    (r'^vit_.*_rope_', 'ROPE-ViT axial (timm)',
     dict(rope='axial', rope_temperature=100., rope_xy=True, pool='token')),
    (r'^vit_.*_dinov3', 'DINOv3 (timm)',
     dict(rope='centered', rope_temperature=100., rope_half=True, pool='avg', eps=1e-5)),
    (r'^eva_', 'EVA (timm)', dict(pool='avg')),
    (r'^(vit|deit|deit3)_', 'ViT (timm)', dict(pool='token')),
)
# timm's Eva arguments -> ViTConfig's rope fields.
_ROPE_ARGS = {'rope_temperature': 'rope_temperature', 'rope_grid_offset': 'rope_offset',
              'ref_feat_shape': 'rope_ref_grid'}
_ROPE_TYPES = {'cat': 'axial', 'dinov3': 'centered', 'mixed': 'mixed'}


def is_timm_hub_config(cfg: Optional[dict]) -> bool:
  return isinstance(cfg, dict) and 'architecture' in cfg and 'model_type' not in cfg


def _size(value):
  if isinstance(value, (list, tuple)):
    return tuple(int(v) for v in value[-2:]) if len(value) in (2, 3) else None
  return int(value) if isinstance(value, int) else None


def arch_settings(cfg: dict, path) -> dict:
  """config.json of timm's hub layout -> the `arch` dict of timm.timm_to_vit_jax."""
  name = cfg.get('architecture')
  args = cfg.get('model_args') or {}
  if not isinstance(name, str) or not isinstance(args, dict):
    raise CheckpointError(f"{path}: config.json: expected 'architecture' (a string) and "
                          f"'model_args' (an object), as timm writes them")
  rule = next(((family, dict(s)) for p, family, s in ARCHITECTURES if re.search(p, name)), None)
  if rule is None or rule[0] is None:
    raise CheckpointError(f'{path}: timm architecture {name!r} is not supported; expected a '
                          f'ViT: vit_*, deit*_*, eva02_* (not CLIP), vit_*_rope_*, '
                          f'vit_*_dinov3*')
  family, s = rule
  rope = {k: s[k] for k in ('rope', 'rope_temperature', 'rope_ref_grid', 'rope_xy',
                            'rope_half') if k in s}
  if args.get('use_rot_pos_emb') is False:
    rope = {}
  elif args.get('use_rot_pos_emb') and 'rope' not in rope:
    rope['rope'] = 'axial'
  if 'rope_type' in args:
    if args['rope_type'] not in _ROPE_TYPES:
      raise CheckpointError(f"{path}: config.json rope_type {args['rope_type']!r} is not "
                            f'supported; expected one of {sorted(_ROPE_TYPES)}')
    rope['rope'] = _ROPE_TYPES[args['rope_type']]
  for theirs, ours in _ROPE_ARGS.items():
    if theirs in args:
      rope[ours] = args[theirs]
  if 'rope_grid_indexing' in args:
    rope['rope_xy'] = args['rope_grid_indexing'] == 'xy'
  if 'rope_rotate_half' in args:
    rope['rope_half'] = bool(args['rope_rotate_half'])
  if rope.get('rope') == 'centered':
    rope.pop('rope_ref_grid', None)
  pretrained = cfg.get('pretrained_cfg') or {}
  out = {'architecture': name, 'family': family, 'rope': rope,
         'format': "timm hub layout (config.json + safetensors)",
         'global_pool': args.get('global_pool', cfg.get('global_pool', s['pool'])),
         'image_size': _size(args.get('img_size')) or _size(pretrained.get('input_size'))}
  if 'eps' in s:
    out['layer_norm_epsilon'] = s['eps']
  if isinstance(args.get('num_heads'), int):
    out['num_heads'] = args['num_heads']
  for flag, what in (('qk_norm', None), ('use_post_norm', 'post-norm blocks'),
                     ('scale_attn_inner', 'attention-output norms'),
                     ('gated_attn', 'gated attention'), ('num_kv_heads', 'grouped-query '
                                                                          'attention')):
    if what and args.get(flag):
      raise CheckpointError(f'{path}: timm {what} ({flag}) is not supported')
  return out


def load(tensors: dict, cfg: dict, path, image_size=None) -> Mapped:
  return timm.timm_to_vit_jax(tensors, path, image_size, arch=arch_settings(cfg, path))
