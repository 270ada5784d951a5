"""Image folders in, fixed-shape batches out.

Batch k always holds files [k*B, (k+1)*B) of the sorted file list, whether or not some of
them fail to decode (those are marked invalid), so batches are deterministic and a run can
resume at any batch without decoding what came before.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Iterator, Optional, Sequence

import numpy as np
from PIL import Image

from vit_jax_analytics.batches import UNLABELLED, Batch, num_batches
from vit_jax_analytics.decode import (  # noqa: F401 (data.load_image, data.image_hw: the API)
    VIT_JAX_MEAN_STD, image_hw, load_image)
from vit_jax_analytics.errors import DataError
from vit_jax_analytics.progress import progress_bar

IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def image_extensions() -> frozenset:
  """Every file extension Pillow can open here."""
  return frozenset(ext.lower() for ext in Image.registered_extensions())


@dataclasses.dataclass(frozen=True)
class ImageSet:
  """A deterministic list of image files with their labels.

  paths: [N] sorted; labels: [N] int (UNLABELLED = -1 where unknown); class_names: the
  ImageFolder sub-folder names (label i is class_names[i]) or None; labels_file: where the
  labels came from, if from a file.
  """
  root: Path
  paths: tuple
  labels: np.ndarray
  class_names: Optional[tuple] = None
  labels_file: Optional[Path] = None

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

  def check_labels(self, num_classes: int) -> None:
    """Raises DataError unless the labels fit a model with `num_classes` outputs.

    An ImageFolder must have exactly num_classes class folders: class i is the i-th folder
    in sorted order, so any other count means the folder indices are not the model's. Every
    known label must lie in [0, num_classes); UNLABELLED images are fine.
    """
    if self.class_names is not None and len(self.class_names) != num_classes:
      raise DataError(
          f'{self.root}: {len(self.class_names)} class folders ({_preview(self.class_names)}) '
          f'but the model has {num_classes} classes; class i is the i-th folder in sorted order, '
          f'so keep an empty folder for a class without images, use a labels file, or pass '
          f'{LABEL_FREE_FLAG} to analyse the images without labels')
    bad = np.flatnonzero((self.labels != UNLABELLED)
                         & ((self.labels < 0) | (self.labels >= num_classes)))
    if bad.size:
      i = bad[0]
      source = f' in {self.labels_file}' if self.labels_file is not None else ''
      raise DataError(
          f'{self.paths[i]}: label {self.labels[i]}{source} is not a class of the model '
          f'(expected 0 to {num_classes - 1}; {bad.size} image(s) have such labels)')


def _preview(names, n=4) -> str:
  """'a, b, c, d, ... (+N more)' for messages that must stay one line."""
  names = [str(x) for x in names]
  more = f', ... (+{len(names) - n} more)' if len(names) > n else ''
  return ', '.join(names[:n]) + more


def _warn(message: str) -> None:
  print(f'warning: {message}', file=sys.stderr)


def _scan(folder: Path, exts) -> tuple:
  """(image files, sub-folders) directly in `folder`, each sorted; names starting with '.'
  are left out."""
  files, dirs = [], []
  try:
    with os.scandir(folder) as entries:
      for e in entries:
        if e.name.startswith('.'):
          continue
        if e.is_dir():
          dirs.append(Path(e.path))
        elif os.path.splitext(e.name)[1].lower() in exts and e.is_file():
          files.append(Path(e.path))
  except OSError as e:
    raise DataError(f'{folder}: cannot list folder ({e.strerror})') from None
  return sorted(files), sorted(dirs)


def _images_below(folder: Path, exts) -> list:
  """Image files at any depth below `folder`, sorted, hidden ones left out. Linked folders
  are followed, each real folder once, so a link cannot loop."""
  found, seen, todo = [], set(), [folder]
  while todo:
    d = todo.pop()
    st = d.stat()
    if (st.st_dev, st.st_ino) not in seen:
      seen.add((st.st_dev, st.st_ino))
      files, dirs = _scan(d, exts)
      found += files
      todo += dirs
  return sorted(found)


def _decode_text(labels_file: Path, raw: bytes) -> str:
  """UTF-8 (a BOM, as Excel writes, is dropped) or UTF-16 with a BOM."""
  try:
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
      return raw.decode('utf-16')
    return raw.decode('utf-8-sig')
  except UnicodeDecodeError as e:
    raise DataError(f'{labels_file}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset '
                    f'{e.start}); save it as UTF-8') from None


class _JsonObject(list):
  """A JSON object's (key, value) pairs in file order, repeated keys kept."""


