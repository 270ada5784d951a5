"""The vit_jax parameter layout: flat keys, the big_vision -> vit_jax renaming, layout
detection, and the shape lookups every loader shares."""

from __future__ import annotations

import re
from typing import Mapping

import numpy as np

from vit_jax_analytics.checkpoints.posemb import hw, posemb_sincos_2d
from vit_jax_analytics.errors import CheckpointError


POSEMB_KEY = 'Transformer/posembed_input/pos_embedding'


def load_dtype() -> np.dtype:
  """The dtype weights are loaded in, and every fold done at load computed in (LayerScale
  into projections, tokens' position embeddings into them, resampled position embeddings):
  float64 when JAX runs in 64-bit mode (JAX_ENABLE_X64, jax.enable_x64), so that float64 runs
  are float64 throughout; float32 otherwise. Widening stored weights is exact either way."""
  import jax
  return np.dtype(jax.dtypes.canonicalize_dtype(np.float64))


BLOCK_KEY = re.compile(r'^Transformer/encoderblock_(\d+)/')


# big_vision names its block children with per-type linen counters; vit_jax with pre-linen
# global counters. Map the former onto the latter.
_BIG_VISION_BLOCK_NAMES = {
    'LayerNorm_0': 'LayerNorm_0',
    'MultiHeadDotProductAttention_0': 'MultiHeadDotProductAttention_1',
    'LayerNorm_1': 'LayerNorm_2',
    'MlpBlock_0': 'MlpBlock_3',
}


def flatten(tree: Mapping, prefix: str = '') -> dict:
  """{'a': {'b': x}} -> {'a/b': x}."""
  flat = {}
  for k, v in tree.items():
    key = f'{prefix}{k}'
    if isinstance(v, Mapping):
      flat.update(flatten(v, key + '/'))
    else:
      flat[key] = v
  return flat


def unflatten(flat: Mapping) -> dict:
  """{'a/b': x} -> {'a': {'b': x}}."""
  tree: dict = {}
  for key, v in flat.items():
    node = tree
    *parents, leaf = key.split('/')
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = v
  return tree


def key_shape(flat, key, path, ndim: int):
  if key not in flat:
    raise CheckpointError(f'{path}: missing key {key!r}, needed to infer the model config')
  shape = tuple(flat[key].shape)
  if len(shape) != ndim:
    raise CheckpointError(f'{path}: {key!r} has shape {shape}; expected {ndim} dimensions')
  return shape


def big_vision_to_vit_jax(flat: dict, path, image_size=None) -> dict:
  """Renames a big_vision ViT checkpoint into the vit_jax layout, with the same function.

  big_vision adds the position embedding to the patches before prepending the class token;
  a zero embedding for the class token makes vit_jax's "prepend, then add" identical.
  The MAP head (`MAPHead_0/...`) keeps its names: model.py uses big_vision's.
  """
  if any(k.startswith('params/') for k in flat):
    flat = {k[len('params/'):]: v for k, v in flat.items() if k.startswith('params/')}
  out = {}
  for key, v in flat.items():
    if key.startswith('Transformer/encoderblock/'):  # scan layout: a leading [L] axis
      rest = key[len('Transformer/encoderblock/'):]
      first, _, tail = rest.partition('/')
      name = _BIG_VISION_BLOCK_NAMES.get(first, first)
      if not v.ndim:
        raise CheckpointError(f'{path}: scanned {key!r} is a scalar; expected a leading '
                              f'layer axis')
      for i in range(v.shape[0]):
        out[f'Transformer/encoderblock_{i}/{name}/{tail}'] = v[i]
      continue
    m = BLOCK_KEY.match(key)
    if m:
      first, _, tail = key[m.end():].partition('/')
      key = f'{m.group(0)}{_BIG_VISION_BLOCK_NAMES.get(first, first)}/{tail}'
    out[key] = v

  has_cls = 'cls' in out
  pe_key = next((k for k in ('pos_embedding', POSEMB_KEY) if k in out), None)
  if pe_key:
    pe = out.pop(pe_key)
  else:  # 'sincos2d': not a parameter; materialise it for the grid asked for.
    patch, _, _, width = key_shape(out, 'embedding/kernel', path, 4)
    h, w = hw(image_size or 224)
    pe_key, pe = 'sincos2d', posemb_sincos_2d((h // max(patch, 1), w // max(patch, 1)), width,
                                              dtype=load_dtype())
  grid2 = key_shape({pe_key: pe}, pe_key, path, 3)[1]
  # big_vision's top-level pos_embedding covers the patches only.
  if has_cls and (pe_key != POSEMB_KEY or int(round(np.sqrt(grid2))) ** 2 == grid2):
    pe = np.concatenate([np.zeros_like(pe[:, :1]), pe], axis=1)
  out[POSEMB_KEY] = pe
  return out


def detect_layout(flat: dict) -> str:
  """'big_vision' or 'vit_jax', from the key names."""
  big_vision_marks = ('params/', 'pos_embedding', 'Transformer/encoderblock/', 'MAPHead_0/')
  if any(k.startswith(big_vision_marks) for k in flat) or any(
      '/MultiHeadDotProductAttention_0/' in k for k in flat):
    return 'big_vision'
  return 'vit_jax'
