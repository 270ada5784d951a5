"""timm ViT state dicts (safetensors, no torch): `VisionTransformer` (fused `qkv`, LayerScale
`ls1/ls2`, `reg_token`, `no_embed_class`, `norm_pre`, q/k norms, `fc_norm`, SwiGLU MLPs) and
`Eva` (EVA-02, timm's ROPE-ViT, DINOv3: RoPE, SwiGLU with sub-LayerNorm, `q_bias`/`v_bias`,
LayerScale `gamma_1/gamma_2`, learned RoPE frequencies `rope.freqs`).

What the weights do not say (heads, pooling, the RoPE scheme) comes from `arch`: the
settings `timm_hub.py` reads from timm's hub layout (config.json beside model.safetensors).
A bare state dict without them is read as a `VisionTransformer` whose heads are 64 wide
(timm's ViTs: Ti/3, S/6, B/12, L/16, H/16; `num_heads` overrides it), pooled on the class
token when there is one (else averaged; with `fc_norm`, averaged: timm's default); an
Eva-style one (RoPE invisible in the weights) is refused.
Position embeddings resample as timm's `resample_abs_pos_embed` does: bicubic with
antialiasing. With `no_embed_class` (position embedding over the patches only) the class
token gets a zero position embedding; otherwise register tokens carry their position
embedding folded in.
Not supported: attention-output norms (`attn.norm`, EVA-02 CLIP), gated attention,
grouped-query attention, attention pooling (`attn_pool`), post-norm blocks.
"""

from __future__ import annotations

import re
from typing import Optional

import numpy as np

from vit_jax_analytics.errors import CheckpointError
import vit_jax_analytics.checkpoints.posemb as posemb
from vit_jax_analytics.families import common
from vit_jax_analytics.families.common import ATTN, Mapped, block, f32
from vit_jax_analytics.model import ViTConfig

POSEMB_KEY = 'Transformer/posembed_input/pos_embedding'
# Weights only timm's Eva class writes: RoPE is then likely and cannot be seen in them.
EVA_MARKS = ('blocks.0.gamma_1', 'blocks.0.attn.q_bias', 'rope.freqs', 'blocks.0.attn.q_proj.weight')
POOLS = {'token': 'token', 'avg': 'gap', '': 'none'}


def looks_like_timm(tensors) -> bool:
  return 'patch_embed.proj.weight' in tensors and any(k.startswith('blocks.') for k in tensors)


def _attention(t, i, b, take, width, heads, path):
  """One block's attention: fused qkv (with a bias, or Eva's q_bias/v_bias and no key
  bias) or separate q/k/v projections; q/k norms."""
  if b + 'attn.qkv.weight' in take.sd:
    w = f32(take(b + 'attn.qkv.weight'))
    bias = take(b + 'attn.qkv.bias', True)
    if bias is None and b + 'attn.q_bias' in take.sd:
      qb, vb = f32(take(b + 'attn.q_bias')), f32(take(b + 'attn.v_bias'))
      bias = np.concatenate([qb, np.zeros_like(qb), vb])
    bias = common.zeros(w.shape[0]) if bias is None else f32(bias)
    if w.shape != (3 * width, width) or bias.shape != (3 * width,):
      raise CheckpointError(f'{path}: {b}attn.qkv.weight / bias have shapes {list(w.shape)} / '
                            f'{list(bias.shape)}; expected [3 x width, width] = '
                            f'{[3 * width, width]} / {[3 * width]} (query, key, value)')
    q, k, v = zip(np.split(w, 3), np.split(bias, 3))
  else:
    q, k, v = ((take(f'{b}attn.{n}_proj.weight'), take(f'{b}attn.{n}_proj.bias', True))
               for n in 'qkv')
  common.put_attention(t, i, heads, q, k, v,
                       (take(b + 'attn.proj.weight'), take(b + 'attn.proj.bias', True)))
  if b + 'attn.q_norm.weight' in take.sd:
    for theirs, ours in (('q_norm', 'query_norm'), ('k_norm', 'key_norm')):
      common.put_norm(t, f'{block(i)}/{ATTN}/{ours}', take(f'{b}attn.{theirs}.weight'),
                      take(f'{b}attn.{theirs}.bias', take.rms))
  if 'rope.freqs' in take.sd:  # [2, depth, heads, D/H / 2]: this layer's
    take.used.add('rope.freqs')
    t[f'{block(i)}/{ATTN}/rope_freqs'] = f32(take.sd['rope.freqs'])[:, i]


