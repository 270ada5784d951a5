"""The ViTConfig of a flat vit_jax-layout parameter dict (inferred from the shapes), the
check of parameters against a config, and validated params with the position embedding
resized."""

from __future__ import annotations

import functools
from typing import Optional

import numpy as np

from vit_jax_analytics import model as model_lib
from vit_jax_analytics.checkpoints.layout import (BLOCK_KEY, POSEMB_KEY, flatten, key_shape,
                                                  load_dtype, unflatten)
from vit_jax_analytics.checkpoints.posemb import hw, resize_position_embedding
from vit_jax_analytics.errors import CheckpointError
from vit_jax_analytics.model import ViTConfig


def posemb_grid(tokens: int, patch: int, path, image_size=None) -> tuple:
  """(h, w) of a position embedding over `tokens` patches: the grid of `image_size` when it
  has that many patches (rectangular grids cannot be told from the count alone), else the
  square grid."""
  if image_size and patch:
    h, w = (s // patch for s in hw(image_size))
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
  patch, patch_w, channels, width = key_shape(flat, 'embedding/kernel', path, 4)
  if patch != patch_w or channels != 3:
    raise CheckpointError(f"{path}: 'embedding/kernel' has shape {(patch, patch_w, channels, width)}; "
                          f'expected square patches over 3 channels')
  layers = sorted({int(m.group(1)) for k in flat if (m := BLOCK_KEY.match(k))})
  if not layers or layers != list(range(len(layers))):
    raise CheckpointError(f'{path}: expected blocks Transformer/encoderblock_0..N-1, found {layers}')
  attn = 'Transformer/encoderblock_0/MultiHeadDotProductAttention_1'
  _, heads, _ = key_shape(flat, f'{attn}/query/kernel', path, 3)
  mlp_dim = key_shape(flat, 'Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel', path, 2)[1]
  classifier = ('token' if 'cls' in flat else 'map' if 'MAPHead_0/probe' in flat else 'gap')
  if overrides.get('classifier') == 'none' and classifier == 'gap':
    classifier = 'none'  # no weights tell 'gap' from 'none'
  tokens = key_shape(flat, POSEMB_KEY, path, 3)[1] - (classifier == 'token')
  gh, gw = posemb_grid(tokens, patch, path, overrides.pop('image_size', None))
  fields = dict(
      image_size=(gh * patch, gw * patch), patch_size=patch, hidden_size=width,
      num_layers=len(layers), num_heads=heads, mlp_dim=mlp_dim,
      num_classes=key_shape(flat, 'head/kernel', path, 2)[1] if 'head/kernel' in flat else 0,
      classifier=classifier,
      num_registers=key_shape(flat, 'registers', path, 3)[1] if 'registers' in flat else 0,
      pre_norm='Transformer/pre_norm/scale' in flat,
      representation_size=(key_shape(flat, 'pre_logits/kernel', path, 2)[1]
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


def params_from_flat(flat: dict, path='checkpoint', config: Optional[ViTConfig] = None,
                     image_size=None, gelu_approximate: Optional[bool] = None,
                     **overrides):
  """Validated (params, config) from a flat vit_jax-layout dict; resizes the posemb.
  image_size: S or (height, width). overrides: ViTConfig fields (e.g. output, classifier)."""
  flat = {k: np.asarray(v, load_dtype()) for k, v in flat.items()}
  if image_size is not None:
    image_size = hw(image_size)
    image_size = image_size[0] if image_size[0] == image_size[1] else image_size
  if config is not None and config.naflex:  # the posemb stays at its grid (resized per input)
    check_params(flat, config, path)
    return unflatten(flat), config
  if config is None:
    config = infer_config(flat, path, gelu_approximate=gelu_approximate,
                          image_size=image_size, **overrides)
  else:
    if POSEMB_KEY in flat:  # check at the checkpoint's own resolution, resize afterwards
      tokens = key_shape(flat, POSEMB_KEY, path, 3)[1] - config.has_cls_token
      gh, gw = posemb_grid(tokens, config.patch_size, path, image_size or config.image_size)
      image_size = image_size or config.image_size
      config = config.replace(image_size=(gh * config.patch_size, gw * config.patch_size))
  check_params(flat, config, path)
  if image_size and hw(image_size) != config.image_hw:
    if any(s % config.patch_size for s in hw(image_size)):
      raise CheckpointError(f'image size {image_size} is not a multiple of the patch size '
                            f'{config.patch_size} of {path}')
    flat[POSEMB_KEY] = resize_position_embedding(
        flat[POSEMB_KEY], [s // config.patch_size for s in hw(image_size)],
        config.has_cls_token, config.grid_shape)
    config = config.replace(image_size=image_size)
  return unflatten(flat), config
