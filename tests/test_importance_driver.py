"""compute_importance end to end: invariance, a planted head, resume, devices, the CLI."""

import numpy as np
import pytest

from tests import numerics
from tests.tiny import TINY, folder_source, run_on_eight_cpu_devices, tiny_params, write_images
from vit_jax_analytics import checkpoints, cli, data, importance
from vit_jax_analytics.logdir import progress_store, reader

N_IMAGES = 12
# Batch size and device count change only rounding (kernel blocking, sum order): run in
# float64 (tests/numerics.py), every array must agree to F64_RTOL of its own largest
# magnitude; the per-image arrays are stored in float32 (importance.py): to float32
# rounding of it.
TOL = numerics.F64_RTOL


def assert_close(got, ref, name):
  ref = np.asarray(ref)
  rounded = np.float32 if ref.dtype == np.float32 else None
  tol = numerics.ROUNDED_ULPS * numerics.F32_EPS if rounded else TOL
  scale = max(np.nanmax(np.abs(ref)), 1e-12)
  numerics.assert_close64(got, ref, name, rtol=0, atol=tol * scale, rounded=rounded)


@pytest.fixture(scope='module')
def image_set(tmp_path_factory):
  return folder_source(tmp_path_factory.mktemp('images'))


def options(**kw):
  return importance.ImportanceOptions(**{'progress': False, 'curve_points': 5,
                                         'random_orders': 2, 'per_image': True, **kw})


ARRAYS = ('taylor', 'taylor_normalized', 'ablation_loss', 'ablation_top1', 'ablation_top5',
          'ablation_kl', 'curve_top1', 'curve_kl', 'curve_loss', 'partial_loss', 'partial_kl',
          'partial_top1', 'per_image_taylor', 'per_image_ablation_loss')


@pytest.fixture(scope='module')
def reference(image_set):
  with numerics.float64():
    return importance.compute_importance(numerics.as64(tiny_params()), TINY, image_set,
                                         options(batch_size=4))


@pytest.mark.parametrize('batch_size', [1, 7, 32])
@numerics.in_float64
def test_independent_of_batch_size(image_set, reference, batch_size):
  got = importance.compute_importance(numerics.as64(tiny_params()), TINY, image_set,
                                      options(batch_size=batch_size))
  for k in ARRAYS:
    assert_close(numerics.importance_array(got, k), numerics.importance_array(reference, k), k)


def test_result_is_consistent(reference):
  r = reference
  assert r.taylor.shape == (3, 4) and r.images == N_IMAGES
  # Removing no head is the baseline; the curves' first point says so for every order.
  # (In float64: see `reference`.)
  numerics.assert_close64(r.curves.metrics['top1'].mean[:, 0], np.full(len(r.curves.metrics['top1'].mean), r.baseline.top1))
  numerics.assert_close64(r.curves.metrics['kl'].mean[:, 0], np.zeros(len(r.curves.metrics['kl'].mean)))
  # Per-image values (stored in float32) average to the reported means.
  for name in ('taylor', 'ablation_loss'):
    per_image = getattr(r, f'per_image_{name}').astype(np.float64)
    numerics.assert_close64(per_image.mean(0), getattr(r, name), name, rtol=0,
                            atol=numerics.ROUNDED_ULPS * numerics.F32_EPS * np.abs(per_image).max())
  numerics.assert_close64(np.linalg.norm(r.taylor_normalized, axis=1), np.ones(3))
  assert list(r.curves.orders[:4]) == list(importance.ORDER_METRICS)
  assert not r.label_free


@numerics.in_float64  # the others are 0 up to rounding: float64 rounding
def test_head_carrying_all_signal_ranks_first_everywhere(image_set):
  """Only head (1, 2) writes to the residual stream: patch information reaches the class
  token through it alone, so every metric must rank it first."""
  params = numerics.as64(tiny_params(seed=3))
  for l in range(TINY.num_layers):
    out = params['Transformer'][f'encoderblock_{l}']['MultiHeadDotProductAttention_1']['out']
    keep = np.zeros_like(out['kernel'])
    if l == 1:
      keep[2] = 4.
    out['kernel'] = out['kernel'] * keep
  s = image_set.image_set
  unlabelled = data.ImageFolderSource(data.ImageSet(s.root, s.paths, np.full(len(s), -1, np.int32)),
                                      TINY.image_size)
  r = importance.compute_importance(params, TINY, unlabelled, options(batch_size=6))
  assert r.label_free and r.labelled_images == 0
  for name in ('taylor', 'ablation_loss', 'ablation_kl', 'ablation_top1'):
    flat = getattr(r, name).ravel()
    assert np.argmax(flat) == 1 * 4 + 2, name
    others = np.delete(flat, 6)
    assert flat[6] > 0, name
    numerics.assert_close64(others, np.zeros_like(others), name)
  # Label-free: the unmasked model is right by definition.
  assert r.baseline.top1 == 1.


