"""A Flax NNX model's saved state (`nnx.state(model)` / `nnx.split(model)[1]`, as orbax
writes it: each leaf `<name>/value`; or its pure dict, `.to_pure_dict()`) of a
jax-image-models (`jimm`) vision model -> `model.py`.

  encoder/patch_embeddings        `embedding` (CLIP's conv has no bias: a zero bias)
  encoder/cls_token, register_tokens, position_embeddings
                                  `cls`, `registers`, the position embedding (class token first)
  encoder/ln_pre, ln_post         `Transformer/pre_norm`, `encoder_norm`
  encoder/layers/... [L, ...]     `encoderblock_i` (nnx.scan stacks the layers' parameters):
    norm1, norm2                  `LayerNorm_0`, `LayerNorm_2`
    attn/{query,key,value,out}    `MultiHeadDotProductAttention_1` (same [D, H, D/H] kernels;
                                  DINOv3's key without a bias: a zero bias)
    mlp/layers/{0,3}              `MlpBlock_3/Dense_0`, `Dense_1`
    gate, up, down                `Dense_gate`, `Dense_0`, `Dense_1` (gated MLP)
    layer_scale1, layer_scale2    folded into `out` and `Dense_1`
  encoder/map_head                `MAPHead_0` (probe, attention, LayerNorm, MLP)
  classifier, visual_projection   `head` (the projection: an embedding output)
  encoder/vision_position_ids, RNG state (rngs/key, rngs/count)   not used

What the names and shapes do not tell comes from the jimm class the names reveal (`FAMILIES`:
LayerNorm epsilon, activation, RoPE), as the jimm constructors fix it; `--gelu` overrides the
activation. Heads come from the kernels' [D, H, D/H] shape.
"""

from __future__ import annotations

import numpy as np

from vit_jax_analytics.checkpoints.layout import POSEMB_KEY
from vit_jax_analytics.checkpoints.posemb import hw
from vit_jax_analytics.errors import CheckpointError
from vit_jax_analytics.families import common
from vit_jax_analytics.families.common import ATTN, Mapped, block, f32, zeros
from vit_jax_analytics.model import ViTConfig

MARK = 'encoder/patch_embeddings/kernel'
# What each jimm class fixes in its constructor (jimm 0.4: models/*/…_model.py); 'gated'
# only for DINOv3 with use_gated_mlp (its hidden_act is not in the state: SwiGLU's silu).
FAMILIES = {
    'vit': ('ViT (jax-image-models, NNX)', dict(layer_norm_epsilon=1e-12, activation='gelu')),
    'clip': ('CLIP vision tower (jax-image-models, NNX)',
             dict(layer_norm_epsilon=1e-5, activation='quick_gelu')),
    'siglip': ('SigLIP vision tower (jax-image-models, NNX)',
               dict(layer_norm_epsilon=1e-6, activation='gelu', map_activation='gelu_tanh')),
    'dinov2': ('DINOv2 (jax-image-models, NNX)', dict(layer_norm_epsilon=1e-6, activation='gelu')),
    'dinov3': ('DINOv3 (jax-image-models, NNX)',
               dict(layer_norm_epsilon=1e-5, activation='gelu', rope='centered',
                    rope_temperature=100., rope_half=True, position_embedding=False)),
}


def logical(key: str) -> str:
  """A saved leaf's key without the trailing '/value' orbax writes for an nnx.Variable."""
  return key[:-len('/value')] if key.endswith('/value') else key


def prefix_of(key: str):
  """The prefix ('' or 'vision_model/') of an NNX vision model whose patch embedding kernel
  is saved at `key`; None for any other key."""
  k = logical(key)
  if k == MARK or k.endswith('/' + MARK):
    return k[:-len(MARK)]
  return None


def family_of(names) -> str:
  """The jimm class (a key of FAMILIES) whose state has these (logical) names."""
  if any(n.startswith('encoder/map_head/') for n in names):
    return 'siglip'
  if 'visual_projection/kernel' in names or 'encoder/ln_pre/scale' in names:
    return 'clip'
  if 'encoder/position_embeddings' not in names:
    return 'dinov3'
  if 'encoder/layers/layer_scale1' in names:
    return 'dinov2'
  return 'vit'


def _linear(t: dict, key: str, take, name: str, bias_shape=None) -> None:
  t[f'{key}/kernel'] = f32(take(f'{name}/kernel'))
  b = take(f'{name}/bias', True)
  t[f'{key}/bias'] = f32(b) if b is not None else zeros(
      bias_shape or t[f'{key}/kernel'].shape[-1:])


def _norm(t: dict, key: str, take, name: str) -> None:
  t[f'{key}/scale'] = f32(take(f'{name}/scale'))
  t[f'{key}/bias'] = f32(take(f'{name}/bias'))


def _attention(t: dict, base: str, take, name: str) -> None:
  for p in ('query', 'key', 'value'):
    _linear(t, f'{base}/{p}', take, f'{name}/{p}', take(f'{name}/{p}/kernel').shape[-2:])
  _linear(t, f'{base}/out', take, f'{name}/out')


