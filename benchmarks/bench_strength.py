"""Attention-strength cost on ViT-B/16 at 224 x 224 (random weights).

Prints (1) the time of the strength statistics against a plain forward over the same
images (target: <= 25% extra), and (2) peak memory (max RSS of a fresh process) of a
streamed strength run over 64 and over 1,024 images (target: the same).

  python benchmarks/bench_strength.py [--config ViT-B/16] [--batch-size 16]
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def write_images(folder: Path, n: int, size: int):
  from PIL import Image
  folder.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(0)
  y, x = np.mgrid[:size, :size] / size
  for i in range(n):
    a, b, c = rng.uniform(0, 6, 3)
    img = (np.stack([np.sin(a * x + b * y), np.cos(b * x * y + c), np.sin(c * x + a)], -1)
           * 127 + 128).astype(np.uint8)
    Image.fromarray(img).save(folder / f'{i:05d}.png')


def peak_rss_run(config_name, folder, n, batch_size):
  """Runs compute_strength over the first n images in a fresh process; returns MiB."""
  code = f'''
import resource, sys, jax
sys.path.insert(0, {str(ROOT)!r})
from vit_jax_analytics import data, model as model_lib, strength
config = model_lib.get_config({config_name!r})
params = model_lib.init_params(config, jax.random.key(0))
s = data.ImageFolderSource(data.image_folder({str(folder)!r}).take({n}), config.image_size)
strength.compute_strength(params, config, s, strength.StrengthOptions(
    batch_size={batch_size}, map_images=0, progress=False))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
'''
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
  return float(out.stdout.strip().splitlines()[-1])


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument('--config', default='ViT-B/16')
  p.add_argument('--batch-size', type=int, default=16)
  p.add_argument('--repeats', type=int, default=3)
  args = p.parse_args()

  import jax
  import jax.numpy as jnp
  from benchmarks.common import best_time
  from vit_jax_analytics import model as model_lib, strength

  config = model_lib.get_config(args.config)
  params = model_lib.init_params(config, jax.random.key(0))
  b, s = args.batch_size, config.image_size
  images = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (b, s, s, 3)), jnp.float32)
  forward = jax.jit(lambda p, x: model_lib.apply(p, config, x))
  t_plain = best_time(forward, params, images, repeats=args.repeats)
  t_strength = best_time(strength.strength_batch, params, config, images, repeats=args.repeats)
  print(f'{args.config} at {s}x{s}, batch {b}, {jax.device_count()} {jax.default_backend()} '
        f'device(s)')
  print(f'  plain forward           {b / t_plain:8.2f} images/s')
  print(f'  forward + strength      {b / t_strength:8.2f} images/s   '
        f'({100 * (t_strength / t_plain - 1):+.1f}% time; target <= +25%)')

  with tempfile.TemporaryDirectory() as tmp:
    folder = Path(tmp) / 'images'
    write_images(folder, 1024, s)
    small = peak_rss_run(args.config, folder, 64, b)
    large = peak_rss_run(args.config, folder, 1024, b)
  print(f'  peak memory, streamed    64 images: {small:8.0f} MiB')
  print(f'  peak memory, streamed  1024 images: {large:8.0f} MiB   '
        f'(ratio {large / small:.3f}; target: the same)')


if __name__ == '__main__':
  main()
