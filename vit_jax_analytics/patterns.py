"""What patterns have heads learned? Re-centred attention maps summarised by an autoencoder.

1. Samples: for (image, layer, head, query patch) tuples, the query's attention over the
   patch grid, re-centred on the query onto a (2n-1) x (2n-1) canvas (cell (dy + n-1,
   dx + n-1) holds the weight on the key at offset (dy, dx)), with a mask of the cells that
   fall inside the image; and the plain n x n map.
2. A small convolutional autoencoder (Flax, trained with Optax) embeds each sample's
   pattern (the canvas scaled to a peak of 1) in a 2-D latent space.
3. The summary: the latent plane decoded on a regular grid (a map of every pattern the
   model can produce), each head's density over that map, and k-means clusters of heads.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vit_jax_analytics import model as model_lib, parallel
from vit_jax_analytics.model import ViTConfig


# --- samples -------------------------------------------------------------------------------

def recentre(maps, query_rows, query_cols, n: int):
  """maps [S, n, n], query positions [S] -> (canvas [S, 2n-1, 2n-1], inside [S, 2n-1, 2n-1]).

  Cell (dy + n - 1, dx + n - 1) of a canvas is the weight on the key at offset (dy, dx)
  from the query; `inside` marks the cells whose key lies in the image (elsewhere the
  canvas is 0 because there is no key, not because attention is 0).
  """
  def one(m, r, c):
    start = (n - 1 - r, n - 1 - c)
    canvas = jax.lax.dynamic_update_slice(jnp.zeros((2 * n - 1, 2 * n - 1), m.dtype), m, start)
    inside = jax.lax.dynamic_update_slice(jnp.zeros((2 * n - 1, 2 * n - 1), bool),
                                          jnp.ones((n, n), bool), start)
    return canvas, inside
  return jax.vmap(one)(maps, query_rows, query_cols)


def sample_queries(image_index: np.ndarray, config: ViTConfig, per_head: int,
                   seed: int) -> np.ndarray:
  """[B, L, H, per_head] query patch indices for each image, stratified and seeded.

  Each (image, layer, head) draws `per_head` distinct positions from its own generator
  keyed by (seed, image index), so samples do not depend on batching; over images the
  positions cover the grid evenly.
  """
  p = config.grid_size ** 2
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
  [B, L, H, S, n, n] and the weight on the class token [B, L, H, S] (0 without one)."""
  n, cls = config.grid_size, int(config.has_cls_token)

  def reduce(weights, layer):  # weights [B, H, T, T]
    q = queries[:, layer] + cls                                   # [B, H, S]
    rows = jnp.take_along_axis(weights, q[..., None], axis=2)     # [B, H, S, T]
    to_cls = rows[..., 0] if cls else jnp.zeros(rows.shape[:-1], rows.dtype)
    return rows[..., cls:].reshape(rows.shape[:-1] + (n, n)), to_cls

  _, (rows, to_cls) = model_lib.apply(params, config, images, attention_reduce=reduce)
  return jnp.moveaxis(rows, 0, 1), jnp.moveaxis(to_cls, 0, 1)


@dataclasses.dataclass
class Samples:
  """recentred [S, 2n-1, 2n-1] and plain [S, n, n] float16 maps; to_cls [S] float16;
  index [S, 4] int32 rows (image, layer, head, query patch)."""
  recentred: np.ndarray
  plain: np.ndarray
  to_cls: np.ndarray
  index: np.ndarray

  def inside(self, n: int) -> np.ndarray:
    """[S, 2n-1, 2n-1] the canvas cells that lie inside the image."""
    r, c = np.divmod(self.index[:, 3], n)
    _, inside = recentre(jnp.zeros((len(r), n, n)), r, c, n)
    return np.asarray(inside)


