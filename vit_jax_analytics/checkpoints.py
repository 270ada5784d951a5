"""Checkpoint I/O: vit_jax and big_vision `.npz` files, and the project's own orbax format.

Every loader returns `(params, config)`: `params` a nested dict named as in `model.py`
(the vit_jax layout), `config` a `ViTConfig` inferred from the array shapes unless given.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Mapping, Optional

import numpy as np

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


def read_npz(path) -> dict:
  """All arrays of an `.npz` file, by key."""
  path = Path(path)
  if not path.exists():
    raise CheckpointError(f'{path}: no such file')
  try:
    loaded = np.load(path, allow_pickle=False)
  except (ValueError, OSError, EOFError) as e:
    raise CheckpointError(f'{path} is not a checkpoint: expected an .npz archive of named '
                          f'arrays ({type(e).__name__}: {e})') from None
  if not isinstance(loaded, np.lib.npyio.NpzFile):
    raise CheckpointError(f'{path} is not a checkpoint: expected an .npz archive of named '
                          f'arrays, found a single .npy array')
  try:
    with loaded as f:
      return {k: np.asarray(f[k]) for k in f.files}
  except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
    raise CheckpointError(f'{path} is not a checkpoint: expected an .npz archive of named '
                          f'arrays ({type(e).__name__}: {e})') from None


def posemb_sincos_2d(grid: int, width: int, temperature: float = 10_000.) -> np.ndarray:
  """big_vision's fixed 2-D sin-cos position embedding, [1, grid*grid, width]."""
  if width % 4:
    raise CheckpointError(f'sincos2d position embedding needs a width divisible by 4, got {width}')
  y, x = np.mgrid[:grid, :grid]
  omega = 1. / temperature ** (np.arange(width // 4) / (width // 4 - 1))
  y = np.einsum('m,d->md', y.ravel(), omega)
  x = np.einsum('m,d->md', x.ravel(), omega)
  pe = np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)
  return pe[None].astype(np.float32)


def big_vision_to_vit_jax(flat: dict, path, image_size: Optional[int] = None) -> dict:
  """Renames a big_vision ViT checkpoint into the vit_jax layout, with the same function.

  big_vision adds the position embedding to the patches before prepending the class token;
  a zero embedding for the class token makes vit_jax's "prepend, then add" identical.
  """
  if any(k.startswith('params/') for k in flat):
    flat = {k[len('params/'):]: v for k, v in flat.items() if k.startswith('params/')}
  if any(k.startswith('MAPHead_0/') for k in flat):
    raise CheckpointError(f'{path}: MAP-head pooling (MAPHead_0) is not supported; '
                          f"expected a 'tok' or 'gap' pooled big_vision ViT")
  out = {}
  for key, v in flat.items():
    if key.startswith('Transformer/encoderblock/'):  # scan layout: a leading [L] axis
      rest = key[len('Transformer/encoderblock/'):]
      first, _, tail = rest.partition('/')
      name = _BIG_VISION_BLOCK_NAMES.get(first, first)
      for i in range(v.shape[0]):
        out[f'Transformer/encoderblock_{i}/{name}/{tail}'] = v[i]
      continue
    m = _BLOCK.match(key)
    if m:
      first, _, tail = key[m.end():].partition('/')
      key = f'{m.group(0)}{_BIG_VISION_BLOCK_NAMES.get(first, first)}/{tail}'
    out[key] = v

  has_cls = 'cls' in out
  if 'pos_embedding' in out:
    pe = out.pop('pos_embedding')
  elif POSEMB_KEY in out:
    pe = out.pop(POSEMB_KEY)
  else:  # 'sincos2d': not a parameter; materialise it for the grid asked for.
    patch, width = out['embedding/kernel'].shape[0], out['embedding/kernel'].shape[-1]
    pe = posemb_sincos_2d((image_size or 224) // patch, width)
  grid2 = pe.shape[1]
  if has_cls and int(round(np.sqrt(grid2))) ** 2 == grid2:
    pe = np.concatenate([np.zeros_like(pe[:, :1]), pe], axis=1)
  out[POSEMB_KEY] = pe
  return out


def detect_layout(flat: dict) -> str:
  """'big_vision' or 'vit_jax', from the key names."""
  big_vision_marks = ('params/', 'pos_embedding', 'Transformer/encoderblock/')
  if any(k.startswith(big_vision_marks) for k in flat) or any(
      '/MultiHeadDotProductAttention_0/' in k for k in flat):
    return 'big_vision'
  return 'vit_jax'


def _shape(flat, key, path):
  if key not in flat:
    raise CheckpointError(f'{path}: missing key {key!r}, needed to infer the model config')
  return flat[key].shape


def infer_config(flat: dict, path='checkpoint', **overrides) -> ViTConfig:
  """The ViTConfig whose parameter shapes are those of `flat` (vit_jax layout)."""
  patch, patch_w, channels, width = _shape(flat, 'embedding/kernel', path)
  if patch != patch_w or channels != 3:
    raise CheckpointError(f"{path}: 'embedding/kernel' has shape {(patch, patch_w, channels, width)}; "
                          f'expected square patches over 3 channels')
  layers = sorted({int(m.group(1)) for k in flat if (m := _BLOCK.match(k))})
  if not layers or layers != list(range(len(layers))):
    raise CheckpointError(f'{path}: expected blocks Transformer/encoderblock_0..N-1, found {layers}')
  attn = 'Transformer/encoderblock_0/MultiHeadDotProductAttention_1'
  _, heads, _ = _shape(flat, f'{attn}/query/kernel', path)
  mlp_dim = _shape(flat, 'Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel', path)[1]
  classifier = 'token' if 'cls' in flat else 'gap'
  tokens = _shape(flat, POSEMB_KEY, path)[1] - (classifier == 'token')
  grid = int(round(np.sqrt(tokens)))
  if grid * grid != tokens:
    raise CheckpointError(f'{path}: {POSEMB_KEY} has {tokens} patch positions, not a square grid')
  fields = dict(
      image_size=grid * patch, patch_size=patch, hidden_size=width, num_layers=len(layers),
      num_heads=heads, mlp_dim=mlp_dim,
      num_classes=flat['head/kernel'].shape[1] if 'head/kernel' in flat else 0,
      classifier=classifier,
      representation_size=(flat['pre_logits/kernel'].shape[1]
                           if 'pre_logits/kernel' in flat else None))
  fields.update({k: v for k, v in overrides.items() if v is not None})
  try:
    return ViTConfig(**fields)
  except ValueError as e:
    raise CheckpointError(f'{path}: {e}') from None


def check_params(flat: dict, config: ViTConfig, path='checkpoint') -> None:
  """Raises CheckpointError naming the first missing, extra or mismatched key."""
  expected = flatten(model_lib.param_shapes(config))
  missing = [k for k in expected if k not in flat]
  extra = [k for k in flat if k not in expected]
  mismatched = [k for k in expected if k in flat and tuple(flat[k].shape) != expected[k].shape]
  problems = ([f'missing key {k!r} (the model expects shape {expected[k].shape})'
               for k in missing] +
              [f'unexpected key {k!r} with shape {tuple(flat[k].shape)}' for k in extra] +
              [f'key {k!r} has shape {tuple(flat[k].shape)} but the model expects '
               f'{expected[k].shape}' for k in mismatched])
  if problems:
    more = f' (and {len(problems) - 1} more problem(s))' if len(problems) > 1 else ''
    raise CheckpointError(f'{path} does not match the model config: {problems[0]}{more}')


def resize_position_embedding(posemb: np.ndarray, new_grid: int, has_cls: bool) -> np.ndarray:
  """Bilinear resize of the patch-grid part of [1, T, D]; the class token's entry is kept.

  Corners map to corners, as scipy.ndimage.zoom(order=1) does in vit_jax's checkpoint.py.
  """
  posemb = np.asarray(posemb, np.float32)
  cls, grid_pe = (posemb[:, :1], posemb[0, 1:]) if has_cls else (posemb[:, :0], posemb[0])
  old = int(round(np.sqrt(grid_pe.shape[0])))
  grid_pe = grid_pe.reshape(old, old, -1)
  if old != new_grid:
    coords = (np.arange(new_grid) * ((old - 1) / (new_grid - 1)) if new_grid > 1
              else np.zeros(1))
    lo = np.clip(np.floor(coords).astype(int), 0, old - 1)
    hi = np.minimum(lo + 1, old - 1)
    frac = (coords - lo).astype(np.float32)
    # Separable: rows, then columns.
    rows = grid_pe[lo] * (1 - frac)[:, None, None] + grid_pe[hi] * frac[:, None, None]
    grid_pe = rows[:, lo] * (1 - frac)[None, :, None] + rows[:, hi] * frac[None, :, None]
  return np.concatenate([cls, grid_pe.reshape(1, new_grid * new_grid, -1)], axis=1)


def params_from_flat(flat: dict, path='checkpoint', config: Optional[ViTConfig] = None,
                     image_size: Optional[int] = None,
                     gelu_approximate: Optional[bool] = None):
  """Validated (params, config) from a flat vit_jax-layout dict; resizes the posemb."""
  flat = {k: np.asarray(v, np.float32) for k, v in flat.items()}
  if config is None:
    config = infer_config(flat, path, gelu_approximate=gelu_approximate)
  else:
    pe = flat.get(POSEMB_KEY)
    if pe is not None:  # check at the checkpoint's own resolution, resize afterwards
      grid = int(round(np.sqrt(pe.shape[1] - config.has_cls_token)))
      image_size = image_size or config.image_size
      config = config.replace(image_size=grid * config.patch_size)
  check_params(flat, config, path)
  if image_size and image_size != config.image_size:
    if image_size % config.patch_size:
      raise CheckpointError(f'image size {image_size} is not a multiple of the patch size '
                            f'{config.patch_size} of {path}')
    flat[POSEMB_KEY] = resize_position_embedding(
        flat[POSEMB_KEY], image_size // config.patch_size, config.has_cls_token)
    config = config.replace(image_size=image_size)
  return unflatten(flat), config


def load_npz(path, config: Optional[ViTConfig] = None, image_size: Optional[int] = None,
             gelu_approximate: Optional[bool] = None):
  """Loads a google-research/vision_transformer or big_vision ViT `.npz`."""
  flat = read_npz(path)
  if not flat:
    raise CheckpointError(f'{path} is not a checkpoint: the archive holds no arrays')
  if detect_layout(flat) == 'big_vision':
    flat = big_vision_to_vit_jax(flat, path, image_size or (config and config.image_size))
  return params_from_flat(flat, path, config, image_size, gelu_approximate)


def save_checkpoint(path, params, config: ViTConfig) -> Path:
  """Writes a ViT's params + config as an orbax checkpoint directory, atomically."""
  return save_orbax(path, params, config.to_dict())


def save_orbax(path, params, config: dict) -> Path:
  """Writes a params pytree + a JSON config as an orbax directory, atomically.

  Orbax writes into a temporary directory first; the finished directory is renamed over
  `path`, so a reader never sees a half-written checkpoint.
  """
  import orbax.checkpoint as ocp  # heavy import, only where needed

  path = Path(path).absolute()
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=f'.{path.name}.', dir=path.parent))
  try:
    staged = tmp / 'ckpt'
    params = {k: np.asarray(v) for k, v in flatten(params).items()}
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
      ckptr.save(staged, args=ocp.args.Composite(
          params=ocp.args.StandardSave(unflatten(params)),
          config=ocp.args.JsonSave(config)))
    old = None
    if path.exists():
      old = path.with_name(f'.{path.name}.old')
      shutil.rmtree(old, ignore_errors=True)
      os.replace(path, old)
    os.replace(staged, path)
    if old is not None:
      shutil.rmtree(old, ignore_errors=True)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return path


def load_orbax(path, config: Optional[ViTConfig] = None, image_size: Optional[int] = None,
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
  saved = ViTConfig.from_dict(dict(restored['config']))
  if gelu_approximate is not None:
    saved = saved.replace(gelu_approximate=gelu_approximate)
  return params_from_flat(flatten(restored['params']), path, config or saved, image_size)


def load_checkpoint(path, config: Optional[ViTConfig] = None, image_size: Optional[int] = None,
                    gelu_approximate: Optional[bool] = None):
  """(params, config) from an `.npz` (vit_jax or big_vision) or an orbax directory.

  image_size: resize the position embedding to this resolution (bilinear, class token kept).
  gelu_approximate: GELU variant; vit_jax and big_vision train with the tanh form (default).
  """
  path = Path(path)
  if not path.exists():
    raise CheckpointError(f'{path}: no such checkpoint file or directory')
  if path.is_dir():
    return load_orbax(path, config, image_size, gelu_approximate)
  return load_npz(path, config, image_size, gelu_approximate)

