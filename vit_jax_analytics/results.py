"""The typed results of the three analyses: what they return, what the logdir writer
writes and the reader returns. Plain NumPy data; axis names as in `vit_jax_analytics`.

Means are over the valid images analysed. Shapes use: L layers, H heads, N images, n the
patch grid side, T tokens, O orders, P points (pruning curves), E partially pruned heads,
V partial-pruning variants, M stored attention maps, S pattern samples, g map grid, c the
pattern canvas side (2n - 1), k clusters.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np


@dataclasses.dataclass(frozen=True)
class Baseline:
  """The unmasked model: mean loss, top-1 and top-5 accuracy against the targets."""
  loss: float
  top1: float
  top5: float


# The metrics of a masked model against the unmasked one (importance.objective defines them).
ABLATION_METRICS = ('loss', 'top1', 'top5', 'kl')


@dataclasses.dataclass(frozen=True)
class Estimate:
  """A mean over images and its standard error (None where it was not measured)."""
  mean: np.ndarray
  se: Optional[np.ndarray] = None


@dataclasses.dataclass(frozen=True)
class PruningCurves:
  """The metrics with the first heads of each order removed: one Estimate [O, P] per
  metric of ABLATION_METRICS (empty when not computed)."""
  counts: np.ndarray                  # [P] int: heads removed at each point
  orders: tuple                       # [O] names: taylor, ablation_*, random_i
  metrics: dict                       # metric -> Estimate of [O, P]

  @classmethod
  def empty(cls) -> 'PruningCurves':
    return cls(np.zeros(0, np.int32), (), {m: Estimate(np.zeros((0, 0)))
                                           for m in ABLATION_METRICS})


@dataclasses.dataclass(frozen=True)
class PartialPruning:
  """Each metric's change with part of a head removed (loss increase, accuracy drops, KL),
  and with the whole head removed on the same images."""
  heads: np.ndarray                   # [E] int flat head index layer * H + head
  variants: tuple                     # [V] (name, description) pairs
  change: dict                        # metric -> Estimate of [E, V]
  whole_head: dict                    # metric -> Estimate of [E]; {} where not measured

  @classmethod
  def empty(cls) -> 'PartialPruning':
    return cls(np.zeros(0, np.int32), (), {m: Estimate(np.zeros((0, 0)))
                                           for m in ABLATION_METRICS}, {})


@dataclasses.dataclass(frozen=True)
class ImportanceResult:
  """Which heads matter (see the importance package for the definitions)."""
  taylor: np.ndarray                  # [L, H] mean |dL/d xi|
  taylor_normalized: np.ndarray       # [L, H] L2-normalised within each layer
  ablation_loss: np.ndarray           # [L, H] loss increase with only this head removed
  ablation_top1: np.ndarray           # [L, H] top-1 drop
  ablation_top5: np.ndarray           # [L, H] top-5 drop
  ablation_kl: np.ndarray             # [L, H] KL(p_full || p_masked)
  baseline: Baseline
  curves: PruningCurves
  partial: PartialPruning
  images: int
  labelled_images: int
  label_free: bool                    # some targets were the model's own prediction
  per_image_taylor: Optional[np.ndarray] = None         # [N, L, H], NaN if unreadable
  per_image_ablation_loss: Optional[np.ndarray] = None  # [N, L, H]
  per_image_ablation_kl: Optional[np.ndarray] = None    # [N, L, H]
  per_image_loss: Optional[np.ndarray] = None           # [N] unmasked loss, NaN if unreadable
  per_image_prediction: Optional[np.ndarray] = None     # [N] int predicted class, -1 if unreadable
  # Pruning curves and partial pruning are means over a class-stratified subset of the
  # images (all of them when there are at most `subset_images` option): its image indices
  # and its own unmasked baseline (the curves' first point). S = len(subset_index).
  subset_index: Optional[np.ndarray] = None           # [S] int
  subset_baseline: Optional[Baseline] = None

  # The objective (importance.Objective.describe()): kind, source, what each metric means.
  objective: Optional[dict] = None
  # A MAP pooling head's heads (probe -> tokens), as one more row; None without one.
  pool_taylor: Optional[np.ndarray] = None              # [H]
  pool_ablation_loss: Optional[np.ndarray] = None       # [H]
  pool_ablation_top1: Optional[np.ndarray] = None       # [H]
  pool_ablation_top5: Optional[np.ndarray] = None       # [H]
  pool_ablation_kl: Optional[np.ndarray] = None         # [H]

  @property
  def subset_images(self) -> int:
    """Images the curves and partial pruning were computed on."""
    return self.images if self.subset_index is None else len(self.subset_index)


@dataclasses.dataclass(frozen=True)
class ScalarDistribution:
  """The spread over images of one per-image, per-head scalar."""
  range: tuple                        # (lo, hi) of the histogram
  hist: np.ndarray                    # [L, H, bins] image counts
  quantiles: np.ndarray               # [L, H, len(levels)] at the result's quantile_levels


@dataclasses.dataclass(frozen=True)
class StrengthResult:
  """How strongly patches attend to their neighbours (see strength.py)."""
  images: int
  offset_mean: np.ndarray             # [L, H, 2n-1, 2n-1] by (dy, dx) = key - query
  offset_ratio: np.ndarray            # [L, H, 2n-1, 2n-1] offset_mean * T
  offset_pairs: np.ndarray            # [2n-1, 2n-1] (query, key) pairs counted
  neighbourhood_share: np.ndarray     # [L, H, n] cumulative by Chebyshev distance
  mean_distance: np.ndarray           # [L, H] pixels
  entropy: np.ndarray                 # [L, H] nats
  self_share: np.ndarray              # [L, H]
  quantile_levels: tuple
  distributions: dict                 # scalar name -> ScalarDistribution
  cls_share: Optional[np.ndarray] = None       # [L, H] (class-token models)
  cls_attention: Optional[np.ndarray] = None   # [L, H, n, n]
  to_cls: Optional[np.ndarray] = None          # [L, H, n, n]
  map_image_index: np.ndarray = dataclasses.field(
      default_factory=lambda: np.zeros(0, np.int32))  # [M] image of each stored map
  map_attention: Optional[np.ndarray] = None   # [M, L, H, T, T] float16
  map_rollout: Optional[np.ndarray] = None     # [M, L, T, T] float16
  baselines: Optional[dict] = None             # strength.baselines(config): uniform / self
  qk_embedding: Optional[np.ndarray] = None    # [L, H, 2, Mq * T, 2] joint query/key PCA
  qk_images: Optional[np.ndarray] = None       # [Mq] int: stored map k of each embedded image
  # Models with a MAP pooling head (no class token): where the model looks.
  pool_attention: Optional[np.ndarray] = None      # [H, h, w] the MAP probe's attention
  map_pool_attention: Optional[np.ndarray] = None  # [M, H, T] float16, per stored image
  map_pool_rollout: Optional[np.ndarray] = None    # [M, T] float16: rollout from the probe


@dataclasses.dataclass
class Samples:
  """Pattern samples: one query patch's attention each. recentred [S, c, c] and plain
  [S, n, n] float16 maps; to_cls [S] float16; index [S, 4] int32 rows (image, layer,
  head, query patch)."""
  recentred: np.ndarray
  plain: Optional[np.ndarray]
  to_cls: Optional[np.ndarray]
  index: np.ndarray
  # NaFlex: [S, 2] each sample's own image grid (h, w); the query patch index[:, 3] and
  # `plain` [S, H, W] are then on the canvas grid (H, W) (the image's grid at its top left).
  grids: Optional[np.ndarray] = None

  def query_grids(self, n) -> tuple:
    """(query rows [S], query columns [S], grid rows [S] or h, grid columns [S] or w) for
    the canvas grid n (side, or (h, w))."""
    gh, gw = tuple(n) if isinstance(n, (tuple, list)) else (n, n)
    r, c = np.divmod(self.index[:, 3], gw)
    if self.grids is not None:
      gh, gw = self.grids[:, 0], self.grids[:, 1]
    return r, c, gh, gw

  def inside(self, n) -> np.ndarray:
    """[S, 2n-1, 2n-1] the canvas cells whose key lies inside the image; n the grid side,
    or (h, w) for a rectangular grid (canvas side 2 max(h, w) - 1); each sample's own grid
    when `grids` is set."""
    h, w = tuple(n) if isinstance(n, (tuple, list)) else (n, n)
    n = max(h, w)
    r, c, gh, gw = self.query_grids((h, w))
    gh, gw = np.broadcast_to(gh, r.shape)[:, None], np.broadcast_to(gw, r.shape)[:, None]
    dy = np.arange(2 * n - 1) - (n - 1)
    rows = (r[:, None] + dy[None] >= 0) & (r[:, None] + dy[None] < gh)   # [S, 2n-1]
    cols = (c[:, None] + dy[None] >= 0) & (c[:, None] + dy[None] < gw)
    return rows[:, :, None] & cols[:, None, :]


@dataclasses.dataclass(frozen=True)
class TrainingHistory:
  train_loss: tuple                   # [epochs]
  val_loss: tuple                     # [epochs]
  best_epoch: int
  stopped_early: bool


@dataclasses.dataclass(frozen=True)
class PatternResult:
  """What patterns heads have learned (see patterns/)."""
  map: np.ndarray                     # [g, g, c, c] the latent plane decoded on a grid
  map_extent: np.ndarray              # [2, 2] [[x0, x1], [y0, y1]] latent box
  sample_latent: np.ndarray           # [S, 2]
  sample_cell: np.ndarray             # [S, 2] int (row, col) map cell
  head_density: np.ndarray            # [L, H, g, g] share of each head's samples
  head_cluster: np.ndarray            # [L, H] int
  cluster_pattern: np.ndarray         # [k, c, c] mean re-centred attention
  cluster_names: tuple                # [k]
  reconstruction_error: float
  data_variance: float
  head_reconstruction_error: np.ndarray  # [L, H]
  history: TrainingHistory
  samples: Samples
