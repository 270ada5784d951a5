"""Position embeddings: big_vision's fixed sin-cos embedding, and every resampler of a learned
one, the way each source model does it (each written once).

* 'bilinear' — vit_jax / big_vision (corners to corners, separable, as scipy.ndimage.zoom
  with order=1 in vit_jax's checkpoint.py; `resize_position_embedding`).
* 'bicubic' — `torch.nn.functional.interpolate(mode='bicubic', align_corners=False)`: the
  Keys cubic kernel with a = -0.75, half-pixel centres, taps beyond the border clamped to the
  edge. Used by Hugging Face ViT, DeiT, CLIP and Dinov2 (`interpolate_pos_encoding`, by
  target size), and identical to ONNX `Resize` (mode=cubic, cubic_coeff_a=-0.75,
  coordinate_transformation_mode=half_pixel, exclude_outside=0) that their exports contain.
* 'bicubic_antialias' — the same call with `antialias=True` (PIL's filter: a = -0.5, support
  widened by the downscaling factor, weights renormalised over the taps inside the image).
  Used by Hugging Face Dinov2WithRegisters and timm (`resample_abs_pos_embed`).

The original facebookresearch/dinov2 code interpolates by `scale_factor` with a +0.1 offset;
the Hugging Face ports (and their exports) interpolate to the exact size, which is what is
implemented here.
"""

from __future__ import annotations

import numpy as np
from vit_jax_analytics.errors import OptionError

from vit_jax_analytics.errors import CheckpointError

METHODS = ('bilinear', 'bicubic', 'bicubic_antialias')
# Patches of an image at most: a grid beyond this is refused before its position embedding
# is made (at most 1.3 GB for a width of 1280); the memory a forward needs is checked
# against the device once the model is loaded (cost.check_forward_memory).
MAX_GRID_TOKENS = 2 ** 18


def check_patch_grid(new_hw, patch: int = None) -> None:
  """OptionError (field image_size: the CLI names --image-size) for a patch grid of more than MAX_GRID_TOKENS."""
  nh, nw = (int(v) for v in new_hw)
  if nh * nw > MAX_GRID_TOKENS:
    size = f'{nh * patch}x{nw * patch} px' if patch else 'the size asked for'
    raise OptionError('image_size', f'{size} gives a {nh} x {nw} grid of patches ({nh * nw} '
                                    f'tokens); at most {MAX_GRID_TOKENS} are supported: '
                                    f'choose a smaller size')


def _cubic(x, a):
  x = np.abs(x)
  return np.where(x <= 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                  np.where(x < 2, ((a * x - 5 * a) * x + 8 * a) * x - 4 * a, 0.))


def cubic_matrix(old: int, new: int, a: float = -0.75, antialias: bool = False) -> np.ndarray:
  """[new, old] float64 weights of one axis of a bicubic resize."""
  scale = old / new
  w = np.zeros((new, old))
  if not antialias:
    for i in range(new):
      src = (i + 0.5) * scale - 0.5
      x0 = int(np.floor(src))
      t = src - x0
      for k in range(-1, 3):
        w[i, min(max(x0 + k, 0), old - 1)] += _cubic(k - t, a)
    return w
  support = 2.0 * max(scale, 1.0)
  inv = 1.0 / max(scale, 1.0)
  for i in range(new):
    centre = scale * (i + 0.5)
    lo = max(int(centre - support + 0.5), 0)
    hi = min(int(centre + support + 0.5), old)
    j = np.arange(lo, hi)
    taps = _cubic((j - centre + 0.5) * inv, a)
    total = taps.sum()
    w[i, lo:hi] = taps / total if total else taps
  return w


def resize_grid(grid: np.ndarray, new_hw, method: str = 'bicubic', a: float = None) -> np.ndarray:
  """grid [h, w, D] -> [new_h, new_w, D] (float32), resampled as `method` (see METHODS)."""
  if method not in METHODS:
    raise ValueError(f'position-embedding resize: expected one of {METHODS}, got {method!r}')
  h, w, _ = grid.shape
  check_patch_grid(new_hw)
  nh, nw = (int(v) for v in new_hw)
  dtype = _dtype(grid)
  if (h, w) == (nh, nw):
    return np.asarray(grid, dtype)
  if method == 'bilinear':  # corners to corners, as vit_jax / big_vision
    return _bilinear(np.asarray(grid, dtype), nh, nw)
  antialias = method == 'bicubic_antialias'
  coeff = (-0.5 if antialias else -0.75) if a is None else a
  rows = cubic_matrix(h, nh, coeff, antialias)
  cols = cubic_matrix(w, nw, coeff, antialias)
  out = np.einsum('ih,jw,hwd->ijd', rows, cols, np.asarray(grid, np.float64))
  return out.astype(dtype)


