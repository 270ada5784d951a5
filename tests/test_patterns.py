import dataclasses

import jax
import numpy as np
import pytest

from tests import numerics
from tests.tiny import TINY, folder_source, offset_heads_model, tiny_params
from vit_jax_analytics import model as model_lib, patterns


def test_recentre_matches_direct_construction():
  n = 4
  rng = np.random.default_rng(0)
  maps = rng.uniform(size=(n * n, n, n)).astype(np.float32)
  rows, cols = np.divmod(np.arange(n * n), n)
  canvas, inside = map(np.asarray, patterns.recentre(maps, rows, cols, n))
  assert canvas.shape == inside.shape == (n * n, 2 * n - 1, 2 * n - 1)
  for s in range(n * n):
    ref = np.zeros((2 * n - 1, 2 * n - 1), np.float32)
    ref_inside = np.zeros_like(ref, bool)
    for ky in range(n):
      for kx in range(n):
        dy, dx = ky - rows[s], kx - cols[s]
        ref[dy + n - 1, dx + n - 1] = maps[s, ky, kx]
        ref_inside[dy + n - 1, dx + n - 1] = True
    np.testing.assert_array_equal(canvas[s], ref)
    np.testing.assert_array_equal(inside[s], ref_inside)
  # Corners: a query in the top-left corner sees keys only down and to the right.
  assert inside[0][n - 1:, n - 1:].all() and not inside[0][:n - 1].any()
  assert not inside[0][:, :n - 1].any()
  # Query at the bottom-right corner: its own weight sits at the centre cell.
  assert canvas[-1][n - 1, n - 1] == maps[-1][n - 1, n - 1]
  assert canvas[-1][0, 0] == maps[-1][0, 0] and inside[-1][:n, :n].all()


def test_samples_are_the_model_attention(tmp_path):
  image_set = folder_source(tmp_path / 'i', n=5)
  params = tiny_params()
  s = patterns.extract_samples(params, TINY, image_set, per_head=3, batch_size=2,
                               progress=False)
  assert len(s.index) == 5 * 3 * 4 * 3 and s.recentred.dtype == np.float16
  batch = next(iter(image_set.batches(5, progress=False)))
  attn = np.asarray(model_lib.apply(params, TINY, batch.images, return_attention=True)[1])
  n = TINY.grid_size
  for i, (img, l, h, q) in enumerate(s.index[::7]):
    row = attn[img, l, h, 1 + q]
    np.testing.assert_allclose(s.plain[i * 7].astype(np.float32), row[1:].reshape(n, n),
                               atol=1e-3)
    np.testing.assert_allclose(float(s.to_cls[i * 7]), row[0], atol=1e-3)
  # Stratified: each (image, layer, head) uses distinct query positions.
  groups = s.index[:, :3] @ np.array([1000, 100, 10])
  for g in np.unique(groups):
    q = s.index[groups == g, 3]
    assert len(set(q)) == len(q)
  # Independent of the batch size, to float16 storage precision (one rounding step).
  again = patterns.extract_samples(params, TINY, image_set, per_head=3, batch_size=4,
                                   progress=False)
  np.testing.assert_array_equal(again.index, s.index)
  np.testing.assert_allclose(again.recentred.astype(np.float32),
                             s.recentred.astype(np.float32), rtol=2e-3, atol=1e-7)


KINDS = ('left', 'right', 'up', 'self', 'uniform')


@pytest.fixture(scope='module')
def fixed_offset_summary(tmp_path_factory):
  params, config = offset_heads_model(grid=6, patterns=KINDS, layers=2)
  image_set = folder_source(tmp_path_factory.mktemp('img'), n=4, config=config)
  samples = patterns.extract_samples(params, config, image_set, per_head=16, batch_size=4,
                                     progress=False)
  options = patterns.PatternOptions(grid=10, clusters=5, ae=patterns.AEOptions(
      epochs=150, batch_size=32, progress=False, seed=0))
  result, _ = patterns.summarise(samples, config, options)
  return result, samples, config, options


