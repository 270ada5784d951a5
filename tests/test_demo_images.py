"""The demo's photograph set: crops placed where they should be (on synthetic images whose
regions are known), deterministic bytes, atomic replacement, licence statements quoted
from the packages' own text, and the folder read back by the image loader."""

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vit_jax_analytics import data, demo_images
from vit_jax_analytics.errors import DataError, OptionError

ROOT = Path(__file__).resolve().parents[1]


def _synthetic(path, width, height):
  """An RGB image whose crops are identifiable: the square regions the views should take
  (computed here independently of crop_box) are painted one colour each."""
  a = np.zeros((height, width, 3), np.uint8)
  s = min(width, height)
  t = int(0.6 * s)                               # topleft / bottomright: 0.6 s at the corners
  a[:t, :t] = (255, 0, 0)
  a[height - t:, width - t:] = (0, 0, 255)
  z = s // 2                                     # zoom: the central s/2 square
  top, left = (height - z) // 2, (width - z) // 2
  a[top:top + z, left:left + z] = (0, 255, 0)
  Image.fromarray(a).save(path)
  return a


def _photos(tmp_path, sizes=((100, 60), (60, 100))):
  photos, paths = [], {}
  for i, (w, h) in enumerate(sizes):
    name = f'synth{i}'
    photos.append(demo_images.Photo(name, 'none', f'{name}.png', 'CC0 1.0', 'stated',
                                    'here', 'test'))
    paths[name] = tmp_path / f'{name}.png'
    _synthetic(paths[name], w, h)
  return photos, paths


@pytest.mark.parametrize('width,height', [(100, 60), (60, 100), (80, 80)])
def test_crops_take_the_intended_regions(tmp_path, width, height):
  photos, paths = _photos(tmp_path, [(width, height)])
  out = tmp_path / 'out'
  demo_images.build_demo_images(out, photos, size=16, paths=paths, progress=False)
  rgb = {v: np.asarray(Image.open(out / f'synth0_{v}.png')) for v, _, _ in demo_images.VIEWS}
  assert all(a.shape == (16, 16, 3) and a.dtype == np.uint8 for a in rgb.values())
  # Each crop shows its region's colour away from the edges (the resize blends them): the
  # zoom all green inside; the corner crops their corner's colour at that corner (the
  # central green square overlaps their other corner), and not the opposite corner's.
  assert (rgb['zoom'][3:13, 3:13] == (0, 255, 0)).all()
  assert (rgb['topleft'][:6, :6] == (255, 0, 0)).all()
  assert (rgb['bottomright'][10:, 10:] == (0, 0, 255)).all()
  assert rgb['topleft'][..., 2].max() < 30 and rgb['bottomright'][..., 0].max() < 30
  # The whole image is squashed, not cropped: all three colours are in it.
  full = rgb['full'].reshape(-1, 3)
  for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255)):
    assert (np.abs(full.astype(int) - colour).sum(1) < 30).any(), colour


def test_crop_box_against_hand_computed_boxes():
  assert demo_images.crop_box(640, 427, None, None) == (0, 0, 640, 427)
  # s = round(0.5 * 427) = 214 (213.5 rounds to even); slack (426, 213) halved.
  assert demo_images.crop_box(640, 427, 0.5, 0.5) == (213, 106, 427, 320)
  assert demo_images.crop_box(640, 427, 0.6, 0.) == (0, 0, 256, 256)
  assert demo_images.crop_box(640, 427, 0.6, 1.) == (384, 171, 640, 427)
  with pytest.raises(ValueError):
    demo_images.crop_box(10, 10, 1.5, 0.)


def test_deterministic_bytes_and_records(tmp_path):
  photos, paths = _photos(tmp_path)
  a = demo_images.build_demo_images(tmp_path / 'a', photos, 24, paths=paths, progress=False)
  b = demo_images.build_demo_images(tmp_path / 'b', photos, 24, paths=paths, progress=False)
  assert a == b
  files = sorted(p.name for p in (tmp_path / 'a').iterdir())
  assert files == sorted([r['file'] for r in a] + ['README.md', 'licences.json'])
  for r in a:
    assert (tmp_path / 'a' / r['file']).read_bytes() == (tmp_path / 'b' / r['file']).read_bytes()
  assert json.loads((tmp_path / 'a' / 'licences.json').read_text()) == a
  assert len(a) == 2 * len(demo_images.VIEWS)


def test_views_subset_and_unknown_view(tmp_path):
  photos, paths = _photos(tmp_path)
  views = demo_images.views_named(['zoom', 'full'])
  assert [v[0] for v in views] == ['full', 'zoom']            # VIEWS order
  records = demo_images.build_demo_images(tmp_path / 'o', photos, 8, views, paths=paths,
                                          progress=False)
  assert sorted(r['file'] for r in records) == ['synth0_full.png', 'synth0_zoom.png',
                                                'synth1_full.png', 'synth1_zoom.png']
  with pytest.raises(OptionError, match='views: expected some of full, zoom'):
    demo_images.views_named(['full', 'diagonal'])
  with pytest.raises(OptionError, match='size'):
    demo_images.build_demo_images(tmp_path / 'o', photos, 0, paths=paths)


