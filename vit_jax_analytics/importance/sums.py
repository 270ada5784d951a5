"""The float64 accumulators of importance and what they become: sums over images (stage 1)
and per-subset-image rows (stage 2), flat arrays by name so that a ProgressStore saves them
as they are; their exact reduction over processes; the means, changes and standard errors
of the `ImportanceResult`."""

from __future__ import annotations

from typing import Optional

import jax.numpy as jnp
import numpy as np

from vit_jax_analytics import parallel
from vit_jax_analytics.errors import NonFiniteError
from vit_jax_analytics.importance.objective import ABLATION_METRICS, Objective, targets_from
from vit_jax_analytics.model import ViTConfig
from vit_jax_analytics.results import (Baseline, Estimate, ImportanceResult, PartialPruning,
                                       PruningCurves)

# The per-image rows stage 1 keeps with --per-image.
PER_IMAGE = ('taylor', 'ablation_loss', 'ablation_kl')


def _valid_sum(x, valid):
  """Sum over the last (batch) axis of the valid entries, in float64 on the host."""
  x = np.asarray(x, np.float64)
  return np.sum(np.where(valid, x, 0.), axis=-1)


def stage1_sums(config: ViTConfig, n_images: int, per_image: bool) -> dict:
  L, H = config.num_layers, config.num_heads
  acc = {'count': np.zeros(()), 'labelled': np.zeros(()), 'taylor': np.zeros((L, H))}
  acc.update({f'full_{k}': np.zeros(()) for k in ABLATION_METRICS})
  acc.update({f'ablation_{k}': np.zeros((L, H)) for k in ABLATION_METRICS})
  # Each image's stratum (its target class; -1: not read) for the stage-2 subset.
  acc['target'] = np.full(n_images, -1, np.int32)
  if config.has_pool_attention:  # the MAP head's heads: a pooling row
    acc['pool_taylor'] = np.zeros(H)
    acc.update({f'pool_ablation_{k}': np.zeros(H) for k in ABLATION_METRICS})
  if per_image:
    for k in PER_IMAGE:
      acc[f'per_image_{k}'] = np.full((n_images, L, H), np.nan, np.float32)
    # The unmasked model on each image (the image overview): NaN / -1 where unreadable.
    acc['per_image_loss'] = np.full(n_images, np.nan, np.float32)
    acc['per_image_prediction'] = np.full(n_images, -1., np.float32)
  return acc


def strata(out, labels, objective: Objective):
  """Each image's stratum for the stage-2 subset: its target class; under the embedding
  objective its label (unlabelled images are one stratum, 0)."""
  if objective.label_metrics:
    return targets_from(out, labels, objective)
  return jnp.maximum(labels, 0)


def add_stage1(acc: dict, batch, grads, ablation, full, targets=None, logits=None,
               pool_grads=None, pool_ablation=None) -> None:
  """Adds one batch's Taylor |grads| [B, L, H], ablation {metric: [L, H, B]} and unmasked
  {metric: [B]} metrics of the valid images to the sums (and per-image rows; with the
  targets [B], each image's stratum of the stage-2 subset; with the unmasked logits
  [B, C], also each image's loss and predicted class); with a MAP head also its heads'
  pool_grads [B, H] and pool_ablation {metric: [H, B]}."""
  valid = batch.valid
  bad = valid & ~np.isfinite(np.asarray(full['loss']))
  if bad.any():
    raise NonFiniteError("the model's loss", batch.index[bad])
  if pool_grads is not None:
    acc['pool_taylor'] += _valid_sum(np.moveaxis(np.asarray(pool_grads), 0, -1), valid)
    for m in ABLATION_METRICS:
      acc[f'pool_ablation_{m}'] += _valid_sum(pool_ablation[m], valid)
  acc['count'] += valid.sum()
  acc['labelled'] += (valid & (batch.labels >= 0)).sum()
  acc['taylor'] += _valid_sum(np.moveaxis(np.asarray(grads), 0, -1), valid)
  for m in ABLATION_METRICS:
    acc[f'full_{m}'] += _valid_sum(full[m], valid)
    acc[f'ablation_{m}'] += _valid_sum(ablation[m], valid)
  if targets is not None and 'target' in acc:
    acc['target'][batch.index[valid]] = np.asarray(targets)[valid]
  if 'per_image_taylor' in acc:
    rows = batch.index[valid]
    acc['per_image_taylor'][rows] = np.asarray(grads)[valid]
    full_loss = np.asarray(full['loss'])
    acc['per_image_ablation_loss'][rows] = np.moveaxis(
        np.asarray(ablation['loss']) - full_loss, -1, 0)[valid]
    acc['per_image_ablation_kl'][rows] = np.moveaxis(np.asarray(ablation['kl']), -1, 0)[valid]
    if logits is not None and 'per_image_prediction' in acc:
      acc['per_image_loss'][rows] = full_loss[valid]
      acc['per_image_prediction'][rows] = np.argmax(np.asarray(logits), -1)[valid]