def _mlp(t, i, b, take) -> bool:
  """One block's MLP -> whether it is gated (SwiGLU: separate fc1_g / fc1_x, or timm's packed
  fc1 whose first half is the gate)."""
  m = f'{block(i)}/MlpBlock_3/'
  gated = b + 'mlp.fc1_g.weight' in take.sd
  if gated:
    common.put_linear(t, m + 'Dense_gate', take(b + 'mlp.fc1_g.weight'),
                      take(b + 'mlp.fc1_g.bias', True))
    common.put_linear(t, m + 'Dense_0', take(b + 'mlp.fc1_x.weight'),
                      take(b + 'mlp.fc1_x.bias', True))
  else:
    w, bias = f32(take(b + 'mlp.fc1.weight')), take(b + 'mlp.fc1.bias', True)
    hidden = np.asarray(take.sd[b + 'mlp.fc2.weight']).shape[1]
    if w.shape[0] == 2 * hidden:  # GluMlp / SwiGLUPacked: act(first half) * second half
      gated = True
      bias = common.zeros(w.shape[0]) if bias is None else f32(bias)
      common.put_linear(t, m + 'Dense_gate', w[:hidden], bias[:hidden])
      common.put_linear(t, m + 'Dense_0', w[hidden:], bias[hidden:])
    else:
      common.put_linear(t, m + 'Dense_0', w, bias)
  if b + 'mlp.norm.weight' in take.sd:
    common.put_norm(t, m + 'norm', take(b + 'mlp.norm.weight'), take(b + 'mlp.norm.bias', take.rms))
  common.put_linear(t, m + 'Dense_1', take(b + 'mlp.fc2.weight'), take(b + 'mlp.fc2.bias', True))
  return gated


class _Taker:
  """sd[k], remembering what was used (for `ignored`), one-line errors for what is missing."""

  def __init__(self, sd, path):
    self.sd, self.path, self.used = sd, path, set()
    self.rms = False   # RMSNorms (no biases): set by timm_to_vit_jax

  def __call__(self, k, optional=False):
    if k in self.sd:
      self.used.add(k)
      return self.sd[k]
    if optional:
      return None
    raise CheckpointError(f'{self.path}: missing tensor {k!r}; expected a timm ViT state dict')