@numerics.in_float64  # as `reference`
def test_interrupted_run_resumes_without_redoing_batches(image_set, reference, tmp_path,
                                                         monkeypatch):
  calls = []
  real = importance.taylor_ablation_batch

  def counting(*a, **k):
    calls.append(1)
    if len(calls) == 3 and not hasattr(counting, 'crashed'):
      counting.crashed = True
      raise KeyboardInterrupt
    return real(*a, **k)

  monkeypatch.setattr(importance.driver, 'taylor_ablation_batch', counting)
  store = progress_store.LogdirProgressStore(tmp_path, 'run', 'importance', 'k1')
  opts = options(batch_size=4, save_every_seconds=0.)
  params = numerics.as64(tiny_params())
  with pytest.raises(KeyboardInterrupt):
    importance.compute_importance(params, TINY, image_set, opts, store=store)
  assert store.load()[0] == 2  # two batches were saved
  calls.clear()
  got = importance.compute_importance(params, TINY, image_set, opts, store=store)
  assert len(calls) == 1  # only the third of three batches was computed again
  for k in ARRAYS:
    assert_close(numerics.importance_array(got, k), numerics.importance_array(reference, k), k)


MULTI_DEVICE = r'''
import dataclasses, sys, numpy as np, jax
jax.config.update('jax_enable_x64', True)  # in float64: a tolerance no CPU's rounding reaches
sys.path.insert(0, sys.argv[1])
from tests import numerics
from tests.tiny import TINY, tiny_params as tiny_params32
from vit_jax_analytics import data, importance, parallel
tiny_params = lambda: numerics.as64(tiny_params32())
assert jax.device_count() == 8, jax.devices()
s = data.ImageFolderSource(data.image_folder(sys.argv[2]), TINY.image_size)
o = importance.ImportanceOptions(batch_size=5, progress=False, curve_points=5, random_orders=2)
one = importance.compute_importance(tiny_params(), TINY, s, o,
                                    mesh=parallel.batch_mesh(jax.devices()[:1]))
eight = importance.compute_importance(tiny_params(), TINY, s, o)
# The ablation scan's heads split over 2 devices: a (4 batch x 2 masks) mesh.
split = importance.compute_importance(tiny_params(), TINY, s,
                                      dataclasses.replace(o, mask_shards=2))
for got in (eight, split):
  for k in ('taylor', 'ablation_loss', 'ablation_kl', 'ablation_top1', 'curve_top1',
            'partial_loss'):
    a, b = numerics.importance_array(got, k), numerics.importance_array(one, k)
    numerics.assert_close64(a, b, k, rtol=0, atol=numerics.F64_RTOL * np.abs(b).max())
print('ok', one.images)
'''


def test_eight_devices_match_one(image_set):
  """8 devices, and 8 devices as a (batch x masks) mesh, against one device."""
  assert f'ok {N_IMAGES}' in run_on_eight_cpu_devices(MULTI_DEVICE, image_set.image_set.root)


