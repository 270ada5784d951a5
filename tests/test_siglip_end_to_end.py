"""`vit-analytics` end to end on a SigLIP-B/16-shaped two-tower big_vision `.npz` (width
768, 12 heads, MLP 3072, 16-pixel patches, MAP pooling, a 768-wide projection head; only
2 layers and a small rectangular input, to stay fast), and the plugin serving the result."""

import json

import numpy as np
import pytest
from PIL import Image

from tests.npz_formats import as_bfloat16, random_big_vision_vit_arrays, two_tower_big_vision
from vit_jax_analytics import cli
from vit_jax_analytics.logdir import reader


@pytest.fixture(scope='module')
def siglip_run(tmp_path_factory):
  root = tmp_path_factory.mktemp('siglip')
  arrays = random_big_vision_vit_arrays(0, width=768, heads=12, mlp=3072, patch=16, depth=2,
                                        grid=(2, 3), classes=768, scan=True, scale=0.05)
  np.savez(root / 'siglip_b16.npz', **two_tower_big_vision(as_bfloat16(arrays)))
  (root / 'images').mkdir()
  rng = np.random.default_rng(0)
  for i in range(3):
    Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(
        root / 'images' / f'{i}.png')
  return root


def run(capsys, *argv):
  code = cli.main([str(a) for a in argv])
  out = capsys.readouterr()
  return code, out.out, out.err


def test_info_names_family_pooling_layout_and_grid(siglip_run, capsys):
  code, out, err = run(capsys, 'info', '--checkpoint', siglip_run / 'siglip_b16.npz',
                       '--image-size', '32x48')
  assert code == 0, err
  info = json.loads(out)
  assert info['family'].startswith('SigLIP-style two-tower model') and 'MAP' in info['family']
  assert 'scanned' in info['family']
  assert info['pooling'] == 'map' and info['output'] == 'embedding'
  assert info['token_layout'] == {'cls': [], 'registers': [], 'patches': [0, 6], 'grid': [2, 3]}
  assert info['grid'] == '2 x 3 patches of 16 px'
  assert info['config']['hidden_size'] == 768 and info['config']['num_heads'] == 12
  assert info['parameters'] > 20_000_000


def test_rectangular_checkpoint_without_its_size_is_a_clear_error(siglip_run, capsys):
  code, _, err = run(capsys, 'info', '--checkpoint', siglip_run / 'siglip_b16.npz')
  assert code != 0 and 'HxW' in err and 'Traceback' not in err


@pytest.fixture(scope='module')
def siglip_logdir(siglip_run):
  logdir = siglip_run / 'logs'
  code = cli.main([str(a) for a in (
      'analyze', '--checkpoint', f"{siglip_run / 'siglip_b16.npz'}:img",
      '--image-size', '32x48', '--images', siglip_run / 'images', '--logdir', logdir,
      '--run', 'siglip', '--batch-size', '3', '--radii', '1', '--curve-points', '3',
      '--random-orders', '1', '--taylor-probes', '2', '--map-images', '2', '--per-head', '2',
      '--grid', '3', '--clusters', '2', '--ae-epochs', '2', '--no-progress')])
  assert code == 0
  return logdir


def test_analyze_end_to_end_and_the_plugin_serves_it(siglip_logdir):
  logdir = siglip_logdir
  tags = reader.read_run(logdir / 'siglip')
  meta = tags['importance/meta']
  assert meta['objective']['kind'] == 'embedding'
  assert 'cosine distortion' in meta['definitions']['ablation_loss']
  assert meta['config']['classifier'] == 'map' and meta['config']['image_size'] == [32, 48]
  assert tags['importance/taylor'].shape == (2, 12)
  assert tags['importance/pool_taylor'].shape == (12,)
  assert np.isfinite(tags['importance/pool_ablation_loss']).all()
  assert tags['importance/pool_ablation_kl'].max() > 0
  assert tags['strength/offset_mean'].shape == (2, 12, 3, 5)
  assert tags['strength/pool_attention'].shape == (12, 2, 3)
  np.testing.assert_allclose(tags['strength/pool_attention'].sum((1, 2)), 1., rtol=1e-3)
  assert tags['strength/map_pool_attention/0'].shape == (12, 6)
  np.testing.assert_allclose(tags['strength/map_pool_rollout/0'].sum(), 1., rtol=1e-2)
  assert tags['patterns/sample_plain'].shape[1:] == (2, 3)
  assert tags['patterns/sample_recentred'].shape[1:] == (5, 5)

  from tests.tb_plugin.client import get, make_client
  client, _ = make_client(logdir)
  code, body = get(client, '/runs')
  assert code == 200 and [r['run'] if isinstance(r, dict) else r for r in body['runs']]
  code, body = get(client, '/meta', run='siglip', analysis='importance')
  assert code == 200 and body['objective']['kind'] == 'embedding' and body['pool_heads']
  for tag in ('importance/pool_taylor', 'strength/pool_attention',
              'strength/map_pool_attention/1', 'strength/offset_mean'):
    code, body = get(client, '/array', run='siglip', tag=tag)
    assert code == 200, (tag, body)
  code, body = get(client, '/attention', run='siglip', image=0, query=4)
  assert code == 200 and 'attention' in body and 'rollout' in body


def test_the_views_draw_the_pooling_row_and_the_rectangular_grid(siglip_logdir):
  """In a real browser: the importance grid has the MAP head's pooling row and says what
  importance was measured against; the offset map is 2h-1 x 2w-1 (3 x 5 for 2 x 3
  patches); the MAP probe's attention replaces the class-token panel at the grid's aspect."""
  from tb_plugin.browser import chromium, tensorboard
  from tests.test_plugin_views import Page
  with tensorboard(siglip_logdir, 'false') as url, chromium() as driver:
    p = Page(driver, url, run='siglip')
    assert len(p.all('#importance-grid rect.pool-cell')) == 12
    assert len(p.all('#importance-grid rect.imp-cell:not(.pool-cell)')) == 2 * 12
    assert "Measured against the MAP head's output" in p.one('#importance-summary').text
    assert 'cosine distortion' in p.one('#metric-select').text
    # Curves on the embedding objective: no top-1 (undefined without a classifier).
    assert 'cosine distortion' in p.one('#pruning-curves').text
    assert 'top-1' not in p.one('#pruning-curves').find_element(
        'xpath', '..').find_element('xpath', '..').text
    cells = p.all('#offset-focus rect.offset-cell')
    assert len(cells) == 3 * 5
    xs = {c.get_attribute('x') for c in cells}
    ys = {c.get_attribute('y') for c in cells}
    assert (len(xs), len(ys)) == (5, 3)   # dx spans the 3 columns, dy the 2 rows
    width, height = p.js("const c = document.getElementById('pool-attention'); "
                         "return [c.width, c.height]")
    assert width * 2 == height * 3        # 2 x 3 patches
    p.shot('siglip-views.png')