def _json_rows(labels_file: Path, text: str) -> list:
  try:
    pairs = json.loads(text, object_pairs_hook=_JsonObject)
  except (ValueError, RecursionError) as e:  # JSONDecodeError, or an int too long to read
    raise DataError(f'{labels_file}: not valid JSON ({e})') from None
  if not isinstance(pairs, _JsonObject):
    raise DataError(f'{labels_file}: expected a JSON object {{"filename": label}}')
  return [(k, v, f'key {k!r}') for k, v in pairs]


def _csv_rows(labels_file: Path, text: str, names) -> list:
  rows, reader = [], csv.reader(text.splitlines())
  try:
    for row in reader:
      i = reader.line_num
      if not row or not ''.join(row).strip():
        continue
      if len(row) != 2:
        raise DataError(f'{labels_file}: line {i}: expected "filename,label", got {row!r}')
      name, value = row[0].strip(), row[1].strip()
      if i == 1 and name not in names and not value.isdigit():
        continue  # a header row
      rows.append((name, value, f'line {i}'))
  except csv.Error as e:  # e.g. a field over csv.field_size_limit()
    raise DataError(f'{labels_file}: line {reader.line_num}: not CSV ({e})') from None
  return rows


def _class_index(value) -> Optional[int]:
  """`value` as a class index, or None: a JSON int or a string of ASCII digits, written
  plainly ("3", not "03" or "+3"), that fits int32. Floats (3.0) and booleans are not."""
  if isinstance(value, bool) or not isinstance(value, (int, str)):
    return None
  text = str(value).strip()
  if not (text.isascii() and text.isdigit()) or len(text) > 10:
    return None
  label = int(text)
  return label if str(label) == text and label <= np.iinfo(np.int32).max else None


def _not_an_image(root, name: str) -> str:
  """Why a labels file's `name` is not one of the images below `root` (or None)."""
  path = Path(root, name) if root is not None else None
  if path is not None and path.is_dir():
    return 'which is a folder; a labels file names image files'
  if path is not None and path.is_file():
    return 'which is not an image file read here (hidden, or not an image extension)'
  return 'which is not an image in the folder'


def read_labels_file(labels_file, names: Sequence[str], root=None) -> np.ndarray:
  """Labels [N] for `names` from a CSV (`filename,label` rows, header optional) or JSON
  object ({"filename": label}); names absent from the file get UNLABELLED. A file naming
  one image twice with different labels is an error; the same label twice is fine. `root`,
  when given, is the folder `names` are relative to, for clearer messages."""
  labels_file = Path(labels_file)
  if labels_file.is_dir():
    raise DataError(f'{labels_file}: is a folder, expected a labels file (.csv or .json)')
  if not labels_file.is_file():
    raise DataError(f'{labels_file}: labels file not found')
  try:
    text = _decode_text(labels_file, labels_file.read_bytes())
  except OSError as e:
    raise DataError(f'{labels_file}: cannot read labels file ({e.strerror})') from None
  if labels_file.suffix.lower() == '.json':
    rows = _json_rows(labels_file, text)
  else:
    rows = _csv_rows(labels_file, text, set(names))
  known = {n: i for i, n in enumerate(names)}
  labels = np.full(len(names), UNLABELLED, np.int32)
  given = {}  # name -> (label, where) of its first row
  for name, value, where in rows:
    if not name.strip():
      raise DataError(f'{labels_file}: {where}: empty filename, expected an image path')
    key = PurePosixPath(name).as_posix()  # './a.png' or 'cat//b.png' name a file too
    if key not in known:
      raise DataError(f'{labels_file}: {where} names {name!r}, {_not_an_image(root, key)}')
    label = _class_index(value)
    if label is None:
      raise DataError(f'{labels_file}: {where}: label {value!r} is not a class index '
                      f'(an integer from 0 to {np.iinfo(np.int32).max})')
    first = given.setdefault(key, (label, where))
    if first[0] != label:
      raise DataError(f'{labels_file}: conflicting labels for {name!r}: {first[0]} '
                      f'({first[1]}), then {label} ({where})')
    labels[known[key]] = label
  return labels


