"""Pattern-autoencoder throughput and sample extraction rate.

Prints (1) autoencoder training throughput (samples/s) and the time until the validation
loss first falls below a stated target on the demo model's patterns, and (2) the rate of
pattern-sample extraction (samples/s) on ViT-B/16 at 224 x 224 with random weights.

With --compare RUN_DIR (a photo-demo run directory, e.g. logdir/img_focus, holding its
strength results): the autoencoder before and after issue 25 on the demo's own samples
(re-extracted: `--images-dir` of that run), each timed in this process: the convolutional
one with 20 epochs and no early stopping (kind='conv', as before) and the dense one with
early stopping (the defaults): seconds, epochs, reconstruction error, cluster purity
against the head kinds, the cluster names and where the local / neighbour-offset heads go.

  python benchmarks/bench_patterns.py [--target-loss 0.2]
  python benchmarks/bench_patterns.py --compare logdir/img_focus --images-dir build/demo_images
"""

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument('--target-loss', type=float, default=0.33,
                 help='validation loss to reach: masked binary cross-entropy, which for '
                      'soft targets stays above their entropy (default: 0.33)')
  p.add_argument('--images', type=int, default=200)
  p.add_argument('--compare', type=Path, default=None, help='a photo-demo run directory')
  p.add_argument('--images-dir', type=Path, default=ROOT / 'build' / 'demo_images')
  p.add_argument('--seeds', default='0', help='autoencoder seeds for --compare')
  args = p.parse_args()
  if args.compare:
    return compare(args.compare, args.images_dir, [int(s) for s in args.seeds.split(',')])

  import jax
  import jax.numpy as jnp
  from vit_jax_analytics import checkpoints, data, model as model_lib, patterns

  params, config = checkpoints.load_checkpoint(ROOT / 'checkpoints/demo_vit')
  image_set = data.ImageFolderSource(data.image_folder(ROOT / 'checkpoints/demo_images'),
                                     config.image_size)
  start = time.perf_counter()
  samples = patterns.extract_samples(params, config, image_set, per_head=4,
                                     max_images=args.images, progress=False)
  t_extract_demo = time.perf_counter() - start
  x = patterns.ae_inputs(samples, config.grid_size)
  options = patterns.AEOptions(progress=False, patience=1000)
  start = time.perf_counter()
  ae_params, history = patterns.train_autoencoder(x, 2 * config.grid_size - 1, options)
  t_train = time.perf_counter() - start
  mse = patterns.reconstruction_errors(ae_params, x, 2 * config.grid_size - 1, options).mean()
  variance = patterns.masked_variance(x)
  epochs = len(history.val_loss)
  n_train = len(x) - max(1, int(round(len(x) * options.validation_fraction)))
  hit = next((i for i, v in enumerate(history.val_loss) if v <= args.target_loss), None)
  print(f'demo model: {len(x)} samples from {args.images} images in {t_extract_demo:.1f} s')
  print(f'  autoencoder training  {n_train * epochs / t_train:9.0f} samples/s '
        f'({epochs} epochs in {t_train:.1f} s, incl. compilation)')
  if hit is None:
    print(f'  validation loss {min(history.val_loss):.4f} never reached {args.target_loss}')
  else:
    print(f'  validation loss <= {args.target_loss} after epoch {hit + 1}: '
          f'~{t_train * (hit + 1) / epochs:.1f} s; final {history.val_loss[-1]:.4f}')
  print(f'  reconstruction error (masked MSE) {mse:.4f} vs data variance {variance:.4f} '
        f'(ratio {mse / variance:.2f})')

  config = model_lib.get_config('ViT-B/16')
  params = model_lib.init_params(config, jax.random.key(0))
  b = 8
  images = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (b, 224, 224, 3)), jnp.float32)
  queries = jnp.asarray(patterns.sample_queries(np.arange(b), config, 4, 0))
  jax.block_until_ready(patterns.extract_batch(params, config, images, queries))
  start = time.perf_counter()
  for _ in range(3):
    jax.block_until_ready(patterns.extract_batch(params, config, images, queries))
  t = (time.perf_counter() - start) / 3
  per_batch = b * config.num_layers * config.num_heads * 4
  print(f'ViT-B/16 sample extraction: {per_batch / t:9.0f} samples/s '
        f'({b / t:.2f} images/s, 4 queries per head)')


def compare(run_dir: Path, images_dir: Path, seeds) -> None:
  """Before (conv, 20 epochs) and after (dense, early stopping) on the photo demo."""
  import os

  from vit_jax_analytics import head_kinds, patterns, photo_demo
  from vit_jax_analytics.logdir import reader
  inputs = photo_demo.demo_inputs(images_dir)
  loaded = inputs.load()
  options = photo_demo.demo_options(progress=False)['patterns']
  samples = patterns.extract_samples(loaded.params, loaded.config, loaded.source,
                                     options.per_head, options.max_images,
                                     options.batch_size, options.seed, progress=False)
  kinds = head_kinds.head_kinds(reader.read_strength(run_dir))
  variants = {'before: conv, 20 epochs': dict(kind='conv', patience=20, min_improvement=0.),
              'after: dense, early stopping': dict(kind='dense')}
  print(f'photo demo: {len(samples.index)} samples; load {os.getloadavg()[0]:.1f} on '
        f'{os.cpu_count()} cores')
  for name, ae in variants.items():
    for seed in seeds:
      o = dataclasses.replace(options, ae=dataclasses.replace(options.ae, seed=seed, **ae))
      start = time.perf_counter()
      result, _ = patterns.summarise(samples, loaded.config, o)
      seconds = time.perf_counter() - start
      by_kind = head_kinds.clusters_by_kind(result.head_cluster, kinds)
      local = {result.cluster_names[c]: k for c, k in by_kind.items()
               if k.get('local', 0) + k.get('neighbour-offset', 0) >= 3}
      print(f'  {name}, seed {seed}: {seconds:.1f} s, {len(result.history.val_loss)} epochs, '
            f'reconstruction error {result.reconstruction_error:.5f}, purity '
            f'{head_kinds.purity(result.head_cluster, kinds):.3f}, clusters '
            f'{list(result.cluster_names)}; local / neighbour-offset heads in {local}',
            flush=True)


if __name__ == '__main__':
  main()