def nnx_to_vit_jax(state: dict, path='checkpoint', image_size=None) -> Mapped:
  """Pure mapping of a flat NNX state {'encoder/layers/attn/query/kernel': [L, D, H, D/H],
  ...} (the model's root at '', '/value' suffixes already dropped) -> Mapped."""
  used = set()

  def take(k, optional=False):
    if k in state:
      used.add(k)
      return state[k]
    if optional:
      return None
    raise CheckpointError(f'{path}: missing {k!r}; expected the state of a jax-image-models '
                          f'vision model')

  family = family_of(state)
  name, settings = FAMILIES[family]
  settings = dict(settings)
  map_activation = settings.pop('map_activation', None)
  t = {}
  _linear(t, 'embedding', take, 'encoder/patch_embeddings')
  patch, _, _, width = t['embedding/kernel'].shape
  if 'encoder/cls_token' in state:
    t['cls'] = f32(take('encoder/cls_token'))
  if take('encoder/register_tokens', True) is not None:
    t['registers'] = f32(state['encoder/register_tokens'])
  take('encoder/vision_position_ids', True)   # arange(tokens): not a weight
  if 'encoder/ln_pre/scale' in state:
    _norm(t, 'Transformer/pre_norm', take, 'encoder/ln_pre')
  q = take('encoder/layers/attn/query/kernel')
  if q.ndim != 4:
    raise CheckpointError(f"{path}: 'encoder/layers/attn/query/kernel' has shape {q.shape}; "
                          f'expected [layers, D, heads, D/heads] (layers under nnx.scan)')
  layers, heads = q.shape[0], q.shape[2]
  stacked = {k: v for k, v in state.items() if k.startswith('encoder/layers/')
             and '/rngs/' not in k}
  for k, v in stacked.items():
    if np.shape(v)[:1] != (layers,):
      raise CheckpointError(f'{path}: {k!r} has shape {np.shape(v)}; expected a leading '
                            f'axis of {layers} layers')
  gated = 'encoder/layers/gate/kernel' in state
  for i in range(layers):
    li = lambda k, optional=False: (None if (v := take(f'encoder/layers/{k}', optional))
                                    is None else v[i])
    _norm(t, f'{block(i)}/LayerNorm_0', li, 'norm1')
    _norm(t, f'{block(i)}/LayerNorm_2', li, 'norm2')
    _attention(t, f'{block(i)}/{ATTN}', li, 'attn')
    m = f'{block(i)}/MlpBlock_3/'
    if gated:
      _linear(t, m + 'Dense_gate', li, 'gate')
      _linear(t, m + 'Dense_0', li, 'up')
      _linear(t, m + 'Dense_1', li, 'down')
    else:
      _linear(t, m + 'Dense_0', li, 'mlp/layers/0')
      _linear(t, m + 'Dense_1', li, 'mlp/layers/3')
    common.fold_layer_scale(t, i, li('layer_scale1', True), li('layer_scale2', True))
  _norm(t, 'Transformer/encoder_norm', take, 'encoder/ln_post')
  if family == 'siglip':
    t['MAPHead_0/probe'] = f32(take('encoder/map_head/probe'))
    _attention(t, 'MAPHead_0/MultiHeadDotProductAttention_0', take, 'encoder/map_head/attn')
    _norm(t, 'MAPHead_0/LayerNorm_0', take, 'encoder/map_head/layernorm')
    _linear(t, 'MAPHead_0/MlpBlock_0/Dense_0', take, 'encoder/map_head/mlp/layers/0')
    _linear(t, 'MAPHead_0/MlpBlock_0/Dense_1', take, 'encoder/map_head/mlp/layers/2')
  head = next((h for h in ('classifier', 'visual_projection') if f'{h}/kernel' in state), None)
  if head:
    _linear(t, 'head', take, head)
  if gated:
    settings['activation'] = 'silu'
  prefix = int('cls' in t)
  if 'encoder/position_embeddings' in state:
    pe = f32(take('encoder/position_embeddings'))
    t[POSEMB_KEY] = pe   # the class token's first, as in vit_jax; none before MAP pooling
    grid = pe.shape[1] - prefix
    side = int(round(np.sqrt(grid)))
    size = (side * patch, side * patch) if side * side == grid else None
    if size is None:   # a rectangular grid: told by --image-size (infer.posemb_grid)
      from vit_jax_analytics.checkpoints.infer import posemb_grid
      gh, gw = posemb_grid(grid, patch, path, image_size)
      size = (gh * patch, gw * patch)
  else:
    size = hw(image_size if image_size is not None else 224)
  common.check_float(state, used, path)
  try:
    config = ViTConfig(
        image_size=size, patch_size=patch, hidden_size=width, num_layers=layers,
        num_heads=heads, mlp_dim=t[f'{block(0)}/MlpBlock_3/Dense_0/kernel'].shape[1],
        num_classes=t['head/kernel'].shape[1] if head else 0,
        classifier='map' if family == 'siglip' else 'token', gelu_approximate=False,
        output='logits' if head == 'classifier' else 'embedding', pre_norm=family == 'clip',
        num_registers=t['registers'].shape[1] if 'registers' in t else 0, mlp_gated=gated,
        **({'map_activation': map_activation} if map_activation else {}), **settings)
  except (ValueError, TypeError) as e:
    raise CheckpointError(f'{path}: {e}') from None
  source = {'family': name, 'format': 'Flax NNX state', 'layout': 'nnx (jax-image-models)',
            'position': config.position_scheme,
            'posemb_resize': 'bilinear' if config.position_embedding else None,
            'ignored': sorted(set(state) - used)}
  return Mapped(t, config, source)
