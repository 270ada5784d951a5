import json

import numpy as np
import pytest
from PIL import Image

from vit_jax_analytics import data
from vit_jax_analytics.errors import DataError


def gradient(h=20, w=24):
  """[h, w] uint8 with distinct values, so resizing and channel order are visible."""
  y, x = np.mgrid[:h, :w]
  return ((x * 7 + y * 3) % 256).astype(np.uint8)


def test_image_folder_layout_gives_sorted_labels(tmp_path):
  for cls, n in (('cat', 2), ('ant', 3)):
    (tmp_path / cls).mkdir()
    for i in range(n):
      Image.fromarray(gradient()).save(tmp_path / cls / f'{i}.png')
  (tmp_path / 'ant' / 'notes.txt').write_text('not an image')
  s = data.image_folder(tmp_path)
  assert s.class_names == ('ant', 'cat')
  assert s.relative_names() == ['ant/0.png', 'ant/1.png', 'ant/2.png', 'cat/0.png', 'cat/1.png']
  assert s.labels.tolist() == [0, 0, 0, 1, 1] and s.labelled


@pytest.mark.parametrize('fmt', ['csv', 'csv_header', 'json'])
def test_flat_folder_with_labels_file(tmp_path, fmt):
  for name in ('b.png', 'a.jpg', 'c.bmp'):
    Image.fromarray(gradient()).convert('RGB').save(tmp_path / name)
  labels = {'a.jpg': 4, 'b.png': 0}
  if fmt == 'json':
    f = tmp_path / 'labels.json'
    f.write_text(json.dumps(labels))
  else:
    f = tmp_path / 'labels.csv'
    rows = [f'{k},{v}' for k, v in labels.items()]
    f.write_text('\n'.join((['filename,label'] if fmt == 'csv_header' else []) + rows) + '\n')
  s = data.image_folder(tmp_path, f)
  assert s.relative_names() == ['a.jpg', 'b.png', 'c.bmp']
  assert s.labels.tolist() == [4, 0, data.UNLABELLED] and not s.labelled


def test_labels_file_naming_unknown_image(tmp_path):
  Image.fromarray(gradient()).save(tmp_path / 'a.png')
  f = tmp_path / 'labels.csv'
  f.write_text('a.png,1\nghost.png,2\n')
  with pytest.raises(DataError, match=r"labels.csv: line 2 names 'ghost.png'"):
    data.image_folder(tmp_path, f)
  f.write_text('a.png,cat\n')
  with pytest.raises(DataError, match=r"labels.csv: line 1: label 'cat' is not a class index"):
    data.image_folder(tmp_path, f)


def test_empty_and_imageless_folders(tmp_path):
  with pytest.raises(DataError, match='is empty'):
    data.image_folder(tmp_path)
  (tmp_path / 'readme.txt').write_text('hi')
  with pytest.raises(DataError, match='holds no image files'):
    data.image_folder(tmp_path)
  with pytest.raises(DataError, match='not a folder'):
    data.image_folder(tmp_path / 'missing')


def reference_preprocess(gray01, size):
  """Independent path: an 8-bit grayscale image, Pillow's own bilinear resize of the
  float image, replicated to RGB and scaled to [-1, 1]."""
  img = Image.fromarray(gray01.astype(np.float32), 'F').resize((size, size), Image.BILINEAR)
  a = np.asarray(img)
  return np.repeat(((a - 0.5) / 0.5)[..., None], 3, -1)


@pytest.mark.parametrize('mode', ['L', 'RGB', 'RGBA', 'P', 'CMYK', 'I;16', 'LA', '1'])
def test_pillow_modes_decode_to_the_same_picture(tmp_path, mode):
  g = gradient()
  if mode == '1':
    g = np.where(g > 128, 255, 0).astype(np.uint8)
  base = Image.fromarray(g)
  if mode == 'I;16':
    img = Image.fromarray(g.astype(np.uint16) * 257)  # 16-bit with the same picture
    assert img.mode.startswith('I')
  elif mode == 'CMYK':
    img = base.convert('RGB').convert('CMYK')
  else:
    img = base.convert(mode)
  path = tmp_path / ('x.tiff' if mode in ('CMYK', 'I;16') else 'x.png')
  img.save(path)
  out = data.load_image(path, 16)
  assert out.shape == (16, 16, 3) and out.dtype == np.float32
  np.testing.assert_allclose(out, reference_preprocess(g / 255., 16), atol=2e-2)
  assert -1. <= out.min() and out.max() <= 1.


def test_mean_std_are_applied(tmp_path):
  rgb = np.zeros((8, 8, 3), np.uint8)
  rgb[..., 0], rgb[..., 1], rgb[..., 2] = 255, 128, 0
  Image.fromarray(rgb).save(tmp_path / 'x.png')
  out = data.load_image(tmp_path / 'x.png', 8, mean=data.IMAGENET_MEAN_STD[0],
                        std=data.IMAGENET_MEAN_STD[1])
  expected = (np.array([1., 128 / 255., 0.]) - np.array(data.IMAGENET_MEAN_STD[0])) / np.array(
      data.IMAGENET_MEAN_STD[1])
  np.testing.assert_allclose(out[0, 0], expected, rtol=1e-5)


def test_batches_are_deterministic_padded_and_skip_corrupt_files(tmp_path, capsys):
  for i in range(7):
    Image.fromarray(gradient() + i).save(tmp_path / f'{i}.png')
  (tmp_path / '3.png').write_bytes(b'\x89PNG\r\n\x1a\n broken')
  s = data.image_folder(tmp_path)
  batches = list(data.BatchStream(s, 8, 3, progress=False))
  assert [b.images.shape for b in batches] == [(3, 8, 8, 3)] * 3
  assert np.concatenate([b.index for b in batches]).tolist() == [0, 1, 2, 3, 4, 5, 6, -1, -1]
  assert np.concatenate([b.valid for b in batches]).tolist() == [1, 1, 1, 0, 1, 1, 1, 0, 0]
  np.testing.assert_allclose(batches[1].images[1], data.load_image(tmp_path / '4.png', 8))
  err = capsys.readouterr().err
  assert '3.png' in err and 'skipped 1 unreadable image(s) of 7' in err
  # Resuming at batch 1 yields exactly the later batches.
  again = list(data.BatchStream(s, 8, 3, first_batch=1, progress=False))
  assert len(again) == 2
  np.testing.assert_array_equal(again[0].images, batches[1].images)


def test_no_readable_images_is_an_error(tmp_path):
  for i in range(2):
    (tmp_path / f'{i}.jpg').write_bytes(b'garbage')
  stream = data.BatchStream(data.image_folder(tmp_path), 8, 4, progress=False)
  with pytest.raises(DataError, match='no readable images'):
    list(stream)
