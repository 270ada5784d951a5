"""SigLIP 2 NaFlex end to end: a Siglip2VisionModel written by transformers (save_pretrained)
and a folder of PNGs of different aspect ratios -> `vit-analytics info` and `analyze` (every
analysis, batches of one grid each), the plugin serving the run; and results that do not
depend on the batch size (batches then group the images differently within each grid)."""

import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip('torch')
pytest.importorskip('transformers')

from tests import numerics  # noqa: E402
from tests.test_crosscheck_siglip2 import MAX_PATCHES, PATCH, siglip2_model  # noqa: E402
from vit_jax_analytics import cli, importance, naflex, pipeline, strength  # noqa: E402
from vit_jax_analytics.logdir import reader  # noqa: E402

SIZES = [(40, 90), (90, 40), (50, 50), (30, 110), (44, 96), (52, 48), (90, 40)]


@pytest.fixture(scope='module')
def naflex_run(tmp_path_factory):
  root = tmp_path_factory.mktemp('siglip2')
  _, path = siglip2_model(root)
  (root / 'images').mkdir()
  rng = np.random.default_rng(0)
  for i, (h, w) in enumerate(SIZES):
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
        root / 'images' / f'{i}.png')
  return root, path


def run(capsys, *argv):
  code = cli.main([str(a) for a in argv])
  out = capsys.readouterr()
  return code, out.out, out.err


def test_grids_follow_the_processor():
  from transformers.models.siglip2.image_processing_pil_siglip2 import (
      get_image_size_for_max_num_patches as theirs)
  for h, w in SIZES + [(1, 500), (500, 3), (224, 224)]:
    for budget in (16, 32, 256):
      assert naflex.naflex_size(h, w, PATCH, budget) == theirs(h, w, PATCH, budget)


def test_info_names_family_position_and_naflex_layout(naflex_run, capsys):
  root, path = naflex_run
  code, out, err = run(capsys, 'info', '--checkpoint', path)
  assert code == 0, err
  info = json.loads(out)
  assert info['family'] == 'SigLIP 2 NaFlex image tower (Hugging Face)'
  assert 'resized to each image' in info['position'] and 'NaFlex' in info['position']
  assert info['token_layout']['cls'] == [] and info['token_layout']['registers'] == []
  assert info['token_layout']['naflex']['max_patches'] == MAX_PATCHES
  assert info['pooling'] == 'map' and info['output'] == 'embedding'


@pytest.fixture(scope='module')
def naflex_logdir(naflex_run):
  root, path = naflex_run
  logdir = root / 'logs'
  assert cli.main([str(a) for a in (
      'analyze', '--checkpoint', path, '--images', root / 'images', '--logdir', logdir,
      '--run', 'naflex', '--batch-size', '2', '--radii', '1', '--curve-points', '3',
      '--random-orders', '1', '--taylor-probes', '2', '--per-head', '2', '--grid', '3',
      '--clusters', '2', '--ae-epochs', '2', '--no-progress', '--no-compile-cache')]) == 0
  return logdir


def test_analyze_end_to_end_and_the_plugin_serves_it(naflex_run, naflex_logdir):
  root, _ = naflex_run
  source = pipeline.Inputs(naflex_run[1], root / 'images').load().source
  grids = {tuple(g) for g in source.grids.tolist()}
  assert len(grids) >= 4 and all(h * w <= MAX_PATCHES for h, w in grids)
  ch, cw = source.canvas
  tags = reader.read_run(naflex_logdir / 'naflex')
  assert tags['importance/meta']['config']['naflex_max_patches'] == MAX_PATCHES
  assert tags['importance/taylor'].shape == (3, 4)
  assert np.isfinite(tags['importance/ablation_loss']).all()
  assert tags['strength/offset_mean'].shape == (3, 4, 2 * ch - 1, 2 * cw - 1)
  pairs = tags['strength/offset_pairs']
  assert pairs[ch - 1, cw - 1] == sum(h * w for h, w in source.grids.tolist())  # offset 0
  assert (pairs == 0).any()  # offsets no image's grid has: no pairs, mean 0
  assert np.isfinite(tags['strength/offset_mean']).all()
  np.testing.assert_allclose(tags['strength/pool_attention'].sum((1, 2)), 1., rtol=1e-3)
  assert tags['patterns/sample_recentred'].shape[1:] == (2 * max(ch, cw) - 1,) * 2
  assert tags['patterns/sample_plain'].shape[1:] == (ch, cw)
  assert {tuple(g) for g in tags['patterns/sample_grid'].tolist()} == grids

  from tests.tb_plugin.client import get, make_client
  client, _ = make_client(naflex_logdir)
  code, body = get(client, '/runs')
  assert code == 200 and body['runs']
  for analysis in ('importance', 'strength', 'patterns'):
    code, body = get(client, '/meta', run='naflex', analysis=analysis)
    assert code == 200, (analysis, body)
  for tag in ('importance/taylor', 'strength/offset_mean', 'strength/pool_attention',
              'patterns/sample_recentred', 'patterns/map'):
    code, body = get(client, '/array', run='naflex', tag=tag)
    assert code == 200, (tag, body)


