"""Reading `.npz` files safely: every member's `.npy` header checked before any data is read,
a memory budget, float weights only (bfloat16 bits widened exactly); the class-matrix file."""

from __future__ import annotations

import math
import os
import zipfile
import zlib
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np

from vit_jax_analytics.checkpoints.infer import params_from_flat
from vit_jax_analytics.checkpoints.layout import (big_vision_to_vit_jax, detect_layout,
                                                  load_dtype)
from vit_jax_analytics.errors import CheckpointError
from vit_jax_analytics.model import ViTConfig


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


def open_npz(path) -> zipfile.ZipFile:
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


def member_headers(zf: zipfile.ZipFile, path) -> dict:
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
  limit, source = MAX_NPZ_BYTES, 'checkpoints.npz.MAX_NPZ_BYTES'
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
  with open_npz(path) as zf:
    members = member_headers(zf, path)
    _check_budget(path, members.values())
    return {k: _read_member(zf, m, path) for k, m in members.items()}


def _check_float_dtype(key: str, dtype: np.dtype, path) -> None:
  # np.load returns big_vision's bfloat16 (ml_dtypes) arrays as raw 2-byte voids.
  raw_bfloat16 = dtype.kind == 'V' and dtype.itemsize == 2 and dtype.names is None
  if dtype.kind == 'f' or dtype.name == 'bfloat16' or raw_bfloat16:
    return
  raise CheckpointError(f'{path}: key {key!r} has dtype {dtype}; expected real floating-point '
                        f'weights (float32, float16, bfloat16 or float64)')


def to_float32(key: str, array, path) -> np.ndarray:
  """`array` as float32 (bfloat16 bits widened exactly), or float64 in JAX's 64-bit mode
  (layout.load_dtype); refuses NaN, Inf (as float32) and non-floats."""
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
  wide = load_dtype()
  if wide != np.float32:  # the stored values, not their float32 rounding
    a = np.asarray(array if np.asarray(array).dtype.kind == 'f' else a, wide)
  return a


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
  out = {'classes': to_float32('classes', arrays['classes'], path), 'source': str(path)}
  if 'bias' in arrays:
    out['bias'] = to_float32('bias', arrays['bias'], path)
  for key in ('scale', 'normalize'):
    if key in arrays:
      value = np.asarray(arrays[key])
      if value.size != 1 or value.dtype.kind not in 'fiub':
        raise CheckpointError(f'{path}: {key!r} must be one number, got {value.dtype} '
                              f'{value.shape}')
      out[key] = bool(value.item()) if key == 'normalize' else float(value.item())
  return out


def select_params(keys, path, subtree: Optional[str] = None) -> tuple:
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
  with open_npz(path) as zf:
    members = member_headers(zf, path)
    if not members:
      raise CheckpointError(f'{path} is not a checkpoint: the archive holds no arrays')
    keys, tower = select_params(list(members), path, subtree)
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
    flat = {new: to_float32(k, _read_member(zf, members[k], path), path)
            for k, new in keys.items()}
  return _params_from_file_layout(flat, path, config, image_size, gelu_approximate,
                                  **overrides)
