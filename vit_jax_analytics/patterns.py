"""What patterns have heads learned? Re-centred attention maps summarised by an autoencoder.

1. Samples: for (image, layer, head, query patch) tuples, the query's attention over the
   patch grid, re-centred on the query onto a (2n-1) x (2n-1) canvas (cell (dy + n-1,
   dx + n-1) holds the weight on the key at offset (dy, dx)), with a mask of the cells that
   fall inside the image; and the plain n x n map. A rectangular h x w grid is re-centred
   onto the square canvas of side 2 max(h, w) - 1 (the cells beyond the grid are outside).
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

from vit_jax_analytics import model as model_lib, parallel, precision
from vit_jax_analytics.batches import DEFAULT_BATCH_SIZE, BatchSource
from vit_jax_analytics.errors import DataError
from vit_jax_analytics.model import ViTConfig
from vit_jax_analytics.options import MAX_SEED, check, option
from vit_jax_analytics.results import PatternResult, Samples, TrainingHistory
from vit_jax_analytics.streaming import analysis_mesh, open_stream


# --- samples -------------------------------------------------------------------------------

def _grid(n) -> tuple:
  return tuple(n) if isinstance(n, (tuple, list)) else (n, n)


def recentre(maps, query_rows, query_cols, n):
  """maps [S, n, n], query positions [S] -> (canvas [S, 2n-1, 2n-1], inside [S, 2n-1, 2n-1]).
  n: the grid side, or (h, w) for maps [S, h, w] on the canvas of side 2 max(h, w) - 1.

  Cell (dy + n - 1, dx + n - 1) of a canvas is the weight on the key at offset (dy, dx)
  from the query; `inside` marks the cells whose key lies in the image (elsewhere the
  canvas is 0 because there is no key, not because attention is 0).
  """
  gh, gw = _grid(n)
  n = max(gh, gw)

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
    queries = sample_queries(batch.index, config, per_head, seed)
    images, q = stream.put(batch.images, queries)
    # With several processes, each reads back (and keeps) only its own rows.
    rows, to_cls = (parallel.local_rows(x, mesh) for x in stream.fetch(
        extract_batch(params, config, images, q)))
    keep = batch.valid
    if keep.any():
      parts.append(_batch_samples(np.asarray(rows, np.float32)[keep],
                                  np.asarray(to_cls, np.float32)[keep], queries[keep],
                                  batch.index[keep], config))
  fields = ('recentred', 'plain', 'to_cls', 'index')
  local = [np.concatenate([getattr(p, f) for p in parts]) if parts else None for f in fields]
  if parallel.is_multiprocess(mesh):
    if not parts:  # this shard had no readable image: empty rows of the right shapes
      (gh, gw), c = config.grid_shape, 2 * max(config.grid_shape) - 1
      local = [np.zeros((0, c, c), np.float16), np.zeros((0, gh, gw), np.float16),
               np.zeros(0, np.float16), np.zeros((0, 4), np.int32)]
    local = parallel.allgather_concat(local, mesh)
  if local[0] is None or not len(local[0]):
    raise DataError('no readable images to sample patterns from')
  return Samples(*local)


def _batch_samples(rows, to_cls, queries, image_index, config: ViTConfig) -> Samples:
  """One batch's samples from attention rows [B, L, H, S, n, n], class-token weights
  [B, L, H, S] and query patches [B, L, H, S] of images `image_index` [B]."""
  (gh, gw), (b, L, H, per_head) = config.grid_shape, queries.shape
  grid = np.meshgrid(image_index, np.arange(L), np.arange(H), np.arange(per_head),
                     indexing='ij')
  index = np.stack([grid[0], grid[1], grid[2], queries], -1).reshape(-1, 4)
  plain = rows.reshape(-1, gh, gw)
  qr, qc = np.divmod(index[:, 3], gw)
  canvas, _ = recentre(jnp.asarray(plain), qr, qc, (gh, gw))
  return Samples(np.asarray(canvas, np.float16), plain.astype(np.float16),
                 to_cls.reshape(-1).astype(np.float16), index.astype(np.int32))


# --- autoencoder ---------------------------------------------------------------------------

def ae_inputs(samples: Samples, n, rows=None) -> np.ndarray:
  """[S, 2n-1, 2n-1, 2] float32: the pattern (canvas scaled to a peak of 1) and the
  inside-the-image mask, so that 'no key here' differs from 'no attention here'; of the
  samples at `rows` (an index array or slice; default all)."""
  if rows is not None:
    samples = Samples(samples.recentred[rows], None, None, samples.index[rows])
  canvas = samples.recentred.astype(np.float32)
  peak = canvas.max(axis=(1, 2), keepdims=True)
  pattern = np.where(peak > 0, canvas / np.where(peak > 0, peak, 1.), 0.)
  return np.stack([pattern, samples.inside(n).astype(np.float32)], -1)


class AEInputs:
  """`ae_inputs(samples, n)` made row by row when indexed (`x[rows]`, `x[i:j]`, `len(x)`):
  the same values, without holding the float32 [S, c, c, 2] array (8x the float16 samples
  it is made from), so that the autoencoder's memory is its samples and one batch."""

  def __init__(self, samples: Samples, n):
    self.samples, self.n = samples, n
    self.shape = (len(samples.index),) + samples.recentred.shape[1:] + (2,)

  def __len__(self):
    return self.shape[0]

  def __getitem__(self, rows) -> np.ndarray:
    return ae_inputs(self.samples, self.n, rows)


