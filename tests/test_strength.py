import dataclasses

import jax
import numpy as np
import pytest

from tests import numerics
from tests.tiny import (TINY, arrays_of, folder_source, offset_heads_model,
                        run_on_eight_cpu_devices, tiny_params)
from vit_jax_analytics import data, model as model_lib, strength


@pytest.fixture(scope='module')
def image_set(tmp_path_factory):
  return folder_source(tmp_path_factory.mktemp('images'), n=10)


def opts(**kw):
  return strength.StrengthOptions(**{'progress': False, 'map_images': 3, **kw})


def brute_force(attention, config):
  """Plain loops over images, queries and keys. attention [N, L, H, T, T]."""
  n, cls = config.grid_size, int(config.has_cls_token)
  N, L, H = attention.shape[:3]
  a = attention.astype(np.float64)
  offset_sum = np.zeros((L, H, 2 * n - 1, 2 * n - 1))
  pairs = np.zeros((2 * n - 1, 2 * n - 1))
  within = np.zeros((L, H, n))
  dist_num, dist_den = np.zeros((N, L, H)), np.zeros((N, L, H))
  for q in range(n * n):
    qy, qx = divmod(q, n)
    for k in range(n * n):
      ky, kx = divmod(k, n)
      w = a[:, :, :, q + cls, k + cls]
      offset_sum[:, :, ky - qy + n - 1, kx - qx + n - 1] += w.sum(0)
      pairs[ky - qy + n - 1, kx - qx + n - 1] += N
      cheb = max(abs(ky - qy), abs(kx - qx))
      within[:, :, cheb:] += w.sum(0)[..., None]
      d = np.hypot(ky - qy, kx - qx) * config.patch_size
      dist_num += w * d
      dist_den += w
  q_all = a[:, :, :, cls:, :]
  entropy = -(q_all * np.log(np.maximum(q_all, 1e-30))).sum(-1).mean(-1)
  self_share = np.stack([a[:, :, :, q + cls, q + cls] for q in range(n * n)], -1).mean(-1)
  out = {'offset_mean': offset_sum / pairs, 'neighbourhood_share': within / (n * n * N),
         'per_image_distance': dist_num / dist_den, 'mean_distance': (dist_num / dist_den).mean(0),
         'entropy': entropy.mean(0), 'per_image_entropy': entropy, 'self_share': self_share.mean(0)}
  if cls:
    out['cls_share'] = a[:, :, :, 1:, 0].mean(-1).mean(0)
    out['cls_attention'] = a[:, :, :, 0, 1:].mean(0).reshape(L, H, n, n)
    out['to_cls'] = a[:, :, :, 1:, 0].mean(0).reshape(L, H, n, n)
  return out


def all_attention(params, config, image_set):
  batch = next(iter(image_set.batches(len(image_set), progress=False)))
  return np.asarray(model_lib.apply(params, config, batch.images, return_attention=True)[1])


@pytest.mark.parametrize('classifier', ['token', 'gap'])
@numerics.in_float64  # both sides in float64: a tolerance no CPU's rounding reaches
def test_matches_brute_force(image_set, classifier):
  config = TINY.replace(classifier=classifier)
  params = numerics.as64(tiny_params(config))
  got = arrays_of(strength.compute_strength(params, config, image_set, opts(batch_size=4)))
  ref = brute_force(all_attention(params, config, image_set), config)
  for k in ('offset_mean', 'neighbourhood_share', 'mean_distance', 'entropy', 'self_share',
            'cls_share', 'cls_attention', 'to_cls'):
    if k in ref:
      # The library's distance table is float32 (strength.patch_distances): the mean
      # distance is within float32 rounding of the exact one, everything else float64.
      numerics.assert_close64(got[k], ref[k], k,
                              rounded=np.float32 if k == 'mean_distance' else None)
  numerics.assert_close64(got['offset_ratio'], ref['offset_mean'] * config.num_tokens)
  assert got['offset_pairs'][config.grid_size - 1, config.grid_size - 1] == 16 * 10
  numerics.assert_close64(got['neighbourhood_share'][..., -1],
                          1. - np.asarray(ref.get('cls_share', 0.)))
  # Quantiles from the fixed-range histograms are within one bin of the exact ones.
  lo, hi = strength.scalar_ranges(config)['mean_distance']
  exact = np.quantile(ref['per_image_distance'], [0.05, 0.5, 0.95], axis=0, method='inverted_cdf')
  approx = got['mean_distance_quantiles'][..., [0, 2, 4]]
  assert np.abs(np.moveaxis(exact, 0, -1) - approx).max() <= (hi - lo) / strength.HIST_BINS


