"""Checkpoint I/O: vit_jax and big_vision `.npz` files, and the project's own orbax format.

Every loader returns `(params, config)`: `params` a nested dict named as in `model.py`
(the vit_jax layout), `config` a `ViTConfig` inferred from the array shapes unless given.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import shutil
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Mapping, NamedTuple, Optional

import numpy as np

from vit_jax_analytics import atomic
from vit_jax_analytics import model as model_lib
from vit_jax_analytics.errors import CheckpointError
from vit_jax_analytics.model import ViTConfig

POSEMB_KEY = 'Transformer/posembed_input/pos_embedding'
_BLOCK = re.compile(r'^Transformer/encoderblock_(\d+)/')
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


# Loading refuses `.npz` files whose arrays declare more bytes than this (None: half the
# memory available when loading), checked from the member headers before any data is read.
MAX_NPZ_BYTES: Optional[int] = None
# Everything numpy, zipfile and zlib raise on a damaged member (CheckpointError excluded:
# the helpers below raise it outside their try blocks).
_MEMBER_ERRORS = (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError,
                  NotImplementedError, RuntimeError)
_NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0,
                       (2, 0): np.lib.format.read_array_header_2_0}


class _Member(NamedTuple):
  """A zip member of an `.npz`, as its `.npy` header declares it."""
  info: zipfile.ZipInfo
  shape: tuple
  dtype: np.dtype

  @property
  def nbytes(self) -> int:
    return math.prod(self.shape) * self.dtype.itemsize


def _not_npz(path, found: str) -> CheckpointError:
  return CheckpointError(f'{path} is not a checkpoint: expected an .npz archive of named '
                         f'arrays, found {found}')


def _gist(e: BaseException) -> str:
  lines = str(e).splitlines()
  return f'{type(e).__name__}: {lines[0]}' if lines else type(e).__name__


def _open_npz(path) -> zipfile.ZipFile:
  path = Path(path)
  if not path.exists():
    raise CheckpointError(f'{path}: no such file')
  with open(path, 'rb') as f:
    magic = f.read(6)
  if not magic:
    raise _not_npz(path, 'an empty file')
  if magic == b'\x93NUMPY':
    raise _not_npz(path, 'a single .npy array')
  try:
    return zipfile.ZipFile(path)
  except _MEMBER_ERRORS as e:
    raise _not_npz(path, f'a file that is not a zip or is truncated ({_gist(e)})') from None


def _member_header(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path) -> _Member:
  """Reads only the `.npy` header of a member; checks it against the zip entry's size."""
  try:
    with zf.open(info) as f:
      version = np.lib.format.read_magic(f)
      if version not in _NPY_HEADER_READERS:
        raise ValueError(f'unsupported .npy format version {version}')
      shape, _, dtype = _NPY_HEADER_READERS[version](f)
      data_bytes = info.file_size - f.tell()
  except _MEMBER_ERRORS as e:
    raise CheckpointError(f'{path}: cannot read the header of member {info.filename!r} '
                          f'({_gist(e)}); expected an .npy array') from None
  member = _Member(info, tuple(shape), dtype)
  # Object arrays are stored pickled (of any size); loading refuses them by their dtype.
  if not dtype.hasobject and data_bytes != member.nbytes:
    raise CheckpointError(
        f'{path}: member {info.filename!r} is corrupt: its header declares shape '
        f'{member.shape} of {dtype} ({member.nbytes} bytes) but the zip entry holds '
        f'{data_bytes} bytes of array data; expected equal sizes')
  return member


def _npz_member_headers(zf: zipfile.ZipFile, path) -> dict:
  """{key: _Member} of every member of an open `.npz`, without reading any array data."""
  members = {}
  for info in zf.infolist():
    if not info.filename.endswith('.npy'):
      raise _not_npz(path, f'a zip whose member {info.filename!r} is not an .npy array')
    members[info.filename[:-len('.npy')]] = _member_header(zf, info, path)
  return members