def _class_folder_set(root: Path, classes: dict, loose: list) -> ImageSet:
  """The ImageFolder ImageSet from {class folder: its images at any depth}."""
  if loose:
    raise DataError(
        f'{root}: {len(loose)} image(s) directly in the folder beside its class sub-folders '
        f'({_preview(p.name for p in loose)}) have no class; move them into a class folder, '
        f'pass a labels file, or pass {LABEL_FREE_FLAG} to analyse every image without labels')
  empty = [d.name for d, files in classes.items() if not files]
  if empty:
    _warn(f'{root}: class folder(s) {_preview(empty)} hold no images; they keep their class '
          f'index (class i is the i-th sub-folder in sorted order)')
  paths, labels = [], []
  for i, files in enumerate(classes.values()):
    paths += files
    labels += [i] * len(files)
  return ImageSet(root, tuple(paths), np.asarray(labels, np.int32),
                  tuple(d.name for d in classes))


# The CLI flag of `image_folder(..., label_free=True)`, named in the errors it is a way past.
LABEL_FREE_FLAG = '--label-free'


def image_folder(root, labels_file=None, label_free: bool = False) -> ImageSet:
  """An ImageFolder (one sub-folder per class) or a flat folder (+ optional labels file).

  Without a labels file, if any top-level sub-folder holds an image at any depth, `root`
  is an ImageFolder: the classes are all top-level sub-folders in sorted name order (class
  i is class_names[i]), and every image at any depth below a class folder belongs to it,
  as in torchvision's ImageFolder. So that no index ever shifts, a class folder without
  images keeps its index (with a warning), and images directly in `root` beside the class
  folders are an error (they have no class). Otherwise the images are those directly in
  `root`, unlabelled. With a labels file, the images are those at any depth below `root`,
  labelled by their '/'-separated path relative to it. Names starting with '.' are ignored
  at every depth. label_free: sub-folders are not classes; every image at any depth below
  `root` is taken, unlabelled (the analyses then take the model's prediction as the target).
  """
  root = Path(root)
  if not root.is_dir():
    raise DataError(f'{root}: not a folder of images')
  if label_free and labels_file is not None:
    raise DataError(f'{labels_file}: a labels file and {LABEL_FREE_FLAG} contradict each '
                    f'other; give one of them')
  exts = image_extensions()
  loose, folders = _scan(root, exts)
  classes = {d: _images_below(d, exts) for d in folders}
  if labels_file is None and not label_free and any(classes.values()):
    return _class_folder_set(root, classes, loose)
  paths = loose
  if labels_file is not None or label_free:  # the labels file may name nested files
    paths = sorted(loose + [p for files in classes.values() for p in files])
  if not paths:
    what = 'is empty' if not any(root.iterdir()) else 'holds no image files'
    raise DataError(f'{root} {what}: expected images ({", ".join(sorted(exts)[:6])}, ...) '
                    f'directly in it or in one sub-folder per class')
  image_set = ImageSet(root, tuple(paths), np.full(len(paths), UNLABELLED, np.int32))
  if labels_file is not None:
    image_set = dataclasses.replace(
        image_set, labels=read_labels_file(labels_file, image_set.relative_names(), root),
        labels_file=Path(labels_file))
  return image_set


class DecodedBatches:
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
    n, b = len(self.image_set), self.batch_size
    s = image_hw(self.image_size)
    starts = range(self.first_batch * b, n, b)
    bar = progress_bar(total=n - min(n, self.first_batch * b), desc=self.desc, unit='img',
                       disable=not self.progress)
    with ThreadPoolExecutor(self.num_threads) as pool:
      for start in starts:
        idx = np.arange(start, start + b)
        images = np.zeros((b, *s, 3), np.float32)
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

  def slice(self, start: int, stop: int) -> 'ImageFolderSource':
    """Images [start, stop) only (a process's shard): nothing else is read."""
    s = self.image_set
    return dataclasses.replace(self, image_set=dataclasses.replace(
        s, paths=s.paths[start:stop], labels=s.labels[start:stop]))

  def batches(self, batch_size: int, first_batch: int = 0, *, progress: bool = True,
              desc: str = 'images') -> 'DecodedBatches':
    return DecodedBatches(self.image_set, self.image_size, batch_size, self.mean, self.std,
                       first_batch=first_batch, progress=progress, desc=desc)
