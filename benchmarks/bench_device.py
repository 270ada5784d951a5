"""The accelerator benchmark: one command, one table, float32 and bfloat16.

On the default JAX device (a GPU or TPU when there is one), for each precision:
  * the forward against timm (PyTorch) on the same device, from the same `.npz` (images/s);
  * the single-head ablation scan in images/s against its FLOP limit (a forward's
    images/s / cost.ablation_limit: what an exact scan without overhead would reach);
  * the Taylor pass (forward + backward to the [B, L, H] head-mask gradients), images/s;
  * the whole `analyze` (importance, strength, patterns through pipeline.run_analysis) of
    N images, and the ImageNet-val (50,000 images) time projected from it: the seconds
    beyond compiling scaled by 50,000 / N (an upper bound: stage 2 and the autoencoder
    work on a fixed subset);
  * peak device memory (the allocator's peak; on a CPU the process's peak RSS).
--size full: ViT-B/16 at 224², batches of 32, 1,000 images (< 8 min on one GPU);
--size small (the default on a CPU): ViT-Ti/16 at 224², 16 images; --size tiny (the CI
test): a 2-layer ViT-Ti/16 at 64², 4 images. Writes the table (markdown) to --out and
prints it with the device, the sizes and the machine's load.

  python benchmarks/bench_device.py [--size full|small|tiny] [--out build/bench_device.md]
  make benchmarks-device
"""

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

IMAGENET_VAL = 50_000
SIZES = {  # config, image side, layers (None: the preset's), batch, analyze images
    'full': ('ViT-B/16', 224, None, 32, 1000),
    'small': ('ViT-Ti/16', 224, None, 8, 16),
    'tiny': ('ViT-Ti/16', 64, 2, 4, 4),
}


def best_seconds(fn, repeats: int) -> float:
  fn()  # compiles / warms up
  best = float('inf')
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t0)
  return best


def write_inputs(folder: Path, size: str, images: int):
  """A random-weight vit_jax `.npz` of the size's model and `images` random PNGs."""
  from PIL import Image

  from tests.npz_formats import random_vit_jax_arrays
  from vit_jax_analytics import model as model_lib
  name, side, layers, _, _ = SIZES[size]
  c = model_lib.get_config(name)
  arrays = random_vit_jax_arrays(0, width=c.hidden_size, depth=layers or c.num_layers,
                                 heads=c.num_heads, mlp=c.mlp_dim, patch=c.patch_size,
                                 image=side, classes=10)
  np.savez(folder / 'm.npz', **arrays)
  rng = np.random.default_rng(0)
  for k in range(10):
    (folder / 'images' / f'class_{k}').mkdir(parents=True, exist_ok=True)
  for i in range(images):
    Image.fromarray(rng.integers(0, 256, (side, side, 3), np.uint8)).save(
        folder / 'images' / f'class_{i % 10}' / f'{i:05d}.png')
  return folder / 'm.npz', folder / 'images'


def timm_forward(npz: Path, config, dtype: str, batch: int):
  """A callable running timm's ViT (the npz's weights, timm's vit_jax loader) on `batch`
  random images on the torch device matching JAX's, in `dtype`; None without torch/timm."""
  try:
    import torch

    from tests.timm_import import timm_vit
  except Exception:  # noqa: BLE001 - the table says n/a
    return None
  import jax
  device = 'cuda' if jax.devices()[0].platform == 'gpu' and torch.cuda.is_available() else 'cpu'
  tm = timm_vit(npz, config, fused=True)
  torch_dtype = torch.bfloat16 if dtype == 'bfloat16' else torch.float32
  tm = tm.eval().to(device=device, dtype=torch_dtype)
  x = torch.zeros(batch, 3, *config.image_hw, device=device, dtype=torch_dtype)

  def run():
    with torch.no_grad():
      tm(x)
    if device == 'cuda':
      torch.cuda.synchronize()
  return run


def peak_memory_mib() -> tuple:
  """(MiB, what): the device allocator's peak, or this process's peak RSS on a CPU."""
  import jax
  stats = jax.devices()[0].memory_stats() or {}
  if 'peak_bytes_in_use' in stats:
    return stats['peak_bytes_in_use'] / 2 ** 20, 'device peak'
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 'process peak RSS'


