"""Which heads matter? Pruning-based importance of every layer x head.

Per-batch functions are pure and jitted; `compute_importance` streams them over a
`BatchSource` in two stages: (1) Taylor and the single-head ablation scan, which give the
head orders; (2) pruning curves along those orders and partial pruning.

Metrics (each [layer, head], means over images):
  taylor       mean |dL/d xi[l,h]| at xi = 1 (Michel et al. 2019), L the cross-entropy; also
               `taylor_normalized`, L2-normalised within each layer as in that paper.
  ablation_*   exactly one head masked out: change in loss, in top-1 and top-5 accuracy
               (drops are positive when the head helps), and KL(p_full || p_masked).
Targets are the labels, or the unmasked model's own prediction for unlabelled images.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax_analytics import model as model_lib, parallel
from vit_jax_analytics.batches import (DEFAULT_BATCH_SIZE, BatchSource, ProgressStore,
                                       process_shard)
from vit_jax_analytics.errors import NonFiniteError, OptionError
from vit_jax_analytics.model import ViTConfig
from vit_jax_analytics.options import check, option, parse_ints
from vit_jax_analytics.results import Baseline, ImportanceResult

ABLATION_METRICS = ('loss', 'top1', 'top5', 'kl')
ORDER_METRICS = ('taylor', 'ablation_loss', 'ablation_kl', 'ablation_top1')


# --- per-image metrics -------------------------------------------------------------------

def targets_from(logits_full, labels):
  """labels [B] (-1 unknown) -> targets [B]: the label, else the unmasked prediction."""
  return jnp.where(labels >= 0, labels, jnp.argmax(logits_full, -1))


def image_metrics(logits, targets, logp_full):
  """logits [..., B, C] -> {'loss', 'top1', 'top5', 'kl'} each [..., B]."""
  logp = jax.nn.log_softmax(logits)
  loss = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)
  rank = jnp.sum(logits > target_logit, axis=-1)  # classes strictly above the target
  kl = jnp.sum(jnp.exp(logp_full) * (logp_full - logp), axis=-1)
  return {'loss': loss, 'top1': (rank < 1).astype(jnp.float32),
          'top5': (rank < 5).astype(jnp.float32), 'kl': kl}


# --- Taylor importance -------------------------------------------------------------------

@functools.partial(jax.jit, static_argnums=1)
def taylor_batch(params, config: ViTConfig, images, labels):
  """One forward + backward: (|dL_i/d xi| [B, L, H], full logits [B, C]).

  Each image gets its own copy of the mask, so the gradient of the summed loss with respect
  to the [B, L, H] mask is every image's own gradient, in one backward pass.
  """
  b = images.shape[0]

  def total_loss(mask):
    logits = model_lib.apply(params, config, images, head_mask=mask)
    targets = targets_from(jax.lax.stop_gradient(logits), labels)
    logp = jax.nn.log_softmax(logits)
    return -jnp.sum(jnp.take_along_axis(logp, targets[:, None], axis=-1)), logits

  grads, logits = jax.grad(total_loss, has_aux=True)(
      jnp.ones((b, config.num_layers, config.num_heads), jnp.float32))
  return jnp.abs(grads), logits


# --- single-head ablation ----------------------------------------------------------------

def single_head_masks(config: ViTConfig) -> jnp.ndarray:
  """[L*H, L, H]: mask m removes head (m // H, m % H)."""
  n = config.num_layers * config.num_heads
  return 1. - jnp.eye(n, dtype=jnp.float32).reshape(n, config.num_layers, config.num_heads)


def _metrics_for_masks(params, config, images, targets, logp_full, masks, chunk):
  """Full forwards, vmapped over masks [M, L, H] in chunks -> metrics [M, B]."""
  def one(mask):
    return image_metrics(model_lib.apply(params, config, images, head_mask=mask), targets,
                         logp_full)
  return jax.lax.map(one, masks, batch_size=chunk)


@functools.partial(jax.jit, static_argnums=(1, 4))
def ablation_batch_no_reuse(params, config: ViTConfig, images, labels, chunk: int = 8):
  """Every single-head ablation as a full forward, vmapped over the L*H masks.
  -> ({metric: [L, H, B]}, full logits [B, C])."""
  logits = model_lib.apply(params, config, images)
  targets, logp_full = targets_from(logits, labels), jax.nn.log_softmax(logits)
  m = _metrics_for_masks(params, config, images, targets, logp_full,
                         single_head_masks(config), chunk)
  shape = (config.num_layers, config.num_heads, images.shape[0])
  return {k: v.reshape(shape) for k, v in m.items()}, logits


def _unmasked(params, config, images, labels):
  """One unmasked forward recording each block's intermediates (the 'intermediates'
  collection sown by model.py) -> (targets [B], log p_full [B, C], blocks, logits)."""
  logits, state = model_lib.VisionTransformer(config).apply(
      {'params': params}, images, mutable=['intermediates'])
  return (targets_from(logits, labels), jax.nn.log_softmax(logits),
          state['intermediates']['Transformer'], logits)


@functools.partial(jax.jit, static_argnums=(1, 4))
def ablation_batch(params, config: ViTConfig, images, labels, chunk: int = 8):
  """Every single-head ablation, reusing what the ablation cannot change.

  Masking head h of layer l leaves layers < l and the other heads of layer l as they were:
  one unmasked forward records, per layer, the residual stream after attention and each
  head's output; removing head h is subtracting its share of the `out` projection from that
  stream, and only the rest of layer l (its MLP) and the layers after it are run again,
  vmapped over the heads. -> ({metric: [L, H, B]}, full logits [B, C]).
  """
  targets, logp_full, blocks, logits = _unmasked(params, config, images, labels)
  per_layer = []
  for layer in range(config.num_layers):
    block = blocks[f'encoderblock_{layer}']
    post_attention = block['post_attention'][0]                     # [B, T, D]
    heads = block['MultiHeadDotProductAttention_1']['heads'][0]     # [B, T, H, D/H]
    out_kernel = params['Transformer'][f'encoderblock_{layer}'][
        'MultiHeadDotProductAttention_1']['out']['kernel']          # [H, D/H, D]

    def without_head(h, layer=layer, post_attention=post_attention, heads=heads,
                     out_kernel=out_kernel):
      share = jnp.einsum('bte,ed->btd', heads[:, :, h], out_kernel[h])
      logits_h = model_lib.apply(params, config, post_attention - share, first_layer=layer,
                                 skip_first_attention=True)
      return image_metrics(logits_h, targets, logp_full)

    per_layer.append(jax.lax.map(without_head, jnp.arange(config.num_heads), batch_size=chunk))
  return {k: jnp.stack([m[k] for m in per_layer]) for k in ABLATION_METRICS}, logits


def full_metrics(logits, labels):
  """Per-image metrics of the unmasked model, {metric: [B]}."""
  targets = targets_from(logits, labels)
  return image_metrics(logits, targets, jax.nn.log_softmax(logits))


# --- pruning curves ----------------------------------------------------------------------

def pruning_masks(order: np.ndarray, counts: Sequence[int], config: ViTConfig) -> np.ndarray:
  """order [L*H] flat head indices, least important first -> masks [len(counts), L, H]
  with the first counts[i] heads of the order removed."""
  n = config.num_layers * config.num_heads
  masks = np.ones((len(counts), n), np.float32)
  for i, k in enumerate(counts):
    masks[i, order[:k]] = 0.
  return masks.reshape(len(counts), config.num_layers, config.num_heads)


# --- partial pruning: remove part of one head's attention --------------------------------

@dataclasses.dataclass(frozen=True)
class PartialVariant:
  name: str
  description: str
  keep: np.ndarray  # [T, T] multiplier on the attention weights (query, key)


def partial_variants(config: ViTConfig, radii=(1, 2, 3), region=None) -> list:
  """The ways of removing part of a head's attention.

  region: (row0, col0, row1, col1) in patch units, half-open; default the central half.
  """
  n, cls = config.grid_size, int(config.has_cls_token)
  t = config.num_tokens
  rows, cols = np.divmod(np.arange(n * n), n)
  cheb = np.maximum(abs(rows[:, None] - rows[None]), abs(cols[:, None] - cols[None]))
  variants = []

  def patch_pairs(remove):  # remove [P, P] over patch pairs; class-token pairs untouched
    keep = np.ones((t, t), np.float32)
    keep[cls:, cls:] = 1. - remove
    return keep

  for r in radii:
    if r >= n:
      raise OptionError('partial_radii', f'radius {r} must be below the patch grid size {n}')
    variants.append(PartialVariant(f'local_r{r}', f'attention to keys within Chebyshev '
                                   f'distance {r} of the query patch removed',
                                   patch_pairs((cheb <= r).astype(np.float32))))
    variants.append(PartialVariant(f'global_r{r}', f'attention to keys farther than {r} '
                                   f'patches from the query patch removed',
                                   patch_pairs((cheb > r).astype(np.float32))))
  if cls:
    keep = np.ones((t, t), np.float32)
    keep[:, 0] = 0.
    variants.append(PartialVariant('to_cls', 'attention to the class token removed', keep))
    keep = np.ones((t, t), np.float32)
    keep[0, :] = 0.
    variants.append(PartialVariant('from_cls', "the class token's own attention removed", keep))
  if region is None:
    region = (n // 4, n // 4, n - n // 4, n - n // 4)
  r0, c0, r1, c1 = region
  if not (0 <= r0 < r1 <= n and 0 <= c0 < c1 <= n):
    raise OptionError('partial_region', f'{tuple(region)}: expected row0 < row1 and '
                      f'col0 < col1 within the {n} x {n} patch grid')
  inside = (rows >= r0) & (rows < r1) & (cols >= c0) & (cols < c1)
  for name, queries in (('region_in', inside), ('region_out', ~inside)):
    keep = np.ones((t, t), np.float32)
    keep[cls:][queries] = 0.
    variants.append(PartialVariant(
        name, f"attention of query patches {'inside' if name == 'region_in' else 'outside'} "
              f'rows {r0}-{r1 - 1}, columns {c0}-{c1 - 1} removed', keep))
  return variants


def _partial_metrics(params, config, blocks, targets, logp_full, head_index, keeps,
                     renormalize, layers, chunk):
  """Metrics with part of one head's attention removed, for every (head, variant) pair.

  head_index [P] flat head indices sorted ascending, `layers` (static) their layers;
  keeps [V, T, T] multipliers on that head's attention weights. Each head's run starts
  at its own layer's input from `blocks` (see _unmasked). -> {metric: [P, V, B]}.
  """
  h_count, v_count = config.num_heads, keeps.shape[0]

  def run(flat_head, keep, layer):
    one_hot = jax.nn.one_hot(flat_head % h_count, h_count)[:, None, None]
    edit_mask = 1. - one_hot * (1. - keep)[None]                     # [H, T, T]

    def edit(weights, l):
      if l != layer:
        return weights
      w = weights * edit_mask
      if renormalize:
        total = jnp.sum(w, -1, keepdims=True)
        w = jnp.where(total > 0, w / jnp.where(total > 0, total, 1.), 0.)
      return w

    block_input = blocks[f'encoderblock_{layer}']['block_input'][0]
    out = model_lib.apply(params, config, block_input, first_layer=layer, attention_edit=edit)
    return image_metrics(out, targets, logp_full)

  results = []
  for layer in sorted(set(layers)):  # one suffix graph per layer, vmapped over its pairs
    idx = np.flatnonzero(np.asarray(layers) == layer)
    pair_heads = jnp.repeat(head_index[idx], v_count)
    pair_keeps = jnp.tile(keeps, (len(idx), 1, 1))
    m = jax.lax.map(lambda hk, layer=layer: run(hk[0], hk[1], layer), (pair_heads, pair_keeps),
                    batch_size=chunk)
    results.append({k: v.reshape(len(idx), v_count, -1) for k, v in m.items()})
  return {k: jnp.concatenate([r[k] for r in results]) for k in ABLATION_METRICS}


@functools.partial(jax.jit, static_argnums=(1, 6, 7, 8))
def partial_batch(params, config: ViTConfig, images, labels, head_index, keeps,
                  renormalize: bool, layers: tuple, chunk: int = 8):
  """Partial pruning of one batch -> {metric: [P, V, B]} (see _partial_metrics)."""
  targets, logp_full, blocks, _ = _unmasked(params, config, images, labels)
  return _partial_metrics(params, config, blocks, targets, logp_full, head_index, keeps,
                          renormalize, layers, chunk)


@functools.partial(jax.jit, static_argnums=(1, 7, 8, 9))
def pruning_batch(params, config: ViTConfig, images, labels, masks, head_index, keeps,
                  renormalize: bool, layers: tuple, chunk: int = 8):
  """Pruning curves and partial pruning of one batch, sharing one unmasked forward.
  -> ({metric: [M, B]} for masks [M, L, H], {metric: [P, V, B]})."""
  targets, logp_full, blocks, _ = _unmasked(params, config, images, labels)
  curves = _metrics_for_masks(params, config, images, targets, logp_full, masks, chunk)
  partial = _partial_metrics(params, config, blocks, targets, logp_full, head_index, keeps,
                             renormalize, layers, chunk)
  return curves, partial


# --- streaming driver ----------------------------------------------------------------------

def default_chunk() -> int:
  return 1 if jax.default_backend() == 'cpu' else 8


@dataclasses.dataclass(frozen=True)
class ImportanceOptions:
  batch_size: int = option(DEFAULT_BATCH_SIZE, 'images per batch')
  chunk: Optional[int] = option(
      None, 'head masks evaluated at once, vmapped; lower it to save memory (default: 1 on '
            'CPU, where big vmapped batches fall out of cache, 8 on accelerators)', parse=int)
  per_image: bool = option(False, "keep every image's values (per-image distributions)")
  curve_points: Optional[int] = option(
      None, 'points on each pruning curve (default: every head count, at most 21)', parse=int)
  random_orders: int = option(5, 'random pruning orders to compare against')
  seed: int = option(0, 'seed of the random pruning orders')
  partial_heads: Optional[int] = option(
      None, 'partial pruning for the N heads of highest Taylor importance (default: all '
            'heads up to 48 of them, else 12)', parse=int)
  partial_radii: tuple = option(
      (1, 2, 3), 'Chebyshev radii (patches) for local/global partial pruning',
      flag='--radii', parse=parse_ints())
  partial_region: Optional[tuple] = option(
      None, 'query region row0,col0,row1,col1 in patches, half-open (default: the central '
            'half of the grid)', flag='--region', parse=parse_ints(4))
  renormalize: bool = option(
      False, 'renormalise the attention left after partial pruning (default: no, so that '
             'removing part of a head removes only that part of its output)')
  progress: bool = option(True, 'no progress bars', flag='--no-progress')
  save_every_seconds: float = option(30., cli=False)

  def __post_init__(self):
    check(self, 'batch_size', self.batch_size, low=1)
    check(self, 'chunk', self.chunk, low=1, optional=True)
    check(self, 'curve_points', self.curve_points, low=2, optional=True)
    check(self, 'random_orders', self.random_orders, low=0)
    check(self, 'partial_heads', self.partial_heads, low=1, optional=True)
    if not self.partial_radii:
      raise OptionError('partial_radii', 'expected at least one radius')
    for r in self.partial_radii:
      check(self, 'partial_radii', r, low=1)
    if self.partial_region is not None and len(self.partial_region) != 4:
      raise OptionError('partial_region', f'expected row0,col0,row1,col1, got '
                                          f'{self.partial_region!r}')

  def check_model(self, config: ViTConfig) -> None:
    """Raises OptionError for radii or a region that do not fit the model's patch grid."""
    partial_variants(config, self.partial_radii, self.partial_region)


def curve_counts(config: ViTConfig, points: Optional[int]) -> list:
  n = config.num_layers * config.num_heads
  points = min(n + 1, 21) if points is None else max(2, min(points, n + 1))
  return sorted({int(round(x)) for x in np.linspace(0, n, points)})


def head_orders(scores: dict, config: ViTConfig, random_orders: int, seed: int) -> dict:
  """Flat head orders, least important first: one per metric of `scores` ({name: [L, H]}),
  plus seeded random ones."""
  orders = {}
  for name in ORDER_METRICS:
    # Stable sort; ties broken by head index so orders are reproducible.
    orders[name] = np.argsort(np.asarray(scores[name]).ravel(), kind='stable')
  rng = np.random.default_rng(seed)
  n = config.num_layers * config.num_heads
  for i in range(random_orders):
    orders[f'random_{i}'] = rng.permutation(n)
  return orders


def select_partial_heads(taylor: np.ndarray, count: Optional[int]) -> np.ndarray:
  """Flat indices (ascending) of the heads to partially prune: the `count` with the
  highest Taylor importance; all heads when count is None and there are <= 48."""
  n = taylor.size
  if count is None:
    count = n if n <= 48 else 12
  top = np.argsort(-taylor.ravel(), kind='stable')[:min(count, n)]
  return np.sort(top)


def _valid_sum(x, valid):
  """Sum over the last (batch) axis of the valid entries, in float64 on the host."""
  x = np.asarray(x, np.float64)
  return np.sum(np.where(valid, x, 0.), axis=-1)


# The accumulators are float64 sums over images, flat arrays by name, so that a
# ProgressStore saves them as they are.

def stage1_sums(config: ViTConfig, n_images: int, per_image: bool) -> dict:
  L, H = config.num_layers, config.num_heads
  acc = {'count': np.zeros(()), 'labelled': np.zeros(()), 'taylor': np.zeros((L, H))}
  acc.update({f'full_{k}': np.zeros(()) for k in ABLATION_METRICS})
  acc.update({f'ablation_{k}': np.zeros((L, H)) for k in ABLATION_METRICS})
  if per_image:
    for k in PER_IMAGE:
      acc[f'per_image_{k}'] = np.full((n_images, L, H), np.nan, np.float32)
  return acc


PER_IMAGE = ('taylor', 'ablation_loss', 'ablation_kl')


def add_stage1(acc: dict, batch, grads, ablation, full) -> None:
  """Adds one batch's Taylor |grads| [B, L, H], ablation {metric: [L, H, B]} and unmasked
  {metric: [B]} metrics of the valid images to the sums (and per-image rows)."""
  valid = batch.valid
  bad = valid & ~np.isfinite(np.asarray(full['loss']))
  if bad.any():
    raise NonFiniteError("the model's loss", batch.index[bad])
  acc['count'] += valid.sum()
  acc['labelled'] += (valid & (batch.labels >= 0)).sum()
  acc['taylor'] += _valid_sum(np.moveaxis(np.asarray(grads), 0, -1), valid)
  for m in ABLATION_METRICS:
    acc[f'full_{m}'] += _valid_sum(full[m], valid)
    acc[f'ablation_{m}'] += _valid_sum(ablation[m], valid)
  if 'per_image_taylor' in acc:
    rows = batch.index[valid]
    acc['per_image_taylor'][rows] = np.asarray(grads)[valid]
    full_loss = np.asarray(full['loss'])
    acc['per_image_ablation_loss'][rows] = np.moveaxis(
        np.asarray(ablation['loss']) - full_loss, -1, 0)[valid]
    acc['per_image_ablation_kl'][rows] = np.moveaxis(np.asarray(ablation['kl']), -1, 0)[valid]


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
  baseline = Baseline(float(base['loss']), float(base['top1']), float(base['top5']))
  return scores, baseline


class Stage2Plan(NamedTuple):
  """What stage 2 evaluates, fixed by the stage-1 scores."""
  order_names: list        # [O]
  counts: list             # [P]
  curve_masks: np.ndarray  # [O * P, L, H]
  heads: np.ndarray        # [E] flat indices of the partially pruned heads, ascending
  layers: tuple            # [E] their layers (static for jit)
  keeps: np.ndarray        # [V, T, T]


def plan_stage2(acc: dict, config: ViTConfig, options: ImportanceOptions,
                variants: list) -> Stage2Plan:
  scores, _ = head_scores(acc)
  orders = head_orders(scores, config, options.random_orders, options.seed)
  counts = curve_counts(config, options.curve_points)
  masks = np.concatenate([pruning_masks(o, counts, config) for o in orders.values()])
  heads = select_partial_heads(scores['taylor'], options.partial_heads)
  layers = tuple(int(h) // config.num_heads for h in heads)
  return Stage2Plan(list(orders), counts, masks, heads, layers,
                    np.stack([v.keep for v in variants]))


class _Saver:
  """Saves the sums to a ProgressStore, throttled: per-image arrays make a save O(images)."""

  def __init__(self, store: Optional[ProgressStore], every_seconds: float):
    self.store, self.every, self.last = store, every_seconds, time.monotonic()

  def __call__(self, acc: dict, stage: int, next_batch: int, force: bool = False) -> None:
    if self.store and (force or time.monotonic() - self.last > self.every):
      self.store.save(next_batch, {**acc, 'stage': np.asarray(stage)})
      self.last = time.monotonic()


def run_stage1(params, config, batches, first_batch, acc, chunk, mesh, save) -> None:
  """Taylor and the ablation scan over `batches` (batch numbers from first_batch)."""
  for k, batch in enumerate(batches, start=first_batch):
    images, labels = parallel.shard_batch(mesh, (batch.images, batch.labels))
    grads, logits = taylor_batch(params, config, images, labels)
    ablation, _ = ablation_batch(params, config, images, labels, chunk)
    add_stage1(acc, _global_batch(batch, mesh),
               *parallel.to_host((grads, ablation, full_metrics(logits, labels))))
    save(acc, 1, k + 1)
  save(acc, 2, 0, force=True)


def run_stage2(params, config, batches, first_batch, acc, plan: Stage2Plan, renormalize,
               chunk, mesh, save) -> None:
  """Pruning curves and partial pruning over `batches`, added to `acc`."""
  if 'curve_top1' not in acc:
    acc.update({f'curve_{m}': np.zeros(len(plan.curve_masks)) for m in ABLATION_METRICS})
    acc.update({f'partial_{m}': np.zeros((len(plan.heads), len(plan.keeps)))
                for m in ABLATION_METRICS})
  masks = parallel.replicate(mesh, plan.curve_masks)
  for k, batch in enumerate(batches, start=first_batch):
    images, labels = parallel.shard_batch(mesh, (batch.images, batch.labels))
    curves, partial = pruning_batch(params, config, images, labels, masks,
                                    jnp.asarray(plan.heads), jnp.asarray(plan.keeps),
                                    renormalize, plan.layers, chunk)
    curves, partial = parallel.to_host((curves, partial))
    valid = parallel.global_rows(batch.valid, mesh)
    for m in ABLATION_METRICS:
      acc[f'curve_{m}'] += _valid_sum(curves[m], valid)
      acc[f'partial_{m}'] += _valid_sum(partial[m], valid)
    save(acc, 2, k + 1)


def _global_batch(batch, mesh):
  """This process's batch at its rows of the global batch (the others invalid)."""
  if not parallel.is_multiprocess(mesh):
    return batch
  return batch._replace(valid=parallel.global_rows(batch.valid, mesh),
                        labels=parallel.global_rows(batch.labels, mesh, -1),
                        index=parallel.global_rows(batch.index, mesh, -1))


def reduce_sums(acc: dict, mesh) -> dict:
  """The sums of every process of `mesh` (exact, float64); per-image rows merged."""
  if not parallel.is_multiprocess(mesh):
    return acc
  rows = {k: v for k, v in acc.items() if k.startswith('per_image_')}
  out = parallel.allreduce_sums({k: v for k, v in acc.items() if k not in rows}, mesh)
  out.update({k: parallel.allgather_rows(v, mesh) for k, v in rows.items()})
  return out


def finalise(acc: dict, plan: Stage2Plan, variants: list) -> ImportanceResult:
  """Means and changes against the unmasked model, from the sums of both stages."""
  scores, baseline = head_scores(acc)
  count = acc['count']
  shape = (len(plan.order_names), len(plan.counts))
  curves = {m: (acc[f'curve_{m}'] / count).reshape(shape) for m in ABLATION_METRICS}
  partial = {}
  for m in ABLATION_METRICS:  # as for ablation: loss increase, accuracy drops, KL
    pruned, base = acc[f'partial_{m}'] / count, acc[f'full_{m}'] / count
    partial[m] = {'loss': pruned - base, 'kl': pruned}.get(m, base - pruned)
  return ImportanceResult(
      **scores, baseline=baseline, curve_counts=np.asarray(plan.counts),
      curve_orders=tuple(plan.order_names),
      **{f'curve_{m}': curves[m] for m in ABLATION_METRICS},
      partial_heads=np.asarray(plan.heads),
      partial_variants=tuple((v.name, v.description) for v in variants),
      **{f'partial_{m}': partial[m] for m in ABLATION_METRICS},
      images=int(count), labelled_images=int(acc['labelled']),
      label_free=int(acc['labelled']) < int(count),
      **{f'per_image_{k}': acc.get(f'per_image_{k}') for k in PER_IMAGE})


def compute_importance(params, config: ViTConfig, source: BatchSource,
                       options: ImportanceOptions = ImportanceOptions(), mesh=None,
                       store: Optional[ProgressStore] = None) -> ImportanceResult:
  """Every importance metric, streamed over the images of `source`.

  mesh: a parallel.batch_mesh() (default: every device of every process; with several
  processes each reads only its shard of `source` and the sums are reduced exactly).
  store: where progress is saved after batches, so that an interrupted run with the same
  store continues (one store per process; all processes resume together or start over).
  """
  mesh = mesh or parallel.batch_mesh()
  batch_size = parallel.local_batch_size(options.batch_size, mesh)
  n_images = len(source)
  if parallel.is_multiprocess(mesh):
    source = process_shard(source, batch_size, jax.process_index(),
                           parallel.process_count(mesh))
  chunk = options.chunk or default_chunk()
  variants = partial_variants(config, options.partial_radii, options.partial_region)
  params = parallel.replicate(mesh, params)
  save = _Saver(store, options.save_every_seconds)

  def batches(stage, first):
    return source.batches(batch_size, first, progress=options.progress,
                          desc=f'importance {stage}/2')

  stage, first, acc = 1, 0, stage1_sums(config, n_images, options.per_image)
  saved = store.load() if store else None
  if not parallel.agree(-1 if saved is None else saved[0] * 4 + int(saved[1]['stage']), mesh):
    saved = None  # processes saved at different batches: all start over
  if saved is not None:
    first, acc = saved
    stage = int(acc.pop('stage'))
  if stage == 1:
    run_stage1(params, config, batches(1, first), first, acc, chunk, mesh, save)
    first = 0
  plan = plan_stage2(reduce_sums(acc, mesh), config, options, variants)
  run_stage2(params, config, batches(2, first), first, acc, plan, options.renormalize, chunk,
             mesh, save)
  return finalise(reduce_sums(acc, mesh), plan, variants)