def head_scores(acc: dict) -> tuple:
  """Means from the stage-1 sums: ({metric: [L, H]}, Baseline of the unmasked model)."""
  count = acc['count']
  taylor = acc['taylor'] / count
  norm = np.linalg.norm(taylor, axis=1, keepdims=True)
  scores = {'taylor': taylor, 'taylor_normalized': taylor / np.where(norm > 0, norm, 1.)}
  base = {m: acc[f'full_{m}'] / count for m in ABLATION_METRICS}
  scores['ablation_loss'] = acc['ablation_loss'] / count - base['loss']
  scores['ablation_top1'] = base['top1'] - acc['ablation_top1'] / count
  scores['ablation_top5'] = base['top5'] - acc['ablation_top5'] / count
  scores['ablation_kl'] = acc['ablation_kl'] / count
  if 'pool_taylor' in acc:
    scores['pool_taylor'] = acc['pool_taylor'] / count
    scores['pool_ablation_loss'] = acc['pool_ablation_loss'] / count - base['loss']
    scores['pool_ablation_top1'] = base['top1'] - acc['pool_ablation_top1'] / count
    scores['pool_ablation_top5'] = base['top5'] - acc['pool_ablation_top5'] / count
    scores['pool_ablation_kl'] = acc['pool_ablation_kl'] / count
  baseline = Baseline(float(base['loss']), float(base['top1']), float(base['top5']))
  return scores, baseline


def stage2_sums(plan) -> dict:
  """Per-image rows for the images of the stage-2 subset of `plan` (a plan.Stage2Plan;
  bounded by the subset's size)."""
  s = len(plan.subset)
  acc = {}
  for m in ABLATION_METRICS:
    acc[f's2_full_{m}'] = np.full(s, np.nan)
    acc[f's2_curve_{m}'] = np.full((s, len(plan.unique_masks)), np.nan)
    acc[f's2_partial_{m}'] = np.full((s, len(plan.heads), len(plan.keeps)), np.nan)
  return acc


def _mean_se(x: np.ndarray) -> tuple:
  """Mean and standard error of the mean over the first axis (float64)."""
  x = np.asarray(x, np.float64)
  n = x.shape[0]
  mean = x.mean(0)
  se = x.std(0, ddof=1) / np.sqrt(n) if n > 1 else np.full_like(mean, np.nan)
  return mean, se


# Per-image rows (one process fills each row; the others hold the fill): merged, not summed.
_ROWS_FILL = {'target': -1, 'per_image_prediction': -1}


def reduce_sums(acc: dict, mesh) -> dict:
  """The sums of every process of `mesh` (exact, float64); per-image rows merged."""
  if not parallel.is_multiprocess(mesh):
    return acc
  rows = {k: v for k, v in acc.items()
          if k.startswith(('per_image_', 's2_')) or k in _ROWS_FILL}
  out = parallel.allreduce_sums({k: v for k, v in acc.items() if k not in rows}, mesh)
  out.update({k: parallel.allgather_rows(v, mesh, _ROWS_FILL.get(k, np.nan))
              for k, v in rows.items()})
  return out


def finalise(acc: dict, plan, variants: list,
             objective: Optional[Objective] = None) -> ImportanceResult:
  """Means and changes against the unmasked model, from the sums of stage 1 and the
  per-image rows of stage 2 (means over its subset, with standard errors); plan: the
  plan.Stage2Plan stage 2 ran."""
  scores, baseline = head_scores(acc)
  count = acc['count']
  shape = (len(plan.order_names), len(plan.counts))
  curves, partial, whole = {}, {}, {}
  for m in ABLATION_METRICS:
    full = acc[f's2_full_{m}']                                       # [S]
    per_mask = np.concatenate([acc[f's2_curve_{m}'], full[:, None]], axis=1)
    values = per_mask[:, plan.mask_of]                               # -1: the unmasked model
    curves[m] = _mean_se(values)
    # As for ablation: loss increase, accuracy drops, KL; paired with each image's own
    # unmasked value.
    pruned = acc[f's2_partial_{m}']                                  # [S, E, V]
    sign = {'loss': 1., 'kl': 1.}.get(m, -1.)
    change = pruned if m == 'kl' else sign * (pruned - full[:, None, None])
    partial[m] = _mean_se(change[..., :len(variants)])
    whole[m] = _mean_se(change[..., len(variants)])  # the last keep: the whole head
  subset_base = Baseline(*(float(np.mean(acc[f's2_full_{m}'])) for m in ('loss', 'top1', 'top5')))
  return ImportanceResult(
      **scores, baseline=baseline,
      curves=PruningCurves(
          np.asarray(plan.counts), tuple(plan.order_names),
          {m: Estimate(curves[m][0].reshape(shape), curves[m][1].reshape(shape))
           for m in ABLATION_METRICS}),
      partial=PartialPruning(
          np.asarray(plan.heads), tuple((v.name, v.description) for v in variants),
          {m: Estimate(*partial[m]) for m in ABLATION_METRICS},
          {m: Estimate(*whole[m]) for m in ABLATION_METRICS}),
      images=int(count), labelled_images=int(acc['labelled']),
      label_free=int(acc['labelled']) < int(count),
      **{f'per_image_{k}': acc.get(f'per_image_{k}') for k in PER_IMAGE},
      subset_index=np.asarray(plan.subset, np.int64), subset_baseline=subset_base,
      per_image_loss=acc.get('per_image_loss'),
      per_image_prediction=(None if acc.get('per_image_prediction') is None
                            else acc['per_image_prediction'].astype(np.int32)),
      objective=objective.describe() if objective is not None else None)