MASK_SHARDS = r'''
import sys, numpy as np, jax
jax.config.update('jax_enable_x64', True)  # in float64: a tolerance no CPU's rounding reaches
sys.path.insert(0, sys.argv[1])
from tests import numerics
from tests.tiny import TINY, tiny_images, tiny_params as tiny_params32
from tests.test_families_intercept import _foreign
tiny_params = lambda: numerics.as64(tiny_params32())
from vit_jax_analytics import importance, parallel
from vit_jax_analytics.errors import OptionError
images, labels = tiny_images(4), np.array([0, 1, -1, 3])
index = np.arange(4, dtype=np.int32)

def scan(params, config, mesh, chunk=1):
  """The ablation scan of taylor_ablation_batch on `mesh` (None: unsplit, one device)."""
  if mesh is None:
    return importance.taylor_ablation_batch(params, config, images, labels, chunk, None, index)[2]
  x, y, i = parallel.shard_batch(mesh, (images, labels, index))
  return importance.taylor_ablation_batch(parallel.replicate(mesh, params), config, x, y, chunk, None,
                                 i, mesh=mesh)[2]

# Heads (4) padded to 8 shards; prefix reuse, and an intercepted model's full forwards.
foreign, fconfig = _foreign(tiny_params(), TINY, images)
for params, config in ((tiny_params(), TINY), (foreign, fconfig)):
  want = scan(params, config, None)
  for k in (8, 4):
    got = scan(params, config, parallel.batch_mesh(mask_shards=k))
    for m, v in want.items():
      if m in numerics.COUNT_METRICS:
        np.testing.assert_array_equal(got[m], v, err_msg=m)
      else:
        numerics.assert_close64(got[m], v, m, rtol=0, atol=numerics.F64_RTOL * np.abs(v).max())

# The heads are really split: per-device FLOPs (every mask at once, no loop over heads) of
# a batch x masks mesh of 2 x K fall by the scan's share, 1/K of it on each device:
# f(1) - f(2) = 2 (f(2) - f(4)) (the Taylor pass and the loop over layers stay).
def flops(k):
  mesh = parallel.batch_mesh(jax.devices()[:2 * k], mask_shards=k)
  x, y, i = parallel.shard_batch(mesh, (images, labels, index))
  split = mesh if k > 1 else None
  compiled = importance.taylor_ablation_batch.lower(parallel.replicate(mesh, tiny_params()), TINY, x,
                                           y, 10 ** 6, None, i, mesh=split).compile()
  cost = compiled.cost_analysis()
  return (cost[0] if isinstance(cost, (list, tuple)) else cost)['flops']
f1, f2, f4 = flops(1), flops(2), flops(4)
assert f4 < f2 < f1 and abs((f1 - f2) - 2 * (f2 - f4)) < 0.01 * (f1 - f2), (f1, f2, f4)
for bad in (3, 16):
  try:
    parallel.batch_mesh(mask_shards=bad)
    raise SystemExit(f'no error for mask_shards={bad}')
  except OptionError as e:
    assert e.field == 'mask_shards' and 'divisor of the 8 devices' in str(e), e
print('ok', f1, f2, f4)
'''


def test_ablation_scan_split_over_a_masks_axis_equals_unsplit():
  """taylor_ablation_batch on (batch x masks) meshes of 8 forced CPU devices equals the unsplit scan
  on one device (in float64, to F64_RTOL of the largest magnitude; K = 8 pads 4 heads to 8), for
  prefix reuse and an intercepted model's full forwards, and divides the scan's work."""
  assert 'ok' in run_on_eight_cpu_devices(MASK_SHARDS)


def test_cli_writes_logdir(tmp_path, capsys):
  write_images(tmp_path / 'images')
  ckpt = checkpoints.save_checkpoint(tmp_path / 'tiny_ckpt', tiny_params(), TINY)
  code = cli.main(['importance', '--checkpoint', str(ckpt), '--images', str(tmp_path / 'images'),
                   '--logdir', str(tmp_path / 'logs'), '--batch-size', '5', '--no-progress',
                   '--curve-points', '4', '--per-image'])
  assert code == 0
  values = reader.read_run(tmp_path / 'logs' / 'tiny_ckpt')
  assert values['importance/taylor'].shape == (3, 4)
  assert values['importance/per_image_taylor'].shape == (N_IMAGES, 3, 4)
  meta = values['importance/meta']
  assert meta['config']['num_heads'] == 4 and len(meta['image_names']) == N_IMAGES
  assert not list((tmp_path / 'logs' / 'tiny_ckpt').glob('.*partial'))
  assert not (tmp_path / 'logs' / 'tiny_ckpt' / progress_store.STATE_DIR).exists()


def test_cli_no_readable_images_is_one_line_error(tmp_path, capsys):
  (tmp_path / 'images').mkdir()
  for i in range(3):
    (tmp_path / 'images' / f'{i}.png').write_bytes(b'not a png')
  ckpt = checkpoints.save_checkpoint(tmp_path / 'ckpt', tiny_params(), TINY)
  code = cli.main(['importance', '--checkpoint', str(ckpt), '--images',
                   str(tmp_path / 'images'), '--logdir', str(tmp_path / 'logs'), '--no-progress'])
  err = capsys.readouterr().err
  assert code == 2 and 'no readable images' in err.strip().splitlines()[-1]
  assert not list((tmp_path / 'logs').rglob('events.out.tfevents*'))


def test_per_image_loss_and_prediction(image_set, reference):
  """The unmasked model's loss and top-1 class per image, as the image overview shows them."""
  r = reference
  assert r.per_image_prediction.shape == (N_IMAGES,) and r.per_image_prediction.dtype == np.int32
  # per_image_loss is stored in float32; the baseline is a float64 sum (see `reference`).
  numerics.assert_close64(np.nanmean(r.per_image_loss), r.baseline.loss, rounded=np.float32)
  labels = np.full(N_IMAGES, -2)
  for batch in image_set.batches(5, progress=False):
    labels[batch.index[batch.valid]] = batch.labels[batch.valid]
  assert (labels >= 0).all()
  np.testing.assert_allclose(np.mean(r.per_image_prediction == labels), r.baseline.top1)