def test_hand_built_left_neighbour_and_uniform_heads(tmp_path):
  params, config = offset_heads_model(grid=4, patterns=('left', 'uniform'))
  images = folder_source(tmp_path / 'imgs', n=3, config=config)
  attn = all_attention(params, config, images)
  assert attn[0, 0, 0, 1 + 5, 1 + 4] > 0.999 and attn[0, 0, 0, 1 + 4, 0] > 0.999  # as built
  r = arrays_of(strength.compute_strength(params, config, images, opts(batch_size=2)))
  n, centre = 4, 3
  for l in range(2):
    left = r['offset_mean'][l, 0]
    np.testing.assert_allclose(left[centre, centre - 1], 1., atol=1e-4)   # offset (0, -1)
    left_other = left.copy()
    left_other[centre, centre - 1] = 0.
    assert left_other.max() < 1e-4
    np.testing.assert_allclose(r['mean_distance'][l, 0], config.patch_size, rtol=1e-4)
    np.testing.assert_allclose(r['self_share'][l, 0], 0., atol=1e-4)
    np.testing.assert_allclose(r['cls_share'][l, 0], n / (n * n), atol=1e-4)
    # Uniform head: every offset at the baseline 1/T, i.e. ratio 1.
    np.testing.assert_allclose(r['offset_ratio'][l, 1], 1., rtol=1e-5)
    np.testing.assert_allclose(r['entropy'][l, 1], np.log(17), rtol=1e-5)
    np.testing.assert_allclose(r['neighbourhood_share'][l, 1, 0], 1 / 17, rtol=1e-5)


@pytest.mark.parametrize('batch_size', [1, 3, 10])
@numerics.in_float64
def test_independent_of_batch_size(image_set, batch_size):
  # Different batch shapes only change the rounding inside the forward pass (sums over
  # images are float64 on the host): in float64, to F64_RTOL of each array's largest value.
  params = numerics.as64(tiny_params(attention_scale=1.))
  ref = strength.compute_strength(params, TINY, image_set, opts(batch_size=4))
  got = strength.compute_strength(params, TINY, image_set, opts(batch_size=batch_size))
  got = arrays_of(got)
  for k, v in arrays_of(ref).items():
    if k.startswith('map_'):
      continue
    if not np.issubdtype(v.dtype, np.floating):  # counts
      np.testing.assert_array_equal(got[k], v, err_msg=k)
      continue
    # qk_embedding is stored in float32 (from float32 queries and keys): within float32
    # rounding of its largest value.
    rounded = np.float32 if v.dtype == np.float32 else None
    atol = (numerics.ROUNDED_ULPS * numerics.F32_EPS if rounded else numerics.F64_RTOL) * max(
        np.abs(v).max(), 1e-12)
    numerics.assert_close64(got[k], v, k, rtol=0, atol=atol, rounded=rounded)


@numerics.in_float64  # both sides in float64: a tolerance no CPU's rounding reaches
def test_rollout_matches_direct_numpy():
  rng = np.random.default_rng(0)
  attn = rng.dirichlet(np.ones(5), size=(2, 3, 4, 5))  # [B, L, H, T, T]
  got = np.asarray(strength.attention_rollout(attn))
  for b in range(2):
    acc = np.eye(5)
    for l in range(3):
      a = attn[b, l].mean(0) * 0.5 + 0.5 * np.eye(5)
      a /= a.sum(-1, keepdims=True)
      acc = a @ acc
      numerics.assert_close64(got[b, l], acc)
  numerics.assert_close64(got.sum(-1), np.ones(got.shape[:-1]))


