"""The pattern autoencoder: a small convolutional autoencoder (Flax, trained with Optax)
that embeds each sample's pattern (the canvas scaled to a peak of 1, with the
inside-the-image mask) in a low-dimensional latent space; its training, encoding, decoding
and reconstruction errors."""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vit_jax_analytics.errors import OptionError
from vit_jax_analytics.options import MAX_SEED, check, option
from vit_jax_analytics.progress import progress_bar
from vit_jax_analytics.results import Samples, TrainingHistory


def ae_inputs(samples: Samples, n, rows=None) -> np.ndarray:
  """[S, 2n-1, 2n-1, 2] float32: the pattern (canvas scaled to a peak of 1) and the
  inside-the-image mask, so that 'no key here' differs from 'no attention here'; of the
  samples at `rows` (an index array or slice; default all)."""
  if rows is not None:
    samples = Samples(samples.recentred[rows], None, None, samples.index[rows],
                      None if samples.grids is None else samples.grids[rows])
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


class PatternAutoencoder(nn.Module):
  """An encoder to a `latent_dim` code and a decoder back to the canvas. kind 'dense':
  dense layers both ways (the canvas's cells flattened; matmuls only); 'conv': two strided
  convolutions in, a dense layer to a quarter-size grid and two transposed convolutions
  out. On a 2-core CPU a 'conv' training step is ~25x a 'dense' one (XLA's small-channel
  convolutions and their gradients; slower still inside a compiled loop) for the same
  clusters (docs/cost.md)."""
  canvas: int          # 2n - 1
  latent_dim: int = 2
  width: int = 16
  kind: str = 'dense'

  def setup(self):
    self.padded = -(-self.canvas // 4) * 4
    w = self.width
    if self.kind == 'conv':
      self.enc = [nn.Conv(w, (3, 3), strides=2), nn.Conv(2 * w, (3, 3), strides=2)]
    else:
      self.enc_hidden = nn.Dense(16 * w)
    self.enc_dense = nn.Dense(64)
    self.to_latent = nn.Dense(self.latent_dim)
    self.dec_dense = nn.Dense(64)
    if self.kind == 'conv':
      self.dec_grid = nn.Dense((self.padded // 4) ** 2 * 2 * w)
      self.dec = [nn.ConvTranspose(w, (3, 3), strides=(2, 2)),
                  nn.ConvTranspose(1, (3, 3), strides=(2, 2))]
    else:
      self.dec_hidden = nn.Dense(16 * w)
      self.dec_cells = nn.Dense(self.canvas ** 2)

  def encode(self, x):
    """x [B, c, c, 2] -> latent [B, latent_dim]."""
    if self.kind == 'conv':
      pad = self.padded - self.canvas
      x = jnp.pad(x, ((0, 0), (0, pad), (0, pad), (0, 0)))
      for conv in self.enc:
        x = nn.gelu(conv(x))
    else:
      x = nn.gelu(self.enc_hidden(x.reshape(x.shape[0], -1)))
    return self.to_latent(nn.gelu(self.enc_dense(x.reshape(x.shape[0], -1))))

  def decode(self, z):
    """latent [B, latent_dim] -> pattern [B, c, c] in [0, 1]."""
    x = nn.gelu(self.dec_dense(z))
    if self.kind != 'conv':
      x = self.dec_cells(nn.gelu(self.dec_hidden(x)))
      return jax.nn.sigmoid(x.reshape(z.shape[0], self.canvas, self.canvas))
    g = self.padded // 4
    x = nn.gelu(self.dec_grid(x))
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
  kind: str = option('dense', cli=False)  # 'dense' or 'conv' (see PatternAutoencoder)
  epochs: int = option(60, 'autoencoder epochs at most (training stops earlier once the '
                           'validation loss stops improving)', flag='--ae-epochs')
  batch_size: int = option(256, cli=False)
  learning_rate: float = option(3e-3, cli=False)
  weight_decay: float = option(1e-4, cli=False)
  warmup_fraction: float = option(0.05, cli=False)
  validation_fraction: float = option(0.1, cli=False)
  # Training stops after `patience` epochs in a row that lower the best validation loss by
  # less than `min_improvement` of it.
  patience: int = option(3, cli=False)
  min_improvement: float = option(1e-3, cli=False)
  seed: int = option(0, cli=False, flag='--pattern-seed')  # the CLI sets it from that flag
  progress: bool = option(True, cli=False)

  def __post_init__(self):
    check(self, 'latent_dim', self.latent_dim, low=2)
    check(self, 'epochs', self.epochs, low=1)
    check(self, 'batch_size', self.batch_size, low=1)
    check(self, 'patience', self.patience, low=1)
    check(self, 'min_improvement', self.min_improvement, low=0., high=1., what='a number')
    check(self, 'seed', self.seed, low=0, high=MAX_SEED)
    check(self, 'validation_fraction', self.validation_fraction, low=0., high=0.5, what='a number')
    if self.kind not in KINDS:
      raise OptionError('kind', f'expected one of {KINDS}, got {self.kind!r}', AEOptions)


KINDS = ('dense', 'conv')


def _adamw(options, total_steps: int):
  """AdamW with warmup and cosine decay over `total_steps`; options: AEOptions or a
  _Spec (anything with learning_rate, weight_decay, warmup_fraction)."""
  warmup = max(1, int(total_steps * options.warmup_fraction))
  schedule = optax.warmup_cosine_decay_schedule(
      0., options.learning_rate, warmup,
      max(total_steps, warmup + 1))  # optax needs a decay of at least one step (1 epoch)
  return optax.adamw(schedule, weight_decay=options.weight_decay)


class _Spec(NamedTuple):
  """Everything the compiled epoch depends on besides array shapes (a static, hashable
  argument: one compiled program per autoencoder shape and schedule, in-process and in
  the persistent cache, not one per call)."""
  canvas: int
  grid: Optional[tuple]  # (h, w): inputs made on the device from samples; None: given
  latent_dim: int
  width: int
  kind: str
  learning_rate: float
  weight_decay: float
  warmup_fraction: float
  total_steps: int

  def model(self) -> PatternAutoencoder:
    return PatternAutoencoder(self.canvas, self.latent_dim, self.width, self.kind)


def _device_inputs(data, rows, grid):
  """The autoencoder's inputs [B, c, c, 2] for samples `rows`, as ae_inputs makes them:
  from (float16 canvases [S, c, c], query rows [S], query columns [S]) when `grid` is
  (h, w), else data[0] is the inputs themselves [S, c, c, 2]."""
  if grid is None:
    return data[0][rows]
  canvas = data[0][rows].astype(jnp.float32)
  peak = canvas.max(axis=(1, 2), keepdims=True)
  pattern = jnp.where(peak > 0, canvas / jnp.where(peak > 0, peak, 1.), 0.)
  n = max(grid)
  d = jnp.arange(2 * n - 1) - (n - 1)
  r, c = data[1][rows][:, None] + d, data[2][rows][:, None] + d
  gh, gw = data[3][rows][:, None], data[4][rows][:, None]  # each sample's own grid
  inside = ((r >= 0) & (r < gh))[:, :, None] & ((c >= 0) & (c < gw))[:, None, :]
  return jnp.stack([pattern, inside.astype(jnp.float32)], -1)


@functools.partial(jax.jit, static_argnames='spec')
def _init(seed, spec: _Spec):
  params = spec.model().init(jax.random.key(seed),
                             jnp.zeros((1, spec.canvas, spec.canvas, 2)))['params']
  return params, _adamw(spec, spec.total_steps).init(params)


@functools.partial(jax.jit, static_argnames='spec')
def _epoch(params, opt_state, data, batches, val_rows, val_weight, spec: _Spec):
  """One epoch as one program: a scan of training steps over `batches` [steps, B] (rows
  of `data`, pre-shuffled), then the validation loss over `val_rows` [chunks, C] (mean
  with weights `val_weight` [chunks, C]: 0 for padding). Returns (params, opt_state,
  train losses [steps], validation loss)."""
  model, optimizer = spec.model(), _adamw(spec, spec.total_steps)

  def loss_fn(p, batch):
    return jnp.mean(masked_bce(model.apply({'params': p}, batch), batch))

  def step(carry, rows):
    p, state = carry
    loss, grads = jax.value_and_grad(loss_fn)(p, _device_inputs(data, rows, spec.grid))
    updates, state = optimizer.update(grads, state, p)
    return (optax.apply_updates(p, updates), state), loss

  (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), batches)

  def val_chunk(rows):
    x = _device_inputs(data, rows, spec.grid)
    return masked_bce(model.apply({'params': params}, x), x)

  val = jax.lax.map(val_chunk, val_rows)
  return params, opt_state, losses, jnp.sum(val * val_weight) / jnp.sum(val_weight)


def _training_data(x) -> tuple:
  """(device arrays, grid): an AEInputs as its float16 canvases and query positions
  (the inputs are made a batch at a time on the device: memory is the samples), an array
  as itself."""
  if isinstance(x, AEInputs):
    gh, gw = x.n if isinstance(x.n, (tuple, list)) else (x.n, x.n)
    qr, qc, sh, sw = x.samples.query_grids((gh, gw))
    sh, sw = (np.broadcast_to(np.asarray(v, np.int32), qr.shape) for v in (sh, sw))
    return tuple(jnp.asarray(np.asarray(v, np.int32)) if i else jnp.asarray(v) for i, v in
                 enumerate((x.samples.recentred, qr, qc, sh, sw))), (gh, gw)
  return (jnp.asarray(np.asarray(x, np.float32)),), None


def training_steps(samples: int, options: AEOptions) -> int:
  """Training steps (batches) of one epoch on `samples` samples."""
  n_val = max(1, int(round(samples * options.validation_fraction)))
  return max(1, (samples - n_val) // options.batch_size)


def train_autoencoder(x, canvas: int, options: AEOptions):
  """Trains on x [S, c, c, 2] (an array, or AEInputs: the inputs made a batch at a time
  on the device from the samples); returns (params, TrainingHistory) with the params of
  the best validation loss. Each epoch is one compiled program (the steps a scan over
  batches shuffled beforehand). Deterministic for a fixed seed on CPU."""
  rng = np.random.default_rng(options.seed)
  order = rng.permutation(len(x))
  n_val = max(1, int(round(len(x) * options.validation_fraction)))
  val, train = order[:n_val], order[n_val:]
  b = options.batch_size
  steps_per_epoch = training_steps(len(x), options)
  data, grid = _training_data(x)
  spec = _Spec(canvas, grid, options.latent_dim, options.width, options.kind,
               options.learning_rate, options.weight_decay, options.warmup_fraction,
               steps_per_epoch * options.epochs)
  # Validation in chunks of at most EVAL_CHUNK rows, the last padded (weight 0).
  chunk = min(EVAL_CHUNK, n_val)
  chunks = -(-n_val // chunk)
  val_rows = np.zeros(chunks * chunk, np.int32)
  val_rows[:n_val] = val
  val_weight = (np.arange(chunks * chunk) < n_val).astype(np.float32).reshape(chunks, chunk)
  val_rows = jnp.asarray(val_rows.reshape(chunks, chunk))
  params, opt_state = _init(options.seed, spec)

  train_losses, val_losses = [], []
  best, best_params, best_epoch, waited = np.inf, params, 0, 0
  bar = progress_bar(options.epochs, 'autoencoder', 'epoch', disable=not options.progress)
  for epoch in range(options.epochs):
    perm = rng.permutation(len(train))
    if len(train) >= b:
      batches = train[perm[:steps_per_epoch * b]].reshape(steps_per_epoch, b)
    else:  # fewer training rows than a batch: one step on all of them
      batches = train[perm][None]
    params, opt_state, losses, val_loss = _epoch(params, opt_state, data,
                                                 jnp.asarray(batches, jnp.int32), val_rows,
                                                 val_weight, spec)
    train_loss, val_loss = float(np.mean(np.asarray(losses))), float(val_loss)
    train_losses.append(train_loss)
    val_losses.append(val_loss)
    bar.update(1)
    bar.set_postfix(train=f'{train_loss:.4f}', val=f'{val_loss:.4f}')
    if val_loss < best - max(1e-6, options.min_improvement * abs(best if np.isfinite(best) else 0.)):
      best, best_params, best_epoch, waited = val_loss, params, epoch, 0
    else:
      waited += 1
      if waited >= options.patience:
        break
  bar.close()
  return best_params, TrainingHistory(tuple(train_losses), tuple(val_losses), best_epoch,
                                      len(val_losses) < options.epochs)


# Jitted once per autoencoder shape (static arguments), not once per call.
@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5))
def _encode(params, x, canvas, latent_dim, width, kind='dense'):
  model = PatternAutoencoder(canvas, latent_dim, width, kind)
  return model.apply({'params': params}, x, method=PatternAutoencoder.encode)


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5))
def _decode(params, z, canvas, latent_dim, width, kind='dense'):
  model = PatternAutoencoder(canvas, latent_dim, width, kind)
  return model.apply({'params': params}, z, method=PatternAutoencoder.decode)


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5))
def _reconstruction_errors(params, x, canvas, latent_dim, width, kind='dense'):
  model = PatternAutoencoder(canvas, latent_dim, width, kind)
  return masked_mse(model.apply({'params': params}, x), x)


