"""The pattern autoencoder: a small convolutional autoencoder (Flax, trained with Optax)
that embeds each sample's pattern (the canvas scaled to a peak of 1, with the
inside-the-image mask) in a low-dimensional latent space; its training, encoding, decoding
and reconstruction errors."""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vit_jax_analytics.options import MAX_SEED, check, option
from vit_jax_analytics.results import Samples, TrainingHistory


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
