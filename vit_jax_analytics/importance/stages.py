"""The two jitted per-batch kernels `compute_importance` streams: stage 1 (Taylor and the
ablation scan sharing one forward) and stage 2 (pruning curves and partial pruning sharing
one unmasked forward)."""

from __future__ import annotations

import functools
from typing import Optional

import jax

from vit_jax_analytics import model as model_lib, parallel
from vit_jax_analytics.importance.ablation import ablation_scan, single_head_forwards_sharded
from vit_jax_analytics.importance.curves import curves_reuse
from vit_jax_analytics.importance.forwards import (masked_forwards, single_head_forwards,
                                                   unmasked_forward)
from vit_jax_analytics.importance.objective import (Objective, image_metrics, resolve_objective,
                                                    targets_from)
from vit_jax_analytics.importance.partial import partial_reuse, partial_whole_model
from vit_jax_analytics.importance.taylor import taylor_grads
from vit_jax_analytics.model import ViTConfig


@functools.partial(jax.jit, static_argnums=(1, 4, 5), static_argnames=('mesh',))
def taylor_ablation_batch(params, config: ViTConfig, images, labels, chunk: int = 8,
                          objective: Optional[Objective] = None, index=None, mesh=None):
  """Taylor importance and the single-head ablation scan (and a MAP head's pooling row)
  sharing one forward.

  The forward of the Taylor pass (all-ones per-image masks, whose multiplications by 1
  leave every value as the unmasked forward computes it) also records the intermediates
  the ablation scan starts from, so the scan's "1 +" unmasked forward is not paid again.
  -> (|dL_i/d xi| [B, L, H], |dL_i/d xi_pool| [B, H] or None, {metric: [L, H, B]},
  {metric: [H, B]} or None, full outputs [B, ...]).

  mesh (static): a 2-D ('batch', 'masks') mesh (`streaming.analysis_mesh(K)`)
  splits the scan's heads over its 'masks' axis (shard_map; the images are split over
  'batch'); None or a 1-D mesh: the heads are not split.
  """
  obj = resolve_objective(config, objective)
  reuse = model_lib.supports_prefix_reuse(config)
  split = mesh is not None and parallel.mask_shards(mesh) > 1
  grads, pool_grads, out, state = taylor_grads(params, config, images, labels, obj, index,
                                               record=reuse)
  targets, reference = targets_from(out, labels, obj), obj.reference(out)
  if not reuse:  # an intercepted model records nothing to resume from: full forwards
    if split:
      ablation = single_head_forwards_sharded(params, config, images, targets, reference,
                                              chunk, obj, mesh)
    else:
      ablation = single_head_forwards(params, config, images, targets, reference, chunk, obj)
    return grads, None, ablation, None, out
  ablation, pool_ablation = ablation_scan(params, config, state, targets, reference, chunk,
                                          obj, mesh if split else None)
  return grads, pool_grads, ablation, pool_ablation, out


@functools.partial(jax.jit, static_argnums=(1, 8, 10, 11))
def curves_partial_batch(params, config: ViTConfig, images, labels, masks, first_layers,
                         head_index, keeps, renormalize: bool, layers, chunk: int = 8,
                         objective=None):
  """Stage 2 of one batch, sharing one unmasked forward: (unmasked {metric: [B]}, curve
  masks {metric: [M, B]} (prefix reuse from each mask's first masked layer), partial
  pruning {metric: [P, V, B]} (prefix reuse, see partial_reuse))."""
  objective = resolve_objective(config, objective)
  targets, logp_full, state, logits = unmasked_forward(params, config, images, labels,
                                                       objective)
  blocks = state['Transformer']
  full = image_metrics(logits, targets, logp_full, objective)
  reuse = model_lib.supports_prefix_reuse(config)
  # An intercepted model cannot resume mid-way: curve masks run as full forwards, partial
  # pruning reruns the whole model with the edit in its layer.
  if reuse:
    curves = (curves_reuse(params, config, blocks, targets, logp_full, masks, first_layers,
                           chunk, objective) if masks.shape[0] else {})
    partial = (partial_reuse(params, config, blocks, targets, logp_full, head_index, keeps,
                             renormalize, layers, chunk, objective)
               if head_index.shape[0] else {})
  else:
    curves = (masked_forwards(params, config, images, targets, logp_full, masks, chunk,
                              objective) if masks.shape[0] else {})
    partial = (partial_whole_model(params, config, images, targets, logp_full, head_index,
                                   keeps, renormalize, chunk, objective)
               if head_index.shape[0] else {})
  return full, curves, partial
