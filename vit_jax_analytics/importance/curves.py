"""Pruning curves: the metrics with more and more heads removed along an order, each mask
run from the recorded input of its first layer with a head removed (prefix reuse)."""

from __future__ import annotations

import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax_analytics import prefix_reuse
from vit_jax_analytics.importance.forwards import unmasked_forward
from vit_jax_analytics.importance.objective import Objective, image_metrics, resolve_objective
from vit_jax_analytics.model import ViTConfig


ORDER_METRICS = ('taylor', 'ablation_loss', 'ablation_kl', 'ablation_top1')


def curve_counts(config: ViTConfig, points: Optional[int]) -> list:
  """Heads removed at each point of a curve: `points` evenly spaced counts from 0 to L*H
  (every count when points is 0 or None)."""
  n = config.num_layers * config.num_heads
  points = n + 1 if not points else max(2, min(points, n + 1))
  return sorted({int(round(x)) for x in np.linspace(0, n, points)})


def pruning_masks(order: np.ndarray, counts: Sequence[int], config: ViTConfig) -> np.ndarray:
  """order [L*H] flat head indices, least important first -> masks [len(counts), L, H]
  with the first counts[i] heads of the order removed."""
  n = config.num_layers * config.num_heads
  masks = np.ones((len(counts), n), np.float32)
  for i, k in enumerate(counts):
    masks[i, order[:k]] = 0.
  return masks.reshape(len(counts), config.num_layers, config.num_heads)


def first_masked_layers(masks: np.ndarray) -> tuple:
  """masks [M, L, H] -> for each mask the first layer with a head removed (None: none)."""
  removed = np.asarray(masks).min(axis=2) < 1.                     # [M, L]
  return tuple(int(np.argmax(r)) if r.any() else None for r in removed)


def curves_reuse(params, config, blocks, targets, logp_full, masks, first_layers, chunk,
                 objective: Objective):
  """Metrics of head masks [M, L, H], each run from the recorded input of its first layer
  with a head removed (`first_layers` [M], may be traced; none may be None), through one
  compiled run_from_layer graph -> {metric: [M, B]}.

  Masks go in groups of `chunk` (vmapped), sorted by first layer; a group starts at its
  first mask's layer (the smallest), which is exact for the others too: their rows of that
  group's earlier layers keep every head, as the recorded stream did.
  """
  stacked = prefix_reuse.stacked_layers(params, config)
  inputs_all = prefix_reuse.stacked_intermediates(blocks, config, 'block_input')  # [L, B, T, D]
  m = masks.shape[0]
  first_layers = jnp.asarray(first_layers, jnp.int32)
  order = jnp.argsort(first_layers)
  groups = -(-m // chunk)
  padded = jnp.concatenate([order, jnp.repeat(order[-1:], groups * chunk - m)])
  group_masks = masks[padded].reshape(groups, chunk, *masks.shape[1:])
  group_start = first_layers[padded].reshape(groups, chunk)[:, 0]

  def per_group(group):
    g_masks, start = group

    def one(mask):
      out = prefix_reuse.run_from_layer(params, config, stacked, inputs_all[start], start,
                                        head_mask=mask)
      return image_metrics(out, targets, logp_full, objective)

    return jax.vmap(one)(g_masks) if chunk > 1 else jax.tree.map(
        lambda a: a[None], one(g_masks[0]))

  result = jax.lax.map(per_group, (group_masks, group_start))       # {k: [G, chunk, B]}
  inverse = jnp.argsort(order)
  return {k: v.reshape(groups * chunk, -1)[:m][inverse] for k, v in result.items()}


@functools.partial(jax.jit, static_argnums=(1, 6, 7))
def curves_batch(params, config: ViTConfig, images, labels, masks, first_layers,
                 chunk: int = 8, objective=None):
  """Pruning-curve masks [M, L, H] of one batch with prefix reuse -> {metric: [M, B]}."""
  objective = resolve_objective(config, objective)
  targets, logp_full, state, _ = unmasked_forward(params, config, images, labels, objective)
  return curves_reuse(params, config, state['Transformer'], targets, logp_full, masks,
                      first_layers, chunk, objective)
