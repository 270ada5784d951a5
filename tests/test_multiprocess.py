"""Analyses as two processes on localhost (a mesh over 2 x 4 forced CPU devices,
`jax.distributed.initialize`, gloo collectives) against one process on one device.

One pair of worker processes runs everything (starting them and compiling dominate):
strength and the whole importance analysis (1-D mesh); the ablation scan on a 2-D
(batch x masks) mesh whose rows lie in different processes; patterns through the
pipeline (each process samples its shard, process 0 trains and writes); and
`training.analyse_step` on params that are global arrays sharded over both processes.

Tolerance: as the 1-vs-8-device test, 1e-5 x the array's largest magnitude (absolute).
The per-image forwards are float32 on batches of other shapes (1 image per device against
8 on one device), which XLA evaluates in another order: observed differences up to
1.3e-6 absolute (5e-5 relative on a value near 0) in ablation_loss. The sums are float64
and reduced exactly (per process, then across processes in process order). Counts,
histograms and the pair counts agree exactly. Pattern samples: indices exactly, the
float16 maps within one float16 step (2^-10 relative; observed: 0.03 % of the cells differ,
by <= 6.1e-5, from the float32 forwards' rounding); the pattern summary (the autoencoder
trained for 5 epochs on those samples with the same seed) within 1e-4 of each array's
largest magnitude (observed <= 2.2e-5 on the latents; densities and clusters identical).
The sharded-params analyse_step: observed <= 3.1e-6 absolute.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.tiny import TINY, arrays_of, tiny_images, tiny_params, write_images

WORKER = r'''
import sys, os
import jax
jax.config.update('jax_cpu_collectives_implementation', 'gloo')
jax.distributed.initialize(coordinator_address=sys.argv[2], num_processes=2,
                           process_id=int(sys.argv[3]), local_device_ids=None)
sys.path.insert(0, sys.argv[1])
from pathlib import Path
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from tests.tiny import TINY, arrays_of, tiny_images, tiny_params
from tests.test_multiprocess import PATTERNS, patterns_run, probe
from vit_jax_analytics import importance, parallel, pipeline, strength, training
from vit_jax_analytics.batches import ArraySource
assert jax.process_count() == 2 and len(jax.devices()) == 8 and len(jax.local_devices()) == 4
out_dir, p = Path(sys.argv[4]), jax.process_index()
images = tiny_images(21)
labels = np.arange(21) % TINY.num_classes
labels[::4] = -1
source = ArraySource(images, labels)
st = strength.compute_strength(tiny_params(), TINY, source,
                               strength.StrengthOptions(batch_size=8, map_images=0,
                                                        progress=False))
imp = importance.compute_importance(tiny_params(), TINY, source, importance.ImportanceOptions(
    batch_size=8, curve_points=4, random_orders=1, per_image=True, progress=False))
out = {f'strength_{k}': v for k, v in arrays_of(st).items()}
out.update({f'importance_{k}': v for k, v in arrays_of(imp).items()})
out['importance_images'] = np.asarray(imp.images)
out['strength_images'] = np.asarray(st.images)

# The ablation scan on a 4 x 2 (batch x masks) mesh: rows 0-1 on process 0, 2-3 on 1.
mesh = parallel.batch_mesh(mask_shards=2)
b = parallel.local_batch_size(8, mesh)
rows = slice(p * b, (p + 1) * b)
x, y, index = parallel.shard_batch(mesh, (images[:8][rows], labels[:8][rows],
                                          np.arange(8, dtype=np.int32)[rows]))
_, _, ablation, _, _ = importance.taylor_ablation_batch(parallel.replicate(mesh, tiny_params()), TINY,
                                               x, y, 1, None, index, mesh=mesh)
for k, v in parallel.to_host(ablation).items():
  out[f'masks_{k}'] = v[..., rows]
np.savez(out_dir / f'p{p}.npz', **out)

# Patterns through the pipeline: each process samples its shard, process 0 writes.
patterns_run(out_dir, 'mp')

# In-training analysis on params that are global arrays: leaves whose first axis divides
# by 8 sharded over the 8 devices of both processes, the others replicated.
model = Mesh(np.asarray(jax.devices()), ('model',))
def spread(x):
  spec = P('model') if x.ndim and x.shape[0] % 8 == 0 else P()
  return jax.make_array_from_callback(x.shape, NamedSharding(model, spec), lambda i: x[i])
params = jax.tree.map(spread, tiny_params())
assert not all(leaf.is_fully_addressable for leaf in jax.tree.leaves(params))
written = training.analyse_step(params, TINY, probe(), out_dir / 'logs', 'train', 3,
                                training.TrainingAnalysisOptions(ablation=True, batch_size=4))
assert bool(written) == (p == 0), written
try:  # a different probe on process 1: a one-line error, on every process
  images_p, labels_p = probe()
  training.analyse_step(params, TINY, (images_p + p, labels_p), out_dir / 'logs', 'train', 4)
  raise SystemExit('no error for differing probes')
except ValueError as e:
  assert 'differs between processes' in str(e) and '\n' not in str(e), e
print('done', p)
'''


def patterns_run(root: Path, run: str):
  """Patterns of the images in root/images by the checkpoint root/ckpt to root/logs/run."""
  from vit_jax_analytics import pipeline
  inputs = pipeline.Inputs(checkpoint=root / 'ckpt', images=root / 'images')
  pipeline.run_analysis(inputs, root / 'logs', run, {'patterns': PATTERNS()}, ('patterns',),
                        pipeline.RunOptions(use_compile_cache=False, time_forward=False))


def PATTERNS():
  from vit_jax_analytics import patterns
  return patterns.PatternOptions(batch_size=4, grid=4, clusters=3, progress=False,
                                 ae=patterns.AEOptions(epochs=5, progress=False))


def probe():
  labels = np.array([0, 1, 2, -1, 4, 0])
  return tiny_images(6, seed=5), labels


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.fixture(scope='module')
def two_processes(tmp_path_factory):
  """The directory the two workers wrote: p0.npz, p1.npz and logs/ (process 0's)."""
  from vit_jax_analytics import checkpoints
  root = tmp_path_factory.mktemp('multiprocess')
  write_images(root / 'images', n=13)
  checkpoints.save_checkpoint(root / 'ckpt', tiny_params(), TINY)
  repo = Path(__file__).resolve().parents[1]
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4',
             JAX_PLATFORMS='cpu')
  address = f'127.0.0.1:{_free_port()}'
  procs = [subprocess.Popen([sys.executable, '-c', WORKER, str(repo), address, str(i),
                             str(root)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for i in range(2)]
  try:
    outs = [p.communicate(timeout=540) for p in procs]
  finally:
    for p in procs:
      p.kill()
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  return root


def _close(got, value, name, tol=1e-5):
  np.testing.assert_allclose(got, value, rtol=0, atol=tol * np.max(np.abs(value), initial=0.),
                             err_msg=name)


def test_two_processes_equal_one_device(two_processes):
  from vit_jax_analytics import importance, parallel, strength
  from vit_jax_analytics.batches import ArraySource
  import jax

  images = tiny_images(21)
  labels = np.arange(21) % TINY.num_classes
  labels[::4] = -1
  one = parallel.batch_mesh(jax.local_devices()[:1])
  st = strength.compute_strength(tiny_params(), TINY, ArraySource(images, labels),
                                 strength.StrengthOptions(batch_size=8, map_images=0,
                                                          progress=False), mesh=one)
  imp = importance.compute_importance(
      tiny_params(), TINY, ArraySource(images, labels), importance.ImportanceOptions(
          batch_size=8, curve_points=4, random_orders=1, per_image=True, progress=False),
      mesh=one)
  expected = {f'strength_{k}': v for k, v in arrays_of(st).items()}
  expected.update({f'importance_{k}': v for k, v in arrays_of(imp).items()})
  for proc in (0, 1):  # every process ends with the same (reduced) result
    got = np.load(two_processes / f'p{proc}.npz')
    assert int(got['importance_images']) == 21 and int(got['strength_images']) == 21
    for name, value in expected.items():
      if name.endswith('_hist') or name.endswith('pairs'):
        np.testing.assert_array_equal(got[name], value, err_msg=name)
      else:
        _close(got[name], value, name)


def test_ablation_on_a_batch_by_masks_mesh_across_processes(two_processes):
  """Heads split over the 'masks' axis, images over 'batch', rows in both processes: each
  process's rows equal the unsplit scan on one device."""
  from vit_jax_analytics import importance
  images = tiny_images(21)[:8]
  labels = (np.arange(21) % TINY.num_classes)
  labels[::4] = -1
  _, _, ablation, _, _ = importance.taylor_ablation_batch(tiny_params(), TINY, images, labels[:8], 1,
                                                 None, np.arange(8, dtype=np.int32))
  for proc in (0, 1):
    got = np.load(two_processes / f'p{proc}.npz')
    for k, v in ablation.items():
      _close(got[f'masks_{k}'], np.asarray(v)[..., proc * 4:(proc + 1) * 4], k)


def test_patterns_over_two_processes_equal_one(two_processes, tmp_path):
  """Each process sampled its shard (13 images: 7 and 6), process 0 trained the
  autoencoder on the gathered samples and wrote: the same as one process."""
  import shutil
  from vit_jax_analytics.logdir import reader
  shutil.copytree(two_processes / 'images', tmp_path / 'images')
  shutil.copytree(two_processes / 'ckpt', tmp_path / 'ckpt')
  patterns_run(tmp_path, 'one')
  got = reader.read_run(two_processes / 'logs' / 'mp')
  want = reader.read_run(tmp_path / 'logs' / 'one')
  assert got['patterns/meta']['samples'] == want['patterns/meta']['samples'] == 13 * 3 * 4 * 4
  assert (two_processes / 'logs' / 'mp' / 'pattern_autoencoder').is_dir()
  np.testing.assert_array_equal(got['patterns/sample_index'], want['patterns/sample_index'])
  for name in ('sample_recentred', 'sample_plain'):  # float16: one step of tolerance
    np.testing.assert_allclose(got[f'patterns/{name}'].astype(np.float32),
                               want[f'patterns/{name}'].astype(np.float32), rtol=2 ** -10,
                               atol=2 ** -14, err_msg=name)
  for name in ('map', 'head_density', 'sample_latent', 'cluster_pattern', 'train_loss',
               'head_reconstruction_error'):
    _close(got[f'patterns/{name}'], want[f'patterns/{name}'], name, tol=1e-4)


def test_analyse_step_with_params_sharded_over_processes(two_processes, tmp_path):
  """analyse_step on global arrays (no host copy of the tree) equals it on plain params."""
  from vit_jax_analytics import training
  from vit_jax_analytics.logdir import reader
  training.analyse_step(tiny_params(), TINY, probe(), tmp_path, 'train', 3,
                        training.TrainingAnalysisOptions(ablation=True, batch_size=4,
                                                         print_cost=False))
  got = reader.read_run(two_processes / 'logs' / 'train', 3)
  want = reader.read_run(tmp_path / 'train', 3)
  assert reader.steps(two_processes / 'logs' / 'train') == {'importance': [3],
                                                            'strength': [3]}
  for tag in ('importance/taylor', 'importance/ablation_loss', 'importance/ablation_kl',
              'strength/entropy', 'strength/mean_distance', 'strength/offset_mean'):
    _close(got[tag], want[tag], tag)
