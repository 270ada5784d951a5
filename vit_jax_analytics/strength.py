"""How strongly do patches attend to their spatial neighbours? Attention by 2-D offset.

Statistics are reduced inside the forward pass, layer by layer (`attention_reduce`), to
sums over the images of a batch, so [B, L, H, Q, K] never exists and memory does not grow
with the number of images. Spreads over images come from fixed-range histograms (exact
counts, so independent of batch size and device count).

Geometry: an h x w patch grid (n x n when square); offsets (dy, dx) = key position - query
position, dy in -(h-1) .. h-1 and dx in -(w-1) .. w-1, stored at index (dy + h - 1,
dx + w - 1). Distances are between patch centres; "Chebyshev distance" is max(|dy|, |dx|).
Only patch queries and patch keys enter the offset statistics: the tokens before the patches
(class token, registers) are left out of them.
"""

from __future__ import annotations

import dataclasses
from typing import Optional
import functools

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax_analytics import blocks as model_blocks, model as model_lib, parallel, precision
from vit_jax_analytics.batches import DEFAULT_BATCH_SIZE, BatchSource, shard_range
from vit_jax_analytics.model import ViTConfig
from vit_jax_analytics.options import check, option
from vit_jax_analytics.results import ScalarDistribution, StrengthResult
from vit_jax_analytics.streaming import open_stream

HIST_BINS = 256
SCALARS = ('mean_distance', 'entropy', 'self_share', 'cls_share')
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def offset_one_hot(n: int) -> np.ndarray:
  """[n, n, 2n-1]: O[q, k, d] = 1 iff k - q = d - (n - 1)."""
  q, k = np.meshgrid(np.arange(n), np.arange(n), indexing='ij')
  return np.eye(2 * n - 1, dtype=np.float32)[k - q + n - 1]


def patch_distances(n, w=None) -> np.ndarray:
  """[P, P] Euclidean distance between patch centres, in patches (an n x n or n x w grid)."""
  w = n if w is None else w
  r, c = np.divmod(np.arange(n * w), w)
  return np.sqrt((r[:, None] - r[None]) ** 2 + (c[:, None] - c[None]) ** 2).astype(np.float32)


def scalar_ranges(config: ViTConfig) -> dict:
  """Fixed histogram range of each per-image scalar."""
  h, w = config.grid_shape
  return {'mean_distance': (0., float(np.hypot(h - 1, w - 1) * config.patch_size)),
          'entropy': (0., float(np.log(config.num_tokens))),
          'self_share': (0., 1.), 'cls_share': (0., 1.)}


def baselines(config: ViTConfig) -> dict:
  """The statistics of two reference heads, as `layer_statistics` and `finish` define them:
  'uniform' (every query attends 1/T to every token) and 'self' (every patch query attends
  only to itself). {reference: {mean_distance (px), neighbourhood_share [n], entropy,
  self_share, cls_share, offset_ratio_centre}}. The plugin draws them in every locality plot.
  """
  (gh, gw), t = config.grid_shape, config.num_tokens
  n, p = max(gh, gw), gh * gw
  dist = patch_distances(gh, gw).astype(np.float64) * config.patch_size
  r, c = np.divmod(np.arange(p), gw)
  cheb = np.maximum(np.abs(r[:, None] - r[None]), np.abs(c[:, None] - c[None]))   # [P, P]
  # Uniform: each patch query gives 1/T to each key; renormalised over patch keys the mean
  # distance is the plain mean over (query, key) patch pairs.
  uniform = {
      'mean_distance': float(dist.mean()),
      'neighbourhood_share': [float((cheb <= d).sum() / (p * t)) for d in range(n)],
      'entropy': float(np.log(t)), 'self_share': 1. / t,
      'cls_share': 1. / t if config.has_cls_token else None,
      'offset_ratio_centre': 1.}
  self_only = {
      'mean_distance': 0., 'neighbourhood_share': [1.] * n, 'entropy': 0., 'self_share': 1.,
      'cls_share': 0. if config.has_cls_token else None, 'offset_ratio_centre': float(t)}
  return {'uniform': uniform, 'self': self_only}


