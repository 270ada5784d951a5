"""Any Flax NNX ViT, analysed by intercepting its `nnx.MultiHeadAttention` calls (the NNX
twin of `intercept.py`, which intercepts linen attention).

    from vit_jax_analytics import pipeline
    results = pipeline.analyse_nnx(model, images, token_layout={'cls': [0], 'grid': (7, 7)})

While the wrapped model runs, `nnx.MultiHeadAttention.__call__` of the model's attention
layers (all of them, or those `attention_filter(path, module)` keeps) is replaced by the
same computation with the analyses' hooks: the layer's own projections (and q/k LayerNorms
when `normalize_qk`), the attention weights from `model.dot_product_attention` (edited by
`attention_edit`, reduced by `attention_reduce`), each head's context scaled by the head mask
before the layer's own `out` projection. Other modules and other models are untouched.

Layers run under `nnx.scan` (stacked parameters [L, ...], as jax-image-models runs them) are
handled: each attention module gets a layer-index variable stacked like its parameters, so
every scanned step knows its layer, and the per-layer results come back as a stacked
variable. Layers are numbered in graph order (a stacked module's layers in stack order).

`params` here is the model's state as a pure nested dict (`nnx.to_pure_dict`), so the
analyses can cast, shard and map over it as over linen params. No prefix reuse: the
ablation scan runs full forwards (see `importance.ablation_strategy`); results are equal.

Attention computed outside `nnx.MultiHeadAttention.__call__` (e.g. jax-image-models' RoPE
path, which calls the projections itself) is intercepted where it is declared: a
`DeclaredAttention` names the module class and method that compute it and a twin of that
method that hands its queries, keys and values (RoPE applied) to `attend`, which returns the
heads' context with the hooks applied (`nnx_declared.py`: jax-image-models' blocks).

Not supported: autoregressive `decode`, cross-attention.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import threading
from typing import Callable, Optional

import jax
import jax.numpy as jnp
from flax import nnx

from vit_jax_analytics import model as model_lib
from vit_jax_analytics.families.intercept import (InterceptedConfig, layout_of,
                                                   whole_forward_reduce)

_ACTIVE = threading.local()
_ORIGINAL_CALL = nnx.MultiHeadAttention.__call__
_CALLS = itertools.count()


@dataclasses.dataclass(frozen=True)
class DeclaredAttention:
  """Where a model computes its attention, when not in nnx.MultiHeadAttention.__call__.

  cls, method: the module class and its method that compute one layer's attention; while
    the analyses run, the method is replaced by `compute` for the model's modules of `cls`.
  compute(module, attend, *args, **kwargs): the method's twin; it calls
    attend(q, k, v, mask=None) once, with q [B, Q, H, D/H] and k, v [B, K, H, D/H] as the
    attention sees them, and uses the context [B, Q, H, D/H] it returns (head mask applied)
    where the method uses its own.
  stack(module): the number of layers a module holds stacked (nnx.scan), or None.
  """
  cls: type
  compute: Callable
  stack: Callable = lambda module: None
  method: str = '__call__'


def _hooked_call(self, inputs_q, inputs_k=None, inputs_v=None, *, mask=None, decode=None,
                 **kwargs):
  """nnx.MultiHeadAttention.__call__ with the hooks, for modules the active wrapper marked."""
  hooks = getattr(_ACTIVE, 'hooks', None)
  if hooks is None or not hasattr(self, 'vja_layer'):
    return _ORIGINAL_CALL(self, inputs_q, inputs_k, inputs_v, mask=mask, decode=decode, **kwargs)
  if decode or self.decode:
    raise ValueError('nnx.MultiHeadAttention with decode=True is not supported by interception')
  inputs_k = inputs_q if inputs_k is None else inputs_k
  inputs_v = inputs_k if inputs_v is None else inputs_v
  q, k, v = self.query(inputs_q), self.key(inputs_k), self.value(inputs_v)
  if self.normalize_qk:
    q, k = self.query_ln(q), self.key_ln(k)
  return self.out(hooks(self, q, k, v, mask))


def _declared_call(declared: DeclaredAttention, original):
  """The declared method, running `declared.compute` for the modules the wrapper marked."""
  def call(self, *args, **kwargs):
    hooks = getattr(_ACTIVE, 'hooks', None)
    if hooks is None or not hasattr(self, 'vja_layer'):
      return original(self, *args, **kwargs)
    attend = lambda q, k, v, mask=None: hooks(self, q, k, v, mask)
    return declared.compute(self, attend, *args, **kwargs)
  return call


@contextlib.contextmanager
def _intercepting(hooks, declared: Optional[DeclaredAttention] = None):
  """hooks(module, q, k, v, mask) -> the heads' context [B, Q, H, D/H], while the block
  runs: in nnx.MultiHeadAttention.__call__, or in the declared method."""
  _ACTIVE.hooks = hooks
  if declared is None:
    nnx.MultiHeadAttention.__call__ = _hooked_call
  else:
    original = getattr(declared.cls, declared.method)
    setattr(declared.cls, declared.method, _declared_call(declared, original))
  try:
    yield
  finally:
    _ACTIVE.hooks = None
    if declared is None:
      nnx.MultiHeadAttention.__call__ = _ORIGINAL_CALL
    else:
      setattr(declared.cls, declared.method, original)


def _aval_mesh(x):
  """The (abstract) mesh an array or tracer is laid out on; None if none."""
  mesh = getattr(getattr(jax.typeof(x), 'sharding', None), 'mesh', None)
  return None if mesh is None or mesh.empty else mesh


def mark(modules) -> None:
  """Gives each attention module its layer index (a variable stacked like a scanned
  module's parameters) and a fresh call number: a static attribute, so the module's graph
  (and the trace cache key of a scan over it) differs from every other call's, and JAX
  cannot reuse a scan body traced without these hooks, or with another call's."""
  call = next(_CALLS)
  for _, node, start, count in modules:
    node.vja_layer = nnx.Variable(jnp.arange(start, start + count) if count else
                                  jnp.asarray(start))
    node.vja_call = call


def _weights_dtype(node, inputs):
  """The dtype of a layer's attention weights: its compute dtype, else its inputs' and
  parameters' (as flax promotes them)."""
  dtype = getattr(node, 'dtype', None)
  if dtype is not None:
    return dtype
  params = jax.tree.leaves(nnx.state(node, nnx.Param))
  return jnp.result_type(inputs.dtype, *(a.dtype for a in params))


def attention_modules(model, attention_filter=None,
                      declared: Optional[DeclaredAttention] = None) -> list:
  """[(path, module, first layer, layer count)] of the attention layers, in graph order; a
  module whose projections carry a leading stack axis counts as that many layers."""
  found, layer = [], 0
  for path, node in nnx.iter_graph(model):
    wanted = (isinstance(node, declared.cls) if declared is not None
              else isinstance(node, nnx.MultiHeadAttention))
    if wanted and (attention_filter is None or attention_filter(path, node)):
      if declared is not None:
        count = declared.stack(node)
      else:   # [L, D, H, D/H] under nnx.scan
        kernel = node.query.kernel[...]
        count = kernel.shape[0] if kernel.ndim == 4 else None
      found.append((path, node, layer, count))
      layer += count or 1
  return found


class NNXInterceptedModel:
  """An NNX module with the call of `model.apply`: (params, inputs, head_mask=,
  attention_reduce=, attention_edit=, return_attention=) -> as VisionTransformer. params:
  the module's state as a pure dict (`self.params`)."""

  def __init__(self, model, attention_filter=None, method: Optional[Callable] = None,
               output_fn: Optional[Callable] = None,
               attention: Optional[DeclaredAttention] = None):
    self.graphdef, state, self._rest = nnx.split(model, nnx.Param, ...)
    self.declared = attention     # None: nnx.MultiHeadAttention
    self.params = nnx.to_pure_dict(state)   # the parameters alone (no RNG state)
    self._state = state
    self.attention_filter = attention_filter
    self.method = method          # method(model, images) -> output; default model(images)
    self.output_fn = output_fn    # the model's output -> [B, C] or [B, D] (default: as is)
    self.num_layers = sum(c or 1 for *_, c in self.modules(model))
    # The mesh the parameters are laid out on (jax-image-models annotates them for a
    # ('data', 'fsdp') mesh and reshards under it): the model runs under it.
    meshes = {getattr(getattr(a, 'sharding', None), 'mesh', None)
              for a in jax.tree.leaves(self.params)}
    meshes = [m for m in meshes if m is not None and getattr(m, 'axis_names', ())]
    self.mesh = meshes[0] if len(meshes) == 1 else None

  def modules(self, model) -> list:
    return attention_modules(model, self.attention_filter, self.declared)

  def call(self, model, inputs):
    """The model's own call (or `method`), under its parameters' mesh."""
    if self.mesh is None:
      return self.method(model, inputs) if self.method else model(inputs)
    params = jax.tree.leaves(nnx.state(model, nnx.Param))
    run = lambda x: self.method(model, x) if self.method else model(x)
    if not any(isinstance(a, jax.core.Tracer) for a in [inputs] + params):
      with jax.set_mesh(self.mesh):
        return run(inputs)
    # Traced: set_mesh is refused inside jit. The mesh the analyses laid the parameters or
    # images out on (streaming's batch mesh), else the model's own; the images laid out
    # (replicated) on it when they are not, as the model's own reshards expect.
    found = [m for m in map(_aval_mesh, [inputs] + params) if m is not None]
    with jax.sharding.use_abstract_mesh(found[0] if found else self.mesh.abstract_mesh):
      if _aval_mesh(inputs) is None:
        inputs = jax.sharding.reshard(jnp.asarray(inputs), jax.sharding.PartitionSpec())
      return run(inputs)

  def module(self, params):
    """The model, rebuilt from `params` (a pure dict)."""
    state = jax.tree.map(lambda x: x, self._state)
    nnx.replace_by_pure_dict(state, params)
    # Fresh variables for the rest (RNG counters) too: a traced call may not touch the
    # variables of an outer trace level.
    return nnx.merge(self.graphdef, state, jax.tree.map(lambda x: x, self._rest))

  def apply(self, params, inputs, head_mask=None, attention_reduce=None, attention_edit=None,
            return_attention=False, first_layer=0, last_layer=None, skip_first_attention=False,
            pool_mask=None):
    attention_reduce = whole_forward_reduce(inputs, skip_first_attention, last_layer,
                                            return_attention, attention_reduce)
    model = self.module(params)
    modules = self.modules(model)
    n = self.num_layers
    mark(modules)

    def per_layer(fn, layer, *args):
      """fn(*args, l) at a layer index that may be traced (a scanned stack)."""
      if isinstance(layer, int):
        return fn(*args, layer)
      return jax.lax.switch(layer, [lambda *a, l=l: fn(*a, l) for l in range(n)], *args)

    def hooks(node, q, k, v, mask):
      layer = node.vja_layer[...]
      layer = layer if isinstance(layer, jax.core.Tracer) else int(layer)
      edit = None
      if attention_edit is not None:
        edit = lambda w, _: per_layer(attention_edit, layer, w)
      heads, weights = model_lib.dot_product_attention(q, k, v, edit, 0, mask)
      if head_mask is not None:
        row = jnp.take(head_mask, layer, axis=-2).astype(heads.dtype)   # [H] or [B, H]
        heads = heads * (row[:, None, :, None] if row.ndim == 2 else row[None, None, :, None])
      if attention_reduce is not None:
        record = per_layer(attention_reduce, layer, weights)
        if isinstance(getattr(node, 'vja_record', None), nnx.Variable):  # a scanned slice
          node.vja_record.set_value(record)
        else:
          node.vja_record = nnx.Variable(record)
      return heads

    if attention_reduce is not None:
      # The recorded results need a stacked variable before a scan sees the module.
      b = inputs.shape[0]
      for _, node, start, count in modules:
        if count:
          w = jax.ShapeDtypeStruct((b, self._heads, self._tokens, self._tokens),
                                   _weights_dtype(node, inputs))
          shapes = jax.eval_shape(lambda w, l=start: attention_reduce(w, l), w)
          node.vja_record = nnx.Variable(jax.tree.map(
              lambda s: jnp.zeros((count,) + s.shape, s.dtype), shapes))
    with _intercepting(hooks, self.declared):
      out = self.call(model, inputs)
    if self.output_fn is not None:
      out = self.output_fn(out)
    if attention_reduce is None:
      return out
    records = []
    for _, node, _, count in modules:
      r = node.vja_record.get_value()   # any pytree (attention_reduce's)
      records.append(r if count else jax.tree.map(lambda a: a[None], r))
    stacked = jax.tree.map(lambda *xs: jnp.concatenate(xs), *records)
    if return_attention:
      stacked = jnp.moveaxis(stacked, 0, 1)   # [L, B, H, Q, K] -> [B, L, H, Q, K]
    return out, stacked


def nnx_config(model, images, token_layout, output: str = 'logits', attention_filter=None,
               method=None, output_fn=None, attention: Optional[DeclaredAttention] = None):
  """Wraps `model` -> (params: its state as a pure dict, InterceptedConfig): the model's
  attention layers, heads and tokens counted by tracing it once on `images[:1]`.
  attention: where the attention is computed when not in nnx.MultiHeadAttention."""
  wrapper = NNXInterceptedModel(model, attention_filter, method, output_fn, attention)
  if not wrapper.num_layers:
    where = (f'{attention.cls.__name__}.{attention.method}' if attention is not None
             else 'nnx.MultiHeadAttention')
    raise ValueError(f'{type(model).__name__}: no {where} was found; the attention must be '
                     f'nnx.MultiHeadAttention or declared (attention=DeclaredAttention(...)); '
                     f'check attention_filter')
  x = jnp.asarray(images[:1])
  # Tokens, heads and width: traced once without records, from what the attention sees.
  seen = []

  def probe(p):
    m = wrapper.module(p)
    mark(wrapper.modules(m))

    def hooks(node, q, k, v, mask):
      seen.append((q.shape[-3], k.shape[-3], q.shape[-2], q.shape[-1]))
      heads_, _ = model_lib.dot_product_attention(q, k, v, None, 0, mask)
      return heads_

    with _intercepting(hooks, attention):
      return wrapper.call(m, x)

  out = jax.eval_shape(probe, wrapper.params)
  out = wrapper.output_fn(out) if output_fn is not None else out
  if not seen:
    raise ValueError(f'{type(model).__name__}: its forward never reached the attention '
                     f'to intercept (check attention= and method=)')
  queries, tokens, heads, head_dim = seen[0]
  if queries != tokens:
    raise ValueError('cross-attention (queries != keys) inside the encoder is not supported')
  wrapper._tokens, wrapper._heads = tokens, heads
  width = heads * head_dim
  layout = layout_of(token_layout, tokens)
  gh, gw = layout['grid']
  h, w = images.shape[1:3]
  if h % gh or w % gw or h // gh != w // gw:
    raise ValueError(f'images {h} x {w} do not divide into the {gh} x {gw} patch grid')
  out_dim = out.shape[-1]
  # An embedding wider or narrower than the tokens (CLIP's projection): its width.
  representation = out_dim if output != 'logits' and out_dim != width else None
  config = InterceptedConfig(
      image_size=(h, w), patch_size=h // gh, hidden_size=width, num_layers=wrapper.num_layers,
      num_heads=heads, mlp_dim=0, num_classes=out_dim if output == 'logits' else 0,
      classifier='token' if layout['cls'] else 'gap', num_registers=len(layout['registers']),
      representation_size=representation, output=output, foreign_model=wrapper)
  return wrapper.params, config