def test_stored_maps(image_set):
  params = tiny_params()
  r = strength.compute_strength(params, TINY, image_set, opts(batch_size=4, map_images=5))
  assert r.map_attention.shape == (5, 3, 4, 17, 17)
  assert r.map_rollout.shape == (5, 3, 17, 17)
  assert r.map_image_index.tolist() == [0, 2, 4, 7, 9]  # spread over the 10 images
  ref = all_attention(params, TINY, image_set)[[0, 2, 4, 7, 9]]
  np.testing.assert_allclose(r.map_attention.astype(np.float32), ref, atol=1e-3)


MULTI_DEVICE = r'''
import sys, numpy as np, jax
jax.config.update('jax_enable_x64', True)  # in float64: a tolerance no CPU's rounding reaches
sys.path.insert(0, sys.argv[1])
from tests.tiny import TINY, offset_heads_model, tiny_params
from vit_jax_analytics import data, strength, parallel
assert jax.device_count() == 8
s = data.ImageFolderSource(data.image_folder(sys.argv[2]), TINY.image_size)
o = strength.StrengthOptions(batch_size=3, progress=False, map_images=0)
p = jax.tree.map(lambda a: np.asarray(a, np.float64), tiny_params(attention_scale=1.))
one = strength.compute_strength(p, TINY, s, o, mesh=parallel.batch_mesh(jax.devices()[:1]))
eight = strength.compute_strength(p, TINY, s, o)
for k in ('offset_mean', 'neighbourhood_share', 'mean_distance', 'entropy', 'cls_attention'):
  a, b = getattr(eight, k), getattr(one, k)
  assert a.dtype == b.dtype == np.float64, k
  np.testing.assert_allclose(a, b, rtol=0, atol=1e-9 * np.abs(b).max(), err_msg=k)
np.testing.assert_array_equal(eight.distributions['entropy'].hist, one.distributions['entropy'].hist)
print('ok', one.images)
'''


def test_eight_devices_match_one(image_set):
  assert 'ok 10' in run_on_eight_cpu_devices(MULTI_DEVICE, image_set.image_set.root)

def test_baselines_match_brute_force_and_a_uniform_head(tmp_path):
  """strength.baselines: plain loops over queries and keys, and the statistics the analysis
  measures on a hand-built head that attends uniformly."""
  params, config = offset_heads_model(grid=4, patterns=('left', 'uniform'))
  n, t, px = config.grid_size, config.num_tokens, config.patch_size
  b = strength.baselines(config)
  dists, within = [], np.zeros(n)
  for q in range(n * n):
    for k in range(n * n):
      (qy, qx), (ky, kx) = divmod(q, n), divmod(k, n)
      dists.append(np.hypot(qy - ky, qx - kx) * px)
      within[max(abs(qy - ky), abs(qx - kx)):] += 1
  u = b['uniform']
  np.testing.assert_allclose(u['mean_distance'], np.mean(dists), rtol=1e-9)
  np.testing.assert_allclose(u['neighbourhood_share'], within / (n * n) / t, rtol=1e-9)
  np.testing.assert_allclose(u['entropy'], np.log(t))
  assert b['self'] == {'mean_distance': 0., 'neighbourhood_share': [1.] * n, 'entropy': 0.,
                       'self_share': 1., 'cls_share': 0., 'offset_ratio_centre': float(t)}
  images = folder_source(tmp_path / 'imgs', n=2, config=config)
  r = strength.compute_strength(params, config, images, opts(batch_size=2))
  assert r.baselines == b
  for name in ('mean_distance', 'entropy', 'self_share', 'cls_share'):
    np.testing.assert_allclose(getattr(r, name)[:, 1], u[name], rtol=1e-4, err_msg=name)
  np.testing.assert_allclose(r.neighbourhood_share[:, 1], [u['neighbourhood_share']] * 2,
                             rtol=1e-4)