def layer_statistics(weights, config: ViTConfig):
  """Per-image statistics of one layer's attention weights [B, H, T, T], reduced over
  queries on the device (only these leave the forward pass):
    offset_sum [B, H, 2n-1, 2n-1]  attention summed over (query, key) pairs at each offset
    cls_attention [B, H, P]         the class token's attention to each patch
    to_cls [B, H, P]                each patch's attention to the class token
    <scalar> [B, H]                 mean_distance, entropy, self_share, cls_share
  Sums over images happen on the host in float64, so results do not depend on how images
  are split over batches and devices. Reduced in float32 whatever the forward's precision.
  """
  weights = precision.widen(weights)
  (gh, gw), cls, pre = config.grid_shape, int(config.has_cls_token), config.num_prefix_tokens
  b, h = weights.shape[:2]
  patches = weights[:, :, pre:, pre:].reshape(b, h, gh, gw, gh, gw)  # [B, H, qy, qx, ky, kx]
  out = {'offset_sum': jnp.einsum('bhyxYX,yYd,xXe->bhde', patches,
                                  jnp.asarray(offset_one_hot(gh)),
                                  jnp.asarray(offset_one_hot(gw)))}
  a = weights[:, :, pre:, :]                                     # patch queries, all keys
  a_pp = a[:, :, :, pre:]
  dist = jnp.asarray(patch_distances(gh, gw)) * config.patch_size
  # Mass-weighted over queries and renormalised over patch keys: mass sent to the class
  # token has no distance.
  out['mean_distance'] = (jnp.einsum('bhqk,qk->bh', a_pp, dist) /
                          jnp.maximum(jnp.sum(a_pp, axis=(2, 3)), 1e-30))
  out['entropy'] = -jnp.mean(jnp.sum(a * jnp.log(jnp.maximum(a, 1e-30)), -1), -1)
  out['self_share'] = jnp.mean(jnp.diagonal(a_pp, axis1=2, axis2=3), -1)
  if cls:
    out['cls_share'] = jnp.mean(a[:, :, :, 0], -1)
    out['cls_attention'] = weights[:, :, 0, pre:]
    out['to_cls'] = weights[:, :, pre:, 0]
  return out


@functools.partial(jax.jit, static_argnums=1)
def strength_batch(params, config: ViTConfig, images):
  """One batch -> {name: [B, L, ...]} per-image statistics (see layer_statistics); with a
  MAP head also 'pool_attention' [B, H, P], its probe's attention to each patch."""
  reduce = lambda weights, layer: layer_statistics(weights, config)
  if not config.has_pool_attention:
    _, per_layer = model_lib.apply(params, config, images, attention_reduce=reduce)
    return jax.tree.map(lambda x: jnp.moveaxis(x, 0, 1), per_layer)
  (_, per_layer), state = model_lib.VisionTransformer(config).apply(
      {'params': params}, images, attention_reduce=reduce, mutable=['intermediates'])
  out = jax.tree.map(lambda x: jnp.moveaxis(x, 0, 1), per_layer)
  pool = state['intermediates']['MAPHead_0']['pool_attention'][0]  # [B, H, 1, T]
  out['pool_attention'] = pool[:, :, 0, config.num_prefix_tokens:]
  return out


def on_canvas(stats: dict, grid, canvas) -> dict:
  """One batch's per-image statistics on its own patch grid (h, w) -> on the canvas grid
  (NaFlex batches of different grids): offset sums [..., 2h-1, 2w-1] placed at the centre of
  [..., 2H-1, 2W-1] (offset (dy, dx) stays (dy, dx)); per-patch maps [..., h*w] resampled
  onto H x W in image-relative coordinates (the model's own antialiased bilinear), then
  rescaled so that each map keeps its total. Scalars as they are."""
  (gh, gw), (ch, cw) = tuple(grid), tuple(canvas)
  if (gh, gw) == (ch, cw):
    return stats
  out = dict(stats)
  value = np.asarray(stats['offset_sum'], np.float64)
  padded = np.zeros(value.shape[:-2] + (2 * ch - 1, 2 * cw - 1))
  padded[..., ch - gh:ch + gh - 1, cw - gw:cw + gw - 1] = value
  out['offset_sum'] = padded
  m = model_blocks.naflex_posemb_matrix((gh, gw), (ch, cw))
  for name in ('cls_attention', 'to_cls', 'pool_attention'):
    if name in stats:
      value = np.asarray(stats[name], np.float64)
      resized = np.einsum('...p,qp->...q', value, m)
      total = resized.sum(-1, keepdims=True)
      out[name] = resized * np.where(total > 0, value.sum(-1, keepdims=True) /
                                     np.where(total > 0, total, 1.), 0.)
  return out