def test_fixed_offset_heads_cluster_by_pattern(fixed_offset_summary):
  result, _, config, _ = fixed_offset_summary
  labels = result.head_cluster  # [L, H]; head h of every layer has pattern KINDS[h]
  truth = np.tile(np.arange(len(KINDS)), (config.num_layers, 1))
  purity = sum(np.bincount(truth[labels == c]).max() for c in np.unique(labels)) / labels.size
  assert purity >= 0.9
  # Different patterns land in different clusters.
  assert len(np.unique(labels[0])) == len(KINDS)
  # The autoencoder learned the patterns: error far below the variance of the data.
  assert result.reconstruction_error < 0.1 * result.data_variance
  names = set(result.cluster_names)
  assert 'offset (+0, -1)' in names and 'self' in names


def test_same_seed_same_latents(fixed_offset_summary):
  result, samples, config, options = fixed_offset_summary
  again, _ = patterns.summarise(samples, config, options)
  np.testing.assert_array_equal(again.sample_latent, result.sample_latent)


def test_autoencoder_inputs_made_batch_by_batch_are_the_whole_array(fixed_offset_summary):
  """summarise never holds the float32 inputs of every sample (AEInputs makes each batch
  when indexed, and training makes them on the device from the float16 samples): the
  batches equal the whole array's rows bit for bit, both ways; training on either gives
  the same parameters to float32 rounding (two compiled programs: XLA fuses the inputs'
  construction into different reductions); the chunked variance equals a float64
  computation on the whole array."""
  _, samples, config, options = fixed_offset_summary
  n, canvas = config.grid_shape, 2 * max(config.grid_shape) - 1
  whole = patterns.ae_inputs(samples, n)
  lazy = patterns.AEInputs(samples, n)
  assert len(lazy) == len(whole) and lazy.shape == whole.shape
  rows = np.random.default_rng(0).permutation(len(whole))[:37]
  np.testing.assert_array_equal(lazy[rows], whole[rows])
  np.testing.assert_array_equal(lazy[5:300], whole[5:300])
  from vit_jax_analytics.patterns import autoencoder
  data, grid = autoencoder._training_data(lazy)
  assert grid == tuple(n) and data[0].dtype == np.float16  # the samples, not float32 inputs
  np.testing.assert_array_equal(autoencoder._device_inputs(data, rows, grid), whole[rows])
  ae = dataclasses.replace(options.ae, epochs=3)
  p_whole, h_whole = patterns.train_autoencoder(whole, canvas, ae)
  p_lazy, h_lazy = patterns.train_autoencoder(lazy, canvas, ae)
  assert h_whole.best_epoch == h_lazy.best_epoch
  np.testing.assert_allclose(h_whole.val_loss, h_lazy.val_loss, rtol=1e-5)
  np.testing.assert_allclose(h_whole.train_loss, h_lazy.train_loss, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), p_whole,
               p_lazy)
  x = whole.astype(np.float64)
  inside = x[..., 1]
  mean = (x[..., 0] * inside).sum(0) / np.maximum(inside.sum(0), 1)
  want = ((x[..., 0] - mean) ** 2 * inside).sum() / inside.sum()
  assert patterns.masked_variance(lazy, batch=100) == pytest.approx(want, rel=1e-6)
  assert patterns.masked_variance(whole) == pytest.approx(want, rel=1e-6)


