"""One analysis as two processes on localhost (a mesh over 2 x 4 forced CPU devices,
`jax.distributed.initialize`, gloo collectives) against one process on one device.

Tolerance: as the 1-vs-8-device test, 1e-5 x the array's largest magnitude (absolute).
The per-image forwards are float32 on batches of other shapes (1 image per device against
8 on one device), which XLA evaluates in another order: observed differences up to
1.3e-6 absolute (5e-5 relative on a value near 0) in ablation_loss. The sums are float64
and reduced exactly (per process, then across processes in process order). Counts,
histograms and the pair counts agree exactly.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.tiny import TINY, arrays_of, tiny_images, tiny_params

WORKER = r'''
import sys, os
import jax
jax.config.update('jax_cpu_collectives_implementation', 'gloo')
jax.distributed.initialize(coordinator_address=sys.argv[2], num_processes=2,
                           process_id=int(sys.argv[3]), local_device_ids=None)
sys.path.insert(0, sys.argv[1])
import numpy as np
from tests.tiny import TINY, arrays_of, tiny_images, tiny_params
from vit_jax_analytics import importance, parallel, strength
from vit_jax_analytics.batches import ArraySource
assert jax.process_count() == 2 and len(jax.devices()) == 8 and len(jax.local_devices()) == 4
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
np.savez(os.path.join(sys.argv[4], f'p{jax.process_index()}.npz'), **out)
print('done', jax.process_index())
'''


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_two_processes_equal_one_device(tmp_path):
  from vit_jax_analytics import importance, parallel, strength
  from vit_jax_analytics.batches import ArraySource
  import jax

  root = Path(__file__).resolve().parents[1]
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4',
             JAX_PLATFORMS='cpu')
  address = f'127.0.0.1:{_free_port()}'
  procs = [subprocess.Popen([sys.executable, '-c', WORKER, str(root), address, str(i),
                             str(tmp_path)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for i in range(2)]
  try:
    outs = [p.communicate(timeout=420) for p in procs]
  finally:
    for p in procs:
      p.kill()
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]

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
    got = np.load(tmp_path / f'p{proc}.npz')
    assert int(got['importance_images']) == 21 and int(got['strength_images']) == 21
    for name, value in expected.items():
      if name.endswith('_hist') or name.endswith('pairs'):
        np.testing.assert_array_equal(got[name], value, err_msg=name)
      else:
        np.testing.assert_allclose(got[name], value, rtol=0,
                                   atol=1e-5 * np.max(np.abs(value), initial=0.), err_msg=name)
