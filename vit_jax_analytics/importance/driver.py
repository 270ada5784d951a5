"""compute_importance: the two stages streamed over a BatchSource, resumable from a
ProgressStore (stage 1 over every image, stage 2 over the plan's subset)."""

from __future__ import annotations

import dataclasses
import time
from typing import Optional

import jax.numpy as jnp
import numpy as np

from vit_jax_analytics import cost, parallel
from vit_jax_analytics.batches import BatchSource, ProgressStore, subset_source
from vit_jax_analytics.errors import OptionError
from vit_jax_analytics.importance.objective import (ABLATION_METRICS, Objective, full_metrics,
                                                    resolve_objective)
from vit_jax_analytics.importance.options import ImportanceOptions, default_chunk
from vit_jax_analytics.importance.partial import partial_variants
from vit_jax_analytics.importance.plan import Stage2Plan, plan_stage2
from vit_jax_analytics.importance.stages import curves_partial_batch, taylor_ablation_batch
from vit_jax_analytics.importance.sums import (add_stage1, finalise, reduce_sums, stage1_sums,
                                               stage2_sums, strata)
from vit_jax_analytics.model import ViTConfig
from vit_jax_analytics.results import ImportanceResult
from vit_jax_analytics.streaming import (BatchStream, StageClock, StageTiming, analysis_mesh,
                                         open_stream)


class _Saver:
  """Saves the sums to a ProgressStore, throttled: per-image arrays make a save O(images)."""

  def __init__(self, store: Optional[ProgressStore], every_seconds: float):
    self.store, self.every, self.last = store, every_seconds, time.monotonic()

  def __call__(self, acc: dict, stage: int, next_batch: int, force: bool = False) -> None:
    if self.store and (force or time.monotonic() - self.last > self.every):
      self.store.save(next_batch, {**acc, 'stage': np.asarray(stage)})
      self.last = time.monotonic()


def progress_state_shapes(config: ViTConfig) -> dict:
  """{name: shape} of what every progress state compute_importance saves holds: stage 1's
  sums and the stage (the per-image rows, whose sizes vary with the images, left out)."""
  sums = {k: v.shape for k, v in stage1_sums(config, 0, False).items() if k != 'target'}
  return {**sums, 'stage': ()}


def run_stage1(stream: BatchStream, config, first_batch, acc, chunk, save, progress: bool,
               objective: Objective) -> StageClock:
  """Taylor and the ablation scan over the stream's batches from first_batch."""
  params, mesh = stream.params, stream.mesh
  clock = StageClock()
  for k, batch in enumerate(stream.batches(first_batch, progress=progress,
                                           desc='importance 1/2'), start=first_batch):
    images, labels, index = stream.put(batch.images, batch.labels,
                                       np.asarray(batch.index, np.int32))
    cfg = config.for_images(batch.images.shape[1:3])  # NaFlex: the batch's own grid
    args = (params, cfg, images, labels, chunk, objective, index)
    split = mesh if parallel.mask_shards(mesh) > 1 else None  # the heads over 'masks'
    clock.compile(taylor_ablation_batch, *args, mesh=split)
    grads, pool_grads, ablation, pool_ablation, out = taylor_ablation_batch(*args, mesh=split)
    full = full_metrics(out, labels, objective)
    image_strata = strata(out, labels, objective)
    logits = objective.logits(out) if objective.label_metrics else None
    # With several processes, each reads back (and adds) only its own rows.
    add_stage1(acc, stream.global_batch(batch), *stream.fetch(
        (grads, ablation, full, image_strata, logits, pool_grads, pool_ablation)))
    save(acc, 1, k + 1)
    clock.batch(batch.valid)
  save(acc, 2, 0, force=True)
  return clock


def grid_keeps(config: ViTConfig, plan: Stage2Plan, options: ImportanceOptions):
  """keeps(batch config) -> [V + 1, T, T]: the plan's partial-pruning multipliers, made
  again on a NaFlex batch's own grid (its local / global pairs and its region)."""
  def keeps(cfg):
    if cfg == config:
      return plan.keeps
    v = np.stack([x.keep for x in partial_variants(cfg, options.partial_radii,
                                                   options.partial_region, strict=False)])
    return np.concatenate([v, np.zeros_like(v[:1])])
  return keeps


