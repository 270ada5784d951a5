"""Pattern samples: for (image, layer, head, query patch) tuples, the query's attention over
the patch grid, re-centred on the query onto a (2n-1) x (2n-1) canvas (cell (dy + n-1,
dx + n-1) holds the weight on the key at offset (dy, dx)), with a mask of the cells that
fall inside the image; and the plain n x n map. A rectangular h x w grid is re-centred
onto the square canvas of side 2 max(h, w) - 1 (the cells beyond the grid are outside)."""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax_analytics import model as model_lib, parallel
from vit_jax_analytics.batches import DEFAULT_BATCH_SIZE, BatchSource
from vit_jax_analytics.errors import DataError
from vit_jax_analytics.model import ViTConfig
from vit_jax_analytics.results import Samples
from vit_jax_analytics.streaming import open_stream


def _grid(n) -> tuple:
  return tuple(n) if isinstance(n, (tuple, list)) else (n, n)


def recentre(maps, query_rows, query_cols, n, side=None):
  """maps [S, n, n], query positions [S] -> (canvas [S, 2n-1, 2n-1], inside [S, 2n-1, 2n-1]).
  n: the grid side, or (h, w) for maps [S, h, w] on the canvas of side 2 max(h, w) - 1
  (2 side - 1 when `side` is given: a NaFlex canvas bounding several grids).

  Cell (dy + n - 1, dx + n - 1) of a canvas is the weight on the key at offset (dy, dx)
  from the query; `inside` marks the cells whose key lies in the image (elsewhere the
  canvas is 0 because there is no key, not because attention is 0).
  """
  gh, gw = _grid(n)
  n = max(gh, gw) if side is None else side

  def one(m, r, c):
    start = (n - 1 - r, n - 1 - c)
    canvas = jax.lax.dynamic_update_slice(jnp.zeros((2 * n - 1, 2 * n - 1), m.dtype), m, start)
    inside = jax.lax.dynamic_update_slice(jnp.zeros((2 * n - 1, 2 * n - 1), bool),
                                          jnp.ones((gh, gw), bool), start)
    return canvas, inside
  return jax.vmap(one)(maps, query_rows, query_cols)


def sample_queries(image_index: np.ndarray, config: ViTConfig, per_head: int,
                   seed: int) -> np.ndarray:
  """[B, L, H, per_head] query patch indices for each image, stratified and seeded.

  Each (image, layer, head) draws `per_head` distinct positions from its own generator
  keyed by (seed, image index), so samples do not depend on batching; over images the
  positions cover the grid evenly.
  """
  p = config.num_patches
  out = np.zeros((len(image_index), config.num_layers, config.num_heads, per_head), np.int32)
  for i, idx in enumerate(image_index):
    rng = np.random.default_rng([seed, max(int(idx), 0)])
    for l in range(config.num_layers):
      for h in range(config.num_heads):
        out[i, l, h] = rng.permutation(p)[:per_head]
  return out


@functools.partial(jax.jit, static_argnums=1)
def extract_batch(params, config: ViTConfig, images, queries):
  """queries [B, L, H, S] patch indices -> attention rows over the patch grid
  [B, L, H, S, h, w] and the weight on the class token [B, L, H, S] (0 without one)."""
  grid, cls, pre = config.grid_shape, int(config.has_cls_token), config.num_prefix_tokens

  def reduce(weights, layer):  # weights [B, H, T, T]
    q = queries[:, layer] + pre                                   # [B, H, S]
    rows = jnp.take_along_axis(weights, q[..., None], axis=2)     # [B, H, S, T]
    to_cls = rows[..., 0] if cls else jnp.zeros(rows.shape[:-1], rows.dtype)
    return rows[..., pre:].reshape(rows.shape[:-1] + grid), to_cls

  _, (rows, to_cls) = model_lib.apply(params, config, images, attention_reduce=reduce)
  return jnp.moveaxis(rows, 0, 1), jnp.moveaxis(to_cls, 0, 1)


