"""ImportanceOptions: the importance flags and their defaults (the CLI is generated from
them), with the checks that need the model."""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax

from vit_jax_analytics import precision
from vit_jax_analytics.batches import DEFAULT_BATCH_SIZE
from vit_jax_analytics.errors import OptionError
from vit_jax_analytics.importance.curves import ORDER_METRICS, curve_counts
from vit_jax_analytics.importance.partial import partial_variants
from vit_jax_analytics.model import ViTConfig
from vit_jax_analytics.options import MAX_SEED, check, option, parse_ints
from vit_jax_analytics.streaming import analysis_mesh


def default_chunk() -> int:
  """Head masks evaluated at once when options.chunk is None: 1 on CPU (big vmapped batches
  fall out of cache), 8 on accelerators."""
  return 1 if jax.default_backend() == 'cpu' else 8


# Stage-2 defaults, chosen by the cost model (cost.py, README "Cost"): on ViT-Ti/16 and
# ViT-B/16 the whole `analyze` stays within 2x the ablation scan's limit per image at 64
# images and within 1.25x at 1,024.
DEFAULT_SUBSET_IMAGES = 20
DEFAULT_CURVE_POINTS = 6
DEFAULT_RANDOM_ORDERS = 2
DEFAULT_PARTIAL_HEADS = 3


@dataclasses.dataclass(frozen=True)
class ImportanceOptions:
  batch_size: int = option(DEFAULT_BATCH_SIZE, 'images per batch')
  chunk: Optional[int] = option(
      None, 'head masks evaluated at once, vmapped; lower it to save memory (default: 1 on '
            'CPU, where big vmapped batches fall out of cache, 8 on accelerators)', parse=int)
  per_image: bool = option(False, "keep every image's values (per-image distributions)")
  subset_images: Optional[int] = option(
      DEFAULT_SUBSET_IMAGES,
      'pruning curves and partial pruning on a class-stratified subset of this many images '
      '(seeded by --seed; stored with standard errors); 0 for all images', parse=int)
  curve_points: Optional[int] = option(
      DEFAULT_CURVE_POINTS, 'points on each pruning curve, evenly spaced head counts from '
      'none to all removed (0: every head count)', parse=int)
  random_orders: int = option(DEFAULT_RANDOM_ORDERS, 'random pruning orders to compare against')
  seed: int = option(0, 'seed of the random pruning orders and of the stage-2 subset')
  partial_heads: Optional[int] = option(
      DEFAULT_PARTIAL_HEADS, 'partial pruning for the N heads of highest Taylor importance '
      '(0: all heads)', parse=int)
  partial_radii: tuple = option(
      (1, 2, 3), 'Chebyshev radii (patches) for local/global partial pruning',
      flag='--radii', parse=parse_ints())
  partial_region: Optional[tuple] = option(
      None, 'query region row0,col0,row1,col1 in patches, half-open (default: the central '
            'half of the grid)', flag='--region', parse=parse_ints(4))
  renormalize: bool = option(
      False, 'renormalise the attention left after partial pruning (default: no, so that '
             'removing part of a head removes only that part of its output)')
  classes_npz: Optional[str] = option(
      None, 'an .npz with a class matrix `classes` [C, E] (and optionally `bias` [C], '
            '`scale`, `normalize`) turning the embedding of a model without a classifier '
            'into logits: SigLIP text embeddings (normalize=1, scale=exp(t), bias=b) or a '
            'linear probe; then the classification metrics apply', parse=str)
  taylor_probes: int = option(
      4, 'random probes per image for the Taylor score under the embedding objective')
  dtype: str = option('float32', precision.HELP, parse=precision.parse)
  mask_shards: int = option(
      1, 'split the single-head ablation scan\'s heads over K devices: a 2-D (batch x masks) '
         'mesh of (devices / K) x K, for large models with small batches; K must divide '
         'each process\'s device count (results equal K = 1 within float rounding)')
  progress: bool = option(True, 'no progress bars', flag='--no-progress')
  save_every_seconds: float = option(30., cli=False)

  def __post_init__(self):
    check(self, 'batch_size', self.batch_size, low=1)
    check(self, 'chunk', self.chunk, low=1, optional=True)
    check(self, 'subset_images', self.subset_images, low=0, optional=True)
    if self.curve_points not in (None, 0):
      check(self, 'curve_points', self.curve_points, low=2)
    check(self, 'random_orders', self.random_orders, low=0)
    check(self, 'partial_heads', self.partial_heads, low=0, optional=True)
    check(self, 'taylor_probes', self.taylor_probes, low=1)
    check(self, 'mask_shards', self.mask_shards, low=1)
    check(self, 'seed', self.seed, low=0, high=MAX_SEED)
    precision.check(self, 'dtype', self.dtype)
    if not self.partial_radii:
      raise OptionError('partial_radii', 'expected at least one radius')
    for r in self.partial_radii:
      check(self, 'partial_radii', r, low=1)
    if self.partial_region is not None and len(self.partial_region) != 4:
      raise OptionError('partial_region', f'expected row0,col0,row1,col1, got '
                                          f'{self.partial_region!r}')

  def check_model(self, config: ViTConfig) -> None:
    """Raises OptionError for radii or a region that do not fit the model's patch grid, or
    mask shards that do not divide the devices."""
    partial_variants(config, self.partial_radii, self.partial_region)
    analysis_mesh(self.mask_shards)

  def subset_size(self, n_images: int) -> int:
    """Images in the stage-2 subset for a source of n_images."""
    cap = self.subset_images or n_images
    return min(n_images, cap)

  def embedding_objective(self, config: ViTConfig) -> bool:
    """Whether importance is measured against the model's embedding: no classifier and no
    class matrix (--classes-npz)."""
    return not config.has_classifier and not self.classes_npz

  def curve_orders(self, config: ViTConfig) -> int:
    """Orders stage 2 prunes along: one per metric (under the embedding objective top-1
    drops are all 0, so none by them) and the random ones."""
    return len(ORDER_METRICS) - self.embedding_objective(config) + self.random_orders

  def curve_counts(self, config: ViTConfig) -> list:
    """Heads removed at each point of a pruning curve."""
    return curve_counts(config, self.curve_points)

  def curve_masks(self, config: ViTConfig) -> int:
    """Pruning-curve masks stage 2 computes at most: every order's inner points, and the
    all-removed mask once (none removed is the unmasked model)."""
    n = config.num_layers * config.num_heads
    counts = self.curve_counts(config)
    inner = [c for c in counts if 0 < c < n]
    return self.curve_orders(config) * len(inner) + (1 if counts[-1] == n else 0)