@numerics.in_float64
def test_results_do_not_depend_on_the_batch_size(naflex_run):
  """In float64 (the forwards of batches of 1 and of 3 round differently in float32; the
  importance metrics are float32 at the end: tolerances of float32 rounding there)."""
  root, path = naflex_run
  loaded = pipeline.Inputs(path, root / 'images').load()
  loaded = loaded._replace(params=numerics.as64(loaded.params))
  results = []
  for b in (1, 3):
    s = strength.compute_strength(loaded.params, loaded.config, loaded.source,
                                  strength.StrengthOptions(batch_size=b, progress=False,
                                                           map_images=0))
    imp = importance.compute_importance(
        loaded.params, loaded.config, loaded.source,
        importance.ImportanceOptions(batch_size=b, progress=False, curve_points=3,
                                     random_orders=1, taylor_probes=2, partial_radii=(1,)))
    results.append((s, imp))
  (s1, i1), (s3, i3) = results
  for name in ('offset_mean', 'offset_ratio', 'neighbourhood_share', 'mean_distance',
               'entropy', 'pool_attention'):
    numerics.assert_close64(getattr(s1, name), getattr(s3, name), err_msg=name)
  np.testing.assert_array_equal(s1.offset_pairs, s3.offset_pairs)
  np.testing.assert_allclose(i1.taylor, i3.taylor, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(i1.ablation_loss, i3.ablation_loss, rtol=1e-4, atol=1e-6)
  assert i1.partial.heads.size and i1.partial.variants == i3.partial.variants
  for m in i1.partial.change:
    np.testing.assert_allclose(i1.partial.change[m].mean, i3.partial.change[m].mean,
                               rtol=1e-4, atol=1e-6, err_msg=m)


@numerics.in_float64
def test_aggregates_over_grids_equal_a_brute_force_per_image(naflex_run):
  """Strength's offset means, offset ratios and neighbourhood shares, and the pattern samples
  (re-centred canvas, inside mask, the autoencoder's inside mask), against a per-image loop
  over each image's full attention on its own grid, in float64."""
  from vit_jax_analytics import data, model as model_lib, patterns
  root, path = naflex_run
  loaded = pipeline.Inputs(path, root / 'images').load()
  params, config, source = numerics.as64(loaded.params), loaded.config, loaded.source
  ch, cw = config.grid_shape
  L, H = config.num_layers, config.num_heads
  offset_sum = np.zeros((L, H, 2 * ch - 1, 2 * cw - 1))
  pairs = np.zeros((2 * ch - 1, 2 * cw - 1))
  uniform = np.zeros_like(pairs)
  attention = {}
  for i, path_i in enumerate(loaded.image_set.paths):
    gh, gw = source.grids[i]
    image = data.load_image(path_i, (gh * PATCH, gw * PATCH))[None]
    _, att = model_lib.apply(params, config.for_images(image.shape[1:3]), image,
                             return_attention=True)
    att = np.asarray(att[0])                                       # [L, H, T, T]
    attention[i] = att
    for q in range(gh * gw):
      for k in range(gh * gw):
        dy, dx = k // gw - q // gw, k % gw - q % gw
        offset_sum[:, :, dy + ch - 1, dx + cw - 1] += att[:, :, q, k]
        pairs[dy + ch - 1, dx + cw - 1] += 1
        uniform[dy + ch - 1, dx + cw - 1] += 1. / (gh * gw)
  s = strength.compute_strength(params, config, source,
                                strength.StrengthOptions(batch_size=2, progress=False,
                                                         map_images=0))
  seen = pairs > 0
  numerics.assert_close64(s.offset_mean[..., seen], offset_sum[..., seen] / pairs[seen])
  assert (s.offset_mean[..., ~seen] == 0).all() and (~seen).any()
  numerics.assert_close64(s.offset_ratio[..., seen], offset_sum[..., seen] / uniform[seen])
  dy, dx = np.meshgrid(np.arange(-(ch - 1), ch), np.arange(-(cw - 1), cw), indexing='ij')
  cheb = np.maximum(abs(dy), abs(dx))
  queries = sum(h * w for h, w in source.grids.tolist())
  share = np.stack([offset_sum[..., cheb <= d].sum(-1) for d in range(max(ch, cw))], -1)
  numerics.assert_close64(s.neighbourhood_share, share / queries)

  samples = patterns.extract_samples(params, config, source, per_head=2, batch_size=3,
                                     progress=False)
  n = max(ch, cw)
  inside = samples.inside((ch, cw))
  x = patterns.AEInputs(samples, (ch, cw))[:]
  # The autoencoder's training inputs, made on the device from the samples: the same.
  from vit_jax_analytics.patterns import autoencoder
  device_data, grid = autoencoder._training_data(patterns.AEInputs(samples, (ch, cw)))
  device_x = np.asarray(autoencoder._device_inputs(device_data, np.arange(len(x)), grid))
  np.testing.assert_array_equal(device_x[..., 1], x[..., 1])  # the inside masks
  np.testing.assert_allclose(device_x[..., 0], x[..., 0], atol=1e-6)  # float32 rounding
  for j in range(0, len(samples.index), 7):
    image, layer, head, query = samples.index[j]
    gh, gw = samples.grids[j]
    qr, qc = divmod(int(query), cw)
    assert qr < gh and qc < gw
    row = attention[image][layer, head, qr * gw + qc].reshape(gh, gw)
    want = np.zeros((2 * n - 1, 2 * n - 1))
    want_inside = np.zeros_like(want, bool)
    want[n - 1 - qr:n - 1 - qr + gh, n - 1 - qc:n - 1 - qc + gw] = row
    want_inside[n - 1 - qr:n - 1 - qr + gh, n - 1 - qc:n - 1 - qc + gw] = True
    np.testing.assert_allclose(samples.recentred[j], want, atol=1e-3)  # float16 samples
    np.testing.assert_array_equal(inside[j], want_inside)
    np.testing.assert_array_equal(x[j, ..., 1], want_inside)


def test_partial_pruning_regions_are_made_on_each_batch_grid():
  """The multipliers a NaFlex batch runs with: local / global by Chebyshev distance on the
  batch's own grid, the default region its own central half, an explicit one clipped."""
  from types import SimpleNamespace
  from vit_jax_analytics.importance import driver
  from vit_jax_analytics.model import ViTConfig
  canvas = ViTConfig(image_size=(32, 32), patch_size=4, hidden_size=8, num_layers=1,
                     num_heads=2, mlp_dim=8, num_classes=0, classifier='map', output='embedding',
                     naflex_max_patches=32, posemb_grid=(4, 4))
  plan = SimpleNamespace(keeps=np.zeros(1))
  for region, want_rows, want_cols in ((None, (1, 3), (1, 6)), ((1, 2, 6, 8), (1, 4), (2, 7))):
    options = importance.ImportanceOptions(partial_radii=(1, 5), partial_region=region)
    batch = canvas.for_images((16, 28))                    # a 4 x 7 grid
    keeps = driver.grid_keeps(canvas, plan, options)(batch)
    names = [v.name for v in importance.partial_variants(canvas, (1, 5), region)]
    assert keeps.shape == (len(names) + 1, 28, 28) and not keeps[-1].any()
    r, c = np.divmod(np.arange(28), 7)
    cheb = np.maximum(abs(r[:, None] - r[None]), abs(c[:, None] - c[None]))
    np.testing.assert_array_equal(keeps[names.index('local_r1')], cheb > 1)
    np.testing.assert_array_equal(keeps[names.index('global_r1')], cheb <= 1)
    np.testing.assert_array_equal(keeps[names.index('local_r5')], cheb > 5)  # reaches past
    inside = ((r >= want_rows[0]) & (r < want_rows[1]) & (c >= want_cols[0]) &
              (c < want_cols[1]))
    # the queries inside the region lose all their attention
    np.testing.assert_array_equal(keeps[names.index('region_in')],
                                  np.broadcast_to(~inside[:, None], (28, 28)))
  assert driver.grid_keeps(canvas, plan, options)(canvas) is plan.keeps


def test_batches_resume_at_any_batch_and_subsets_count_their_own_positions(naflex_run):
  """Batch k of a resumed stream is batch k of the whole one (grid by grid, each batch one
  grid, every image once); a subset's Batch.index is the position in the subset."""
  from vit_jax_analytics.batches import subset_source
  root, path = naflex_run
  source = pipeline.Inputs(path, root / 'images').load().source
  for b in (1, 2, 3):
    whole = list(source.batches(b, progress=False))
    seen = np.concatenate([x.index[x.valid] for x in whole])
    assert sorted(seen.tolist()) == list(range(len(source)))
    for x in whole:  # one grid a batch, the grid of its images
      assert {tuple(source.grids[i]) for i in x.index[x.valid]} == {
          (x.images.shape[1] // PATCH, x.images.shape[2] // PATCH)}
    for k in range(len(whole)):
      for got, want in zip(source.batches(b, k, progress=False), whole[k:], strict=True):
        np.testing.assert_array_equal(got.index, want.index)
        np.testing.assert_array_equal(got.images, want.images)
  picked = np.array([1, 4, 6])
  subset = subset_source(source, picked)
  for x in subset.batches(2, progress=False):
    for pos in x.index[x.valid]:
      assert tuple(subset.parent.grids[picked[pos]]) == (x.images.shape[1] // PATCH,
                                                         x.images.shape[2] // PATCH)