def extract_samples(params, config: ViTConfig, source: BatchSource, per_head: int = 4,
                    max_images: Optional[int] = None,
                    batch_size: int = DEFAULT_BATCH_SIZE, seed: int = 0, mesh=None,
                    progress: bool = True, dtype: str = 'float32') -> Samples:
  """Pattern samples from the first `max_images` readable images of `source`: `per_head`
  query patches per (image, layer, head), so at most max_images * L * H * per_head.

  mesh: default every device of every process. With several processes each reads only its
  shard of those images, and the samples of all processes are gathered, in image order,
  on every process (`parallel.allgather_concat`): every process returns the same samples.
  dtype: the forward's precision (the samples are float16 either way).
  """
  stream = open_stream(params, source.take(max_images), batch_size, dtype, mesh)
  mesh, params = stream.mesh, stream.params
  parts = []
  for batch in stream.batches(progress=progress, desc='pattern samples'):
    cfg = config.for_images(batch.images.shape[1:3])  # NaFlex: the batch's own grid
    queries = sample_queries(batch.index, cfg, per_head, seed)
    images, q = stream.put(batch.images, queries)
    # With several processes, each reads back (and keeps) only its own rows.
    rows, to_cls = (parallel.local_rows(x, mesh) for x in stream.fetch(
        extract_batch(params, cfg, images, q)))
    keep = batch.valid
    if keep.any():
      parts.append(_batch_samples(np.asarray(rows, np.float32)[keep],
                                  np.asarray(to_cls, np.float32)[keep], queries[keep],
                                  batch.index[keep], cfg, config))
  fields = ('recentred', 'plain', 'to_cls', 'index')
  if config.naflex:
    fields += ('grids',)
  local = [np.concatenate([getattr(p, f) for p in parts]) if parts else None for f in fields]
  if parallel.is_multiprocess(mesh):
    if not parts:  # this shard had no readable image: empty rows of the right shapes
      (gh, gw), c = config.grid_shape, 2 * max(config.grid_shape) - 1
      local = [np.zeros((0, c, c), np.float16), np.zeros((0, gh, gw), np.float16),
               np.zeros(0, np.float16), np.zeros((0, 4), np.int32),
               np.zeros((0, 2), np.int32)][:len(fields)]
    local = parallel.allgather_concat(local, mesh)
  if local[0] is None or not len(local[0]):
    raise DataError('no readable images to sample patterns from')
  return Samples(*local)


def _batch_samples(rows, to_cls, queries, image_index, config: ViTConfig,
                   canvas_config: Optional[ViTConfig] = None) -> Samples:
  """One batch's samples from attention rows [B, L, H, S, n, n], class-token weights
  [B, L, H, S] and query patches [B, L, H, S] of images `image_index` [B]. config: the
  batch's; canvas_config (NaFlex): where samples of every grid meet — re-centred on its
  canvas, the query index and the plain map on its grid, each sample's grid in `grids`."""
  canvas_config = config if canvas_config is None else canvas_config
  (gh, gw), (b, L, H, per_head) = config.grid_shape, queries.shape
  (ch, cw) = canvas_config.grid_shape
  grid = np.meshgrid(image_index, np.arange(L), np.arange(H), np.arange(per_head),
                     indexing='ij')
  index = np.stack([grid[0], grid[1], grid[2], queries], -1).reshape(-1, 4)
  plain = rows.reshape(-1, gh, gw)
  qr, qc = np.divmod(index[:, 3], gw)
  canvas, _ = recentre(jnp.asarray(plain), qr, qc, (gh, gw), max(ch, cw))
  grids = None
  if canvas_config.naflex:
    index[:, 3] = qr * cw + qc
    plain = np.pad(plain, ((0, 0), (0, ch - gh), (0, cw - gw)))
    grids = np.tile(np.asarray([[gh, gw]], np.int32), (len(index), 1))
  return Samples(np.asarray(canvas, np.float16), plain.astype(np.float16),
                 to_cls.reshape(-1).astype(np.float16), index.astype(np.int32), grids)