@numerics.in_float64  # both sides in float64: a tolerance no CPU's rounding reaches
def test_queries_and_keys_reproduce_the_attention(image_set):
  """q and k rebuilt from the sown block inputs give the model's own attention weights."""
  params = numerics.as64(tiny_params())
  batch = next(iter(image_set.batches(3, progress=False)))
  q, k = (np.asarray(a) for a in strength.queries_keys(params, TINY, batch.images))
  assert q.shape == k.shape == (3, 3, 4, 17, 8)
  logits = np.einsum('blhqd,blhkd->blhqk', q, k) / np.sqrt(8)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  ref = np.asarray(strength.attention_maps(params, TINY, batch.images))
  numerics.assert_close64(weights, ref)


def test_joint_embedding_ignores_what_attention_ignores():
  """Translating the keys or trading scale between q and k leaves attention unchanged, and
  leaves the joint embedding unchanged too; it is the PCA of the aligned points."""
  rng = np.random.default_rng(0)
  q, k = rng.normal(size=(50, 6)), rng.normal(size=(50, 6)) + 3.
  e = strength.joint_embedding(q, k)
  assert e.shape == (2, 50, 2)
  moved = strength.joint_embedding(q, k + 5.)          # keys translated
  np.testing.assert_allclose(np.abs(moved), np.abs(e), rtol=1e-4, atol=1e-5)  # up to sign
  q0 = q - q.mean(0)                                  # scale traded (queries centred)
  np.testing.assert_allclose(np.abs(strength.joint_embedding(q0 * 2., k / 2.)),
                             np.abs(strength.joint_embedding(q0, k)), rtol=1e-4, atol=1e-5)
  # The two coordinates are uncorrelated principal axes of the 100 points, the first the wider.
  flat = e.reshape(-1, 2).astype(np.float64)
  cov = np.cov(flat.T)
  assert abs(cov[0, 1]) < 1e-4 * cov[0, 0] and cov[0, 0] >= cov[1, 1]


def test_joint_embedding_is_the_pca_of_the_aligned_points():
  """Against an independent PCA (an SVD of the aligned, centred points): the same
  coordinates, each axis signed so that its largest loading is positive."""
  rng = np.random.default_rng(1)
  q = rng.normal(size=(120, 16)) @ rng.normal(size=(16, 16))
  k = rng.normal(size=(120, 16)) @ rng.normal(size=(16, 16)) * 3. + 2.
  k_aligned = k - k.mean(0) + q.mean(0)
  spread = lambda a: np.linalg.norm(a - a.mean(0), axis=1).mean()
  c = np.sqrt(spread(k_aligned) / spread(q))
  x = np.concatenate([q * c, k_aligned / c])
  x = x - x.mean(0)
  _, _, vt = np.linalg.svd(x, full_matrices=False)
  axes = vt[:2] * np.sign(vt[:2][[0, 1], np.argmax(np.abs(vt[:2]), 1)])[:, None]
  want = (x @ axes.T).reshape(2, 120, 2)
  np.testing.assert_allclose(strength.joint_embedding(q, k), want, rtol=1e-4,
                             atol=1e-4 * np.abs(want).max())


def test_stored_qk_embedding(image_set):
  r = strength.compute_strength(tiny_params(), TINY, image_set,
                                opts(batch_size=4, map_images=3, qk_images=2))
  assert r.qk_embedding.shape == (3, 4, 2, 2 * 17, 2)
  assert r.qk_images.tolist() == [0, 1]
  assert np.isfinite(r.qk_embedding).all()


def test_map_budget_stores_as_many_images_as_fit(image_set):
  per_image = strength.map_bytes(TINY)
  assert per_image == 2 * 3 * 5 * 17 ** 2
  options = opts(batch_size=4, map_budget_mib=2.5 * per_image / 2 ** 20)
  assert options.stored_maps(TINY, 10) == 2
  r = strength.compute_strength(tiny_params(), TINY, image_set, options)
  assert r.map_image_index.tolist() == [0, 9]
  assert r.map_attention.nbytes + r.map_rollout.nbytes <= 2.5 * per_image
  everything = opts(map_budget_mib=1000.)
  assert everything.stored_maps(TINY, 10) == 10
  with pytest.raises(Exception):
    opts(map_budget_mib=-1.)