def run_stage2(stream: BatchStream, config, first_batch, acc, plan: Stage2Plan, renormalize,
               chunk, save, progress: bool, objective: Objective,
               keeps_for=None) -> StageClock:
  """Pruning curves and partial pruning over the stream's batches of the subset, into
  `acc`'s per-subset-image rows (batch.index indexes the subset). keeps_for(batch config):
  the partial-pruning multipliers of a batch's grid (default plan.keeps)."""
  if 's2_full_loss' not in acc:
    acc.update(stage2_sums(plan))
  params = stream.params
  masks = parallel.replicate(stream.mesh, plan.unique_masks)
  heads, keeps = jnp.asarray(plan.heads), jnp.asarray(plan.keeps)
  first_layers = jnp.asarray(plan.first_layers, jnp.int32)
  layers = jnp.asarray(plan.layers, jnp.int32)
  clock = StageClock()
  for k, batch in enumerate(stream.batches(first_batch, progress=progress,
                                           desc='importance 2/2'), start=first_batch):
    images, labels = stream.put(batch.images, batch.labels)
    cfg = config.for_images(batch.images.shape[1:3])  # NaFlex: the batch's own grid
    grid_keeps_ = keeps if keeps_for is None or cfg == config else jnp.asarray(keeps_for(cfg))
    args = (params, cfg, images, labels, masks, first_layers, heads, grid_keeps_, renormalize,
            layers, chunk, objective)
    clock.compile(curves_partial_batch, *args)
    full, curves, partial = stream.fetch(curves_partial_batch(*args))
    valid = stream.global_batch(batch).valid
    rows = stream.global_batch(batch).index[valid]
    for m in ABLATION_METRICS:
      acc[f's2_full_{m}'][rows] = np.asarray(full[m])[valid]
      if curves:
        acc[f's2_curve_{m}'][rows] = np.moveaxis(np.asarray(curves[m]), -1, 0)[valid]
      if partial:
        acc[f's2_partial_{m}'][rows] = np.moveaxis(np.asarray(partial[m]), -1, 0)[valid]
    save(acc, 2, k + 1)
    clock.batch(batch.valid)
  return clock


def compute_importance(params, config: ViTConfig, source: BatchSource,
                       options: ImportanceOptions = ImportanceOptions(), mesh=None,
                       store: Optional[ProgressStore] = None,
                       timings: Optional[dict] = None,
                       objective: Optional[Objective] = None) -> ImportanceResult:
  """Every importance metric, streamed over the images of `source`.

  Stage 1 (Taylor, ablation) reads every image; stage 2 (pruning curves, partial pruning)
  a class-stratified subset of options.subset_images of them (all when there are fewer).
  mesh: a streaming.analysis_mesh() (default: every device of every process, as a 2-D
  (batch x masks) mesh when options.mask_shards > 1; with several processes each reads
  only its shard of `source` — and of the subset — and the sums are reduced exactly).
  store: where progress is saved after batches, so that an interrupted run with the same
  store continues (one store per process; all processes resume together
  or start over). timings: a dict that receives {'importance stage 1' / 2: its
  streaming.StageTiming}, with the forward-equivalents per image each stage evaluated.
  objective: default classification for a classifier, embedding distortion otherwise
  (`classes_objective` for a class matrix). options.dtype 'bfloat16' runs the forwards in
  bfloat16 (the metrics are still float32, see precision.py).
  """
  objective = resolve_objective(config, objective)
  if objective.kind == 'embedding':
    objective = dataclasses.replace(objective, taylor_probes=options.taylor_probes,
                                    seed=options.seed)
  if mesh is None:
    mesh = analysis_mesh(options.mask_shards)
  elif options.mask_shards not in (1, parallel.mask_shards(mesh)):
    raise OptionError('mask_shards', f'{options.mask_shards} differs from the given mesh\'s '
                      f'\'masks\' axis ({parallel.mask_shards(mesh)})', ImportanceOptions)
  n_images = len(source)
  stream = open_stream(params, source, options.batch_size, options.dtype, mesh)
  chunk = options.chunk or default_chunk()
  variants = partial_variants(config, options.partial_radii, options.partial_region)
  save = _Saver(store, options.save_every_seconds)

  stage, first, acc = 1, 0, stage1_sums(config, n_images, options.per_image)
  saved = store.load() if store else None
  if not parallel.agree(-1 if saved is None else saved[0] * 4 + int(saved[1]['stage']), mesh):
    saved = None  # processes saved at different batches: all start over
  if saved is not None:
    first, acc = saved
    stage = int(acc.pop('stage'))
  clock1 = None
  if stage == 1:
    clock1 = run_stage1(stream, config, first, acc, chunk, save, options.progress, objective)
    first = 0
  plan = plan_stage2(reduce_sums(acc, mesh), config, options, variants, objective)
  # No more padding than the device count needs when the subset is smaller than a batch.
  subset = stream.over(subset_source(source, plan.subset), options.batch_size)
  clock2 = run_stage2(subset, config, first, acc, plan, options.renormalize, chunk, save,
                      options.progress, objective, grid_keeps(config, plan, options))
  if timings is not None:  # what each stage took and evaluated, for the cost report
    probes = objective.taylor_probes if objective.kind == 'embedding' else 1
    s1 = dict(forward_eq=cost.stage1(config, probes))
    s2 = dict(images=len(plan.subset), forward_eq=cost.stage2(
        config, plan.first_layers, plan.layers, len(variants)))
    timings['importance stage 1'] = (clock1 and clock1.timing(**s1)) or StageTiming(**s1)
    timings['importance stage 2'] = clock2.timing(**s2) or StageTiming(**s2)
  return finalise(reduce_sums(acc, mesh), plan, variants, objective)
