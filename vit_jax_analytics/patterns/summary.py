"""The summary a person looks at: the latent plane decoded on a regular grid (a map of
every pattern the model can produce), each head's density over that map, k-means clusters
of heads and their suggested names."""

from __future__ import annotations

import numpy as np

from vit_jax_analytics.model import ViTConfig
from vit_jax_analytics.patterns.autoencoder import (EVAL_CHUNK, AEInputs, AEOptions, decode,
                                                    encode, pca_2d, reconstruction_errors,
                                                    train_autoencoder)
from vit_jax_analytics.patterns.options import PatternOptions
from vit_jax_analytics.results import PatternResult, Samples


def latent_extent(coords: np.ndarray, margin: float = 0.05) -> np.ndarray:
  """[[x0, x1], [y0, y1]]: the 1st-99th percentile box of the coordinates, padded."""
  lo, hi = np.percentile(coords, 1, axis=0), np.percentile(coords, 99, axis=0)
  pad = (hi - lo) * margin + 1e-6
  return np.stack([lo - pad, hi + pad], -1)


def grid_cells(coords: np.ndarray, extent: np.ndarray, g: int) -> np.ndarray:
  """[S, 2] (row, col) of each coordinate's cell in the g x g grid over `extent` (clipped);
  rows follow the second latent axis, columns the first."""
  frac = (coords - extent[:, 0]) / (extent[:, 1] - extent[:, 0])
  cell = np.clip((frac * g).astype(int), 0, g - 1)
  return cell[:, ::-1]


def grid_centres(extent: np.ndarray, g: int) -> np.ndarray:
  """[g, g, 2] latent coordinates (x, y) of each cell centre; cell [r, c]."""
  xs = extent[0, 0] + (np.arange(g) + 0.5) / g * (extent[0, 1] - extent[0, 0])
  ys = extent[1, 0] + (np.arange(g) + 0.5) / g * (extent[1, 1] - extent[1, 0])
  yy, xx = np.meshgrid(ys, xs, indexing='ij')
  return np.stack([xx, yy], -1)


def head_densities(cells: np.ndarray, index: np.ndarray, config: ViTConfig,
                   g: int) -> np.ndarray:
  """[L, H, g, g]: the share of each head's samples falling in each map cell."""
  dens = np.zeros((config.num_layers, config.num_heads, g, g))
  np.add.at(dens, (index[:, 1], index[:, 2], cells[:, 0], cells[:, 1]), 1.)
  return dens / np.maximum(dens.sum((2, 3), keepdims=True), 1.)


def kmeans(x: np.ndarray, k: int, seed: int = 0, iters: int = 100, restarts: int = 10):
  """Plain k-means (k-means++ seeding, best of `restarts`): (labels [N], centres [k, d])."""
  rng = np.random.default_rng(seed)
  best = (np.inf, None, None)
  k = min(k, len(x))
  for _ in range(restarts):
    centres = [x[rng.integers(len(x))]]
    for _ in range(1, k):
      d2 = np.min(((x[:, None] - np.asarray(centres)[None]) ** 2).sum(-1), 1)
      p = d2 / d2.sum() if d2.sum() > 0 else np.full(len(x), 1. / len(x))
      centres.append(x[rng.choice(len(x), p=p)])
    centres = np.asarray(centres)
    for _ in range(iters):
      labels = np.argmin(((x[:, None] - centres[None]) ** 2).sum(-1), 1)
      new = np.asarray([x[labels == j].mean(0) if np.any(labels == j) else centres[j]
                        for j in range(k)])
      if np.allclose(new, centres):
        break
      centres = new
    inertia = ((x - centres[labels]) ** 2).sum()
    if inertia < best[0]:
      best = (inertia, labels, centres)
  return best[1], best[2]


def describe_pattern(pattern: np.ndarray, to_cls: float) -> str:
  """A suggested name for a mean re-centred pattern [2h-1, 2w-1] (weights, not scaled; a
  rectangular grid's is rectangular)."""
  total = pattern.sum() + to_cls
  if total <= 0:
    return 'empty'
  if to_cls / total > 0.5:
    return 'class-token-focused'
  p = pattern / max(pattern.sum(), 1e-12)
  cy, cx = (pattern.shape[0] - 1) // 2, (pattern.shape[1] - 1) // 2  # the zero offset
  dy, dx = np.unravel_index(np.argmax(p), p.shape)
  cheb = np.maximum(*np.abs(np.mgrid[-cy:cy + 1, -cx:cx + 1]))
  if p[cy, cx] > 0.5:
    return 'self'
  if p.max() > 0.4:
    return f'offset ({dy - cy:+d}, {dx - cx:+d})'
  if p[cheb <= 1].sum() > 0.6:
    return 'local'
  if p[cy].sum() > 0.6:
    return 'row'
  if p[:, cx].sum() > 0.6:
    return 'column'
  return 'global'