def _dtype(a) -> np.dtype:
  """What a resampled embedding is returned in: float64 for float64 input (a float64 load,
  layout.load_dtype), else float32."""
  return np.dtype(np.float64 if np.asarray(a).dtype == np.float64 else np.float32)


def resize_posemb(posemb: np.ndarray, prefix: int, old_hw, new_hw, method: str) -> np.ndarray:
  """[1, prefix + h*w, D] -> [1, prefix + nh*nw, D]: the first `prefix` entries (class /
  distillation token) kept, the patch grid resampled (float64 stays float64)."""
  posemb = np.asarray(posemb, _dtype(posemb))
  d = posemb.shape[-1]
  grid = posemb[0, prefix:].reshape(*old_hw, d)
  grid = resize_grid(grid, new_hw, method)
  return np.concatenate([posemb[:, :prefix], grid.reshape(1, -1, d)], axis=1)


def hw(size) -> tuple:
  """S or (h, w) -> (h, w)."""
  return tuple(int(v) for v in size) if isinstance(size, (tuple, list)) else (int(size),) * 2


def posemb_sincos_2d(grid, width: int, temperature: float = 10_000.,
                     dtype=np.float32) -> np.ndarray:
  """big_vision's fixed 2-D sin-cos position embedding, [1, h*w, width]; grid n or (h, w)."""
  if width % 4:
    raise CheckpointError(f'sincos2d position embedding needs a width divisible by 4, got {width}')
  h, w = hw(grid)
  check_patch_grid((h, w))  # before it is made
  y, x = np.mgrid[:h, :w]
  omega = 1. / temperature ** (np.arange(width // 4) / (width // 4 - 1))
  y = np.einsum('m,d->md', y.ravel(), omega)
  x = np.einsum('m,d->md', x.ravel(), omega)
  pe = np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)
  return pe[None].astype(dtype)


def _linear_weights(old: int, new: int):
  coords = np.arange(new) * ((old - 1) / (new - 1)) if new > 1 else np.zeros(1)
  lo = np.clip(np.floor(coords).astype(int), 0, old - 1)
  return lo, np.minimum(lo + 1, old - 1), coords - lo


def _bilinear(grid: np.ndarray, nh: int, nw: int) -> np.ndarray:
  """grid [h, w, D] float32 -> [nh, nw, D], corner-aligned linear per axis (separable:
  rows, then columns)."""
  lo, hi, frac = _linear_weights(grid.shape[0], nh)
  frac = frac.astype(grid.dtype)  # float32 weights for float32 grids, as before
  grid = grid[lo] * (1 - frac)[:, None, None] + grid[hi] * frac[:, None, None]
  lo, hi, frac = _linear_weights(grid.shape[1], nw)
  frac = frac.astype(grid.dtype)
  return grid[:, lo] * (1 - frac)[None, :, None] + grid[:, hi] * frac[None, :, None]


def resize_position_embedding(posemb: np.ndarray, new_grid, has_cls: bool,
                              old_grid=None) -> np.ndarray:
  """Bilinear resize of the patch-grid part of [1, T, D], per axis; the class token's entry
  is kept. new_grid / old_grid: n or (h, w); old_grid defaults to the square grid.

  Corners map to corners, as scipy.ndimage.zoom(order=1) does in vit_jax's checkpoint.py.
  float64 in, float64 out (a float64 load); float32 otherwise.
  """
  posemb = np.asarray(posemb, _dtype(posemb))
  cls, grid_pe = (posemb[:, :1], posemb[0, 1:]) if has_cls else (posemb[:, :0], posemb[0])
  if old_grid is None:
    old_grid = int(round(np.sqrt(grid_pe.shape[0])))
  (oh, ow), (nh, nw) = hw(old_grid), hw(new_grid)
  check_patch_grid((nh, nw))  # before it is made
  grid_pe = grid_pe.reshape(oh, ow, -1)
  if (oh, ow) != (nh, nw):
    grid_pe = _bilinear(grid_pe, nh, nw)
  return np.concatenate([cls, grid_pe.reshape(1, nh * nw, -1)], axis=1)