class _Rows:
  """x[rows] read a slice at a time (x[rows[i:j]]), without making it whole."""

  def __init__(self, x, rows):
    self.x, self.rows = x, rows

  def __len__(self):
    return len(self.rows)

  def __getitem__(self, part: slice) -> np.ndarray:
    return self.x[self.rows[part]]


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


@dataclasses.dataclass(frozen=True)
class AEOptions:
  latent_dim: int = option(2, 'autoencoder latent size; above 2 it is projected to 2-D by '
                              'PCA')
  width: int = option(16, cli=False)
  epochs: int = option(60, 'autoencoder epochs', flag='--ae-epochs')
  batch_size: int = option(256, cli=False)
  learning_rate: float = option(3e-3, cli=False)
  weight_decay: float = option(1e-4, cli=False)
  warmup_fraction: float = option(0.05, cli=False)
  validation_fraction: float = option(0.1, cli=False)
  patience: int = option(20, cli=False)  # epochs without validation improvement
  seed: int = option(0, cli=False, flag='--pattern-seed')  # the CLI sets it from that flag
  progress: bool = option(True, cli=False)

  def __post_init__(self):
    check(self, 'latent_dim', self.latent_dim, low=2)
    check(self, 'epochs', self.epochs, low=1)
    check(self, 'batch_size', self.batch_size, low=1)
    check(self, 'patience', self.patience, low=1)
    check(self, 'seed', self.seed, low=0, high=MAX_SEED)
    check(self, 'validation_fraction', self.validation_fraction, low=0., high=0.5, what='a number')


def _adamw(options: AEOptions, total_steps: int):
  warmup = max(1, int(total_steps * options.warmup_fraction))
  schedule = optax.warmup_cosine_decay_schedule(
      0., options.learning_rate, warmup,
      max(total_steps, warmup + 1))  # optax needs a decay of at least one step (1 epoch)
  return optax.adamw(schedule, weight_decay=options.weight_decay)