# Samples the autoencoder evaluates at once (encoding, errors, validation): every chunk is
# padded to this size, so that one compiled program serves them all and their activations
# take the same memory whatever the number of samples.
EVAL_CHUNK = 512


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
  return _in_chunks(lambda xs: _encode(params, xs, canvas, options.latent_dim, options.width,
                                          options.kind),
                    x, batch)


def decode(params, z, canvas: int, options: AEOptions) -> np.ndarray:
  """latents [S, latent_dim] -> patterns [S, c, c] in [0, 1]."""
  return np.asarray(_decode(params, jnp.asarray(z, jnp.float32), canvas, options.latent_dim,
                            options.width, options.kind))


def reconstruction_errors(params, x, canvas: int, options: AEOptions,
                          batch: int = EVAL_CHUNK) -> np.ndarray:
  """[S] masked MSE of each sample's reconstruction."""
  return _in_chunks(lambda xs: _reconstruction_errors(params, xs, canvas, options.latent_dim,
                                                      options.width, options.kind), x, batch)


def pca_2d(latent: np.ndarray) -> tuple:
  """Projects [S, d] latents on their top two principal axes: (coords [S, 2], (mean,
  axes [2, d])) so that the map's grid points can be lifted back for decoding."""
  mean = latent.mean(0)
  _, _, vt = np.linalg.svd(latent - mean, full_matrices=False)
  axes = vt[:2]
  # A fixed sign per axis, so the layout does not flip between runs.
  axes = axes * np.sign(axes[np.arange(2), np.argmax(np.abs(axes), 1)])[:, None]
  return (latent - mean) @ axes.T, (mean, axes)
