"""What every analysis reads (`Inputs`: a checkpoint, an image folder and how to feed it),
loaded (`Loaded`), and the key that identifies a computation for resuming
(`computation_key`). NaFlex models (SigLIP 2) get a `naflex.NaFlexSource` and their config
at the canvas of the images' grids.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Optional

import numpy as np

from vit_jax_analytics import checkpoints, data, naflex
from vit_jax_analytics.errors import OptionError
from vit_jax_analytics.model import ViTConfig
from vit_jax_analytics.options import check


@dataclasses.dataclass(frozen=True)
class Inputs:
  """What every analysis reads: a checkpoint, an image folder and how to feed it."""
  checkpoint: Path
  images: Path
  labels: Optional[Path] = None
  max_images: Optional[int] = None
  image_size: Any = None                   # S or (height, width)
  gelu_approximate: Optional[bool] = None  # None: tanh (vit_jax), or what orbax recorded
  mean: tuple = data.VIT_JAX_MEAN_STD[0]
  std: tuple = data.VIT_JAX_MEAN_STD[1]
  pooling: Optional[str] = None  # 'none' for a big_vision pool_type='none' model
  label_free: bool = False       # sub-folders are not classes: every image, unlabelled
  # The image overview's thumbnails (THUMBNAIL_PX square, stored with importance): as many
  # images, spread over the set, as fit in this many MiB (raw RGB).
  thumbnail_budget_mib: float = 2.0

  def __post_init__(self):
    check(self, 'max_images', self.max_images, low=1, optional=True)
    for size in (() if self.image_size is None else data.image_hw(self.image_size)):
      check(self, 'image_size', size, low=1)
    if len(self.mean) != 3 or not all(np.isfinite(self.mean)):
      raise OptionError('mean', f'expected three finite numbers, got {self.mean!r}', Inputs)
    check(self, 'thumbnail_budget_mib', self.thumbnail_budget_mib, low=0, what='a number')
    if len(self.std) != 3 or not all(np.isfinite(s) and s > 0 for s in self.std):
      raise OptionError('std', f'expected three finite positive numbers, got {self.std!r}',
                        Inputs)

  def load_model(self) -> tuple:
    """(params, config)."""
    return checkpoints.load_checkpoint(self.checkpoint, image_size=self.image_size,
                                       gelu_approximate=self.gelu_approximate,
                                       pooling=self.pooling)

  def load(self) -> 'Loaded':
    params, config = self.load_model()
    image_set = data.image_folder(self.images, self.labels, self.label_free).take(
        self.max_images)
    if config.has_classifier and (image_set.labels >= 0).any():
      image_set.check_labels(config.num_classes)  # shifted or foreign labels: fail now
    source = naflex.folder_source(image_set, config, self.mean, self.std)
    return Loaded(params, naflex.canvas_config(config, source), image_set, source)


class Loaded(NamedTuple):
  params: Any
  config: ViTConfig
  image_set: data.ImageSet
  source: Any  # data.ImageFolderSource, or naflex.NaFlexSource



def computation_key(inputs: Inputs, loaded: Loaded, options) -> str:
  """Identifies a computation for resuming: everything that changes its results — the
  checkpoint's contents, every image file (name, size, mtime), the labels, the inputs'
  settings and the options that matter."""
  h = hashlib.sha256()
  for leaf in _leaves(loaded.params):
    h.update(np.ascontiguousarray(leaf).tobytes())
  h.update(json.dumps(loaded.config.to_dict(), sort_keys=True).encode())
  for path in loaded.image_set.paths:
    stat = path.stat() if path.exists() else None
    # os.fsencode: a file name that is not UTF-8 holds surrogate escapes, which .encode()
    # refuses
    h.update(os.fsencode(path) + f'\0{stat and stat.st_size}\0{stat and stat.st_mtime_ns}\n'.encode())
  h.update(np.asarray(loaded.image_set.labels, np.int64).tobytes())
  settings = dataclasses.asdict(options)
  for name in ('progress', 'save_every_seconds'):
    settings.pop(name, None)
  h.update(json.dumps([settings, list(inputs.mean), list(inputs.std)], sort_keys=True,
                      default=str).encode())
  classes = getattr(options, 'classes_npz', None)
  if classes and Path(classes).is_file():  # the class matrix's contents, not only its path
    h.update(Path(classes).read_bytes())
  return h.hexdigest()[:20]


def _leaves(tree):
  if isinstance(tree, Mapping):
    for k in sorted(tree):
      yield from _leaves(tree[k])
  else:
    yield np.asarray(tree)


