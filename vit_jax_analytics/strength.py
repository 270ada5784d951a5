"""How strongly do patches attend to their spatial neighbours? Attention by 2-D offset.

Statistics are reduced inside the forward pass, layer by layer (`attention_reduce`), to
sums over the images of a batch, so [B, L, H, Q, K] never exists and memory does not grow
with the number of images. Spreads over images come from fixed-range histograms (exact
counts, so independent of batch size and device count).

Geometry: an n x n patch grid; offsets (dy, dx) = key position - query position, each in
-(n-1) .. n-1, stored at index (dy + n - 1, dx + n - 1). Distances are between patch
centres; "Chebyshev distance" is max(|dy|, |dx|).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax_analytics import model as model_lib, parallel
from vit_jax_analytics.batches import (DEFAULT_BATCH_SIZE, BatchSource, process_shard,
                                       shard_range)
from vit_jax_analytics.model import ViTConfig
from vit_jax_analytics.options import check, option
from vit_jax_analytics.results import ScalarDistribution, StrengthResult

HIST_BINS = 256
SCALARS = ('mean_distance', 'entropy', 'self_share', 'cls_share')
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def offset_one_hot(n: int) -> np.ndarray:
  """[n, n, 2n-1]: O[q, k, d] = 1 iff k - q = d - (n - 1)."""
  q, k = np.meshgrid(np.arange(n), np.arange(n), indexing='ij')
  return np.eye(2 * n - 1, dtype=np.float32)[k - q + n - 1]


def patch_distances(n: int) -> np.ndarray:
  """[P, P] Euclidean distance between patch centres, in patches."""
  r, c = np.divmod(np.arange(n * n), n)
  return np.sqrt((r[:, None] - r[None]) ** 2 + (c[:, None] - c[None]) ** 2).astype(np.float32)


def scalar_ranges(config: ViTConfig) -> dict:
  """Fixed histogram range of each per-image scalar."""
  n = config.grid_size
  return {'mean_distance': (0., float(np.sqrt(2) * (n - 1) * config.patch_size)),
          'entropy': (0., float(np.log(config.num_tokens))),
          'self_share': (0., 1.), 'cls_share': (0., 1.)}


def layer_statistics(weights, config: ViTConfig):
  """Per-image statistics of one layer's attention weights [B, H, T, T], reduced over
  queries on the device (only these leave the forward pass):
    offset_sum [B, H, 2n-1, 2n-1]  attention summed over (query, key) pairs at each offset
    cls_attention [B, H, P]         the class token's attention to each patch
    to_cls [B, H, P]                each patch's attention to the class token
    <scalar> [B, H]                 mean_distance, entropy, self_share, cls_share
  Sums over images happen on the host in float64, so results do not depend on how images
  are split over batches and devices.
  """
  n, cls = config.grid_size, int(config.has_cls_token)
  b, h = weights.shape[:2]
  patches = weights[:, :, cls:, cls:].reshape(b, h, n, n, n, n)  # [B, H, qy, qx, ky, kx]
  one_hot = jnp.asarray(offset_one_hot(n))
  out = {'offset_sum': jnp.einsum('bhyxYX,yYd,xXe->bhde', patches, one_hot, one_hot)}
  a = weights[:, :, cls:, :]                                     # patch queries, all keys
  a_pp = a[:, :, :, cls:]
  dist = jnp.asarray(patch_distances(n)) * config.patch_size
  # Mass-weighted over queries and renormalised over patch keys: mass sent to the class
  # token has no distance.
  out['mean_distance'] = (jnp.einsum('bhqk,qk->bh', a_pp, dist) /
                          jnp.maximum(jnp.sum(a_pp, axis=(2, 3)), 1e-30))
  out['entropy'] = -jnp.mean(jnp.sum(a * jnp.log(jnp.maximum(a, 1e-30)), -1), -1)
  out['self_share'] = jnp.mean(jnp.diagonal(a_pp, axis1=2, axis2=3), -1)
  if cls:
    out['cls_share'] = jnp.mean(a[:, :, :, 0], -1)
    out['cls_attention'] = weights[:, :, 0, 1:]
    out['to_cls'] = weights[:, :, 1:, 0]
  return out


@functools.partial(jax.jit, static_argnums=1)
def strength_batch(params, config: ViTConfig, images):
  """One batch -> {name: [B, L, ...]} per-image statistics (see layer_statistics)."""
  reduce = lambda weights, layer: layer_statistics(weights, config)
  _, per_layer = model_lib.apply(params, config, images, attention_reduce=reduce)
  return jax.tree.map(lambda x: jnp.moveaxis(x, 0, 1), per_layer)


def accumulate(sums: dict, stats: dict, valid: np.ndarray, config: ViTConfig) -> dict:
  """Adds one batch's per-image statistics of the valid images to the float64 sums and
  the fixed-range histograms of the per-image scalars."""
  ranges = scalar_ranges(config)
  for name, value in stats.items():
    value = np.asarray(value, np.float64)[valid]
    sums[name] = sums.get(name, 0.) + value.sum(0)
    if name in ranges:
      lo, hi = ranges[name]
      bins = np.clip(((value - lo) / (hi - lo) * HIST_BINS).astype(int), 0, HIST_BINS - 1)
      hist = sums.setdefault(f'{name}_hist', np.zeros(value.shape[1:] + (HIST_BINS,)))
      for idx in np.ndindex(*value.shape[1:]):
        hist[idx] += np.bincount(bins[(slice(None),) + idx], minlength=HIST_BINS)
  return sums


@functools.partial(jax.jit, static_argnums=1)
def attention_maps(params, config: ViTConfig, images):
  """All attention weights [B, L, H, T, T] for a few images (the image view)."""
  return model_lib.apply(params, config, images, return_attention=True)[1]


def attention_rollout(attention):
  """Attention rollout (Abnar & Zuidema 2020): [..., L, H, T, T] -> [..., L, T, T].

  Per layer the head-averaged attention plus the identity (for the residual), rows
  renormalised; entry l is the product of layers 0..l, so row q of the last one says how
  much each input token flows into output token q.
  """
  a = jnp.mean(attention, axis=-3)
  t = a.shape[-1]
  a = 0.5 * a + 0.5 * jnp.eye(t, dtype=a.dtype)
  a = a / jnp.sum(a, -1, keepdims=True)

  def step(acc, layer_a):
    acc = layer_a @ acc
    return acc, acc

  eye = jnp.broadcast_to(jnp.eye(t, dtype=a.dtype), a.shape[:-3] + (t, t))
  _, rolled = jax.lax.scan(step, eye, jnp.moveaxis(a, -3, 0))
  return jnp.moveaxis(rolled, 0, -3)


# --- streaming driver ----------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class StrengthOptions:
  batch_size: int = option(DEFAULT_BATCH_SIZE, 'images per batch')
  map_images: int = option(
      8, 'images (spread over the set) whose full attention maps and rollout are stored')
  progress: bool = option(True, 'no progress bars', flag='--no-progress')

  def __post_init__(self):
    check(self, 'batch_size', self.batch_size, low=1)
    check(self, 'map_images', self.map_images, low=0)


def histogram_quantiles(hist: np.ndarray, lo: float, hi: float, qs=QUANTILES) -> np.ndarray:
  """hist [..., bins] -> [..., len(qs)] quantiles at bin centres (accurate to one bin)."""
  cdf = np.cumsum(hist, -1)
  total = cdf[..., -1:]
  width = (hi - lo) / hist.shape[-1]
  out = []
  for q in qs:
    idx = np.argmax(cdf >= q * np.maximum(total, 1e-12), axis=-1)
    out.append(lo + (idx + 0.5) * width)
  return np.stack(out, -1)


def finish(sums: dict, count: int, config: ViTConfig) -> StrengthResult:
  """Means and derived statistics from the summed accumulators of `count` images."""
  n, t = config.grid_size, config.num_tokens
  dy = np.abs(np.arange(-(n - 1), n))
  pairs = np.outer(n - dy, n - dy)                               # [2n-1, 2n-1] per image
  offset_mean = sums['offset_sum'] / (pairs * count)
  cheb = np.maximum(dy[:, None], dy[None])
  mass = np.stack([np.sum(np.where(cheb == d, sums['offset_sum'], 0.), axis=(-2, -1))
                   for d in range(n)], -1)                        # [L, H, n]
  ranges = scalar_ranges(config)
  scalars = [s for s in SCALARS if s != 'cls_share' or config.has_cls_token]
  cls_maps = {}
  if config.has_cls_token:
    for name in ('cls_attention', 'to_cls'):
      cls_maps[name] = (sums[name] / count).reshape(sums[name].shape[:-1] + (n, n))
  return StrengthResult(
      images=count, offset_mean=offset_mean, offset_ratio=offset_mean * t,  # x uniform 1/T
      offset_pairs=pairs * count,
      neighbourhood_share=np.cumsum(mass, -1) / (n * n * count),
      mean_distance=sums['mean_distance'] / count, entropy=sums['entropy'] / count,
      self_share=sums['self_share'] / count,
      cls_share=sums['cls_share'] / count if config.has_cls_token else None,
      quantile_levels=QUANTILES,
      distributions={s: ScalarDistribution(
          ranges[s], sums[f'{s}_hist'],
          histogram_quantiles(sums[f'{s}_hist'], *ranges[s])) for s in scalars},
      **cls_maps)


def spread_indices(n: int, count: int) -> np.ndarray:
  """`count` image indices spread evenly over n (an ImageFolder is sorted by class, so
  the image view then shows variety)."""
  if not count or not n:
    return np.zeros(0, int)
  return np.unique(np.round(np.linspace(0, n - 1, count)).astype(int))


def compute_strength(params, config: ViTConfig, source: BatchSource,
                     options: StrengthOptions = StrengthOptions(),
                     mesh=None) -> StrengthResult:
  """Streams the strength statistics over the images of `source`; also the full attention
  maps and rollout of `options.map_images` images spread evenly over it (over process 0's
  shard when the mesh spans several processes; every process returns the same sums)."""
  mesh = mesh or parallel.batch_mesh()
  multi = parallel.is_multiprocess(mesh)
  batch_size = parallel.local_batch_size(options.batch_size, mesh)
  wanted = spread_indices(len(source), options.map_images)
  if multi:
    count_p, p = parallel.process_count(mesh), jax.process_index()
    wanted = spread_indices(shard_range(len(source), 0, count_p)[1], options.map_images)
    source = process_shard(source, batch_size, p, count_p)
  params = parallel.replicate(mesh, params)
  local_params = parallel.local_copy(params) if multi else params
  sums, count = {}, 0
  maps, map_index = [], []
  for batch in source.batches(batch_size, progress=options.progress, desc='strength'):
    stats = strength_batch(params, config, parallel.shard_batch(mesh, batch.images))
    sums = accumulate(sums, parallel.to_host(stats), parallel.global_rows(batch.valid, mesh),
                      config)
    count += int(batch.valid.sum())
    rows = np.flatnonzero(batch.valid & np.isin(batch.index, wanted))
    if len(rows):
      maps.append(np.asarray(attention_maps(local_params, config, batch.images[rows])))
      map_index += batch.index[rows].tolist()
  if multi:  # exact: float64 sums and counts, added in process order
    sums = parallel.allreduce_sums({**sums, '__count__': np.asarray(count, np.float64)}, mesh)
    count = int(sums.pop('__count__'))
  result = finish(sums, count, config)
  if not maps:
    return result
  attention = np.concatenate(maps)
  return dataclasses.replace(
      result, map_image_index=np.asarray(map_index, np.int32),
      map_attention=attention.astype(np.float16),                              # [M, L, H, T, T]
      map_rollout=np.asarray(attention_rollout(attention), np.float16))        # [M, L, T, T]
