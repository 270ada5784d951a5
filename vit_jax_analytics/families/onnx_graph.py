"""ONNX exports of Hugging Face ViT-family models (`torch.onnx.export` / Optimum), read with
the `onnx` package (an optional extra: `pip install vit-jax-analytics[onnx]`).

The exporter keeps the names of most parameters as initializers
(`backbone.encoder.layer.0.norm1.weight`) but not those of `MatMul` weights: a Linear on
a [B, T, D] input becomes `MatMul(x, onnx::MatMul_1972)` (weight [in, out]) + `Add(bias)`.
Those are named here by the node's scope: `/backbone/encoder/layer.0/attention/attention/
query/MatMul` -> `backbone.encoder.layer.0.attention.attention.query.weight` (transposed to
torch's [out, in]). Folded constants in the embeddings' scope of shape [1, k, D] are the
position embedding (the patch grid and the class token's entry). The number of heads is
read from the query's Reshape, the LayerNorm epsilon from its `Add` (decomposed
LayerNorm) or `LayerNormalization`, the activation from `Erf`/`Tanh`/`Sigmoid` in the MLP, the
image size from the graph input, the position-embedding resampling from the embeddings'
`Resize` node (cubic with cubic_coeff_a=-0.75 and half_pixel = torch's bicubic). The mapped
state dict then goes through `hf.hf_to_vit_jax`.

Nodes outside the backbone's scope and its classifier (e.g. a task decoder) are ignored and
reported in `source['ignored_scopes']` with their node counts; unused initializers in
`source['ignored']`.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Optional

import numpy as np

from vit_jax_analytics.errors import CheckpointError
from vit_jax_analytics.families import hf
from vit_jax_analytics.families.common import Mapped

_HEADS = ('classifier', 'cls_classifier', 'distillation_classifier', 'visual_projection',
          'pooler')


def _onnx(path):
  try:
    import onnx
    from onnx import numpy_helper
  except ImportError:
    raise CheckpointError(f'{path}: reading .onnx needs the onnx package (pip install '
                          f'vit-jax-analytics[onnx])') from None
  return onnx, numpy_helper


def _scope(node) -> str:
  """'/backbone/encoder/layer.0/attention/attention/query/MatMul' ->
  'backbone.encoder.layer.0.attention.attention.query'."""
  parts = node.name.strip('/').split('/')
  return '.'.join(parts[:-1])


def _named(name: str) -> bool:
  """A parameter name kept by the exporter (dotted, not 'onnx::...' or a node output)."""
  return not name.startswith(('onnx::', '/')) and '.' in name


def graph_to_state_dict(model, path='model.onnx'):
  """-> (tensors in transformers naming, hf config dict, resize method or None, report)."""
  onnx, numpy_helper = _onnx(path)
  g = model.graph
  consts = {i.name: numpy_helper.to_array(i) for i in g.initializer}
  for n in g.node:
    if n.op_type == 'Constant' and n.output:
      for a in n.attribute:
        if a.name == 'value':
          consts[n.output[0]] = numpy_helper.to_array(a.t)
    elif n.op_type == 'Identity' and n.input[0] in consts:  # the exporter's deduplication
      consts[n.output[0]] = consts[n.input[0]]
  tensors = {k: v for k, v in consts.items() if _named(k)}
  # The backbone's prefix, from the patch embedding's Conv.
  convs = [n for n in g.node if n.op_type == 'Conv' and any(
      i.endswith(('patch_embeddings.projection.weight', 'patch_embedding.weight'))
      or re.search(r'/embeddings/patch_embeddings?(/projection)?/Conv$', n.name)
      for i in [*n.input, n.name])]
  if not convs:
    raise CheckpointError(f'{path}: no patch-embedding Conv (scope .../embeddings/'
                          f'patch_embeddings/projection); expected an ONNX export of a '
                          f'Hugging Face ViT-family model')
  conv = convs[0]
  scope = _scope(conv)
  base = scope[:scope.index('embeddings')]   # 'backbone.' / 'vit.' / ''
  # Parameters named by the scope of the node that uses them: the exporter leaves MatMul
  # weights unnamed and shares one initializer between equal tensors (e.g. LayerNorm
  # weights that are still all ones), so a kept name is not always the user's.
  for n in g.node:
    for slot, suffix in _param_slots(n, consts):
      a = consts[n.input[slot]]
      if n.op_type == 'MatMul' or (n.op_type == 'Gemm' and slot == 1 and not {
          x.name: x.i for x in n.attribute}.get('transB', 0)):
        a = a.T                                # [in, out] -> torch [out, in]
      tensors[f'{_scope(n)}.{suffix}'] = a
  # Folded position embeddings in the embeddings' scope.
  emb_scope = f'/{base.replace(".", "/")}embeddings/'
  width = consts[conv.input[1]].shape[0]
  resize = None
  pe_key = f'{base}embeddings.position_embeddings'
  clip_pe = f'{base}embeddings.position_embedding.weight'
  if pe_key not in tensors and clip_pe not in tensors:
    grid, prefix = None, []
    for n in g.node:
      if not n.name.startswith(emb_scope):
        continue
      for i in n.input:
        a = consts.get(i)
        if a is None or _named(i) or a.ndim != 3 or a.shape[0] != 1 or a.shape[2] != width:
          continue
        k = a.shape[1]
        if k > 1 and int(round(np.sqrt(k))) ** 2 == k:
          grid = a
        elif k < 4:
          prefix.append(a)
    if grid is None:
      raise CheckpointError(f'{path}: no position embedding in {emb_scope} (neither an '
                            f'initializer {pe_key!r} nor a folded [1, h*w, {width}] constant)')
    tensors[pe_key] = np.concatenate(prefix[:1] + [grid], axis=1)
  for n in g.node:
    if n.op_type == 'Resize' and n.name.startswith(emb_scope):
      attrs = {x.name: onnx.helper.get_attribute_value(x) for x in n.attribute}
      mode = attrs.get('mode', b'nearest')
      ctm = attrs.get('coordinate_transformation_mode', b'half_pixel')
      if mode != b'cubic' or ctm not in (b'half_pixel', b'pytorch_half_pixel') or abs(
          attrs.get('cubic_coeff_a', -0.75) - (-0.5 if attrs.get('antialias') else -0.75)) > 1e-6:
        raise CheckpointError(f'{path}: the position embedding is resized with {attrs}; '
                              f'expected cubic, half_pixel, as torch bicubic')
      resize = 'bicubic_antialias' if attrs.get('antialias') else 'bicubic'

  # Config: model type, heads, epsilon, activation, image size.
  names = set(tensors)
  if any('layer_scale1' in k for k in names):
    model_type = ('dinov2_with_registers' if any('register_tokens' in k for k in names)
                  else 'dinov2')
  elif any('self_attn' in k for k in names):
    model_type = 'clip_vision_model'
  elif any('distillation_token' in k for k in names):
    model_type = 'deit'
  else:
    model_type = 'vit'
  heads, eps, act = None, None, None
  q_scope = re.compile(re.escape(f'/{base.replace(".", "/")}') +
                       r'(encoder/)?layers?\.0/(attention(/attention)?|self_attn)/')
  for n in g.node:
    if n.op_type == 'Reshape' and q_scope.match(n.name) and heads is None:
      shape = _shape_values(n.input[1], g, consts)
      if shape and len(shape) == 4 and shape[3] and shape[3] > 0 and not width % shape[3]:
        if shape[2] == -1 or shape[2] * shape[3] == width:  # [B, T, H or -1, D/H]
          heads = width // int(shape[3])
    if q_scope.match(n.name) is None and re.search(r'layers?\.0/(norm1|layernorm_before|'
                                                   r'layer_norm1)/', n.name) and eps is None:
      if n.op_type == 'LayerNormalization':
        eps = next((x.f for x in n.attribute if x.name == 'epsilon'), 1e-5)
      elif n.op_type == 'Add':
        for i in n.input:
          if i in consts and consts[i].size == 1 and not _named(i):
            eps = float(consts[i].reshape(()))
    if re.search(r'layers?\.0/(mlp|intermediate)/', n.name) and act is None:
      act = {'Erf': 'gelu', 'Tanh': 'gelu_pytorch_tanh', 'Sigmoid': 'quick_gelu',
             'Gelu': 'gelu'}.get(n.op_type)
  heads_assumed = heads is None
  if heads_assumed:
    heads = max(width // 64, 1)
  dims = [d.dim_value for d in g.input[0].type.tensor_type.shape.dim]
  image_size = tuple(dims[2:4]) if len(dims) == 4 and all(dims[2:4]) else None
  cfg = {'model_type': model_type, 'num_attention_heads': heads,
         'layer_norm_eps': eps if eps is not None else 1e-6, 'hidden_act': act or 'gelu',
         'architectures': [f'ONNX export ({model_type})']}
  if image_size:
    cfg['image_size'] = image_size
  # What the mapping does not use: other top-level scopes (e.g. a task decoder), below the
  # module that wraps the backbone if any ('/m/vit/...' beside '/m/classifier/...').
  outer = hf.wrapper_prefix(base)
  keep = {base[len(outer):].rstrip('.') or 'embeddings', 'encoder', 'embeddings', 'layernorm',
          'pre_layrnorm', 'post_layernorm', *_HEADS}
  tops = Counter(_top_scope(n, outer) for n in g.node if n.name.startswith('/'))
  ignored_scopes = {k: v for k, v in tops.items() if k is not None and k not in keep
                    and not re.fullmatch(r'[A-Z][A-Za-z]*(_\d+)?', k)}
  # The graph's outputs and the scope that makes each: one made in an ignored scope is not
  # what the loaded model computes.
  made_by = {o: n for n in g.node for o in n.output}
  output_scopes = {}
  for o in g.output:
    node = made_by.get(o.name)
    while node is not None and not node.name.startswith('/') and node.input:  # Identity, ...
      node = made_by.get(node.input[0])
    output_scopes[o.name] = None if node is None else _top_scope(node, outer)
  report = {'ignored_scopes': ignored_scopes, 'output_scopes': output_scopes,
            'outputs': [o.name for o in g.output], 'opset': [o.version for o in model.opset_import],
            'heads_assumed': heads_assumed, 'image_size_from_graph': image_size}
  return tensors, cfg, resize, report


def _top_scope(node, outer: str) -> Optional[str]:
  """The first scope of a node's name below the wrapper `outer` ('m.'): '/m/classifier/Gemm'
  -> 'classifier', '/m/Gather' -> 'Gather'; None for a node outside the wrapper."""
  parts = node.name.strip('/').split('/')
  wrapper = outer.rstrip('.').split('.') if outer else []
  if parts[:len(wrapper)] != wrapper:
    return None
  return parts[len(wrapper)]


def _param_slots(node, consts):
  """[(input index, parameter suffix)] of the constant parameter inputs of `node`."""
  op, inputs = node.op_type, list(node.input)
  is_const = lambda i: i < len(inputs) and inputs[i] in consts
  leaf = _scope(node).rsplit('.', 1)[-1]
  if op in ('Conv', 'Gemm', 'LayerNormalization'):
    return [(i, s) for i, s in ((1, 'weight'), (2, 'bias')) if is_const(i)]
  if op == 'MatMul':
    return [(1, 'weight')] if is_const(1) and consts[inputs[1]].ndim == 2 else []
  if op in ('Mul', 'Add'):
    slots = [i for i in range(len(inputs))
             if is_const(i) and consts[inputs[i]].ndim == 1 and consts[inputs[i]].size > 1]
    if not slots:
      return []
    if op == 'Add':
      return [(slots[0], 'bias')]
    if leaf.startswith('layer_scale'):
      return [(slots[0], 'lambda1')]
    if 'norm' in leaf or leaf.startswith('layernorm'):
      return [(slots[0], 'weight')]
  return []


def _shape_values(name, g, consts) -> Optional[list]:
  """The values of a shape input: a constant, or a Concat of constants and unknowns
  (unknown entries are None)."""
  if name in consts:
    return [int(v) for v in np.ravel(consts[name])]
  producer = next((n for n in g.node if name in n.output), None)
  if producer is None or producer.op_type != 'Concat':
    return None
  out = []
  for i in producer.input:
    if i in consts:
      out.extend(int(v) for v in np.ravel(consts[i]))
    else:
      out.append(None)
  return out


def onnx_to_vit_jax(model, path='model.onnx', image_size=None) -> Mapped:
  """Pure mapping of a loaded ONNX ModelProto -> Mapped."""
  tensors, cfg, resize, report = graph_to_state_dict(model, path)
  mapped = hf.hf_to_vit_jax(tensors, cfg, path, image_size, resize_method=resize)
  source = dict(mapped.source, format='ONNX export', **report)
  source['family'] = source['family'].replace('(Hugging Face)', '(Hugging Face, ONNX)')
  ignored = set(report['ignored_scopes'])
  lost = {o: s for o, s in report['output_scopes'].items() if s in ignored}
  if lost:  # e.g. a saliency decoder's map: say what is analysed instead
    import sys
    print(f'warning: {path}: the graph\'s output(s) {sorted(lost)} come from scope(s) '
          f'{sorted(set(lost.values()))}, which are not part of the ViT; the loaded model '
          f'outputs {mapped.config.output!r} instead', file=sys.stderr)
  if resize is None:
    source['posemb_resize'] = f"{mapped.source['posemb_resize']} (no Resize in the graph; " \
                              f"the source model's)"
  return Mapped(mapped.flat, mapped.config, source)


def load(path, image_size=None) -> Mapped:
  onnx, _ = _onnx(path)
  path = Path(path)
  try:
    model = onnx.load(str(path))
  except Exception as e:  # protobuf decode errors and friends
    msg = str(e).splitlines()[0] if str(e) else ''
    raise CheckpointError(f'{path}: cannot read ONNX file ({type(e).__name__}: {msg})') from None
  return onnx_to_vit_jax(model, path, image_size)