def timm_to_vit_jax(sd: dict, path='checkpoint', image_size=None, num_heads=None,
                    activation='gelu', layer_norm_epsilon=1e-6, arch: Optional[dict] = None
                    ) -> Mapped:
  """Pure mapping of a timm ViT state dict -> Mapped. arch: what the weights do not say
  ({'architecture', 'num_heads', 'global_pool', 'image_size', 'layer_norm_epsilon',
  'rope': {ViTConfig rope_* fields}}, from timm_hub.arch_settings); None: a bare state dict."""
  arch = arch or {}
  take = _Taker(sd, path)
  # RMSNorm throughout (timm's norm_layer='rmsnorm'): norms with a weight and no bias.
  take.rms = 'blocks.0.norm1.weight' in sd and 'blocks.0.norm1.bias' not in sd
  for bad, what in (('blocks.0.attn.norm.weight', 'attention-output norms (attn.norm)'),
                    ('blocks.0.attn.gate.weight', 'gated attention'),
                    ('attn_pool.latent', 'attention pooling (attn_pool)'),
                    ('blocks.0.norm1_post.weight', 'post-norm blocks')):
    if any(k.startswith(bad) for k in sd):
      raise CheckpointError(f'{path}: timm {what} is not supported')
  if not arch and any(m in sd for m in EVA_MARKS):
    raise CheckpointError(f'{path}: an Eva-style timm state dict (EVA-02, DINOv3, ROPE-ViT) '
                          f'without its config.json: its RoPE is not in the weights; expected '
                          f"timm's hub layout (config.json with 'architecture' beside it)")
  t = {}
  t['embedding/kernel'], t['embedding/bias'] = common.patch_kernel(
      take('patch_embed.proj.weight'), take('patch_embed.proj.bias', True))
  patch, width = t['embedding/kernel'].shape[0], t['embedding/kernel'].shape[-1]
  heads = num_heads or arch.get('num_heads') or max(width // 64, 1)
  if width % heads:
    raise CheckpointError(f'{path}: {heads} heads do not divide the width {width}')
  cls, reg = take('cls_token', True), take('reg_token', True)
  n_cls, n_reg = int(cls is not None), 0 if reg is None else reg.shape[1]
  pe = take('pos_embed', True)
  pre_pe = common.zeros((1, n_cls + n_reg, width))
  no_embed_class, side_hw = True, None
  if pe is not None:
    pe = f32(pe)
    pre_pe, pe, no_embed_class, side_hw = _split_posemb(pe, n_cls + n_reg, width, path,
                                                        arch.get('image_size'), patch)
  if cls is not None:
    t['cls'] = f32(cls)
  if reg is not None:
    t['registers'] = f32(reg) + pre_pe[:, n_cls:]
  layers = sorted({int(m.group(1)) for k in sd if (m := re.match(r'blocks\.(\d+)\.', k))})
  if not layers or layers != list(range(len(layers))):
    raise CheckpointError(f'{path}: expected blocks.0..N-1, found {layers}')
  gated = False
  for i in layers:
    b = f'blocks.{i}.'
    common.put_norm(t, f'{block(i)}/LayerNorm_0', take(b + 'norm1.weight'), take(b + 'norm1.bias', take.rms))
    common.put_norm(t, f'{block(i)}/LayerNorm_2', take(b + 'norm2.weight'), take(b + 'norm2.bias', take.rms))
    _attention(t, i, b, take, width, heads, path)
    gated = _mlp(t, i, b, take)
    common.fold_layer_scale(t, i, take(b + 'ls1.gamma', True) if b + 'ls1.gamma' in sd
                            else take(b + 'gamma_1', True),
                            take(b + 'ls2.gamma', True) if b + 'ls2.gamma' in sd
                            else take(b + 'gamma_2', True))
  pre_norm = 'norm_pre.weight' in sd
  if pre_norm:
    common.put_norm(t, 'Transformer/pre_norm', take('norm_pre.weight'), take('norm_pre.bias', take.rms))
  encoder_norm = 'norm.weight' in sd
  if encoder_norm:
    common.put_norm(t, 'Transformer/encoder_norm', take('norm.weight'), take('norm.bias', take.rms))
  fc_norm = 'fc_norm.weight' in sd
  if fc_norm:
    common.put_norm(t, 'fc_norm', take('fc_norm.weight'), take('fc_norm.bias', take.rms))
  if 'head.weight' in sd:
    common.put_linear(t, 'head', take('head.weight'), take('head.bias', True))
  size = image_size if image_size is not None else arch.get('image_size')
  if size is None and side_hw is not None:
    size = (side_hw[0] * patch, side_hw[1] * patch)
  if size is None:
    raise CheckpointError(f'{path}: no position embedding and no image size in config.json; '
                          f'expected --image-size')
  th, tw = (size,) * 2 if np.isscalar(size) else tuple(size)
  if th % patch or tw % patch:
    raise CheckpointError(f'{path}: image size {(th, tw)} is not a multiple of the patch '
                          f'size {patch}')
  if pe is not None:
    grid = posemb.resize_grid(pe[0].reshape(*side_hw, width), (th // patch, tw // patch),
                              'bicubic_antialias')
    t[POSEMB_KEY] = np.concatenate([pre_pe[:, :n_cls], grid.reshape(1, -1, width)], axis=1)
  num_classes = t['head/kernel'].shape[1] if 'head/kernel' in t else 0
  pool = arch.get('global_pool', 'avg' if (fc_norm or cls is None) else 'token')
  if pool not in POOLS:
    raise CheckpointError(f'{path}: timm global_pool {pool!r} is not supported; expected one '
                          f'of {sorted(POOLS)}')
  classifier = POOLS[pool]
  try:
    config = ViTConfig(
        image_size=(th, tw), patch_size=patch, hidden_size=width, num_layers=len(layers),
        num_heads=heads, mlp_dim=t[f'{block(0)}/MlpBlock_3/Dense_0/kernel'].shape[1],
        num_classes=num_classes, classifier=classifier,
        gelu_approximate=activation == 'gelu_tanh',
        activation='silu' if gated else activation,
        layer_norm_epsilon=arch.get('layer_norm_epsilon', layer_norm_epsilon),
        num_registers=n_reg, pre_norm=pre_norm,
        output='logits' if num_classes else 'embedding',
        class_token=(cls is not None) if classifier != 'token' else None,
        position_embedding=pe is not None, qk_norm=f'{block(0)}/{ATTN}/query_norm/scale' in t,
        mlp_gated=gated, mlp_norm=f'{block(0)}/MlpBlock_3/norm/scale' in t,
        encoder_norm=encoder_norm, fc_norm=fc_norm, norm='rms' if take.rms else 'layer',
        **arch.get('rope', {}))
  except ValueError as e:
    raise CheckpointError(f'{path}: {e}') from None
  if config.rope == 'mixed' and 'rope.freqs' not in sd:
    raise CheckpointError(f"{path}: RoPE 'mixed' needs the learned rope.freqs; not in the file")
  common.check_float(sd, take.used, path)
  source = {'family': arch.get('family', 'ViT (timm)'),
            'format': arch.get('format', 'timm state dict (safetensors)'),
            'position': config.position_scheme, 'posemb_resize': 'bicubic_antialias',
            'posemb_grid': list(side_hw) if side_hw else None,
            'no_embed_class': no_embed_class, 'num_heads_assumed': not (num_heads or
                                                                        arch.get('num_heads')),
            'ignored': sorted(set(sd) - take.used)}
  if arch.get('architecture'):
    source['architecture'] = arch['architecture']
  return Mapped(t, config, source)


def _split_posemb(pe, prefix, width, path, image_size, patch):
  """timm's pos_embed [1, (prefix +) h*w, D] -> (prefix part [1, prefix, D] (zeros with
  no_embed_class), grid part [1, h*w, D], no_embed_class, (h, w)). The grid is square
  unless `image_size` says otherwise."""
  def grid_of(n):
    if image_size is not None:
      h, w = ((image_size,) * 2 if np.isscalar(image_size) else tuple(image_size))
      if (h // patch) * (w // patch) == n:
        return h // patch, w // patch
    side = int(round(np.sqrt(n)))
    return (side, side) if side * side == n else None

  hw = grid_of(pe.shape[1])
  if hw is not None:
    return common.zeros((1, prefix, width)), pe, True, hw
  hw = grid_of(pe.shape[1] - prefix)
  if hw is None:
    raise CheckpointError(f'{path}: pos_embed has {pe.shape[1]} entries; expected a square '
                          f'grid, with or without the {prefix} prefix tokens')
  return pe[:, :prefix], pe[:, prefix:], False, hw


def load_state_dict(tensors, path, image_size=None, num_heads=None) -> Mapped:
  return timm_to_vit_jax(tensors, path, image_size, num_heads)