def pair_counts(grid, canvas) -> tuple:
  """Per image on grid (h, w): (patch (query, key) pairs at each canvas offset [2H-1, 2W-1],
  the same divided by T = h w (uniform attention's mass there), patch queries h w)."""
  (gh, gw), (ch, cw) = tuple(grid), tuple(canvas)
  dy, dx = np.abs(np.arange(-(ch - 1), ch)), np.abs(np.arange(-(cw - 1), cw))
  pairs = np.outer(np.maximum(gh - dy, 0), np.maximum(gw - dx, 0)).astype(np.float64)
  return pairs, pairs / (gh * gw), float(gh * gw)


def accumulate(sums: dict, stats: dict, valid: np.ndarray, config: ViTConfig,
               canvas: Optional[ViTConfig] = None) -> dict:
  """Adds one batch's per-image statistics of the valid images to the float64 sums and
  the fixed-range histograms of the per-image scalars. config: the batch's; canvas: where
  batches of different grids meet (NaFlex; default config): see on_canvas. Also counts the
  (query, key) pairs at each offset and the patch queries, by which finish divides."""
  canvas = config if canvas is None else canvas
  ranges = scalar_ranges(canvas)
  stats = on_canvas(stats, config.grid_shape, canvas.grid_shape)
  n = int(np.sum(valid))
  for name, per_image in zip(('offset_pairs', 'offset_uniform', 'patch_queries'),
                             pair_counts(config.grid_shape, canvas.grid_shape)):
    # uniform: a patch query of a T-token image gives 1/T to each key
    scale = n * (config.num_patches / config.num_tokens if name == 'offset_uniform' else 1.)
    sums[name] = sums.get(name, 0.) + np.asarray(per_image) * scale
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


@functools.partial(jax.jit, static_argnums=1)
def queries_keys(params, config: ViTConfig, images):
  """Every block's queries and keys [B, L, H, T, D/H] each, from the block inputs the model
  sows ('intermediates'): q = LayerNorm_0(block_input) @ query kernel + bias, likewise k."""
  _, state = model_lib.VisionTransformer(config).apply({'params': params}, images,
                                                       mutable=['intermediates'])
  return _queries_keys(params, config, state['intermediates'])


def _queries_keys(params, config: ViTConfig, intermediates):
  blocks = intermediates['Transformer']
  qs, ks = [], []
  for layer in range(config.num_layers):
    name = f'encoderblock_{layer}'
    x = blocks[name]['block_input'][0]
    p = params['Transformer'][name]
    y = model_blocks.norm(config).apply({'params': p['LayerNorm_0']}, x)
    att = p['MultiHeadDotProductAttention_1']
    proj = lambda w: jnp.einsum('btd,dhe->bhte', y, w['kernel']) + w['bias'][None, :, None]
    q, k = proj(att['query']), proj(att['key'])
    if config.qk_norm or config.rope is not None:  # as the attention sees them (blocks.py)
      q, k = (jnp.swapaxes(a, 1, 2) for a in model_blocks.transform_qk(
          jnp.swapaxes(q, 1, 2), jnp.swapaxes(k, 1, 2), config, att))
    qs.append(q)
    ks.append(k)
  return jnp.stack(qs, 1), jnp.stack(ks, 1)


