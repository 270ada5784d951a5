"""One image file -> the model's input: sized before it is decoded (a decompression bomb is
refused, a huge image reduced while decoding), converted to float, resized bilinearly and
normalised."""

from __future__ import annotations

import threading
import warnings
from typing import Optional

import numpy as np
from PIL import Image

from vit_jax_analytics.errors import DataError

VIT_JAX_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # vit_jax scales to [-1, 1]


# Images over this many pixels are not decoded (load_image raises DataError, so BatchStream
# skips them with a warning): decoded, such an image takes up to 1 GiB (Pillow keeps 4
# bytes a pixel for RGB too). Pillow's own limit, 2 * Image.MAX_IMAGE_PIXELS (~179M pixels
# by default), still applies where it is lower; this one holds where an application has
# set that to None.
MAX_IMAGE_PIXELS = 2 ** 28
# Big images are shrunk by an integer factor to no less than this many times the model's
# image size before the bilinear resize (see _decode). 3 rather than 2: near the output's
# Nyquist frequency a 2x gap differs from resizing the full image by up to 0.13 (in [-1, 1]
# units), a 3x gap by up to 0.04 (Pillow's docs call >= 3 indistinguishable from fair
# resampling); the reduced image stays under 1.5 * REDUCING_GAP * S a side.
REDUCING_GAP = 3
# Bigger images are reduced along their long side even when the other is short: whole, in
# float32, they would take over 200 MB.
_REDUCE_ANYWAY_PIXELS = 2 ** 24
# Rows of a big image are converted to float this many pixels at a time (~12 MiB).
_STRIP_PIXELS = 2 ** 20
# Image.open's DecompressionBombWarning is silenced with catch_warnings, which changes
# process-wide state: one thread at a time (opening only reads the header).
_OPEN_LOCK = threading.Lock()


def _float_scale(img: Image.Image) -> float:
  """What a float ('F' mode, e.g. TIFF) image is multiplied by to lie in [0, 1], from its
  own range: values up to 2 are in [0, 1] units (a small overshoot, as resampling leaves,
  is clipped as before), up to 255 * 1.05 are 8-bit levels (/ 255). ValueError (the file is
  skipped with a warning naming it) for any other range, or one that reaches below -0.5
  in those units, which clipping would silently turn white or black."""
  lo, hi = img.getextrema()
  scale = 1. if hi <= 2 else 1. / 255. if hi <= 255 * 1.05 else None
  if not (np.isfinite(lo) and np.isfinite(hi)) or scale is None or lo * scale < -0.5:
    raise ValueError(f'a float (mode F) image with values in [{lo:.4g}, {hi:.4g}]; expected '
                     f'them in [0, 1] or [0, 255]')
  return scale


def _to_unit_float(img: Image.Image, scale: Optional[float] = None) -> np.ndarray:
  """Any Pillow mode -> [h, w, 3] float32 in [0, 1]. Alpha is dropped, as TF's
  decode_image(channels=3) does in the vit_jax input pipeline. scale: of a float image,
  default from its own range (_float_scale; a strip of an image takes the whole's)."""
  mode = img.mode
  if mode.startswith('I;16') or mode == 'I':  # 16-bit (PNG) grayscale
    a = np.asarray(img, np.float32) / 65535.
  elif mode == 'F':
    a = np.asarray(img, np.float32) * np.float32(_float_scale(img) if scale is None else scale)
  elif mode in ('1', 'L', 'LA', 'La'):
    a = np.asarray(img.convert('L'), np.float32) / 255.
  else:  # RGB, RGBA, P, PA, CMYK, YCbCr, LAB, HSV, ...
    a = np.asarray(img.convert('RGB'), np.float32) / 255.
  if a.ndim == 2:
    a = np.repeat(a[..., None], 3, axis=-1)
  return np.clip(a, 0., 1.)


def _channels(a: np.ndarray, op) -> np.ndarray:
  """`op` applied to each channel of [h, w, 3] float32 `a` as a Pillow 'F' image."""
  return np.stack([np.asarray(op(Image.fromarray(np.ascontiguousarray(a[..., c]), 'F')))
                   for c in range(3)], axis=-1)


def image_hw(image_size) -> tuple:
  """S or (height, width) -> (height, width)."""
  return (tuple(int(v) for v in image_size) if isinstance(image_size, (tuple, list))
          else (int(image_size),) * 2)


