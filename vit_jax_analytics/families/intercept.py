"""Any Flax linen ViT, analysed through `nn.intercept_methods`.

A model the project did not write — any linen module whose self-attention layers are
`flax.linen.MultiHeadDotProductAttention` (or a class you name that keeps its parameter
layout: `query`/`key`/`value` DenseGeneral kernels [D, H, D/H] and `out` [H, D/H, D]) — is
wrapped so that importance, strength and patterns run on it unchanged:

    from vit_jax_analytics import pipeline
    results = pipeline.analyse_module(module, params, images,
                                      token_layout={'cls': [0], 'grid': (7, 7)})

Each call of an attention layer is intercepted and recomputed from that layer's own
parameters (read from the bound module), so that the analyses' hooks apply: the attention
weights are reduced (`attention_reduce`) or edited (`attention_edit`) after the softmax,
and the per-head outputs are scaled by the head mask before the output projection (what
removing a head means). Layers are numbered in call order.

No prefix reuse: a foreign model cannot be resumed from the middle, so the single-head
ablation scan runs one full forward per mask, vmapped over the L*H masks (see
`importance.ablation_strategy`), and partial pruning runs full forwards too. Results are
the same; the cost is about L/2 times that of the native path.

Not supported: attention with `normalize_qk`, autoregressive `decode`, models that run
their layers under `nn.scan` (the call order is then one traced call), cross-attention
inside the encoder (every intercepted layer must attend over the same tokens).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax_analytics import model as model_lib
from vit_jax_analytics.model import ViTConfig


def whole_forward_reduce(inputs, skip_first_attention, last_layer, return_attention,
                         attention_reduce):
  """The attention reduction of an intercepted forward (identity for return_attention);
  ValueError for what an intercepted model cannot do: start mid-network (no prefix reuse)."""
  if inputs.ndim != 4 or skip_first_attention or last_layer is not None:
    raise ValueError('an intercepted model runs from images only (no prefix reuse); '
                     f'got inputs of shape {tuple(inputs.shape)}')
  if return_attention:
    if attention_reduce is not None:
      raise ValueError('pass either return_attention or attention_reduce, not both')
    attention_reduce = lambda w, _: w
  return attention_reduce


class InterceptedModel:
  """A foreign linen module with the call of `model.apply`: (params, inputs, head_mask=,
  attention_reduce=, attention_edit=, return_attention=) -> as VisionTransformer.

  Identity-hashed: configs built on different wrappers never share a jit cache entry."""

  def __init__(self, module: nn.Module, attention_class=nn.MultiHeadDotProductAttention,
               method=None, output_fn=None):
    self.module = module
    self.attention_classes = (tuple(attention_class) if isinstance(attention_class, Sequence)
                              else (attention_class,))
    self.method = method
    self.output_fn = output_fn  # the model's output -> [B, C] or [B, D] (default: as is)

  def _is_attention(self, module) -> bool:
    return isinstance(module, self.attention_classes)

  def apply(self, params, inputs, head_mask=None, attention_reduce=None, attention_edit=None,
            return_attention=False, first_layer=0, last_layer=None, skip_first_attention=False,
            pool_mask=None):
    # first_layer with images: the whole forward (edits and masks name their layers, so
    # layers before first_layer are unchanged, as with prefix reuse).
    attention_reduce = whole_forward_reduce(inputs, skip_first_attention, last_layer,
                                            return_attention, attention_reduce)
    per_layer = []
    counter = [0]

    def interceptor(next_fun, args, kwargs, context):
      if context.method_name != '__call__' or not self._is_attention(context.module):
        return next_fun(*args, **kwargs)
      layer = counter[0]
      counter[0] += 1
      mask_row = None
      if head_mask is not None:
        mask_row = head_mask[:, layer] if head_mask.ndim == 3 else head_mask[layer]
      y, weights = _attention(context.module, args, kwargs, layer, mask_row, attention_edit)
      if attention_reduce is not None:
        per_layer.append(attention_reduce(weights, layer))
      return y

    with nn.intercept_methods(interceptor):
      out = self.module.apply({'params': params}, inputs,
                              **({'method': self.method} if self.method else {}))
    if self.output_fn is not None:
      out = self.output_fn(out)
    if attention_reduce is None:
      return out
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *per_layer) if per_layer else None
    if return_attention:
      stacked = jnp.moveaxis(stacked, 0, 1)  # [L, B, H, Q, K] -> [B, L, H, Q, K]
    return out, stacked


def _attention(module, args, kwargs, layer, mask_row, attention_edit):
  """The MultiHeadDotProductAttention call, recomputed with the hooks -> (y, weights)."""
  if getattr(module, 'normalize_qk', False) or getattr(module, 'decode', False):
    raise ValueError(f'{type(module).__name__}: normalize_qk / decode attention is not '
                     f'supported by interception')
  inputs_q = args[0]
  inputs_k = args[1] if len(args) > 1 else kwargs.get('inputs_k')
  inputs_v = args[2] if len(args) > 2 else kwargs.get('inputs_v')
  if kwargs.get('inputs_kv') is not None:
    inputs_k = inputs_v = kwargs['inputs_kv']
  inputs_k = inputs_q if inputs_k is None else inputs_k
  inputs_v = inputs_k if inputs_v is None else inputs_v
  mask = kwargs.get('mask')
  p = module.variables['params']

  def dense(name, x):
    y = jnp.einsum('...d,dhk->...hk', x, p[name]['kernel'])
    return y + p[name]['bias'] if 'bias' in p[name] else y

  q, k, v = dense('query', inputs_q), dense('key', inputs_k), dense('value', inputs_v)
  heads, weights = model_lib.dot_product_attention(q, k, v, attention_edit, layer, mask)
  if mask_row is not None:
    m = mask_row.astype(heads.dtype)
    heads = heads * (m[:, None, :, None] if m.ndim == 2 else m[None, None, :, None])
  y = jnp.einsum('...qhd,hdo->...qo', heads, p['out']['kernel'])
  if 'bias' in p['out']:
    y = y + p['out']['bias']
  return y, weights


@dataclasses.dataclass(frozen=True)
class InterceptedConfig(ViTConfig):
  """A ViTConfig describing a foreign model's tokens and heads; `foreign_model` routes
  `model.apply` to it (see model.supports_prefix_reuse)."""
  foreign_model: Any = None

  def to_dict(self) -> dict:
    d = super().to_dict()
    d.pop('foreign_model', None)
    return d


def layout_of(token_layout, num_tokens: Optional[int] = None) -> dict:
  """A token layout given as a dict ({'cls': [0], 'registers': [...], 'grid': (h, w)}; the
  patches are the h*w tokens after cls and registers) or a ViTConfig (its token_layout())."""
  if hasattr(token_layout, 'token_layout'):
    token_layout = token_layout.token_layout()
  cls = list(token_layout.get('cls', []))
  registers = list(token_layout.get('registers', []))
  grid = tuple(int(g) for g in token_layout['grid'])
  prefix = len(cls) + len(registers)
  if cls not in ([], [0]) or registers != list(range(len(cls), prefix)):
    raise ValueError(f'token_layout: expected [class token] + [registers] + [patches], '
                     f'got cls {cls}, registers {registers}')
  if num_tokens is not None and num_tokens != prefix + grid[0] * grid[1]:
    raise ValueError(f'token_layout: {prefix} prefix tokens + {grid[0]} x {grid[1]} patches '
                     f'!= the {num_tokens} tokens the attention layers see')
  return {'cls': cls, 'registers': registers, 'grid': grid}


def intercepted_config(module, params, images, token_layout, attention_class=None,
                       output: str = 'logits', method=None, output_fn=None) -> InterceptedConfig:
  """Traces the model once on `images[:1]` (shapes only) to count its attention layers,
  heads and tokens -> the config the analyses take."""
  wrapper = InterceptedModel(module, attention_class or nn.MultiHeadDotProductAttention,
                             method, output_fn)
  x = jnp.asarray(images[:1])
  out, shapes = jax.eval_shape(
      lambda p: wrapper.apply(p, x, attention_reduce=lambda w, _: w), params)
  if shapes is None:
    raise ValueError(f'{type(module).__name__}: no call of '
                     f'{[c.__name__ for c in wrapper.attention_classes]} was intercepted; '
                     f'name the attention class with attention_class=')
  num_layers, _, heads, tokens, _ = shapes.shape
  layout = layout_of(token_layout, tokens)
  gh, gw = layout['grid']
  h, w = images.shape[1:3]
  if h % gh or w % gw or h // gh != w // gw:
    raise ValueError(f'images {h} x {w} do not divide into the {gh} x {gw} patch grid')
  patch = h // gh
  width = next(v['out']['kernel'].shape[-1] for v in _attention_params(params))
  out_dim = out.shape[-1]
  return InterceptedConfig(
      image_size=(h, w), patch_size=patch, hidden_size=width, num_layers=num_layers,
      num_heads=heads, mlp_dim=0, num_classes=out_dim if output == 'logits' else 0,
      classifier='token' if layout['cls'] else 'gap', num_registers=len(layout['registers']),
      output=output, foreign_model=wrapper)


def _attention_params(params):
  """Every sub-dict of params holding query/key/value/out kernels."""
  if isinstance(params, dict) or hasattr(params, 'items'):
    if all(k in params for k in ('query', 'key', 'value', 'out')):
      yield params
      return
    for v in params.values():
      yield from _attention_params(v)