def joint_embedding(q: np.ndarray, k: np.ndarray) -> np.ndarray:
  """Queries and keys of one head [N, d] each -> [2, N, 2]: both projected together onto
  their first two principal axes, as AttentionViz (Yeh et al. 2023) does. Attention is
  unchanged by translating the keys (softmax over keys) and by scaling q by c and k by 1/c,
  so first the keys are moved onto the queries' centroid and both scaled to the same mean
  spread (distance from their centroid); then queries near keys are the pairs that attend
  to each other."""
  q = np.asarray(q, np.float64)
  k = np.asarray(k, np.float64)
  k = k - k.mean(0) + q.mean(0)
  qn = np.linalg.norm(q - q.mean(0), axis=1).mean()
  kn = np.linalg.norm(k - k.mean(0), axis=1).mean()
  c = np.sqrt(kn / qn) if qn > 1e-12 and kn > 1e-12 else 1.
  x = np.concatenate([q * c, k / c])
  x = x - x.mean(0)
  # The principal axes are the top eigenvectors of the d x d scatter matrix (the right
  # singular vectors of x, without an SVD of the tall [2N, d] x: ~100x faster here), each
  # signed so that its largest component is positive (an SVD's signs are arbitrary).
  _, vecs = np.linalg.eigh(x.T @ x)
  axes = vecs[:, ::-1][:, :2].T
  axes = axes * np.where(axes[np.arange(len(axes)), np.argmax(np.abs(axes), 1)] < 0, -1., 1.)[:, None]
  if axes.shape[0] < 2:
    axes = np.concatenate([axes, np.zeros((2 - axes.shape[0], x.shape[1]))])
  coords = x @ axes.T
  return coords.reshape(2, len(q), 2).astype(np.float32)


def qk_embeddings(q: np.ndarray, k: np.ndarray) -> np.ndarray:
  """[M, L, H, T, d] queries and keys -> [L, H, 2 (query, key), M * T, 2] joint embeddings
  per head of the tokens of the M images (token m * T + t)."""
  m, L, H, t, d = q.shape
  out = np.zeros((L, H, 2, m * t, 2), np.float32)
  for layer in range(L):
    for head in range(H):
      out[layer, head] = joint_embedding(q[:, layer, head].reshape(-1, d),
                                         k[:, layer, head].reshape(-1, d))
  return out


def pool_rollout(pool_attention, rollout):
  """Rollout started from the MAP probe: its head-averaged attention [..., H, T] (with no
  residual: the probe is not a token) times the rollout through all layers [..., T, T]
  -> [..., T], how much each input token flows into the pooled embedding."""
  return jnp.einsum('...q,...qk->...k', jnp.mean(pool_attention, axis=-2), rollout)


def _image_maps(params, config: ViTConfig, images, with_qk: bool = False) -> dict:
  """The stored maps of a few images, in float16: 'map_attention' [B, L, H, T, T],
  'map_rollout' [B, L, T, T], and with a MAP head 'map_pool_attention' [B, H, T] and
  'map_pool_rollout' [B, T]; with_qk (this package's model only): also 'queries' and
  'keys' [B, L, H, T, D/H] in float32, from the same forward."""
  maps = _maps_program(params, config, images, with_qk)
  return {k: np.asarray(v).astype(np.float32 if k in ('queries', 'keys') else np.float16)
          for k, v in maps.items()}


@functools.partial(jax.jit, static_argnums=(1, 3))
def _maps_program(params, config: ViTConfig, images, with_qk: bool) -> dict:
  """One compiled program (one forward) for everything stored of a few images."""
  qk = None
  if with_qk or config.has_pool_attention:
    (_, attention), state = model_lib.VisionTransformer(config).apply(
        {'params': params}, images, return_attention=True, mutable=['intermediates'])
    pool = (state['intermediates']['MAPHead_0']['pool_attention'][0][:, :, 0]
            if config.has_pool_attention else None)
    if with_qk:
      qk = _queries_keys(params, config, state['intermediates'])
  else:
    attention, pool = model_lib.apply(params, config, images, return_attention=True)[1], None
  attention = precision.widen(attention)  # rollout multiplies L matrices: not bfloat16
  rollout = attention_rollout(attention)
  maps = {'map_attention': attention, 'map_rollout': rollout}
  if pool is not None:
    maps.update(map_pool_attention=pool, map_pool_rollout=pool_rollout(pool, rollout[:, -1]))
  if qk is not None:
    maps.update(queries=qk[0], keys=qk[1])
  return maps


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