def train_autoencoder(x, canvas: int, options: AEOptions):
  """Trains on x [S, c, c, 2] (an array or AEInputs: read a batch at a time); returns
  (params, TrainingHistory) with the params of the best validation loss. Deterministic
  for a fixed seed on CPU."""
  from vit_jax_analytics.progress import progress_bar

  model = PatternAutoencoder(canvas, options.latent_dim, options.width)
  rng = np.random.default_rng(options.seed)
  order = rng.permutation(len(x))
  n_val = max(1, int(round(len(x) * options.validation_fraction)))
  val, train = order[:n_val], order[n_val:]  # batches: x[train[...]], x[val[...]]
  steps_per_epoch = max(1, len(train) // options.batch_size)
  optimizer = _adamw(options, steps_per_epoch * options.epochs)
  # Jitted: run eagerly, init and optimizer.init compile every primitive one by one (about
  # 100 small programs, tens of seconds on a 2-core CPU).
  params = jax.jit(model.init)(jax.random.key(options.seed),
                               jnp.zeros((1, canvas, canvas, 2)))['params']
  opt_state = jax.jit(optimizer.init)(params)

  def loss_fn(p, batch):
    return jnp.mean(masked_bce(model.apply({'params': p}, batch), batch))

  @jax.jit
  def train_step(p, state, batch):
    loss, grads = jax.value_and_grad(loss_fn)(p, batch)
    updates, state = optimizer.update(grads, state, p)
    return optax.apply_updates(p, updates), state, loss

  @jax.jit
  def eval_losses(p, batch):   # [B] per sample: a padded chunk's padding is dropped
    return masked_bce(model.apply({'params': p}, batch), batch)

  train_losses, val_losses = [], []
  best, best_params, best_epoch, waited = np.inf, params, 0, 0
  bar = progress_bar(options.epochs, 'autoencoder', 'epoch', disable=not options.progress)
  for epoch in range(options.epochs):
    perm = rng.permutation(len(train))
    losses = []
    for k in range(steps_per_epoch):
      batch = x[train[perm[k * options.batch_size:(k + 1) * options.batch_size]]]
      params, opt_state, loss = train_step(params, opt_state, batch)
      losses.append(float(loss))
    val_loss = float(np.mean(_in_chunks(lambda b: eval_losses(params, b), _Rows(x, val))))
    train_losses.append(float(np.mean(losses)))
    val_losses.append(val_loss)
    bar.update(1)
    bar.set_postfix(train=f'{np.mean(losses):.4f}', val=f'{val_loss:.4f}')
    if val_loss < best - 1e-6:
      best, best_params, best_epoch, waited = val_loss, params, epoch, 0
    else:
      waited += 1
      if waited >= options.patience:
        break
  bar.close()
  return best_params, TrainingHistory(tuple(train_losses), tuple(val_losses), best_epoch,
                                      len(val_losses) < options.epochs)


# Jitted once per autoencoder shape (static arguments), not once per call.
@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _encode(params, x, canvas, latent_dim, width):
  model = PatternAutoencoder(canvas, latent_dim, width)
  return model.apply({'params': params}, x, method=PatternAutoencoder.encode)


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _decode(params, z, canvas, latent_dim, width):
  model = PatternAutoencoder(canvas, latent_dim, width)
  return model.apply({'params': params}, z, method=PatternAutoencoder.decode)


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _reconstruction_errors(params, x, canvas, latent_dim, width):
  return masked_mse(PatternAutoencoder(canvas, latent_dim, width).apply({'params': params}, x),
                    x)


# Samples the autoencoder evaluates at once (encoding, errors, validation): every chunk is
# padded to this size, so that one compiled program serves them all and their activations
# take the same memory whatever the number of samples.
EVAL_CHUNK = 512
# The decoded pattern map's side at most: GRID² maps of the canvas are decoded at once
# (128: 16,384 maps, 1.4 GB for ViT-L/14 at 518 px; 100,000 asked for 74.5 GiB).
MAX_GRID = 128


def _in_chunks(f, x, batch: int = EVAL_CHUNK) -> np.ndarray:
  """f applied to x (an array or AEInputs) `batch` rows at a time, the last chunk padded
  with zero rows (nothing inside the image) to `batch`; the padding's outputs dropped."""
  out = []
  for i in range(0, len(x), batch):
    xs = x[i:i + batch]
    n = len(xs)
    if n < batch:
      xs = np.concatenate([xs, np.zeros((batch - n,) + xs.shape[1:], xs.dtype)])
    out.append(np.asarray(f(xs))[:n])
  return np.concatenate(out)


def encode(params, x, canvas: int, options: AEOptions, batch: int = EVAL_CHUNK) -> np.ndarray:
  """x [S, c, c, 2] -> latents [S, latent_dim]."""
  return _in_chunks(lambda xs: _encode(params, xs, canvas, options.latent_dim, options.width),
                    x, batch)


def decode(params, z, canvas: int, options: AEOptions) -> np.ndarray:
  """latents [S, latent_dim] -> patterns [S, c, c] in [0, 1]."""
  return np.asarray(_decode(params, jnp.asarray(z, jnp.float32), canvas, options.latent_dim,
                            options.width))


def reconstruction_errors(params, x, canvas: int, options: AEOptions,
                          batch: int = EVAL_CHUNK) -> np.ndarray:
  """[S] masked MSE of each sample's reconstruction."""
  return _in_chunks(lambda xs: _reconstruction_errors(params, xs, canvas, options.latent_dim,
                                                      options.width), x, batch)


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


@dataclasses.dataclass(frozen=True)
class PatternOptions:
  per_head: int = option(4, 'query patches sampled per image, layer and head')
  max_images: Optional[int] = option(200, 'images sampled for patterns',
                                     flag='--pattern-images', parse=int)
  batch_size: int = option(DEFAULT_BATCH_SIZE, 'images per batch')
  grid: int = option(12, 'the decoded pattern map is GRID x GRID')
  clusters: int = option(6, 'head clusters')
  seed: int = option(0, 'seed of the sampled queries and the autoencoder',
                     flag='--pattern-seed')
  dtype: str = option('float32', precision.HELP, parse=precision.parse)
  ae: AEOptions = option(factory=AEOptions, cli=False)
  progress: bool = option(True, 'no progress bars', flag='--no-progress')

  def __post_init__(self):
    check(self, 'per_head', self.per_head, low=1)
    check(self, 'max_images', self.max_images, low=1, optional=True)
    check(self, 'batch_size', self.batch_size, low=1)
    check(self, 'grid', self.grid, low=2, high=MAX_GRID)
    check(self, 'seed', self.seed, low=0, high=MAX_SEED)
    check(self, 'clusters', self.clusters, low=1)
    precision.check(self, 'dtype', self.dtype)


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


def compute_patterns(params, config: ViTConfig, source: BatchSource,
                     options: PatternOptions = PatternOptions(), mesh=None) -> tuple:
  """Samples of the first options.max_images images of `source`, the autoencoder and the
  summary -> (PatternResult, autoencoder params).

  mesh: default every device of every process. With several processes each samples only
  its shard of the images; the samples are gathered and process 0 alone trains the
  autoencoder and returns the result (the others return (None, None)): the autoencoder is
  trained once, by the process that writes.
  """
  mesh = mesh or analysis_mesh()
  samples = extract_samples(params, config, source, options.per_head, options.max_images,
                            options.batch_size, options.seed, mesh, options.progress,
                            options.dtype)
  if parallel.is_multiprocess(mesh) and jax.process_index() != 0:
    return None, None
  return summarise(samples, config, options)