def measure(size: str, dtype: str, npz: Path, images_dir: Path, repeats: int) -> dict:
  import jax
  import jax.numpy as jnp

  from vit_jax_analytics import (checkpoints, cost, importance, model as model_lib, patterns,
                                 pipeline, precision, strength)
  _, _, _, batch, n_images = SIZES[size]
  params, config = checkpoints.load_checkpoint(npz)
  p = precision.cast(params, dtype)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.uniform(-1, 1, (batch, *config.image_hw, 3)), p_dtype(p))
  y = jnp.asarray(rng.integers(0, 10, batch), jnp.int32)
  out = {}
  fwd = jax.jit(lambda p, x: model_lib.apply(p, config, x))
  t = best_seconds(lambda: fwd(p, x).block_until_ready(), repeats)
  out['forward, ours (images/s)'] = batch / t
  torch_run = timm_forward(npz, config, dtype, batch)
  if torch_run is not None:
    t_timm = best_seconds(torch_run, repeats)
    out['forward, timm (images/s)'] = batch / t_timm
    out['forward, ours / timm time'] = t / t_timm
  limit = cost.ablation_limit(config)
  abl = jax.jit(lambda p, x, y: importance.ablation_batch(p, config, x, y)[0])
  t_abl = best_seconds(lambda: jax.block_until_ready(abl(p, x, y)), max(1, repeats // 2))
  out['ablation scan (images/s)'] = batch / t_abl
  out['ablation scan / its FLOP limit'] = (batch / t_abl) / (batch / t / limit)
  taylor = jax.jit(lambda p, x, y: importance.taylor_batch(p, config, x, y)[0])
  t_tay = best_seconds(lambda: taylor(p, x, y).block_until_ready(), repeats)
  out['Taylor pass (images/s)'] = batch / t_tay
  with tempfile.TemporaryDirectory() as logdir:
    options = {'importance': importance.ImportanceOptions(batch_size=batch, dtype=dtype,
                                                          progress=False),
               'strength': strength.StrengthOptions(batch_size=batch, dtype=dtype,
                                                    progress=False),
               'patterns': patterns.PatternOptions(batch_size=batch, dtype=dtype,
                                                   progress=False,
                                                   ae=patterns.AEOptions(progress=False))}
    inputs = pipeline.Inputs(checkpoint=npz, images=images_dir)
    with cost.CompileClock() as compiling:
      t0 = time.perf_counter()
      pipeline.run_analysis(inputs, logdir, 'bench', options,
                            run_options=pipeline.RunOptions(use_compile_cache=False))
      wall = time.perf_counter() - t0
  out[f'analyze {n_images} images (s)'] = wall
  out['  of which compiling (s)'] = compiling.seconds
  out['projected ImageNet val, 50k images (h)'] = (
      compiling.seconds + (wall - compiling.seconds) * IMAGENET_VAL / n_images) / 3600
  mib, what = peak_memory_mib()
  out[f'peak memory (MiB, {what})'] = mib
  return out


def p_dtype(params):
  from vit_jax_analytics import precision
  return precision.float_dtype(params)


def table(rows: dict, dtypes) -> str:
  names = list(dict.fromkeys(k for d in dtypes for k in rows[d]))
  lines = ['| measure | ' + ' | '.join(dtypes) + ' |', '| --- |' + ' --- |' * len(dtypes)]
  for name in names:
    cells = []
    for d in dtypes:
      v = rows[d].get(name)
      cells.append('n/a' if v is None else f'{v:.3g}' if abs(v) < 100 else f'{v:.0f}')
    lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def main(argv=None) -> str:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument('--size', choices=tuple(SIZES), default=None,
                 help='full on a GPU or TPU, small on a CPU (default)')
  p.add_argument('--dtypes', default='float32,bfloat16')
  p.add_argument('--repeats', type=int, default=3)
  p.add_argument('--out', type=Path, default=ROOT / 'build' / 'bench_device.md')
  args = p.parse_args(argv)
  import jax
  device = jax.devices()[0]
  size = args.size or ('small' if device.platform == 'cpu' else 'full')
  dtypes = tuple(args.dtypes.split(','))
  name, side, layers, batch, n_images = SIZES[size]
  start = time.perf_counter()
  rows = {}
  with tempfile.TemporaryDirectory() as d:
    npz, images_dir = write_inputs(Path(d), size, n_images)
    for dtype in dtypes:
      rows[dtype] = measure(size, dtype, npz, images_dir, args.repeats)
  load = os.getloadavg()[0]
  head = (f'{name}{f" ({layers} layers)" if layers else ""} at {side}², random weights, '
          f'batch {batch}, analyze of {n_images} images; device {device.device_kind} '
          f'({device.platform}, {jax.device_count()} device(s)); jax {jax.__version__}; '
          f'load {load:.1f} on {os.cpu_count()} cores; {time.perf_counter() - start:.0f} s')
  text = head + '\n\n' + table(rows, dtypes) + '\n'
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(text)
  print(text, flush=True)
  return text


if __name__ == '__main__':
  main()