# The default map budget: every image of a small run (the photo demo's 22 at 3.4 MiB each,
# 12 x 12 patches of ViT-S/14) and ~11 images of a ViT-B/16 at 224^2; a larger run stores
# them all with a larger --map-budget-mib (the plugin prints the value that fits all).
DEFAULT_MAP_BUDGET_MIB = 128.


@dataclasses.dataclass(frozen=True)
class StrengthOptions:
  batch_size: int = option(DEFAULT_BATCH_SIZE, 'images per batch')
  map_images: Optional[int] = option(
      None, 'images (spread over the set) whose full attention maps and rollout are stored '
      f'(default: as many as fit in --map-budget-mib, {DEFAULT_MAP_BUDGET_MIB:g} MiB unless given)',
      parse=int)
  map_budget_mib: Optional[float] = option(
      None, 'store the maps of as many images (spread over the set) as fit in this many MiB '
      '(float16 attention and rollout, 2 L (H + 1) T^2 bytes an image; all images if they '
      f'fit); overrides --map-images; default {DEFAULT_MAP_BUDGET_MIB:g} when neither is given',
      parse=float)
  qk_images: int = option(
      4, 'of the stored images, how many go into the joint query/key embedding of each head')
  dtype: str = option('float32', precision.HELP, parse=precision.parse)
  progress: bool = option(True, 'no progress bars', flag='--no-progress')

  def __post_init__(self):
    check(self, 'batch_size', self.batch_size, low=1)
    check(self, 'map_images', self.map_images, low=0, optional=True)
    check(self, 'qk_images', self.qk_images, low=0)
    check(self, 'map_budget_mib', self.map_budget_mib, low=0, optional=True, what='a number')
    precision.check(self, 'dtype', self.dtype)

  def stored_maps(self, config: ViTConfig, n_images: int) -> int:
    """How many images get their full maps stored: as many as fit in map_budget_mib if
    given, else map_images if given, else as many as fit in DEFAULT_MAP_BUDGET_MIB."""
    if self.map_budget_mib is None and self.map_images is not None:
      return min(self.map_images, n_images)
    budget = DEFAULT_MAP_BUDGET_MIB if self.map_budget_mib is None else self.map_budget_mib
    return min(n_images, int(budget * 2 ** 20 // map_bytes(config)))


def map_bytes(config: ViTConfig) -> int:
  """Bytes of one stored image's maps: float16 attention [L, H, T, T] and rollout [L, T, T]
  (with a MAP head also its attention [H, T] and the rollout from it [T])."""
  t = config.num_tokens
  pool = (config.num_heads + 1) * t if config.has_pool_attention else 0
  return 2 * (config.num_layers * (config.num_heads + 1) * t ** 2 + pool)


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
  (gh, gw), t = config.grid_shape, config.num_tokens
  n = max(gh, gw)
  dy, dx = np.abs(np.arange(-(gh - 1), gh)), np.abs(np.arange(-(gw - 1), gw))
  pairs, uniform = sums['offset_pairs'], sums['offset_uniform']   # [2h-1, 2w-1], all images
  offset_mean = np.where(pairs > 0, sums['offset_sum'] / np.where(pairs > 0, pairs, 1.), 0.)
  if not config.naflex_max_patches:  # every image on one grid: uniform is 1/T everywhere
    offset_ratio = offset_mean * t
  else:
    offset_ratio = np.where(uniform > 0, sums['offset_sum'] / np.where(uniform > 0, uniform, 1.),
                            0.)
  cheb = np.maximum(dy[:, None], dx[None])
  mass = np.stack([np.sum(np.where(cheb == d, sums['offset_sum'], 0.), axis=(-2, -1))
                   for d in range(n)], -1)                        # [L, H, n]
  ranges = scalar_ranges(config)
  scalars = [s for s in SCALARS if s != 'cls_share' or config.has_cls_token]
  cls_maps = {}
  if config.has_cls_token:
    for name in ('cls_attention', 'to_cls'):
      cls_maps[name] = (sums[name] / count).reshape(sums[name].shape[:-1] + (gh, gw))
  if 'pool_attention' in sums:  # [H, P] -> [H, h, w]
    cls_maps['pool_attention'] = (sums['pool_attention'] / count).reshape(-1, gh, gw)
  return StrengthResult(
      images=count, offset_mean=offset_mean, offset_ratio=offset_ratio,  # / uniform's 1/T
      offset_pairs=np.rint(pairs).astype(np.int64),
      neighbourhood_share=np.cumsum(mass, -1) / max(float(sums['patch_queries']), 1.),
      mean_distance=sums['mean_distance'] / count, entropy=sums['entropy'] / count,
      self_share=sums['self_share'] / count,
      cls_share=sums['cls_share'] / count if config.has_cls_token else None,
      quantile_levels=QUANTILES,
      distributions={s: ScalarDistribution(
          ranges[s], sums[f'{s}_hist'],
          histogram_quantiles(sums[f'{s}_hist'], *ranges[s])) for s in scalars},
      baselines=baselines(config), **cls_maps)


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
  maps and rollout of `options.stored_maps(...)` images spread evenly over it (over process 0's
  shard when the mesh spans several processes; every process returns the same sums)."""
  stream = open_stream(params, source, options.batch_size, options.dtype, mesh)
  mesh, params, multi = stream.mesh, stream.params, stream.multiprocess
  wanted = spread_indices(len(source), options.stored_maps(config, len(source)))
  if multi:  # the stored maps come from process 0's shard, which writes them
    first_shard = shard_range(len(source), 0, parallel.process_count(mesh))[1]
    wanted = spread_indices(first_shard, options.stored_maps(config, first_shard))
  local_params = parallel.local_copy(params) if multi else params
  sums, count = {}, 0
  maps, map_index = {}, []               # {field: [per-batch arrays]}
  qk = ([], [])                          # queries, keys of the first qk_images stored images
  for batch in stream.batches(progress=options.progress, desc='strength'):
    batch = batch._replace(images=stream.cast(batch.images))
    cfg = config.for_images(batch.images.shape[1:3])  # NaFlex: the batch's own grid
    stats = strength_batch(params, cfg, parallel.shard_batch(mesh, batch.images))
    sums = accumulate(sums, stream.fetch(stats), stream.global_batch(batch).valid, cfg, config)
    count += int(batch.valid.sum())
    # Full maps are stored at the canvas grid only (NaFlex: of the images on that grid).
    rows = np.flatnonzero(batch.valid & np.isin(batch.index, wanted) & (cfg == config))
    if len(rows):
      # Queries and keys are read from this model's sown block inputs: none for an
      # intercepted foreign model, whose view then shows no Q/K embedding. They come from
      # the maps' forward (for all its images; the first qk_images are kept).
      qk_left = options.qk_images if model_lib.supports_prefix_reuse(config) else 0
      take = max(0, qk_left - sum(len(x) for x in qk[0]))
      stored = _image_maps(local_params, config, batch.images[rows], with_qk=take > 0)
      if take:
        qk[0].append(stored.pop('queries')[:take]); qk[1].append(stored.pop('keys')[:take])
      for name, value in stored.items():
        maps.setdefault(name, []).append(value)
      map_index += batch.index[rows].tolist()
  if multi:  # exact: float64 sums and counts, added in process order
    sums = parallel.allreduce_sums({**sums, '__count__': np.asarray(count, np.float64)}, mesh)
    count = int(sums.pop('__count__'))
  result = finish(sums, count, config)
  if not maps:
    return result
  if qk[0]:
    q, k = np.concatenate(qk[0]), np.concatenate(qk[1])
    result = dataclasses.replace(result, qk_embedding=qk_embeddings(q, k),
                                 qk_images=np.arange(len(q), dtype=np.int32))
  return dataclasses.replace(result, map_image_index=np.asarray(map_index, np.int32),
                             **{name: np.concatenate(v) for name, v in maps.items()})