def _available_memory() -> Optional[int]:
  try:
    with open('/proc/meminfo') as f:
      for line in f:
        if line.startswith('MemAvailable:'):
          return int(line.split()[1]) * 1024
  except (OSError, ValueError, IndexError):
    pass
  try:
    return os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
  except (AttributeError, ValueError, OSError):
    return None


def _check_budget(path, members) -> None:
  """Refuses to load arrays that declare more bytes than MAX_NPZ_BYTES (or half the
  available memory): a small file can inflate to any size."""
  limit, source = MAX_NPZ_BYTES, 'checkpoints.MAX_NPZ_BYTES'
  if limit is None:
    available = _available_memory()
    limit, source = (available // 2 if available else None), 'half the available memory'
  total = sum(m.nbytes for m in members)
  if limit is not None and total > limit:
    raise CheckpointError(
        f'{path}: its arrays declare {total} bytes ({total / 2**30:.2f} GiB), more than the '
        f'limit of {limit} bytes ({limit / 2**30:.2f} GiB, {source}); expected a smaller '
        f'checkpoint')


def _read_member(zf: zipfile.ZipFile, member: _Member, path) -> np.ndarray:
  try:
    with zf.open(member.info) as f:
      return np.lib.format.read_array(f, allow_pickle=False)
  except _MEMBER_ERRORS as e:
    raise CheckpointError(f'{path}: cannot read member {member.info.filename!r} '
                          f'({_gist(e)})') from None


def read_npz(path) -> dict:
  """All arrays of an `.npz` file, by key, as stored; every header is checked first."""
  with _open_npz(path) as zf:
    members = _npz_member_headers(zf, path)
    _check_budget(path, members.values())
    return {k: _read_member(zf, m, path) for k, m in members.items()}


def _check_float_dtype(key: str, dtype: np.dtype, path) -> None:
  # np.load returns big_vision's bfloat16 (ml_dtypes) arrays as raw 2-byte voids.
  raw_bfloat16 = dtype.kind == 'V' and dtype.itemsize == 2 and dtype.names is None
  if dtype.kind == 'f' or dtype.name == 'bfloat16' or raw_bfloat16:
    return
  raise CheckpointError(f'{path}: key {key!r} has dtype {dtype}; expected real floating-point '
                        f'weights (float32, float16, bfloat16 or float64)')


def _to_float32(key: str, array, path) -> np.ndarray:
  """`array` as float32 (bfloat16 bits widened exactly); refuses NaN, Inf and non-floats."""
  a = np.asarray(array)
  _check_float_dtype(key, a.dtype, path)
  if a.dtype.kind == 'V' and a.dtype.name != 'bfloat16':  # bf16 bits: the top half of a float32
    a = (a.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
  with np.errstate(over='ignore'):  # float64 beyond float32's range: caught just below
    a = a.astype(np.float32, copy=False)
  if not np.isfinite(a).all():
    bad = a.size - np.count_nonzero(np.isfinite(a))
    raise CheckpointError(f'{path}: key {key!r} holds {bad} non-finite value(s) (NaN or Inf '
                          f'as float32) among {a.size}; expected finite weights')
  return a


def _hw(size) -> tuple:
  """S or (h, w) -> (h, w)."""
  return tuple(int(v) for v in size) if isinstance(size, (tuple, list)) else (int(size),) * 2


def posemb_sincos_2d(grid, width: int, temperature: float = 10_000.) -> np.ndarray:
  """big_vision's fixed 2-D sin-cos position embedding, [1, h*w, width]; grid n or (h, w)."""
  if width % 4:
    raise CheckpointError(f'sincos2d position embedding needs a width divisible by 4, got {width}')
  h, w = _hw(grid)
  from vit_jax_analytics.families import posemb
  posemb.check_patch_grid((h, w))  # before it is made
  y, x = np.mgrid[:h, :w]
  omega = 1. / temperature ** (np.arange(width // 4) / (width // 4 - 1))
  y = np.einsum('m,d->md', y.ravel(), omega)
  x = np.einsum('m,d->md', x.ravel(), omega)
  pe = np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)
  return pe[None].astype(np.float32)


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
    m = _BLOCK.match(key)
    if m:
      first, _, tail = key[m.end():].partition('/')
      key = f'{m.group(0)}{_BIG_VISION_BLOCK_NAMES.get(first, first)}/{tail}'
    out[key] = v

  has_cls = 'cls' in out
  pe_key = next((k for k in ('pos_embedding', POSEMB_KEY) if k in out), None)
  if pe_key:
    pe = out.pop(pe_key)
  else:  # 'sincos2d': not a parameter; materialise it for the grid asked for.
    patch, _, _, width = _shape(out, 'embedding/kernel', path, 4)
    h, w = _hw(image_size or 224)
    pe_key, pe = 'sincos2d', posemb_sincos_2d((h // max(patch, 1), w // max(patch, 1)), width)
  grid2 = _shape({pe_key: pe}, pe_key, path, 3)[1]
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


def _shape(flat, key, path, ndim: int):
  if key not in flat:
    raise CheckpointError(f'{path}: missing key {key!r}, needed to infer the model config')
  shape = tuple(flat[key].shape)
  if len(shape) != ndim:
    raise CheckpointError(f'{path}: {key!r} has shape {shape}; expected {ndim} dimensions')
  return shape


def posemb_grid(tokens: int, patch: int, path, image_size=None) -> tuple:
  """(h, w) of a position embedding over `tokens` patches: the grid of `image_size` when it
  has that many patches (rectangular grids cannot be told from the count alone), else the
  square grid."""
  if image_size and patch:
    h, w = (s // patch for s in _hw(image_size))
    if h * w == tokens:
      return h, w
  grid = int(round(np.sqrt(max(tokens, 0))))
  if grid == 0 or grid * grid != tokens:
    raise CheckpointError(
        f'{path}: {POSEMB_KEY} has {tokens} patch positions, not a square grid; expected '
        f'--image-size HxW with (H/{patch}) x (W/{patch}) = {tokens} for a rectangular one')
  return grid, grid


def infer_config(flat: dict, path='checkpoint', **overrides) -> ViTConfig:
  """The ViTConfig whose parameter shapes are those of `flat` (vit_jax layout).
  overrides['image_size'] is a hint for a rectangular grid (see posemb_grid)."""
  patch, patch_w, channels, width = _shape(flat, 'embedding/kernel', path, 4)
  if patch != patch_w or channels != 3:
    raise CheckpointError(f"{path}: 'embedding/kernel' has shape {(patch, patch_w, channels, width)}; "
                          f'expected square patches over 3 channels')
  layers = sorted({int(m.group(1)) for k in flat if (m := _BLOCK.match(k))})
  if not layers or layers != list(range(len(layers))):
    raise CheckpointError(f'{path}: expected blocks Transformer/encoderblock_0..N-1, found {layers}')
  attn = 'Transformer/encoderblock_0/MultiHeadDotProductAttention_1'
  _, heads, _ = _shape(flat, f'{attn}/query/kernel', path, 3)
  mlp_dim = _shape(flat, 'Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel', path, 2)[1]
  classifier = ('token' if 'cls' in flat else 'map' if 'MAPHead_0/probe' in flat else 'gap')
  if overrides.get('classifier') == 'none' and classifier == 'gap':
    classifier = 'none'  # no weights tell 'gap' from 'none'
  tokens = _shape(flat, POSEMB_KEY, path, 3)[1] - (classifier == 'token')
  gh, gw = posemb_grid(tokens, patch, path, overrides.pop('image_size', None))
  fields = dict(
      image_size=(gh * patch, gw * patch), patch_size=patch, hidden_size=width,
      num_layers=len(layers), num_heads=heads, mlp_dim=mlp_dim,
      num_classes=_shape(flat, 'head/kernel', path, 2)[1] if 'head/kernel' in flat else 0,
      classifier=classifier,
      num_registers=_shape(flat, 'registers', path, 3)[1] if 'registers' in flat else 0,
      pre_norm='Transformer/pre_norm/scale' in flat,
      representation_size=(_shape(flat, 'pre_logits/kernel', path, 2)[1]
                           if 'pre_logits/kernel' in flat else None))
  fields.update({k: v for k, v in overrides.items() if v is not None and k != 'classifier'})
  if not fields['num_classes']:
    fields['output'] = 'embedding'

  try:
    return ViTConfig(**fields)
  except (ValueError, ZeroDivisionError) as e:  # e.g. zero heads or a zero patch size
    raise CheckpointError(f'{path}: {e}') from None


@functools.lru_cache(maxsize=8)
def _expected_shapes(config: ViTConfig) -> dict:
  """{key: shape} of the model's parameters; cached, as loading checks shapes twice."""
  return {k: tuple(v.shape) for k, v in flatten(model_lib.param_shapes(config)).items()}


def check_params(flat: dict, config: ViTConfig, path='checkpoint') -> None:
  """Raises CheckpointError naming the first missing, extra or mismatched key."""
  expected = _expected_shapes(config)
  missing = [k for k in expected if k not in flat]
  extra = [k for k in flat if k not in expected]
  mismatched = [k for k in expected if k in flat and tuple(flat[k].shape) != expected[k]]
  problems = ([f'missing key {k!r} (the model expects shape {expected[k]})'
               for k in missing] +
              [f'unexpected key {k!r} with shape {tuple(flat[k].shape)}' for k in extra] +
              [f'key {k!r} has shape {tuple(flat[k].shape)} but the model expects '
               f'{expected[k]}' for k in mismatched])
  if problems:
    more = f' (and {len(problems) - 1} more problem(s))' if len(problems) > 1 else ''
    raise CheckpointError(f'{path} does not match the model config: {problems[0]}{more}')


def _linear_weights(old: int, new: int):
  coords = np.arange(new) * ((old - 1) / (new - 1)) if new > 1 else np.zeros(1)
  lo = np.clip(np.floor(coords).astype(int), 0, old - 1)
  return lo, np.minimum(lo + 1, old - 1), (coords - lo).astype(np.float32)


def resize_position_embedding(posemb: np.ndarray, new_grid, has_cls: bool,
                              old_grid=None) -> np.ndarray:
  """Bilinear resize of the patch-grid part of [1, T, D], per axis; the class token's entry
  is kept. new_grid / old_grid: n or (h, w); old_grid defaults to the square grid.

  Corners map to corners, as scipy.ndimage.zoom(order=1) does in vit_jax's checkpoint.py.
  """
  posemb = np.asarray(posemb, np.float32)
  cls, grid_pe = (posemb[:, :1], posemb[0, 1:]) if has_cls else (posemb[:, :0], posemb[0])
  if old_grid is None:
    old_grid = int(round(np.sqrt(grid_pe.shape[0])))
  (oh, ow), (nh, nw) = _hw(old_grid), _hw(new_grid)
  from vit_jax_analytics.families import posemb
  posemb.check_patch_grid((nh, nw))  # before it is made
  grid_pe = grid_pe.reshape(oh, ow, -1)
  if (oh, ow) != (nh, nw):  # separable: rows, then columns
    lo, hi, frac = _linear_weights(oh, nh)
    grid_pe = grid_pe[lo] * (1 - frac)[:, None, None] + grid_pe[hi] * frac[:, None, None]
    lo, hi, frac = _linear_weights(ow, nw)
    grid_pe = (grid_pe[:, lo] * (1 - frac)[None, :, None] +
               grid_pe[:, hi] * frac[None, :, None])
  return np.concatenate([cls, grid_pe.reshape(1, nh * nw, -1)], axis=1)


def params_from_flat(flat: dict, path='checkpoint', config: Optional[ViTConfig] = None,
                     image_size=None, gelu_approximate: Optional[bool] = None,
                     **overrides):
  """Validated (params, config) from a flat vit_jax-layout dict; resizes the posemb.
  image_size: S or (height, width). overrides: ViTConfig fields (e.g. output, classifier)."""
  flat = {k: np.asarray(v, np.float32) for k, v in flat.items()}
  if image_size is not None:
    image_size = _hw(image_size)
    image_size = image_size[0] if image_size[0] == image_size[1] else image_size
  if config is None:
    config = infer_config(flat, path, gelu_approximate=gelu_approximate,
                          image_size=image_size, **overrides)
  else:
    if POSEMB_KEY in flat:  # check at the checkpoint's own resolution, resize afterwards
      tokens = _shape(flat, POSEMB_KEY, path, 3)[1] - config.has_cls_token
      gh, gw = posemb_grid(tokens, config.patch_size, path, image_size or config.image_size)
      image_size = image_size or config.image_size
      config = config.replace(image_size=(gh * config.patch_size, gw * config.patch_size))
  check_params(flat, config, path)
  if image_size and _hw(image_size) != config.image_hw:
    if any(s % config.patch_size for s in _hw(image_size)):
      raise CheckpointError(f'image size {image_size} is not a multiple of the patch size '
                            f'{config.patch_size} of {path}')
    flat[POSEMB_KEY] = resize_position_embedding(
        flat[POSEMB_KEY], [s // config.patch_size for s in _hw(image_size)],
        config.has_cls_token, config.grid_shape)
    config = config.replace(image_size=image_size)
  return unflatten(flat), config


def _select_params(keys, path, subtree: Optional[str] = None) -> tuple:
  """{key in the file: key for the layout converters}: only `params/` when the file has it
  (big_vision keeps optimizer state beside), and only one tower of a two-tower model
  (`subtree`, or 'img' when the params have an img/ subtree but no embedding of their own).
  -> ({key: new key}, the subtree chosen or None)."""
  prefix = 'params/' if any(k.startswith('params/') for k in keys) else ''
  keys = [k for k in keys if k.startswith(prefix)]
  inner = [k[len(prefix):] for k in keys]
  if subtree is None and 'embedding/kernel' not in inner and any(
      k.startswith('img/') for k in inner):
    subtree = 'img'
  if subtree is None:
    return {k: k for k in keys}, None
  sub = subtree.strip('/')
  sub = sub[len('params/'):] if sub.startswith('params/') else sub
  chosen = {k: prefix + k[len(prefix) + len(sub) + 1:] for k in keys
            if k.startswith(f'{prefix}{sub}/')}
  if not chosen:
    towers = sorted({k.split('/')[0] for k in inner if '/' in k})
    raise CheckpointError(f'{path}: no arrays under {prefix + sub + "/"!r}; expected one of '
                          f'the subtrees {towers}')
  return chosen, sub


def _shape_only(shape) -> np.ndarray:
  return np.broadcast_to(np.float32(0), shape)  # a zero-stride view: no memory


def _params_from_file_layout(flat, path, config, image_size, gelu_approximate, **overrides):
  if detect_layout(flat) == 'big_vision':
    flat = big_vision_to_vit_jax(flat, path, image_size or (config and config.image_size))
  return params_from_flat(flat, path, config, image_size, gelu_approximate, **overrides)


def load_npz(path, config: Optional[ViTConfig] = None, image_size=None,
             gelu_approximate: Optional[bool] = None, subtree: Optional[str] = None,
             pooling: Optional[str] = None):
  """Loads a google-research/vision_transformer or big_vision ViT `.npz`.

  subtree: the tower of a two-tower (e.g. SigLIP) file to load; 'img' is found by itself.
  The image tower of a two-tower model outputs an embedding (its `head` is the projection
  into the shared image-text space), not logits.
  pooling: 'none' for a big_vision pool_type='none' model (its weights look like 'gap').
  """
  with _open_npz(path) as zf:
    members = _npz_member_headers(zf, path)
    if not members:
      raise CheckpointError(f'{path} is not a checkpoint: the archive holds no arrays')
    keys, tower = _select_params(list(members), path, subtree)
    overrides = {}
    if config is None:
      overrides = {'output': 'embedding' if tower else None,
                   'classifier': {'none': 'none', None: None}.get(pooling)}
    for key in keys:
      _check_float_dtype(key, members[key].dtype, path)
    _check_budget(path, [members[k] for k in keys])
    # A dry run on the shapes alone: a file that is not this ViT fails before any data is read.
    _params_from_file_layout({new: _shape_only(members[k].shape) for k, new in keys.items()},
                             path, config, image_size, gelu_approximate, **overrides)
    flat = {new: _to_float32(k, _read_member(zf, members[k], path), path)
            for k, new in keys.items()}
  return _params_from_file_layout(flat, path, config, image_size, gelu_approximate,
                                  **overrides)


def load_class_matrix(path) -> dict:
  """A class matrix for models without a classifier, from an `.npz`: `classes` [C, E]
  (required; SigLIP text embeddings or a linear probe's weights), `bias` [C], `scale` and
  `normalize` (scalars). -> keyword arguments of importance.classes_objective."""
  arrays = read_npz(path)
  if 'classes' not in arrays:
    raise CheckpointError(f'{path}: missing key \'classes\'; expected a class matrix '
                          f'[classes, embedding] (and optionally bias, scale, normalize)')
  unknown = sorted(set(arrays) - {'classes', 'bias', 'scale', 'normalize'})
  if unknown:
    raise CheckpointError(f'{path}: unexpected key(s) {unknown}; expected classes, bias, '
                          f'scale, normalize')
  out = {'classes': _to_float32('classes', arrays['classes'], path), 'source': str(path)}
  if 'bias' in arrays:
    out['bias'] = _to_float32('bias', arrays['bias'], path)
  for key in ('scale', 'normalize'):
    if key in arrays:
      value = np.asarray(arrays[key])
      if value.size != 1 or value.dtype.kind not in 'fiub':
        raise CheckpointError(f'{path}: {key!r} must be one number, got {value.dtype} '
                              f'{value.shape}')
      out[key] = bool(value.item()) if key == 'normalize' else float(value.item())
  return out


def describe_family(path, config: ViTConfig) -> str:
  """One line naming the model family of a checkpoint, for `vit-analytics info`."""
  path, subtree = _split_subtree(path)
  if path.is_dir():
    return 'vit-jax-analytics orbax checkpoint (ViT)'
  with _open_npz(path) as zf:
    keys = [i.filename[:-len('.npy')] for i in zf.infolist()]
  _, tower = _select_params(keys, path, subtree)
  layout = detect_layout({k: None for k in keys})
  if tower:
    kind = ('SigLIP-style two-tower model (big_vision), image tower '
            f"'{tower}': embedding output" +
            (' (MAP-head pooling)' if config.classifier == 'map' else ''))
  elif layout == 'big_vision':
    kind = f'big_vision ViT ({config.pooling} pooling)'
  else:
    kind = 'google-research/vision_transformer ViT'
  scanned = any(k.split('/', 2)[-1].startswith('Transformer/encoderblock/') or
                '/Transformer/encoderblock/' in k for k in keys)
  return kind + (', scanned encoder' if scanned else '')


def save_checkpoint(path, params, config: ViTConfig) -> Path:
  """Writes a ViT's params + config as an orbax checkpoint directory, atomically."""
  return save_orbax(path, params, config.to_dict())


def save_orbax(path, params, config: dict) -> Path:
  """Writes a params pytree + a JSON config as an orbax directory, atomically.

  Orbax writes into a temporary directory first; the finished directory is renamed over
  `path`, so a reader never sees a half-written checkpoint. With several processes
  (jax.distributed), the calling process writes alone, waiting for no other.
  """
  import jax
  import orbax.checkpoint as ocp  # heavy import, only where needed

  path = Path(path).absolute()
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=f'.{path.name}.', dir=path.parent))
  try:
    staged = tmp / 'ckpt'
    params = {k: np.asarray(v) for k, v in flatten(params).items()}
    handler, alone = ocp.CompositeCheckpointHandler(), {}
    if jax.process_count() > 1:  # NumPy leaves: this process writes them, no barrier
      me = jax.process_index()
      alone['multiprocessing_options'] = ocp.options.MultiprocessingOptions(
          primary_host=me, active_processes={me})
      handler = ocp.CompositeCheckpointHandler(
          composite_options=ocp.CompositeOptions(**alone),
          params=ocp.StandardCheckpointHandler(**alone),
          config=ocp.JsonCheckpointHandler(**alone))
    with ocp.Checkpointer(handler, **alone) as ckptr:
      ckptr.save(staged, args=ocp.args.Composite(
          params=ocp.args.StandardSave(unflatten(params)),
          config=ocp.args.JsonSave(config)))
    atomic.replace_directory(staged, path)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return path


# How each ViTConfig field's annotation (a string: model.py postpones annotations) is checked.
_FIELD_TYPES = {'int': ((int,), 'an integer'), 'float': ((int, float), 'a number'),
                'bool': ((bool,), 'true or false'), 'str': ((str,), 'a string'),
                'Optional[int]': ((int, type(None)), 'an integer or null'),
                'Optional[str]': ((str, type(None)), 'a string or null'),
                'Any': ((int, list), 'an integer or [height, width]')}


def _config_from_dict(d, path) -> ViTConfig:
  """The ViTConfig of an orbax checkpoint's JSON `config`, naming the first bad field."""
  where = f'{path}/config'
  if not isinstance(d, Mapping):
    raise CheckpointError(f'{where}: expected a JSON object of ViTConfig fields, found '
                          f'{type(d).__name__}')
  fields = {f.name: f.type for f in dataclasses.fields(ViTConfig)}
  unknown = sorted(set(d) - set(fields))
  if unknown:
    raise CheckpointError(f'{where}: unknown field(s) {unknown}; expected some of '
                          f'{sorted(fields)}')
  for name, value in d.items():
    types, wanted = _FIELD_TYPES.get(fields[name], ((object,), ''))
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
      raise CheckpointError(f'{where}: field {name!r} is {value!r} ({type(value).__name__}); '
                            f'expected {wanted}')
  try:
    return ViTConfig(**d)
  except (ValueError, TypeError, ZeroDivisionError) as e:
    raise CheckpointError(f'{where}: {e}') from None


def load_orbax(path, config: Optional[ViTConfig] = None, image_size=None,
               gelu_approximate: Optional[bool] = None):
  import orbax.checkpoint as ocp

  path = Path(path).absolute()
  if not (path / 'params').is_dir() or not (path / 'config').exists():
    raise CheckpointError(f'{path} is not a checkpoint: expected an orbax directory with '
                          f"'params' and 'config' items (as written by save_checkpoint)")
  try:
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
      restored = ckptr.restore(path, args=ocp.args.Composite(
          params=ocp.args.StandardRestore(), config=ocp.args.JsonRestore()))
  except Exception as e:  # orbax raises many types; the user needs the path and the gist
    raise CheckpointError(f'{path}: cannot read orbax checkpoint ({type(e).__name__}: '
                          f'{str(e).splitlines()[0] if str(e) else ""})') from None
  saved = _config_from_dict(restored['config'], path)
  if gelu_approximate is not None:
    saved = saved.replace(gelu_approximate=gelu_approximate, activation=None)
  flat = {k: _to_float32(k, v, path) for k, v in flatten(restored['params']).items()}
  return params_from_flat(flat, path, config or saved, image_size)


def load_checkpoint(path, config: Optional[ViTConfig] = None, image_size=None,
                    gelu_approximate: Optional[bool] = None, pooling: Optional[str] = None):
  """(params, config) from an `.npz` (vit_jax or big_vision), an orbax directory, a Hugging
  Face `transformers` checkpoint (`.safetensors` file with config.json beside it, or its
  directory), a timm state dict (`.safetensors` without config.json) or an ONNX export
  (`.onnx`); see `load_with_source`.

  image_size: S or (height, width): resize the position embedding to this resolution
    (bilinear per axis, class token kept); also what tells a rectangular grid's shape.
  gelu_approximate: GELU variant; vit_jax and big_vision train with the tanh form (default).
  A path 'file.npz:img' loads the subtree 'img' of the file's params (one tower of a
  two-tower model such as SigLIP; found by itself when the params have an img/ subtree).
  """
  params, config, _ = load_with_source(path, config, image_size, gelu_approximate, pooling)
  return params, config


def source_format(path) -> str:
  """'npz', 'orbax', 'safetensors' or 'onnx', from the path alone."""
  path = Path(path)
  if path.is_dir():
    if (path / 'config.json').exists() or any(path.glob('*.safetensors')):
      return 'safetensors'
    if any(path.glob('*.onnx')) and not (path / 'params').exists():
      return 'onnx'
    return 'orbax'
  suffix = path.suffix.lower()
  return {'.safetensors': 'safetensors', '.onnx': 'onnx'}.get(suffix, 'npz')


def load_with_source(path, config: Optional[ViTConfig] = None, image_size=None,
                     gelu_approximate: Optional[bool] = None, pooling: Optional[str] = None):
  """(params, config, source): `source` says which family and format the weights came
  from, how the position embedding is resampled, and what of the file was not used."""
  path, subtree = _split_subtree(path)
  if not path.exists():
    raise CheckpointError(f'{path}: no such checkpoint file or directory')
  fmt = source_format(path)
  if fmt in ('safetensors', 'onnx'):
    if fmt == 'safetensors':
      from vit_jax_analytics.families import hf
      mapped = hf.load(path, image_size)
    else:
      from vit_jax_analytics.families import onnx_graph
      mapped = onnx_graph.load(path if path.is_file() else sorted(path.glob('*.onnx'))[0],
                               image_size)
    mapped_config = mapped.config
    if gelu_approximate is not None:
      mapped_config = mapped_config.replace(gelu_approximate=gelu_approximate, activation=None)
    flat = {k: _to_float32(k, v, path) for k, v in mapped.flat.items()}
    params, cfg = params_from_flat(flat, path, config or mapped_config)
    return params, cfg, dict(mapped.source)
  if path.is_dir():
    params, cfg = load_orbax(path, config, image_size, gelu_approximate)
    return params, cfg, {'family': 'ViT (this project)', 'format': 'orbax',
                         'posemb_resize': 'bilinear'}
  params, cfg = load_npz(path, config, image_size, gelu_approximate, subtree, pooling)
  with _open_npz(path) as zf:
    layout = detect_layout({k: None for k in _npz_member_headers(zf, path)})
  return params, cfg, {'family': f'ViT ({layout})', 'format': 'npz',
                       'posemb_resize': 'bilinear'}


def _split_subtree(path):
  """'file.npz:img' -> (file.npz, 'img'): big_vision's syntax for one tower of a model.
  Split only when the part before the last ':' is an existing file."""
  whole = Path(path)
  head, sep, tail = str(path).rpartition(':')
  if not whole.exists() and sep and tail and Path(head).is_file():
    return Path(head), tail
  return whole, None