def test_padded_evaluation_chunks_equal_each_sample_alone(fixed_offset_summary):
  """encode and reconstruction_errors evaluate fixed-size chunks, the last padded (one
  compiled program, memory independent of the number of samples): each sample's latent and
  error equal those of the sample evaluated alone, whatever the chunk size (in float64: the
  rounding of batch-size-dependent convolution kernels, tests/numerics.py); the training history's validation loss is the mean over the validation
  samples (checked against a direct float64 mean)."""
  result, samples, config, options = fixed_offset_summary
  n, canvas = config.grid_shape, 2 * max(config.grid_shape) - 1
  x = patterns.AEInputs(samples, n)
  ae = dataclasses.replace(options.ae, epochs=2)
  params, history = patterns.train_autoencoder(x, canvas, ae)
  some = np.random.default_rng(1).permutation(len(x))[:11]
  with numerics.float64():  # the trained params in float64: a tolerance no CPU's rounding reaches
    p64 = numerics.as64(params)
    alone_latent = np.concatenate([patterns._encode(p64, x[[i]], canvas, ae.latent_dim,
                                                    ae.width) for i in some])
    alone_error = np.concatenate([patterns._reconstruction_errors(p64, x[[i]], canvas,
                                                                  ae.latent_dim, ae.width)
                                  for i in some])
    for chunk in (7, patterns.EVAL_CHUNK, len(x) + 5):
      latent = patterns.encode(p64, x, canvas, ae, batch=chunk)
      errors = patterns.reconstruction_errors(p64, x, canvas, ae, batch=chunk)
      assert latent.shape == (len(x), ae.latent_dim) and errors.shape == (len(x),)
      numerics.assert_close64(latent[some], alone_latent, 'latent')
      numerics.assert_close64(errors[some], alone_error, 'errors')
  # The validation loss of the best epoch (here the last: 2 epochs of a falling loss), from
  # the returned parameters, on the rows train_autoencoder holds out.
  assert history.best_epoch == len(history.val_loss) - 1 == 1
  order = np.random.default_rng(ae.seed).permutation(len(x))
  val = order[:max(1, int(round(len(x) * ae.validation_fraction)))]
  model = patterns.PatternAutoencoder(canvas, ae.latent_dim, ae.width)
  direct = np.asarray(patterns.masked_bce(model.apply({'params': params}, x[val]), x[val]),
                      np.float64).mean()
  assert history.val_loss[-1] == pytest.approx(direct, rel=1e-5)


def test_pca_and_grid_helpers():
  rng = np.random.default_rng(0)
  latent = rng.normal(size=(200, 5)) * np.array([5, 2, 0.1, 0.1, 0.1])
  coords, (mean, axes) = patterns.pca_2d(latent)
  assert coords.shape == (200, 2) and np.var(coords[:, 0]) > np.var(coords[:, 1])
  np.testing.assert_allclose(mean + coords @ axes, latent, atol=0.5)
  extent = np.array([[0., 1.], [0., 2.]])
  cells = patterns.grid_cells(np.array([[0.05, 1.9], [0.99, 0.01]]), extent, 4)
  assert cells.tolist() == [[3, 0], [0, 3]]
  centres = patterns.grid_centres(extent, 4)
  assert np.allclose(centres[3, 0], [0.125, 1.75])


def test_samples_on_a_rectangular_grid_with_registers():
  """Left-neighbour head on a 3 x 5 grid with two registers: every sample whose query has a
  left neighbour puts its weight there, in the plain h x w map and on the square canvas of
  side 2 max(h, w) - 1 at offset (0, -1); cells beyond the grid are outside."""
  from tests.tiny import offset_heads_model
  from vit_jax_analytics import batches
  gh, gw = 3, 5
  params, config = offset_heads_model(grid=(gh, gw), patterns=('left', 'uniform'),
                                      registers=2, classifier='map')
  source = batches.ArraySource(np.zeros((2, 4 * gh, 4 * gw, 3), np.float32))
  s = patterns.extract_samples(params, config, source, per_head=6, batch_size=2,
                               progress=False)
  n = max(gh, gw)
  assert s.plain.shape[1:] == (gh, gw) and s.recentred.shape[1:] == (2 * n - 1, 2 * n - 1)
  r, c = np.divmod(s.index[:, 3], gw)
  left = (s.index[:, 2] == 0) & (c > 0)
  assert left.sum() > 0
  np.testing.assert_allclose(s.recentred[left, n - 1, n - 2].astype(np.float32), 1., atol=2e-3)
  np.testing.assert_allclose(s.plain[left, r[left], c[left] - 1].astype(np.float32), 1.,
                             atol=2e-3)
  inside = s.inside((gh, gw))
  assert inside.sum(axis=(1, 2)).tolist() == [gh * gw] * len(s.index)
  assert not inside[:, :n - 1 - (gh - 1)].any()  # rows beyond the 3-row grid, any query