def test_replaces_atomically_and_keeps_the_old_folder_on_failure(tmp_path):
  photos, paths = _photos(tmp_path)
  out = tmp_path / 'out'
  demo_images.build_demo_images(out, photos, 8, paths=paths, progress=False)
  (out / 'stale.png').write_bytes(b'old')
  before = sorted(p.name for p in out.iterdir())
  broken = dict(paths, synth1=tmp_path / 'not-an-image.png')
  broken['synth1'].write_bytes(b'this is not a PNG')
  with pytest.raises(DataError, match=r'not-an-image\.png: cannot read photograph'):
    demo_images.build_demo_images(out, photos, 8, paths=broken, progress=False)
  assert sorted(p.name for p in out.iterdir()) == before       # untouched
  assert [p.name for p in tmp_path.iterdir() if p.name.startswith('.')] == []  # no temp dirs
  demo_images.build_demo_images(out, photos, 8, paths=paths, progress=False)
  assert not (out / 'stale.png').exists()                      # a rebuild replaces the folder
  assert [p.name for p in tmp_path.iterdir() if p.name.startswith('.')] == []


def test_missing_package_is_one_line_with_the_install_command():
  photo = demo_images.Photo('x', 'no_such_package_for_demo', 'x.png', 'CC0 1.0', '', '', '')
  with pytest.raises(DataError) as e:
    demo_images.find_photographs([photo])
  message = str(e.value)
  assert '\n' not in message and 'no_such_package_for_demo/x.png' in message
  assert demo_images.INSTALL_HINT in message


# --- the real photographs --------------------------------------------------------------------

def _installed():
  try:
    return demo_images.find_photographs()
  except DataError:
    return None


needs_photos = pytest.mark.skipif(_installed() is None, reason='scikit-image / scikit-learn '
                                  'wheels not installed (make install-test installs them)')


def _normalise(text):
  text = re.sub(r'`([^`<]+?)\s*<[^>]+>`_+', r'\1', text)     # reST links: keep their text
  return ' '.join(text.split())


def _skimage_docstrings():
  """{function name: its docstring} in skimage/data/_fetchers.py (read, not imported)."""
  source = demo_images.package_dir('skimage') / 'data' / '_fetchers.py'
  tree = ast.parse(source.read_text(encoding='utf-8'))
  return {f.name: ast.get_docstring(f) or '' for f in tree.body
          if isinstance(f, ast.FunctionDef)}


@needs_photos
def test_every_licence_statement_is_the_packages_own_text():
  raw = _skimage_docstrings()
  docs = {k: _normalise(v) for k, v in raw.items()}
  readme = _normalise((demo_images.package_dir('sklearn') / 'datasets' / 'images' /
                       'README.txt').read_text(encoding='utf-8'))
  for photo in demo_images.PHOTOGRAPHS:
    assert photo.licence in ('CC0 1.0', 'public domain', 'CC BY 2.0'), photo.name
    if photo.package == 'skimage':
      assert _normalise(photo.statement) in docs[photo.name], photo.name
      assert photo.url.rstrip('/') in raw[photo.name], photo.name
    else:
      assert 'Released under a creative commons license' in readme
      assert photo.url in readme and 'creativecommons.org/licenses/by/2.0' in readme
      assert Path(photo.path).name in readme
  # The two left out have no licence in their docstrings.
  assert 'CC0' not in docs['immunohistochemistry'] and 'public domain' not in \
      docs['immunohistochemistry']
  assert 'CC0' not in docs['stereo_motorcycle'] and 'public domain' not in \
      docs['stereo_motorcycle']


@needs_photos
def test_cli_builds_the_real_set_and_the_loader_reads_it(tmp_path):
  out = tmp_path / 'demo_images'
  r = subprocess.run([sys.executable, '-m', 'vit_jax_analytics.cli', 'demo-images',
                      '--output-dir', str(out), '--size', '56', '--views', 'full,zoom',
                      '--no-progress'], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr
  n = len(demo_images.PHOTOGRAPHS)
  assert f'wrote {2 * n} images of {n} photographs' in r.stdout
  image_set = data.image_folder(out)                    # README.md / licences.json ignored
  assert len(image_set) == 2 * n and image_set.class_names in (None, ())
  records = json.loads((out / 'licences.json').read_text(encoding='utf-8'))
  readme = (out / 'README.md').read_text(encoding='utf-8')
  for photo in demo_images.PHOTOGRAPHS:
    assert photo.name in readme and photo.licence in readme
  for rec in records:
    with Image.open(out / rec['file']) as im:
      assert im.size == (56, 56) and im.mode == 'RGB'
    source = demo_images.package_dir(rec['package']) / rec['source_file']
    import hashlib
    assert hashlib.sha256(source.read_bytes()).hexdigest() == rec['source_sha256']


def test_cli_errors_are_one_line(tmp_path):
  for args, expect in ((['--size', '0'], 'error: --size: expected a positive number'),
                       (['--views', 'full,nope'], 'argument --views: expected some of')):
    r = subprocess.run([sys.executable, '-m', 'vit_jax_analytics.cli', 'demo-images',
                        '--output-dir', str(tmp_path / 'o'), *args], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and expect in r.stderr and r.stderr.count('\n') == 1, r.stderr
