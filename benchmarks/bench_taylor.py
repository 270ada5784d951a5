"""The Taylor pass against a PyTorch loop, and where its time goes (issue 25, item 5).

A random-weight ViT-B/16 `.npz` (vit_jax layout, 10 classes) read by timm's own vit_jax
loader; 224², 4 images, this CPU. Ours: `importance.taylor_batch` on the 4 images (one
compiled forward + backward to the per-image head-mask gradients [B, L, H]). PyTorch:
timm, one forward and backward per image in a Python loop (the head mask as forward
pre-hooks on each attention's output projection, as bench_forward.py). JAX and PyTorch
interleaved, best of --repeats, the load average printed. Then our compiled program traced
with jax.profiler, its ops' time summed by category (bench_forward.op_categories).

  python benchmarks/bench_taylor.py [--config ViT-B/16] [--batch-size 4] [--repeats 3]
"""

import argparse
import copy
import os
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_forward import (interleaved, profile_ops, timm_vit,  # noqa: E402
                                      torch_taylor)
from tests.npz_formats import random_vit_jax_arrays  # noqa: E402
from vit_jax_analytics import checkpoints, importance, model as model_lib  # noqa: E402


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument('--config', default='ViT-B/16')
  p.add_argument('--batch-size', type=int, default=4)
  p.add_argument('--repeats', type=int, default=3)
  p.add_argument('--no-profile', action='store_true')
  args = p.parse_args()
  c = model_lib.get_config(args.config)
  L, H, b = c.num_layers, c.num_heads, args.batch_size
  arrays = random_vit_jax_arrays(0, width=c.hidden_size, depth=L, heads=H, mlp=c.mlp_dim,
                                 patch=c.patch_size, image=c.image_size, classes=10)
  with tempfile.TemporaryDirectory() as d:
    np.savez(Path(d) / 'm.npz', **arrays)
    params, config = checkpoints.load_checkpoint(Path(d) / 'm.npz')
    tm = timm_vit(Path(d) / 'm.npz', config, fused=True)
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (b, c.image_size, c.image_size, 3)).astype(np.float32)
  labels = rng.integers(0, 10, b).astype(np.int32)
  x_t = torch.tensor(images.transpose(0, 3, 1, 2))
  y_t = torch.tensor(labels.astype(np.int64))
  x_j, y_j = jnp.asarray(images), jnp.asarray(labels)
  taylor = jax.jit(lambda p, x, y: importance.taylor_batch(p, config, x, y)[0])
  # The same gradients, checked in float64 (a deep random-weight ViT amplifies float32
  # rounding far beyond any tolerance: bench_forward.py).
  tm64 = copy.deepcopy(tm).double()
  loop = np.concatenate([torch_taylor(tm64, x_t[i:i + 1].double(), y_t[i:i + 1],
                                      (1, L, H)).numpy() for i in range(b)])
  del tm64
  with jax.enable_x64(True):
    p64 = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    ours = np.asarray(importance.taylor_batch(p64, config, images.astype(np.float64),
                                              labels)[0])
  rel = np.abs(ours - loop).max() / np.abs(loop).max()

  def torch_loop():
    for i in range(b):
      torch_taylor(tm, x_t[i:i + 1], y_t[i:i + 1], (1, L, H))
  load0 = os.getloadavg()[0]
  best = interleaved({'taylor': (lambda: taylor(params, x_j, y_j).block_until_ready(),
                                 torch_loop)}, args.repeats)['taylor']
  print(f'{args.config}, {b} images, {jax.devices()[0].device_kind}, torch '
        f'{torch.__version__} ({torch.get_num_threads()} threads); load {load0:.1f} -> '
        f'{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores')
  print(f'  same gradients (float64, ours vs the timm loop): max rel. difference {rel:.1e}')
  print(f'  Taylor pass: ours {best[0]:.2f} s, timm loop (fwd + bwd per image) '
        f'{best[1]:.2f} s: {best[1] / best[0]:.2f}x faster (target >= 1.5x)')
  if not args.no_profile:
    print('  where our compiled Taylor program spends its time (op categories):')
    for kind, ms, share in profile_ops(taylor, (params, x_j, y_j), runs=2):
      print(f'    {kind:<58} {ms:8.1f} ms  {share:5.1%}')


if __name__ == '__main__':
  main()