def test_hand_built_rectangular_grid_with_registers_and_a_map_head(tmp_path):
  """The left-neighbour and uniform heads on a 3 x 5 grid with two registers before the
  patches and MAP pooling (no class token): the same known answers, in h x w geometry."""
  from vit_jax_analytics import batches
  gh, gw, regs = 3, 5, 2
  params, config = offset_heads_model(grid=(gh, gw), patterns=('left', 'uniform'),
                                      registers=regs, classifier='map')
  t = gh * gw + regs
  images = batches.ArraySource(np.zeros((3, 4 * gh, 4 * gw, 3), np.float32))
  attn = np.asarray(model_lib.apply(params, config, images.images, return_attention=True)[1])
  assert attn[0, 0, 0, regs + 6, regs + 5] > 0.999 and attn[0, 0, 0, regs + 5, 0] > 0.999
  r = arrays_of(strength.compute_strength(params, config, images, opts(batch_size=2)))
  assert r['offset_mean'].shape == (2, 2, 2 * gh - 1, 2 * gw - 1)
  for l in range(2):
    left = r['offset_mean'][l, 0]
    np.testing.assert_allclose(left[gh - 1, gw - 2], 1., atol=1e-4)   # offset (0, -1)
    left_other = left.copy()
    left_other[gh - 1, gw - 2] = 0.
    assert left_other.max() < 1e-4
    np.testing.assert_allclose(r['mean_distance'][l, 0], config.patch_size, rtol=1e-4)
    np.testing.assert_allclose(r['self_share'][l, 0], 0., atol=1e-4)
    np.testing.assert_allclose(r['offset_ratio'][l, 1], 1., rtol=1e-5)
    np.testing.assert_allclose(r['entropy'][l, 1], np.log(t), rtol=1e-5)
    np.testing.assert_allclose(r['neighbourhood_share'][l, 1, 0], 1 / t, rtol=1e-5)
    # Everything a query patch gives the patches, plus what it gives the registers, is 1.
    np.testing.assert_allclose(r['neighbourhood_share'][l, 1, -1], (gh * gw) / t, rtol=1e-5)
  assert 'cls_share' not in r
  # The MAP head (zero probe: uniform over all tokens) is stored per patch.
  np.testing.assert_allclose(r['pool_attention'], 1 / t, rtol=1e-5)
  # The merged baselines hold on the same h x w grid with registers: the uniform head.
  u = strength.baselines(config)['uniform']
  np.testing.assert_allclose(r['entropy'][:, 1], u['entropy'], rtol=1e-5)
  np.testing.assert_allclose(r['mean_distance'][:, 1], u['mean_distance'], rtol=1e-4)
  np.testing.assert_allclose(r['neighbourhood_share'][:, 1], [u['neighbourhood_share']] * 2,
                             rtol=1e-4)


def test_default_map_budget_stores_every_image_of_the_photo_demo():
  """Neither --map-images nor --map-budget-mib: the default budget holds all 22 images of
  the photo demo (ViT-S/14 at 168^2: 12 x 12 patches); --map-images alone still counts."""
  demo = dataclasses.replace(model_lib.get_config('ViT-S/16'), patch_size=14, image_size=168)
  assert strength.map_bytes(demo) == 2 * 12 * 7 * 145 ** 2
  default = strength.StrengthOptions(progress=False)
  assert default.stored_maps(demo, 22) == 22
  assert default.stored_maps(demo, 1000) == int(strength.DEFAULT_MAP_BUDGET_MIB * 2 ** 20
                                                // strength.map_bytes(demo)) < 1000
  assert strength.StrengthOptions(map_images=8).stored_maps(demo, 22) == 8
  assert strength.StrengthOptions(map_images=8, map_budget_mib=20.).stored_maps(demo, 22) == 5
