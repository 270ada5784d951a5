"""Stage 2's plan, fixed by the stage-1 scores: the head orders, the (unique) curve masks,
the partially pruned heads and the class-stratified image subset."""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import numpy as np

from vit_jax_analytics.importance.curves import (ORDER_METRICS, curve_counts,
                                                 first_masked_layers, pruning_masks)
from vit_jax_analytics.importance.objective import Objective
from vit_jax_analytics.importance.options import ImportanceOptions
from vit_jax_analytics.importance.sums import head_scores
from vit_jax_analytics.model import ViTConfig


def head_orders(scores: dict, config: ViTConfig, random_orders: int, seed: int,
                metrics: Sequence[str] = ORDER_METRICS) -> dict:
  """Flat head orders, least important first: one per metric of `scores` ({name: [L, H]})
  in `metrics`, plus seeded random ones."""
  orders = {}
  for name in metrics:
    # Stable sort; ties broken by head index so orders are reproducible.
    orders[name] = np.argsort(np.asarray(scores[name]).ravel(), kind='stable')
  rng = np.random.default_rng(seed)
  n = config.num_layers * config.num_heads
  for i in range(random_orders):
    orders[f'random_{i}'] = rng.permutation(n)
  return orders


def select_partial_heads(taylor: np.ndarray, count: Optional[int]) -> np.ndarray:
  """Flat indices (ascending) of the heads to partially prune: the `count` with the
  highest Taylor importance (all heads when count is 0 or None)."""
  n = taylor.size
  count = n if not count else count
  top = np.argsort(-taylor.ravel(), kind='stable')[:min(count, n)]
  return np.sort(top)


def stratified_subset(strata: np.ndarray, size: int, seed: int) -> np.ndarray:
  """Indices (ascending) of `size` of the images with strata >= 0, each stratum (class)
  represented in proportion to its size; deterministic given the seed.

  Each stratum is shuffled; image j of a stratum of n gets the key (j + 1/2) / n, and the
  `size` smallest keys are taken (ties by stratum), so every prefix is proportional.
  """
  strata = np.asarray(strata)
  rng = np.random.default_rng([seed, 1])
  keys, index = [], []
  for c in np.unique(strata[strata >= 0]):
    members = rng.permutation(np.flatnonzero(strata == c))
    keys.append((np.arange(len(members)) + .5) / len(members) + c * 1e-9)
    index.append(members)
  if not index:
    return np.zeros(0, np.int64)
  keys, index = np.concatenate(keys), np.concatenate(index)
  return np.sort(index[np.argsort(keys, kind='stable')[:size]])


class Stage2Plan(NamedTuple):
  """What stage 2 evaluates, fixed by the stage-1 scores."""
  order_names: list        # [O]
  counts: list             # [P]
  curve_masks: np.ndarray  # [O * P, L, H]
  heads: np.ndarray        # [E] flat indices of the partially pruned heads, ascending
  layers: tuple            # [E] their layers (static for jit)
  keeps: np.ndarray        # [V, T, T]
  subset: np.ndarray = np.zeros(0, np.int64)  # [S] image indices of the stage-2 subset
  unique_masks: np.ndarray = np.zeros((0, 0, 0), np.float32)  # [U, L, H] computed masks
  mask_of: np.ndarray = np.zeros(0, np.int64)  # [O * P] row of unique_masks, -1: none removed
  first_layers: tuple = ()  # [U] first layer with a head removed (static for jit)


def plan_stage2(acc: dict, config: ViTConfig, options: ImportanceOptions,
                variants: list, objective: Optional[Objective] = None) -> Stage2Plan:
  scores, _ = head_scores(acc)
  # Without labels' metrics (the embedding objective) top-1 drops are all 0: no order.
  metrics = tuple(m for m in ORDER_METRICS if m != 'ablation_top1' or objective is None
                  or objective.label_metrics)
  orders = head_orders(scores, config, options.random_orders, options.seed, metrics)
  counts = curve_counts(config, options.curve_points)
  masks = np.concatenate([pruning_masks(o, counts, config) for o in orders.values()])
  heads = select_partial_heads(scores['taylor'], options.partial_heads)
  layers = tuple(int(h) // config.num_heads for h in heads)
  # Masks are computed once each: no head removed is the unmasked model (free), all
  # removed is the same for every order, and orders may share a prefix.
  flat = masks.reshape(len(masks), -1)
  unmasked = flat.min(axis=1) == 1.
  unique, inverse = np.unique(flat[~unmasked], axis=0, return_inverse=True)
  mask_of = np.full(len(masks), -1, np.int64)
  mask_of[~unmasked] = np.ravel(inverse)
  unique = unique.reshape(-1, config.num_layers, config.num_heads).astype(np.float32)
  targets = acc['target']
  subset = stratified_subset(targets, options.subset_size(int((targets >= 0).sum())),
                             options.seed)
  # One more keep than variants, all zeros: the whole head removed, on the same subset
  # and images as its parts (finalise splits it off as partial_whole_*).
  keeps = np.stack([v.keep for v in variants])
  keeps = np.concatenate([keeps, np.zeros_like(keeps[:1])])
  return Stage2Plan(list(orders), counts, masks, heads, layers, keeps, subset, unique,
                    mask_of, first_masked_layers(unique))
