"""Throughput of the analyses on 1, 2, 4 and 8 forced CPU devices (one process,
XLA_FLAGS=--xla_force_host_platform_device_count=8, a mesh over the first n devices).

On a 2-core CPU the devices share the same two cores, so this measures the overhead of
splitting batches over more devices, not a speed-up.

Run: python benchmarks/bench_devices.py [--images 256]
"""

import os
import subprocess
import sys

SCRIPT = r'''
import sys, time
import jax, numpy as np
from vit_jax_analytics import checkpoints, data, importance, parallel, strength
from vit_jax_analytics.batches import ArraySource
params, config = checkpoints.load_checkpoint('checkpoints/demo_vit')
src = data.ImageFolderSource(data.image_folder('checkpoints/demo_images'), config.image_size)
n_images = int(sys.argv[1])
imgs = np.concatenate([b.images[b.valid] for b in src.take(n_images).batches(64, progress=False)])
source = ArraySource(imgs)
print('| devices | strength images/s | importance (all of it) images/s |')
print('| --- | --- | --- |')
for n in (1, 2, 4, 8):
  mesh = parallel.batch_mesh(jax.devices()[:n])
  so = strength.StrengthOptions(batch_size=64, map_images=0, progress=False)
  io = importance.ImportanceOptions(batch_size=64, progress=False)
  strength.compute_strength(params, config, ArraySource(imgs[:64]), so, mesh=mesh)  # compile
  importance.compute_importance(params, config, ArraySource(imgs[:64]), io, mesh=mesh)
  t = time.perf_counter(); strength.compute_strength(params, config, source, so, mesh=mesh)
  ts = time.perf_counter() - t
  t = time.perf_counter(); importance.compute_importance(params, config, source, io, mesh=mesh)
  ti = time.perf_counter() - t
  print(f'| {n} | {len(imgs) / ts:.0f} | {len(imgs) / ti:.1f} |', flush=True)
'''

if __name__ == '__main__':
  images = sys.argv[sys.argv.index('--images') + 1] if '--images' in sys.argv else '256'
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
             JAX_PLATFORMS='cpu')
  print(f'CPU cores: {os.cpu_count()}')
  sys.exit(subprocess.call([sys.executable, '-c', SCRIPT, images], env=env))