def extract_samples(params, config: ViTConfig, image_set, per_head: int = 4,
                    max_images: Optional[int] = None, batch_size: int = 32, seed: int = 0,
                    mean=(0.5,) * 3, std=(0.5,) * 3, mesh=None, progress=True) -> Samples:
  """Pattern samples from the first `max_images` readable images: `per_head` query patches
  per (image, layer, head), so at most max_images * L * H * per_head samples."""
  from vit_jax_analytics import data

  n = config.grid_size
  image_set = image_set.take(max_images)
  mesh = mesh or parallel.batch_mesh()
  params = parallel.replicate(mesh, params)
  parts = {'recentred': [], 'plain': [], 'to_cls': [], 'index': []}
  stream = data.BatchStream(image_set, config.image_size,
                            parallel.device_batch_size(batch_size, mesh), mean=mean, std=std,
                            progress=progress, desc='pattern samples')
  for batch in stream:
    queries = sample_queries(batch.index, config, per_head, seed)
    images, q = parallel.shard_batch(mesh, (batch.images, queries))
    rows, to_cls = extract_batch(params, config, images, q)
    keep = batch.valid
    rows, to_cls, queries = np.asarray(rows)[keep], np.asarray(to_cls)[keep], queries[keep]
    b = rows.shape[0]
    if not b:
      continue
    grid = np.meshgrid(batch.index[keep], np.arange(config.num_layers),
                       np.arange(config.num_heads), np.arange(per_head), indexing='ij')
    index = np.stack([grid[0], grid[1], grid[2], queries], -1).reshape(-1, 4)
    plain = rows.reshape(-1, n, n)
    qr, qc = np.divmod(index[:, 3], n)
    canvas, _ = recentre(jnp.asarray(plain), qr, qc, n)
    parts['recentred'].append(np.asarray(canvas, np.float16))
    parts['plain'].append(plain.astype(np.float16))
    parts['to_cls'].append(to_cls.reshape(-1).astype(np.float16))
    parts['index'].append(index.astype(np.int32))
  if not parts['index']:
    from vit_jax_analytics.errors import DataError
    raise DataError(f'{image_set.root}: no readable images to sample patterns from')
  return Samples(**{k: np.concatenate(v) for k, v in parts.items()})


# --- autoencoder ---------------------------------------------------------------------------

def ae_inputs(samples: Samples, n: int) -> np.ndarray:
  """[S, 2n-1, 2n-1, 2] float32: the pattern (canvas scaled to a peak of 1) and the
  inside-the-image mask, so that 'no key here' differs from 'no attention here'."""
  canvas = samples.recentred.astype(np.float32)
  peak = canvas.max(axis=(1, 2), keepdims=True)
  pattern = np.where(peak > 0, canvas / np.where(peak > 0, peak, 1.), 0.)
  return np.stack([pattern, samples.inside(n).astype(np.float32)], -1)


