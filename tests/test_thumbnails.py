"""The image overview's thumbnails (issue 21, item 12): stored with importance within a
stated budget (pipeline.Inputs.thumbnail_budget_mib, --thumbnail-budget-mib), as one atlas
PNG; checked against the image files themselves, resized by Pillow."""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vit_jax_analytics import pipeline
from vit_jax_analytics.logdir import reader, schema
from vit_jax_analytics.options import OptionError


def test_every_image_of_a_small_run_has_its_thumbnail_in_the_atlas(analysis_logdir):
  tags = reader.read_run(analysis_logdir / 'tiny')
  meta = tags['importance/meta']
  t = meta['thumbnails']
  names = meta['image_names']
  assert t['index'] == list(range(len(names))) and t['px'] == pipeline.THUMBNAIL_PX
  atlas = np.asarray(Image.open(io.BytesIO(tags['importance/thumbnails'])).convert('RGB'))
  folder = Path(meta['image_folder'])
  px, columns = t['px'], t['columns']
  for k, i in enumerate(t['index']):
    tile = atlas[k // columns * px:(k // columns + 1) * px, k % columns * px:(k % columns + 1) * px]
    path = next(folder.rglob(names[i]))
    want = np.asarray(Image.open(path).convert('RGB').resize((px, px), Image.BILINEAR), np.float32)
    assert np.abs(tile.astype(np.float32) - want).mean() < 12, names[i]


def test_the_budget_bounds_the_thumbnails_spread_over_the_set():
  images = np.arange(7 * 4 * 4 * 3, dtype=np.uint8).reshape(7, 4, 4, 3)
  atlas, columns = schema.thumbnail_atlas(images)
  assert columns == 3 and atlas.shape == (3 * 4, 3 * 4, 3)
  np.testing.assert_array_equal(atlas[4:8, 0:4], images[3])     # row 1, column 0
  assert (atlas[8:12, 4:12] == 255).all()                       # unused slots stay white
  with pytest.raises(OptionError, match='thumbnail_budget_mib'):
    pipeline.Inputs(checkpoint=Path('x'), images=Path('y'), thumbnail_budget_mib=-1)


def test_a_small_budget_stores_evenly_spread_images():
  budget = 20 * pipeline.THUMBNAIL_BYTES / 2 ** 20   # room for 20
  index = pipeline.thumbnail_index(1000, budget)
  assert len(index) == 20 and index[0] == 0 and index[-1] == 999
  assert np.all(np.diff(index) >= 52) and np.all(np.diff(index) <= 53)
  assert len(pipeline.thumbnail_index(6, 2.0)) == 6          # a small run: every image
  assert len(pipeline.thumbnail_index(6, 0)) == 0
