"""Image folders in, fixed-shape batches out.

Batch k always holds files [k*B, (k+1)*B) of the sorted file list, whether or not some of
them fail to decode (those are marked invalid), so batches are deterministic and a run can
resume at any batch without decoding what came before.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
from PIL import Image

from vit_jax_analytics.batches import UNLABELLED, Batch, num_batches
from vit_jax_analytics.errors import DataError

# vit_jax scales to [-1, 1]: (x - 0.5) / 0.5.
VIT_JAX_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def image_extensions() -> frozenset:
  """Every file extension Pillow can open here."""
  return frozenset(ext.lower() for ext in Image.registered_extensions())


@dataclasses.dataclass(frozen=True)
class ImageSet:
  """A deterministic list of image files with their labels.

  paths: [N] sorted; labels: [N] int (UNLABELLED = -1 where unknown); class_names: the
  ImageFolder sub-folder names (label i is class_names[i]) or None.
  """
  root: Path
  paths: tuple
  labels: np.ndarray
  class_names: Optional[tuple] = None

  def __len__(self):
    return len(self.paths)

  @property
  def labelled(self) -> bool:
    return bool(np.all(self.labels != UNLABELLED))

  def relative_names(self) -> list:
    return [p.relative_to(self.root).as_posix() for p in self.paths]

  def take(self, n: Optional[int]) -> 'ImageSet':
    """The first n images (all when n is None)."""
    if n is None or n >= len(self):
      return self
    return dataclasses.replace(self, paths=self.paths[:n], labels=self.labels[:n])


def _images_in(folder: Path, exts) -> list:
  return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in exts)


def read_labels_file(labels_file, names: Sequence[str]) -> np.ndarray:
  """Labels [N] for `names` from a CSV (`filename,label` rows, header optional) or JSON
  object ({"filename": label}); names absent from the file get UNLABELLED."""
  labels_file = Path(labels_file)
  if not labels_file.is_file():
    raise DataError(f'{labels_file}: labels file not found')
  try:
    text = labels_file.read_text()
  except (OSError, UnicodeDecodeError) as e:
    raise DataError(f'{labels_file}: cannot read labels file ({e})') from None
  if labels_file.suffix.lower() == '.json':
    try:
      mapping = json.loads(text)
    except json.JSONDecodeError as e:
      raise DataError(f'{labels_file}: not valid JSON ({e})') from None
    if not isinstance(mapping, dict):
      raise DataError(f'{labels_file}: expected a JSON object {{"filename": label}}')
    rows = [(str(k), v, f'key {k!r}') for k, v in mapping.items()]
  else:
    rows = []
    for i, row in enumerate(csv.reader(text.splitlines()), start=1):
      if not row or not ''.join(row).strip():
        continue
      if len(row) != 2:
        raise DataError(f'{labels_file}: line {i}: expected "filename,label", got {row!r}')
      if i == 1 and row[0].strip() not in names and not row[1].strip().isdigit():
        continue  # a header row
      rows.append((row[0].strip(), row[1].strip(), f'line {i}'))
  known = {n: i for i, n in enumerate(names)}
  labels = np.full(len(names), UNLABELLED, np.int32)
  for name, value, where in rows:
    if name not in known:
      raise DataError(f'{labels_file}: {where} names {name!r}, which is not an image in the '
                      f'folder')
    try:
      label = int(value)
      if label < 0 or str(value).strip() != str(label):
        raise ValueError
    except (TypeError, ValueError):
      raise DataError(f'{labels_file}: {where}: label {value!r} is not a class index '
                      f'(a non-negative integer)') from None
    labels[known[name]] = label
  return labels


def image_folder(root, labels_file=None) -> ImageSet:
  """An ImageFolder (one sub-folder per class) or a flat folder (+ optional labels file)."""
  root = Path(root)
  if not root.is_dir():
    raise DataError(f'{root}: not a folder of images')
  exts = image_extensions()
  class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and _images_in(d, exts))
  if class_dirs and labels_file is None:
    paths, labels = [], []
    for i, d in enumerate(class_dirs):
      files = _images_in(d, exts)
      paths += files
      labels += [i] * len(files)
    return ImageSet(root, tuple(paths), np.asarray(labels, np.int32),
                    tuple(d.name for d in class_dirs))
  paths = _images_in(root, exts)
  if class_dirs and labels_file is not None:  # labels file wins; it may name nested files
    paths = sorted(paths + [p for d in class_dirs for p in _images_in(d, exts)])
  if not paths:
    what = 'is empty' if not any(root.iterdir()) else 'holds no image files'
    raise DataError(f'{root} {what}: expected images ({", ".join(sorted(exts)[:6])}, ...) '
                    f'directly in it or in one sub-folder per class')
  image_set = ImageSet(root, tuple(paths), np.full(len(paths), UNLABELLED, np.int32))
  if labels_file is not None:
    image_set = dataclasses.replace(
        image_set, labels=read_labels_file(labels_file, image_set.relative_names()))
  return image_set


def _to_unit_float(img: Image.Image) -> np.ndarray:
  """Any Pillow mode -> [h, w, 3] float32 in [0, 1]. Alpha is dropped, as TF's
  decode_image(channels=3) does in the vit_jax input pipeline."""
  mode = img.mode
  if mode.startswith('I;16') or mode == 'I':  # 16-bit (PNG) grayscale
    a = np.asarray(img, np.float32) / 65535.
  elif mode == 'F':
    a = np.asarray(img, np.float32)
  elif mode in ('1', 'L', 'LA', 'La'):
    a = np.asarray(img.convert('L'), np.float32) / 255.
  else:  # RGB, RGBA, P, PA, CMYK, YCbCr, LAB, HSV, ...
    a = np.asarray(img.convert('RGB'), np.float32) / 255.
  if a.ndim == 2:
    a = np.repeat(a[..., None], 3, axis=-1)
  return np.clip(a, 0., 1.)


def load_image(path, image_size: int, mean=VIT_JAX_MEAN_STD[0], std=VIT_JAX_MEAN_STD[1]):
  """One image file -> [S, S, 3] float32, resized bilinearly and normalised (x - mean)/std.

  Raises OSError/ValueError for files Pillow cannot decode.
  """
  with Image.open(path) as img:
    img.load()
    a = _to_unit_float(img)
  if a.shape[:2] != (image_size, image_size):
    a = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(a[..., c]), 'F')
                             .resize((image_size, image_size), Image.BILINEAR))
                  for c in range(3)], axis=-1)
  return ((a - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)).astype(np.float32)


class BatchStream:
  """Iterates fixed-size batches over an ImageSet, streaming from disk.

  Memory is one batch, whatever the number of images (a batch's files are decoded in
  parallel threads, the next batch only when it is asked for). The last
  batch is padded with invalid entries. Files that fail to decode are invalid entries too,
  each reported once on stderr, and counted in `skipped`; the count is printed at the end.
  """

  def __init__(self, image_set: ImageSet, image_size: int, batch_size: int,
               mean=VIT_JAX_MEAN_STD[0], std=VIT_JAX_MEAN_STD[1], first_batch: int = 0,
               progress: bool = True, desc: str = 'images', num_threads: int = 4):
    if batch_size < 1:
      raise DataError(f'batch size must be at least 1, got {batch_size}')
    self.image_set, self.image_size, self.batch_size = image_set, image_size, batch_size
    self.mean, self.std = mean, std
    self.first_batch, self.progress, self.desc = first_batch, progress, desc
    self.num_threads = num_threads
    self.skipped: list = []

  def __len__(self):
    return max(0, num_batches(len(self.image_set), self.batch_size) - self.first_batch)

  def _load(self, i):
    path = self.image_set.paths[i]
    try:
      return load_image(path, self.image_size, self.mean, self.std)
    except Exception as e:  # Pillow raises many types for corrupt files
      self.skipped.append(path)
      print(f'warning: skipping {path}: cannot read image ({type(e).__name__}: {e})',
            file=sys.stderr)
      return None

  def __iter__(self) -> Iterator[Batch]:
    from vit_jax_analytics.progress import progress_bar

    n, b = len(self.image_set), self.batch_size
    s = self.image_size
    starts = range(self.first_batch * b, n, b)
    bar = progress_bar(total=n - min(n, self.first_batch * b), desc=self.desc, unit='img',
                       disable=not self.progress)
    with ThreadPoolExecutor(self.num_threads) as pool:
      for start in starts:
        idx = np.arange(start, start + b)
        images = np.zeros((b, s, s, 3), np.float32)
        valid = np.zeros(b, bool)
        real = idx[idx < n]
        for j, img in enumerate(pool.map(self._load, real)):
          if img is not None:
            images[j], valid[j] = img, True
        labels = np.full(b, UNLABELLED, np.int32)
        labels[:len(real)] = self.image_set.labels[real]
        bar.update(len(real))
        yield Batch(images, labels, np.where(idx < n, idx, -1).astype(np.int32), valid)
    bar.close()
    if self.skipped:
      print(f'warning: skipped {len(self.skipped)} unreadable image(s) of {n} in '
            f'{self.image_set.root}', file=sys.stderr)
    if self.skipped and len(self.skipped) == n:
      raise DataError(f'{self.image_set.root}: no readable images ({n} file(s) skipped as '
                      f'unreadable)')



@dataclasses.dataclass(frozen=True)
class ImageFolderSource:
  """An ImageSet decoded at `image_size` and normalised (x - mean) / std: the
  `batches.BatchSource` the analyses read a folder through."""
  image_set: ImageSet
  image_size: int
  mean: tuple = VIT_JAX_MEAN_STD[0]
  std: tuple = VIT_JAX_MEAN_STD[1]

  def __len__(self):
    return len(self.image_set)

  def take(self, n: Optional[int]) -> 'ImageFolderSource':
    return dataclasses.replace(self, image_set=self.image_set.take(n))

  def select(self, indices) -> 'ImageFolderSource':
    """The images at `indices`, in that order (only those are decoded)."""
    s = self.image_set
    indices = [int(i) for i in indices]
    return dataclasses.replace(self, image_set=dataclasses.replace(
        s, paths=tuple(s.paths[i] for i in indices), labels=np.asarray(s.labels)[indices]))

  def batches(self, batch_size: int, first_batch: int = 0, *, progress: bool = True,
              desc: str = 'images') -> 'BatchStream':
    return BatchStream(self.image_set, self.image_size, batch_size, self.mean, self.std,
                       first_batch=first_batch, progress=progress, desc=desc)
