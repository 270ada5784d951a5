"""Which heads matter? Pruning-based importance of every layer x head.

Per-batch functions are pure and jitted; `compute_importance` streams them over a dataset.

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
import hashlib
import json
import time
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax_analytics import model as model_lib, parallel
from vit_jax_analytics.model import ViTConfig

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
      continue
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
    raise ValueError(f'region {region}: expected row0 < row1 and col0 < col1 within the '
                     f'{n} x {n} patch grid')
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

@dataclasses.dataclass
class ImportanceOptions:
  batch_size: int = 32
  # Masks evaluated at once, vmapped (bounds memory). None: 1 on CPU, where big vmapped
  # batches fall out of cache (measured 1.98x vs 1.74x the loop at 1 vs 3 on ViT-B/16),
  # and 8 on accelerators.
  chunk: Optional[int] = None
  per_image: bool = False
  curve_points: Optional[int] = None  # default: every head count up to 20 points
  random_orders: int = 5
  seed: int = 0
  partial_heads: Optional[int] = None  # None: all heads if L*H <= 48, else the 12 top
  partial_radii: tuple = (1, 2, 3)
  partial_region: Optional[tuple] = None
  renormalize: bool = False
  progress: bool = True
  save_every_seconds: float = 30.

  def key(self, *extra) -> str:
    """Identifies a computation, for resuming: the options that change results."""
    d = dataclasses.asdict(self)
    for k in ('progress', 'save_every_seconds'):
      d.pop(k)
    return hashlib.sha1(json.dumps([d, *map(str, extra)], sort_keys=True).encode()).hexdigest()[:16]


def default_chunk() -> int:
  return 1 if jax.default_backend() == 'cpu' else 8


def curve_counts(config: ViTConfig, points: Optional[int]) -> list:
  n = config.num_layers * config.num_heads
  points = min(n + 1, 21) if points is None else max(2, min(points, n + 1))
  return sorted({int(round(x)) for x in np.linspace(0, n, points)})


def head_orders(scores: dict, config: ViTConfig, random_orders: int, seed: int) -> dict:
  """Flat head orders, least important first: one per metric, plus random ones."""
  orders = {}
  for name in ORDER_METRICS:
    # Stable sort; ties broken by head index so orders are reproducible.
    orders[name] = np.argsort(np.asarray(scores[name]).ravel(), kind='stable')
  rng = np.random.default_rng(seed)
  n = config.num_layers * config.num_heads
  for i in range(random_orders):
    orders[f'random_{i}'] = rng.permutation(n)
  return orders


def _valid_sum(x, valid):
  """Sum over the last (batch) axis of the valid entries, in float64 on the host."""
  x = np.asarray(x, np.float64)
  return np.sum(np.where(valid, x, 0.), axis=-1)


def compute_importance(params, config: ViTConfig, image_set, options: ImportanceOptions,
                       mean=(0.5,) * 3, std=(0.5,) * 3, mesh=None, resume=None) -> dict:
  """Streams every importance metric over `image_set` (a data.ImageSet).

  mesh: a parallel.batch_mesh() (default: all local devices). resume: (logdir, run, key)
  to save progress after each batch and continue an interrupted run with the same key.
  Returns numpy arrays (see docs/logdir-format.md for their meaning).
  """
  from vit_jax_analytics import data, summary

  mesh = mesh or parallel.batch_mesh()
  batch_size = parallel.device_batch_size(options.batch_size, mesh)
  chunk = options.chunk or default_chunk()
  L, H, n = config.num_layers, config.num_heads, len(image_set)
  params = parallel.replicate(mesh, params)
  counts = curve_counts(config, options.curve_points)

  acc = {'count': np.zeros(()), 'labelled': np.zeros(()), 'taylor': np.zeros((L, H))}
  acc.update({f'full_{k}': np.zeros(()) for k in ABLATION_METRICS})
  acc.update({f'ablation_{k}': np.zeros((L, H)) for k in ABLATION_METRICS})
  if options.per_image:
    for k in ('taylor', 'ablation_loss', 'ablation_kl'):
      acc[f'per_image_{k}'] = np.full((n, L, H), np.nan, np.float32)
  stage, first_batch = 1, 0
  saved = summary.load_progress(*resume) if resume else None
  if saved is not None:
    next_batch, arrays = saved
    stage, first_batch = int(arrays.pop('stage')), next_batch
    acc = arrays

  last_save = [time.monotonic()]

  def save(stage, next_batch, force=False):
    # Throttled: per-image arrays make each save cost O(images).
    if resume and (force or time.monotonic() - last_save[0] > options.save_every_seconds):
      summary.save_progress(*resume, next_batch, {**acc, 'stage': np.asarray(stage)})
      last_save[0] = time.monotonic()

  def batches(stage, first):
    return data.BatchStream(image_set, config.image_size, batch_size, mean=mean, std=std,
                            first_batch=first, progress=options.progress,
                            desc=f'importance {stage}/2')

  if stage == 1:
    for k, batch in enumerate(batches(1, first_batch), start=first_batch):
      images, labels = parallel.shard_batch(mesh, (batch.images, batch.labels))
      grads, logits = taylor_batch(params, config, images, labels)
      ablation, _ = ablation_batch(params, config, images, labels, chunk)
      full = full_metrics(logits, labels)
      valid = batch.valid
      acc['count'] += valid.sum()
      acc['labelled'] += (valid & (batch.labels >= 0)).sum()
      acc['taylor'] += _valid_sum(np.moveaxis(np.asarray(grads), 0, -1), valid)
      for m in ABLATION_METRICS:
        acc[f'full_{m}'] += _valid_sum(full[m], valid)
        acc[f'ablation_{m}'] += _valid_sum(ablation[m], valid)
      if options.per_image:
        rows = batch.index[valid]
        acc['per_image_taylor'][rows] = np.asarray(grads)[valid]
        full_loss = np.asarray(full['loss'])
        acc['per_image_ablation_loss'][rows] = np.moveaxis(
            np.asarray(ablation['loss']) - full_loss, -1, 0)[valid]
        acc['per_image_ablation_kl'][rows] = np.moveaxis(np.asarray(ablation['kl']), -1, 0)[valid]
      save(1, k + 1)
    save(2, 0, force=True)
    stage, first_batch = 2, 0

  scores = scores_from(acc)
  orders = head_orders(scores, config, options.random_orders, options.seed)
  order_names = list(orders)
  curve_masks = np.concatenate([pruning_masks(orders[o], counts, config) for o in order_names])
  selected = select_partial_heads(scores['taylor'], options.partial_heads)
  variants = partial_variants(config, options.partial_radii, options.partial_region)
  keeps = np.stack([v.keep for v in variants])
  layers = tuple(int(h) // H for h in selected)
  if 'curve_top1' not in acc:
    acc.update({f'curve_{m}': np.zeros(len(curve_masks)) for m in ABLATION_METRICS})
    acc.update({f'partial_{m}': np.zeros((len(selected), len(variants)))
                for m in ABLATION_METRICS})

  curve_masks_dev = parallel.replicate(mesh, curve_masks)
  for k, batch in enumerate(batches(2, first_batch), start=first_batch):
    images, labels = parallel.shard_batch(mesh, (batch.images, batch.labels))
    curves, partial = pruning_batch(params, config, images, labels, curve_masks_dev,
                                    jnp.asarray(selected), jnp.asarray(keeps),
                                    options.renormalize, layers, chunk)
    for m in ABLATION_METRICS:
      acc[f'curve_{m}'] += _valid_sum(curves[m], batch.valid)
      acc[f'partial_{m}'] += _valid_sum(partial[m], batch.valid)
    save(2, k + 1)

  result = dict(scores)
  count = acc['count']
  result['curve_counts'] = np.asarray(counts)
  result['curve_orders'] = order_names
  for m in ('top1', 'kl', 'loss'):
    result[f'curve_{m}'] = (acc[f'curve_{m}'] / count).reshape(len(order_names), len(counts))
  result['partial_heads'] = np.asarray(selected)
  result['partial_variants'] = [(v.name, v.description) for v in variants]
  for m in ABLATION_METRICS:  # as for ablation: loss increase, accuracy drops, KL
    pruned, base = acc[f'partial_{m}'] / count, acc[f'full_{m}'] / count
    result[f'partial_{m}'] = {'loss': pruned - base, 'kl': pruned}.get(m, base - pruned)
  for k in ('per_image_taylor', 'per_image_ablation_loss', 'per_image_ablation_kl'):
    if k in acc:
      result[k] = acc[k]
  result['images'] = int(count)
  result['labelled_images'] = int(acc['labelled'])
  result['label_free'] = int(acc['labelled']) < int(count)
  return result


def scores_from(acc: dict) -> dict:
  """Means from summed accumulators: the [L, H] metrics and the unmasked baseline."""
  count = acc['count']
  taylor = acc['taylor'] / count
  norm = np.linalg.norm(taylor, axis=1, keepdims=True)
  scores = {'taylor': taylor, 'taylor_normalized': taylor / np.where(norm > 0, norm, 1.)}
  base = {m: acc[f'full_{m}'] / count for m in ABLATION_METRICS}
  scores['ablation_loss'] = acc['ablation_loss'] / count - base['loss']
  scores['ablation_top1'] = base['top1'] - acc['ablation_top1'] / count
  scores['ablation_top5'] = base['top5'] - acc['ablation_top5'] / count
  scores['ablation_kl'] = acc['ablation_kl'] / count
  scores['baseline'] = {m: float(base[m]) for m in ('loss', 'top1', 'top5')}
  return scores


def select_partial_heads(taylor: np.ndarray, count: Optional[int]) -> np.ndarray:
  """Flat indices (ascending) of the heads to partially prune: the `count` with the
  highest Taylor importance; all heads when count is None and there are <= 48."""
  n = taylor.size
  if count is None:
    count = n if n <= 48 else 12
  top = np.argsort(-taylor.ravel(), kind='stable')[:min(count, n)]
  return np.sort(top)