def _reduce_factors(size, image_size) -> tuple:
  """Integer (x, y) factors that shrink an image of `size` (w, h) to no less than
  REDUCING_GAP x image_size, so the bilinear resize after them still antialiases and
  barely differs from one of the full image. (1, 1), the exact full-size path, unless both
  factors are at least 2, or the image is a long strip over _REDUCE_ANYWAY_PIXELS."""
  th, tw = image_hw(image_size)
  fx, fy = size[0] // (REDUCING_GAP * tw), size[1] // (REDUCING_GAP * th)
  if min(fx, fy) >= 2 or (size[0] * size[1] > _REDUCE_ANYWAY_PIXELS and max(fx, fy) >= 2):
    return max(1, fx), max(1, fy)
  return 1, 1


def _reduced_unit_float(img: Image.Image, factors) -> np.ndarray:
  """_to_unit_float(img) shrunk by box averaging over `factors` (x, y) pixels, converted
  in strips of rows so that the full-size float image never exists."""
  (w, h), (fx, fy) = img.size, factors
  rows = fy * max(1, _STRIP_PIXELS // (w * fy))  # a multiple of fy: strips reduce exactly
  scale = _float_scale(img) if img.mode == 'F' else None  # the whole image's range
  strips = (_to_unit_float(img.crop((0, y, w, min(h, y + rows))), scale)
            for y in range(0, h, rows))
  return np.concatenate([_channels(a, lambda c: c.reduce((fx, fy))) for a in strips])


def _decode(img: Image.Image, image_size) -> tuple:
  """An opened image -> (_to_unit_float's [h, w, 3], the picture's box in those pixels
  for the resize, None for all of them). A big image (see _reduce_factors) is decoded at a
  reduced scale (JPEG) and shrunk by an integer box average first; the box then keeps the
  geometry exact where a side does not divide by the factor (as Image.resize's
  reducing_gap does)."""
  if _reduce_factors(img.size, image_size) == (1, 1):
    img.load()
    return _to_unit_float(img), None
  th, tw = image_hw(image_size)
  drafted = img.draft(None, (REDUCING_GAP * tw, REDUCING_GAP * th))  # JPEG: 1/2 to 1/8 scale
  w, h = drafted[1][2:] if drafted else img.size
  img.load()
  fx, fy = _reduce_factors(img.size, image_size)
  return _reduced_unit_float(img, (fx, fy)), (0, 0, w / fx, h / fy)


def _open(path) -> Image.Image:
  """Image.open, with Pillow's size limits reported as DataError and its warning (an
  image over Image.MAX_IMAGE_PIXELS) silenced: load_image decodes big images in bounded
  memory, up to MAX_IMAGE_PIXELS."""
  try:
    with _OPEN_LOCK, warnings.catch_warnings():
      warnings.simplefilter('ignore', Image.DecompressionBombWarning)
      img = Image.open(path)
  except Image.DecompressionBombError as e:
    raise DataError(f'{path}: image too big to decode ({e})') from None
  w, h = img.size
  if w * h > MAX_IMAGE_PIXELS:
    img.close()
    raise DataError(f'{path}: image of {w}x{h} pixels is too big to decode (the limit is '
                    f'{MAX_IMAGE_PIXELS} pixels)')
  return img


def load_image(path, image_size, mean=VIT_JAX_MEAN_STD[0], std=VIT_JAX_MEAN_STD[1]):
  """One image file -> [S, S, 3] float32 (or [H, W, 3] for image_size (H, W)), resized
  bilinearly (without keeping the aspect ratio) and normalised (x - mean)/std.

  An image at least 2 * REDUCING_GAP x S on both sides (or a long strip of over
  _REDUCE_ANYWAY_PIXELS) is first decoded at a reduced scale (JPEG) and shrunk by an
  integer box average to no less than REDUCING_GAP x S, so memory stays near that of the
  decoded pixels; smaller images take the plain full-size path.
  Raises OSError/ValueError for files Pillow cannot decode, and DataError for images over
  MAX_IMAGE_PIXELS.
  """
  with _open(path) as img:
    a, box = _decode(img, image_size)
  h, w = image_hw(image_size)
  if box is not None or a.shape[:2] != (h, w):
    a = _channels(a, lambda c: c.resize((w, h), Image.BILINEAR, box=box))
  return ((a - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)).astype(np.float32)
