"""NaFlex images (SigLIP 2): each image keeps its aspect ratio on its own patch grid, and the
analyses see batches of ONE grid each.

Siglip2ImageProcessor resizes an image to the largest (h p, w p) pixels with h * w <=
max_num_patches (`naflex_size`: its binary search over the scale, written out again), then
pads every image's patches to max_num_patches with a mask. Here the images are instead
grouped by grid: `NaFlexSource` serves the images of each grid as batches of that grid
(the last of a grid padded with invalid images), so a batch needs no padding and attention
runs over the image's own tokens only, as the masked model computes it. The order is
fixed by the images and the batch size: grid by grid (grids in order of first appearance),
images in folder order within a grid; `Batch.index` is the image's index in the folder, so
results keyed by image are as for any other source, and batch k is the same batch on a
resumed run.

`canvas_config(config, source)` is the model's config at the canvas: the bounding grid
(largest h, largest w) of the images, where results over images of different grids are
gathered (strength offsets, pattern canvases); `ViTConfig.for_images` gives each batch's.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterator, Optional

import numpy as np

from vit_jax_analytics.batches import Batch, num_batches
from vit_jax_analytics.data import ImageFolderSource, ImageSet, VIT_JAX_MEAN_STD
from vit_jax_analytics.model import ViTConfig


def naflex_size(height: int, width: int, patch: int, max_patches: int,
                eps: float = 1e-5) -> tuple:
  """(target height, target width) in pixels, multiples of `patch`, at most max_patches
  patches, the aspect ratio kept: Siglip2ImageProcessor's get_image_size_for_max_num_patches."""
  def scaled(scale, size):
    return int(max(patch, math.ceil(size * scale / patch) * patch))

  lo, hi = eps / 10, 100.
  while hi - lo >= eps:
    scale = (lo + hi) / 2
    if (scaled(scale, height) / patch) * (scaled(scale, width) / patch) <= max_patches:
      lo = scale
    else:
      hi = scale
  return scaled(lo, height), scaled(lo, width)


def image_grid(path, patch: int, max_patches: int) -> tuple:
  """(h, w) patches of the image at `path` (its header only); an unreadable file gets the
  square grid of the budget (it is an invalid image in its batch either way)."""
  from PIL import Image
  try:
    with Image.open(path) as img:
      width, height = img.size
  except Exception:  # Pillow raises many types for corrupt files
    side = max(1, int(math.isqrt(max_patches)))
    return side, side
  th, tw = naflex_size(height, width, patch, max_patches)
  return th // patch, tw // patch


@dataclasses.dataclass(frozen=True)
class NaFlexSource:
  """An ImageSet on NaFlex grids (see the module doc): a `batches.BatchSource` whose batches
  each hold images of one grid. grids [N, 2]: each image's (h, w) patches."""
  image_set: ImageSet
  patch: int
  grids: np.ndarray
  mean: tuple = VIT_JAX_MEAN_STD[0]
  std: tuple = VIT_JAX_MEAN_STD[1]

  @classmethod
  def of(cls, image_set: ImageSet, config: ViTConfig, mean=VIT_JAX_MEAN_STD[0],
         std=VIT_JAX_MEAN_STD[1]) -> 'NaFlexSource':
    grids = np.asarray([image_grid(p, config.patch_size, config.naflex_max_patches)
                        for p in image_set.paths], np.int64).reshape(-1, 2)
    return cls(image_set, config.patch_size, grids, tuple(mean), tuple(std))

  def __len__(self):
    return len(self.image_set)

  @property
  def canvas(self) -> tuple:
    """(largest h, largest w) over the images' grids."""
    return tuple(int(v) for v in self.grids.max(0)) if len(self.grids) else (1, 1)

  def groups(self) -> list:
    """[(grid (h, w), indices of its images ascending)], grids in order of first appearance."""
    order = {}
    for i, g in enumerate(map(tuple, self.grids.tolist())):
      order.setdefault(g, []).append(i)
    return [(g, np.asarray(ix, np.int64)) for g, ix in order.items()]

  def select(self, indices) -> 'NaFlexSource':
    """The images at `indices`, in that order (Batch.index then counts among them)."""
    indices = np.asarray(indices, np.int64)
    s = self.image_set
    return dataclasses.replace(self, grids=self.grids[indices], image_set=dataclasses.replace(
        s, paths=tuple(s.paths[int(i)] for i in indices), labels=np.asarray(s.labels)[indices]))

  def take(self, n: Optional[int]) -> 'NaFlexSource':
    return self if n is None or n >= len(self) else self.select(np.arange(n))

  def slice(self, start: int, stop: int) -> 'NaFlexSource':
    return self.select(np.arange(start, min(stop, len(self))))

  def batches(self, batch_size: int, first_batch: int = 0, *, progress: bool = True,
              desc: str = 'images') -> Iterator[Batch]:
    k = 0
    for (gh, gw), members in self.groups():
      count = num_batches(len(members), batch_size)
      if k + count <= first_batch:
        k += count
        continue
      part = ImageFolderSource(self.select(members).image_set, (gh * self.patch, gw * self.patch),
                               self.mean, self.std)
      for batch in part.batches(batch_size, max(0, first_batch - k), progress=progress,
                                desc=f'{desc} {gh}x{gw}'):
        yield batch._replace(index=np.where(batch.index >= 0, members[np.maximum(batch.index, 0)],
                                            -1).astype(np.int32))
      k += count


def canvas_config(config: ViTConfig, source) -> ViTConfig:
  """A NaFlex config at the canvas of `source`'s grids (a NaFlexSource); others as given."""
  if not config.naflex or not isinstance(source, NaFlexSource):
    return config
  h, w = source.canvas
  return config.replace(image_size=(h * config.patch_size, w * config.patch_size))


def largest_config(config: ViTConfig, source) -> ViTConfig:
  """The config of `source`'s grid with the most patches (NaFlex; else `config`): what one
  forward at most costs, for the memory check and the cost plan (the canvas bounds every
  grid, and may hold more tokens than any image)."""
  if not config.naflex or not isinstance(source, NaFlexSource) or not len(source.grids):
    return config
  h, w = source.grids[int(np.argmax(source.grids.prod(1)))]
  return config.for_images((int(h) * config.patch_size, int(w) * config.patch_size))


def folder_source(image_set: ImageSet, config: ViTConfig, mean, std):
  """The BatchSource of a folder for `config`: NaFlex grids, or every image at image_size."""
  if config.naflex:
    return NaFlexSource.of(image_set, config, mean, std)
  return ImageFolderSource(image_set, config.image_size, mean, std)
