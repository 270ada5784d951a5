"""PatternOptions: the pattern analysis's flags and defaults (the autoencoder's own are
autoencoder.AEOptions)."""

from __future__ import annotations

import dataclasses
from typing import Optional

from vit_jax_analytics import precision
from vit_jax_analytics.batches import DEFAULT_BATCH_SIZE
from vit_jax_analytics.options import MAX_SEED, check, option
from vit_jax_analytics.patterns.autoencoder import AEOptions


# The decoded pattern map's side at most: GRID² maps of the canvas are decoded at once
# (128: 16,384 maps, 1.4 GB for ViT-L/14 at 518 px; 100,000 asked for 74.5 GiB).
MAX_GRID = 128


@dataclasses.dataclass(frozen=True)
class PatternOptions:
  per_head: int = option(4, 'query patches sampled per image, layer and head')
  max_images: Optional[int] = option(200, 'images sampled for patterns',
                                     flag='--pattern-images', parse=int)
  batch_size: int = option(DEFAULT_BATCH_SIZE, 'images per batch')
  grid: int = option(12, 'the decoded pattern map is GRID x GRID')
  clusters: int = option(6, 'head clusters')
  seed: int = option(0, 'seed of the sampled queries and the autoencoder',
                     flag='--pattern-seed')
  dtype: str = option('float32', precision.HELP, parse=precision.parse)
  ae: AEOptions = option(factory=AEOptions, cli=False)
  progress: bool = option(True, 'no progress bars', flag='--no-progress')

  def __post_init__(self):
    check(self, 'per_head', self.per_head, low=1)
    check(self, 'max_images', self.max_images, low=1, optional=True)
    check(self, 'batch_size', self.batch_size, low=1)
    check(self, 'grid', self.grid, low=2, high=MAX_GRID)
    check(self, 'seed', self.seed, low=0, high=MAX_SEED)
    check(self, 'clusters', self.clusters, low=1)
    precision.check(self, 'dtype', self.dtype)