class PatternAutoencoder(nn.Module):
  """Conv encoder to a `latent_dim` code, and a decoder back to the canvas."""
  canvas: int          # 2n - 1
  latent_dim: int = 2
  width: int = 16

  def setup(self):
    self.padded = -(-self.canvas // 4) * 4
    w = self.width
    self.enc = [nn.Conv(w, (3, 3), strides=2), nn.Conv(2 * w, (3, 3), strides=2)]
    self.enc_dense = nn.Dense(64)
    self.to_latent = nn.Dense(self.latent_dim)
    self.dec_dense = nn.Dense(64)
    self.dec_grid = nn.Dense((self.padded // 4) ** 2 * 2 * w)
    self.dec = [nn.ConvTranspose(w, (3, 3), strides=(2, 2)),
                nn.ConvTranspose(1, (3, 3), strides=(2, 2))]

  def encode(self, x):
    """x [B, c, c, 2] -> latent [B, latent_dim]."""
    pad = self.padded - self.canvas
    x = jnp.pad(x, ((0, 0), (0, pad), (0, pad), (0, 0)))
    for conv in self.enc:
      x = nn.gelu(conv(x))
    return self.to_latent(nn.gelu(self.enc_dense(x.reshape(x.shape[0], -1))))

  def decode(self, z):
    """latent [B, latent_dim] -> pattern [B, c, c] in [0, 1]."""
    g = self.padded // 4
    x = nn.gelu(self.dec_grid(nn.gelu(self.dec_dense(z))))
    x = x.reshape(z.shape[0], g, g, 2 * self.width)
    x = nn.gelu(self.dec[0](x))
    x = self.dec[1](x)[..., 0]
    return jax.nn.sigmoid(x[:, :self.canvas, :self.canvas])

  def __call__(self, x):
    return self.decode(self.encode(x))


def masked_bce(reconstruction, x):
  """Binary cross-entropy over the canvas cells inside the image (the training loss: on
  sparse patterns, squared error sits on an all-zero plateau). x [B, c, c, 2]."""
  inside, target = x[..., 1], x[..., 0]
  p = jnp.clip(reconstruction, 1e-6, 1 - 1e-6)
  err = -(target * jnp.log(p) + (1 - target) * jnp.log(1 - p)) * inside
  return jnp.sum(err, (1, 2)) / jnp.maximum(jnp.sum(inside, (1, 2)), 1.)


def masked_mse(reconstruction, x):
  """Mean squared error over the canvas cells inside the image; x [B, c, c, 2]."""
  inside = x[..., 1]
  err = (reconstruction - x[..., 0]) ** 2 * inside
  return jnp.sum(err, (1, 2)) / jnp.maximum(jnp.sum(inside, (1, 2)), 1.)


@dataclasses.dataclass
class AEOptions:
  latent_dim: int = 2
  width: int = 16
  epochs: int = 60
  batch_size: int = 256
  learning_rate: float = 3e-3
  weight_decay: float = 1e-4
  warmup_fraction: float = 0.05
  validation_fraction: float = 0.1
  patience: int = 20          # epochs without validation improvement before stopping
  seed: int = 0
  progress: bool = True


def train_autoencoder(x: np.ndarray, canvas: int, options: AEOptions):
  """Trains on x [S, c, c, 2]; returns (params, history) with the best-validation params.

  history: {'train_loss': [epochs], 'val_loss': [epochs], 'best_epoch', 'stopped_early'}.
  Deterministic for a fixed seed on CPU.
  """
  from vit_jax_analytics.progress import progress_bar

  model = PatternAutoencoder(canvas, options.latent_dim, options.width)
  rng = np.random.default_rng(options.seed)
  order = rng.permutation(len(x))
  n_val = max(1, int(round(len(x) * options.validation_fraction)))
  val, train = x[order[:n_val]], x[order[n_val:]]
  steps_per_epoch = max(1, len(train) // options.batch_size)
  total = steps_per_epoch * options.epochs
  schedule = optax.warmup_cosine_decay_schedule(
      0., options.learning_rate, max(1, int(total * options.warmup_fraction)), total)
  optimizer = optax.adamw(schedule, weight_decay=options.weight_decay)
  params = model.init(jax.random.key(options.seed), jnp.zeros((1, canvas, canvas, 2)))['params']
  opt_state = optimizer.init(params)

  def loss_fn(p, batch):
    return jnp.mean(masked_bce(model.apply({'params': p}, batch), batch))

  @jax.jit
  def train_step(p, state, batch):
    loss, grads = jax.value_and_grad(loss_fn)(p, batch)
    updates, state = optimizer.update(grads, state, p)
    return optax.apply_updates(p, updates), state, loss

  eval_loss = jax.jit(loss_fn)
  history = {'train_loss': [], 'val_loss': []}
  best, best_params, best_epoch, waited = np.inf, params, 0, 0
  bar = progress_bar(options.epochs, 'autoencoder', 'epoch', disable=not options.progress)
  for epoch in range(options.epochs):
    perm = rng.permutation(len(train))
    losses = []
    for k in range(steps_per_epoch):
      batch = train[perm[k * options.batch_size:(k + 1) * options.batch_size]]
      params, opt_state, loss = train_step(params, opt_state, batch)
      losses.append(float(loss))
    val_loss = float(np.mean([eval_loss(params, val[i:i + 1024])
                              for i in range(0, len(val), 1024)]))
    history['train_loss'].append(float(np.mean(losses)))
    history['val_loss'].append(val_loss)
    bar.update(1)
    bar.set_postfix(train=f'{np.mean(losses):.4f}', val=f'{val_loss:.4f}')
    if val_loss < best - 1e-6:
      best, best_params, best_epoch, waited = val_loss, params, epoch, 0
    else:
      waited += 1
      if waited >= options.patience:
        break
  bar.close()
  history['best_epoch'] = best_epoch
  history['stopped_early'] = len(history['val_loss']) < options.epochs
  return best_params, history


def encode(params, x, canvas: int, options: AEOptions, batch: int = 2048) -> np.ndarray:
  model = PatternAutoencoder(canvas, options.latent_dim, options.width)
  f = jax.jit(lambda p, xs: model.apply({'params': p}, xs, method=PatternAutoencoder.encode))
  return np.concatenate([np.asarray(f(params, x[i:i + batch])) for i in range(0, len(x), batch)])


def decode(params, z, canvas: int, options: AEOptions) -> np.ndarray:
  model = PatternAutoencoder(canvas, options.latent_dim, options.width)
  return np.asarray(jax.jit(lambda p, zs: model.apply({'params': p}, zs,
                                                      method=PatternAutoencoder.decode))(
      params, jnp.asarray(z, jnp.float32)))


def reconstruction_errors(params, x, canvas: int, options: AEOptions,
                          batch: int = 2048) -> np.ndarray:
  """[S] masked MSE of each sample's reconstruction."""
  model = PatternAutoencoder(canvas, options.latent_dim, options.width)
  f = jax.jit(lambda p, xs: masked_mse(model.apply({'params': p}, xs), xs))
  return np.concatenate([np.asarray(f(params, x[i:i + batch])) for i in range(0, len(x), batch)])


def pca_2d(latent: np.ndarray) -> tuple:
  """Projects [S, d] latents on their top two principal axes: (coords [S, 2], (mean,
  axes [2, d])) so that the map's grid points can be lifted back for decoding."""
  mean = latent.mean(0)
  _, _, vt = np.linalg.svd(latent - mean, full_matrices=False)
  axes = vt[:2]
  # A fixed sign per axis, so the layout does not flip between runs.
  axes = axes * np.sign(axes[np.arange(2), np.argmax(np.abs(axes), 1)])[:, None]
  return (latent - mean) @ axes.T, (mean, axes)


# --- the summary a person looks at -----------------------------------------------------------

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
  """A suggested name for a mean re-centred pattern [2n-1, 2n-1] (weights, not scaled)."""
  n = (pattern.shape[0] + 1) // 2
  total = pattern.sum() + to_cls
  if total <= 0:
    return 'empty'
  if to_cls / total > 0.5:
    return 'class-token-focused'
  p = pattern / max(pattern.sum(), 1e-12)
  c = n - 1
  dy, dx = np.unravel_index(np.argmax(p), p.shape)
  cheb = np.maximum(*np.abs(np.mgrid[-c:c + 1, -c:c + 1]))
  if p[c, c] > 0.5:
    return 'self'
  if p.max() > 0.4:
    return f'offset ({dy - c:+d}, {dx - c:+d})'
  if p[cheb <= 1].sum() > 0.6:
    return 'local'
  if p[c].sum() > 0.6:
    return 'row'
  if p[:, c].sum() > 0.6:
    return 'column'
  return 'global'


@dataclasses.dataclass
class PatternOptions:
  per_head: int = 4
  max_images: Optional[int] = 200
  batch_size: int = 32
  grid: int = 12              # the decoded map is grid x grid patterns
  clusters: int = 6
  seed: int = 0
  ae: AEOptions = dataclasses.field(default_factory=AEOptions)
  progress: bool = True


def summarise(samples: Samples, config: ViTConfig, options: PatternOptions):
  """Trains the autoencoder and builds the map, densities and clusters. Returns
  (result dict of numpy arrays, autoencoder params)."""
  n = config.grid_size
  canvas = 2 * n - 1
  x = ae_inputs(samples, n)
  ae_params, history = train_autoencoder(x, canvas, options.ae)
  latent = encode(ae_params, x, canvas, options.ae)
  if options.ae.latent_dim == 2:
    coords, lift = latent, None
  else:
    coords, lift = pca_2d(latent)
  extent = latent_extent(coords)
  g = options.grid
  centres = grid_centres(extent, g).reshape(-1, 2)
  z = centres if lift is None else lift[0] + centres @ lift[1]
  decoded = decode(ae_params, z, canvas, options.ae).reshape(g, g, canvas, canvas)
  cells = grid_cells(coords, extent, g)
  dens = head_densities(cells, samples.index, config, g)
  k = min(options.clusters, config.num_layers * config.num_heads)
  labels, _ = kmeans(dens.reshape(-1, g * g), k, options.seed)
  errors = reconstruction_errors(ae_params, x, canvas, options.ae)
  per_head_error = np.zeros((config.num_layers, config.num_heads))
  np.add.at(per_head_error, (samples.index[:, 1], samples.index[:, 2]), errors)
  per_head_error /= np.maximum(np.bincount(samples.index[:, 1] * config.num_heads +
                                           samples.index[:, 2],
                                           minlength=per_head_error.size)
                               .reshape(per_head_error.shape), 1)
  head_of_sample = samples.index[:, 1] * config.num_heads + samples.index[:, 2]
  recentred = samples.recentred.astype(np.float32)
  representatives, names = [], []
  for j in range(k):
    members = np.isin(head_of_sample, np.flatnonzero(labels == j))
    mean_pattern = recentred[members].mean(0) if members.any() else np.zeros((canvas, canvas))
    mean_cls = float(samples.to_cls[members].astype(np.float32).mean()) if members.any() else 0.
    representatives.append(mean_pattern)
    names.append(describe_pattern(mean_pattern, mean_cls))
  inside = x[..., 1]
  variance = float(((x[..., 0] - (x[..., 0] * inside).sum(0) / np.maximum(inside.sum(0), 1))
                    ** 2 * inside).sum() / inside.sum())
  result = {
      'map': decoded, 'map_extent': extent, 'latent': coords.astype(np.float32),
      'sample_cells': cells.astype(np.int32), 'head_density': dens,
      'head_cluster': labels.reshape(config.num_layers, config.num_heads).astype(np.int32),
      'cluster_pattern': np.stack(representatives), 'cluster_names': names,
      'reconstruction_error': float(errors.mean()), 'data_variance': variance,
      'head_reconstruction_error': per_head_error, 'history': history,
  }
  return result, ae_params