def latent_map(ae_params, coords: np.ndarray, lift, g: int, canvas: int,
               options: AEOptions) -> tuple:
  """The g x g grid over the samples' 2-D coords [S, 2], decoded: (extent [2, 2],
  decoded [g, g, c, c], cell of each sample [S, 2]). lift: (mean, axes) from pca_2d to
  map grid points back to the latent, or None for a 2-D latent."""
  extent = latent_extent(coords)
  centres = grid_centres(extent, g).reshape(-1, 2)
  z = centres if lift is None else lift[0] + centres @ lift[1]
  decoded = decode(ae_params, z, canvas, options).reshape(g, g, canvas, canvas)
  return extent, decoded, grid_cells(coords, extent, g)


def head_errors(errors: np.ndarray, index: np.ndarray, config: ViTConfig) -> np.ndarray:
  """[L, H] mean of the per-sample errors [S] over each head's samples."""
  shape = (config.num_layers, config.num_heads)
  total = np.zeros(shape)
  np.add.at(total, (index[:, 1], index[:, 2]), errors)
  counts = np.bincount(index[:, 1] * config.num_heads + index[:, 2],
                       minlength=total.size).reshape(shape)
  return total / np.maximum(counts, 1)


def name_clusters(labels: np.ndarray, samples: Samples, config: ViTConfig, k: int) -> tuple:
  """(mean re-centred pattern of each cluster's samples [k, c, c], suggested names [k])."""
  canvas = 2 * max(config.grid_shape) - 1
  head_of_sample = samples.index[:, 1] * config.num_heads + samples.index[:, 2]
  representatives, names = [], []
  for j in range(k):
    members = np.isin(head_of_sample, np.flatnonzero(labels == j))
    mean_pattern = (samples.recentred[members].astype(np.float32).mean(0) if members.any()
                    else np.zeros((canvas, canvas)))
    mean_cls = float(samples.to_cls[members].astype(np.float32).mean()) if members.any() else 0.
    representatives.append(mean_pattern)
    names.append(describe_pattern(mean_pattern, mean_cls))
  return np.stack(representatives), tuple(names)


def masked_variance(x, batch: int = EVAL_CHUNK) -> float:
  """Variance of the patterns x[..., 0] over the cells inside the image x[..., 1] (about
  each cell's mean); x an array or AEInputs, read `batch` samples at a time (float64
  sums)."""
  chunks = lambda: (x[i:i + batch] for i in range(0, len(x), batch))
  weighted, count = 0., 0.
  for c in chunks():
    weighted = weighted + (c[..., 0] * c[..., 1]).sum(0, dtype=np.float64)
    count = count + c[..., 1].sum(0, dtype=np.float64)
  mean = weighted / np.maximum(count, 1)
  squares = sum(((c[..., 0] - mean) ** 2 * c[..., 1]).sum() for c in chunks())
  return float(squares / count.sum())


def summarise(samples: Samples, config: ViTConfig, options: PatternOptions) -> tuple:
  """Trains the autoencoder, maps the samples, clusters the heads and names the clusters.
  Returns (PatternResult, autoencoder params)."""
  n, g = config.grid_shape, options.grid
  canvas = 2 * max(n) - 1
  x = AEInputs(samples, n)  # made a batch at a time: memory is the samples themselves
  ae_params, history = train_autoencoder(x, canvas, options.ae)
  latent = encode(ae_params, x, canvas, options.ae)
  coords, lift = (latent, None) if options.ae.latent_dim == 2 else pca_2d(latent)
  extent, decoded, cells = latent_map(ae_params, coords, lift, g, canvas, options.ae)
  density = head_densities(cells, samples.index, config, g)
  k = min(options.clusters, config.num_layers * config.num_heads)
  labels, _ = kmeans(density.reshape(-1, g * g), k, options.seed)
  errors = reconstruction_errors(ae_params, x, canvas, options.ae)
  cluster_pattern, names = name_clusters(labels, samples, config, k)
  return PatternResult(
      map=decoded, map_extent=extent, sample_latent=coords.astype(np.float32),
      sample_cell=cells.astype(np.int32), head_density=density,
      head_cluster=labels.reshape(config.num_layers, config.num_heads).astype(np.int32),
      cluster_pattern=cluster_pattern, cluster_names=names,
      reconstruction_error=float(errors.mean()), data_variance=masked_variance(x),
      head_reconstruction_error=head_errors(errors, samples.index, config), history=history,
      samples=samples), ae_params
