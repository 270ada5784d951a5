import json
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vit_jax_analytics import data, decode
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
  batches = list(data.DecodedBatches(s, 8, 3, progress=False))
  assert [b.images.shape for b in batches] == [(3, 8, 8, 3)] * 3
  assert np.concatenate([b.index for b in batches]).tolist() == [0, 1, 2, 3, 4, 5, 6, -1, -1]
  assert np.concatenate([b.valid for b in batches]).tolist() == [1, 1, 1, 0, 1, 1, 1, 0, 0]
  np.testing.assert_allclose(batches[1].images[1], data.load_image(tmp_path / '4.png', 8))
  err = capsys.readouterr().err
  assert '3.png' in err and 'skipped 1 unreadable image(s) of 7' in err
  # Resuming at batch 1 yields exactly the later batches.
  again = list(data.DecodedBatches(s, 8, 3, first_batch=1, progress=False))
  assert len(again) == 2
  np.testing.assert_array_equal(again[0].images, batches[1].images)


def test_no_readable_images_is_an_error(tmp_path):
  for i in range(2):
    (tmp_path / f'{i}.jpg').write_bytes(b'garbage')
  stream = data.DecodedBatches(data.image_folder(tmp_path), 8, 4, progress=False)
  with pytest.raises(DataError, match='no readable images'):
    list(stream)


# --- Class folders, labels files and big images -------------------------------------------

ROOT = Path(__file__).resolve().parents[1]


def save(path, array=None):
  """Writes `array` (default: gradient()) as an image file, creating its folders."""
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(gradient() if array is None else array).save(path)


def test_class_images_at_any_depth_keep_every_class_index(tmp_path, capsys):
  """Class 0's images one level down (0/sub/) used to drop class 0 and shift the rest."""
  for label in range(3):
    for i in range(2):
      save(tmp_path / str(label) / ('sub' if label == 0 else '') / f'{i}.png')
  save(tmp_path / '2' / 'x' / 'y' / 'deep.png')
  s = data.image_folder(tmp_path)
  assert s.class_names == ('0', '1', '2')
  assert s.relative_names() == ['0/sub/0.png', '0/sub/1.png', '1/0.png', '1/1.png', '2/0.png',
                                '2/1.png', '2/x/y/deep.png']
  assert s.labels.tolist() == [0, 0, 1, 1, 2, 2, 2]
  assert capsys.readouterr().err == ''


def test_class_folder_without_images_keeps_its_index(tmp_path, capsys):
  save(tmp_path / 'cat' / 'a.png')
  save(tmp_path / 'emu' / 'b.png')
  (tmp_path / 'dog' / 'notes').mkdir(parents=True)
  (tmp_path / 'dog' / 'notes' / 'x.txt').write_text('not an image')
  s = data.image_folder(tmp_path)
  assert s.class_names == ('cat', 'dog', 'emu') and s.labels.tolist() == [0, 2]
  err = capsys.readouterr().err
  assert err.startswith('warning: ') and 'class folder(s) dog hold no images' in err
  assert err.count('\n') == 1


def test_images_beside_class_folders_need_a_labels_file(tmp_path):
  save(tmp_path / 'cat' / 'a.png')
  save(tmp_path / 'cat' / 'sub' / 'b.png')
  save(tmp_path / 'stray.png')
  with pytest.raises(DataError, match=r'1 image\(s\) directly in the folder beside its class '
                     r'sub-folders \(stray.png\) have no class'):
    data.image_folder(tmp_path)
  # With a labels file every image at any depth is named by its path below the root.
  f = tmp_path / 'labels.csv'
  f.write_text('stray.png,1\n./cat/sub/b.png,2\ncat//a.png,0\n')
  s = data.image_folder(tmp_path, f)
  assert s.relative_names() == ['cat/a.png', 'cat/sub/b.png', 'stray.png']
  assert s.labels.tolist() == [0, 2, 1] and s.class_names is None and s.labels_file == f


def test_hidden_files_and_folders_are_ignored(tmp_path):
  save(tmp_path / 'cat' / 'a.png')
  for hidden in ('.git/x.png', '._stray.png', 'cat/._a.png', 'cat/.thumbs/b.png'):
    save(tmp_path / hidden)
  s = data.image_folder(tmp_path)
  assert s.class_names == ('cat',) and s.relative_names() == ['cat/a.png']


def test_linked_folders_are_followed_once(tmp_path):
  root = tmp_path / 'images'
  save(root / 'cat' / 'a.png')
  save(tmp_path / 'elsewhere' / 'b.png')
  (root / 'cat' / 'more').symlink_to(tmp_path / 'elsewhere')
  (root / 'cat' / 'loop').symlink_to(root / 'cat')
  s = data.image_folder(root)
  assert s.relative_names() == ['cat/a.png', 'cat/more/b.png']


def test_check_labels_names_the_first_label_outside_the_model(tmp_path):
  for name in ('a.png', 'b.png', 'c.png', 'd.png'):
    save(tmp_path / name)
  f = tmp_path / 'labels.csv'
  f.write_text('a.png,3\nb.png,42\nc.png,10\n')
  s = data.image_folder(tmp_path, f)
  s.check_labels(43)
  with pytest.raises(DataError, match=r'b.png: label 42 in .*labels.csv is not a class of the '
                     r'model \(expected 0 to 9; 2 image\(s\) have such labels\)'):
    s.check_labels(10)
  data.image_folder(tmp_path).check_labels(10)  # unlabelled: nothing to check


def test_check_labels_wants_one_class_folder_per_model_class(tmp_path):
  for name in ('ant', 'bee', 'cat'):
    save(tmp_path / name / '0.png')
  s = data.image_folder(tmp_path)
  s.check_labels(3)
  for n in (2, 10):
    with pytest.raises(DataError, match=rf'3 class folders \(ant, bee, cat\) but the model has '
                       rf'{n} classes'):
      s.check_labels(n)


@pytest.mark.parametrize('fmt', ['csv', 'json'])
def test_conflicting_duplicate_labels_are_an_error(tmp_path, fmt):
  for name in ('a.png', 'b.png'):
    save(tmp_path / name)
  f = tmp_path / f'labels.{fmt}'
  rows = [('a.png', 3), ('b.png', 1), ('a.png', 3), ('a.png', 7)]
  if fmt == 'csv':
    write = lambda rows: f.write_text(''.join(f'{k},{v}\n' for k, v in rows))
    where = r'3 \(line 1\), then 7 \(line 4\)'
  else:
    write = lambda rows: f.write_text('{' + ', '.join(f'"{k}": {v}' for k, v in rows) + '}')
    where = r"3 \(key 'a.png'\), then 7 \(key 'a.png'\)"
  write(rows)
  with pytest.raises(DataError, match=rf"labels.{fmt}: conflicting labels for 'a.png': {where}"):
    data.image_folder(tmp_path, f)
  write(rows[:3])  # the same label twice is fine
  assert data.image_folder(tmp_path, f).labels.tolist() == [3, 1]


@pytest.mark.parametrize('fmt,value', [
    ('json', '100000000000000000000'), ('json', '2147483648'), ('json', '3.0'), ('json', 'true'),
    ('json', '-1'), ('json', 'null'), ('json', '1e400'), ('json', '"03"'),
    ('csv', '100000000000000000000'), ('csv', '2147483648'), ('csv', '3.0'), ('csv', '-1'),
    ('csv', '+3'), ('csv', ''), ('csv', '٣')])
def test_labels_that_are_not_class_indices_name_their_row(tmp_path, fmt, value):
  save(tmp_path / 'a.png')
  f = tmp_path / f'labels.{fmt}'
  f.write_text(f'{{"a.png": {value}}}' if fmt == 'json' else f'a.png,{value}\n')
  where = "key 'a.png'" if fmt == 'json' else 'line 1'
  with pytest.raises(DataError, match=rf'labels.{fmt}: {where}: label .* is not a class index '
                     r'\(an integer from 0 to 2147483647\)'):
    data.image_folder(tmp_path, f)
  f.write_text('{"a.png": 2147483647}' if fmt == 'json' else 'a.png,2147483647\n')
  assert data.image_folder(tmp_path, f).labels.tolist() == [2147483647]


@pytest.mark.parametrize('encoding', ['utf-8', 'utf-8-sig', 'utf-16'])
def test_labels_file_encodings(tmp_path, encoding):
  save(tmp_path / 'é.png')
  f = tmp_path / 'labels.csv'
  f.write_bytes('é.png,2\n'.encode(encoding))  # no header: a BOM would join the name
  assert data.image_folder(tmp_path, f).labels.tolist() == [2]
  f.write_bytes('é.png,2\n'.encode('latin-1'))
  with pytest.raises(DataError, match=r'labels.csv: not UTF-8 text \(byte 0xe9 at offset 0\)'):
    data.image_folder(tmp_path, f)


@pytest.mark.parametrize('name,text,message', [
    ('labels.csv', 'cat/a.png,1\n,3\n', r'labels.csv: line 2: empty filename'),
    ('labels.json', '{"": 3}', r"labels.json: key '': empty filename"),
    ('labels.csv', 'cat,1\n', r"labels.csv: line 1 names 'cat', which is a folder; a labels "
                              r"file names image files"),
    ('labels.csv', 'notes.txt,1\n', r"line 1 names 'notes.txt', which is not an image file"),
    ('labels.csv', 'x' * 200_000 + ',1\n', r'labels.csv: line 1: not CSV \(field larger'),
    ('labels.csv', 'cat/a.png,1,2\n', r'line 1: expected "filename,label"'),
    ('labels.json', '[["cat/a.png", 1]]', r'expected a JSON object'),
    ('labels.json', '{"cat/a.png": 1', r'labels.json: not valid JSON'),
    ('labels.json', '{"cat/a.png": 1' + '0' * 5000 + '}', r'labels.json: not valid JSON'),
])
def test_labels_file_mistakes_are_one_line_errors(tmp_path, name, text, message):
  save(tmp_path / 'cat' / 'a.png')
  (tmp_path / 'notes.txt').write_text('not an image')
  f = tmp_path / name
  f.write_text(text)
  with pytest.raises(DataError, match=message) as e:
    data.image_folder(tmp_path, f)
  assert '\n' not in str(e.value)


def test_labels_file_that_is_a_folder(tmp_path):
  save(tmp_path / 'cat' / 'a.png')
  with pytest.raises(DataError, match=r'cat: is a folder, expected a labels file'):
    data.image_folder(tmp_path, tmp_path / 'cat')


def old_load_image(path, size):
  """load_image before big images were reduced first (copied from that version): the whole
  image to float in [0, 1], then Pillow's bilinear resize of each channel."""
  with Image.open(path) as img:
    img.load()
    mode = img.mode
    if mode.startswith('I;16') or mode == 'I':
      a = np.asarray(img, np.float32) / 65535.
    elif mode == 'F':
      a = np.asarray(img, np.float32)
    elif mode in ('1', 'L', 'LA', 'La'):
      a = np.asarray(img.convert('L'), np.float32) / 255.
    else:
      a = np.asarray(img.convert('RGB'), np.float32) / 255.
  if a.ndim == 2:
    a = np.repeat(a[..., None], 3, axis=-1)
  a = np.clip(a, 0., 1.)
  if a.shape[:2] != (size, size):
    a = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(a[..., c]), 'F')
                             .resize((size, size), Image.BILINEAR))
                  for c in range(3)], axis=-1)
  mean = std = np.asarray(data.VIT_JAX_MEAN_STD[0], np.float32)
  return ((a - mean) / std).astype(np.float32)


def picture(h, w, mode='RGB', seed=0):
  """An image of waves, some near the Nyquist frequency of a 16-pixel output, plus noise."""
  y, x = np.mgrid[:h, :w] / max(h, w)
  waves = np.stack([np.sin(9 * x + 3 * y), np.cos(28 * x * y), np.sin(25 * (x - y) ** 2)], -1)
  noise = np.random.default_rng(seed).normal(0, .1, waves.shape)
  a = (np.clip(waves * .4 + .5 + noise, 0, 1) * 255).astype(np.uint8)
  if mode == 'I;16':
    return Image.fromarray(a[..., 0].astype(np.uint16) * 257)
  if mode == 'F':  # partly outside [0, 1], which loading clips
    return Image.fromarray(a[..., 0] / np.float32(200) - np.float32(.1))
  img = Image.fromarray(a).convert(mode)
  if mode == 'RGBA':  # alpha is dropped, not averaged in
    img.putalpha(Image.fromarray(a[..., 2]))
  return img


@pytest.mark.parametrize('mode,fmt', [('L', 'png'), ('RGB', 'jpg'), ('RGBA', 'png'),
                                      ('P', 'gif'), ('I;16', 'png'), ('CMYK', 'jpg'),
                                      ('1', 'bmp'), ('F', 'tiff')])
def test_images_below_the_reducing_size_decode_exactly_as_before(tmp_path, mode, fmt):
  size = 16  # images are reduced first only when both sides are >= 2 * 3 * 16 = 96
  for h, w in ((9, 12), (16, 16), (40, 23), (95, 95), (95, 400), (600, 90)):
    path = tmp_path / f'{h}x{w}.{fmt}'
    picture(h, w, mode).save(path)
    np.testing.assert_array_equal(data.load_image(path, size), old_load_image(path, size),
                                  err_msg=path.name)


@pytest.mark.parametrize('mode,fmt', [('RGB', 'png'), ('RGB', 'jpg'), ('RGBA', 'png'),
                                      ('I;16', 'png'), ('L', 'jpg'), ('P', 'png')])
def test_big_images_are_reduced_first_and_stay_close_to_a_full_resize(tmp_path, mode, fmt):
  """700x650 shrinks by (13, 14) to 50x47 (or decodes at 1/8 scale as a JPEG) before the
  resize to 16; 520x2100 by (43, 10), which divides neither side."""
  for h, w in ((700, 650), (520, 2100)):
    path = tmp_path / f'{h}x{w}.{fmt}'
    picture(h, w, mode).save(path)
    diff = np.abs(data.load_image(path, 16) - old_load_image(path, 16))
    assert diff.max() < .06 and diff.mean() < .01, (path.name, diff.max(), diff.mean())


def test_pixel_limits_skip_an_image_with_a_one_line_warning(tmp_path, monkeypatch, capsys):
  save(tmp_path / 'a.png')  # 20x24 = 480 pixels
  save(tmp_path / 'b.png', gradient(40, 40))
  monkeypatch.setattr(decode, 'MAX_IMAGE_PIXELS', 1000)
  with pytest.raises(DataError, match=r'b.png: image of 40x40 pixels is too big to decode '
                     r'\(the limit is 1000 pixels\)'):
    data.load_image(tmp_path / 'b.png', 8)
  batch, = data.DecodedBatches(data.image_folder(tmp_path), 8, 2, progress=False)
  assert batch.valid.tolist() == [True, False]
  err = capsys.readouterr().err.splitlines()
  assert len(err) == 2 and err[0].startswith('warning: skipping') and 'b.png' in err[0]
  # Pillow's own limit applies too: it warns over Image.MAX_IMAGE_PIXELS (silenced: such
  # images load in bounded memory) and refuses twice that.
  monkeypatch.setattr(decode, 'MAX_IMAGE_PIXELS', 2 ** 28)
  monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 400)
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    data.load_image(tmp_path / 'a.png', 8)
  with pytest.raises(DataError, match=r'b.png: image too big to decode \(Image size \(1600 '
                     r'pixels\) exceeds limit of 800 pixels'):
    data.load_image(tmp_path / 'b.png', 8)


def write_big_png(path, w, h, rows=256):
  """An RGB PNG written a block of rows at a time, never whole in memory: red ramps along
  x, green along y, blue is a 1-pixel checkerboard."""
  def chunk(kind, body):
    return struct.pack('>I', len(body)) + kind + body + struct.pack('>I', zlib.crc32(kind + body))
  x, compress = np.arange(w), zlib.compressobj(1)
  with open(path, 'wb') as f:
    f.write(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, 8, 2, 0, 0, 0)))
    for y0 in range(0, h, rows):
      y = np.arange(y0, min(h, y0 + rows))[:, None]
      block = np.zeros((len(y), 1 + 3 * w), np.uint8)  # each row: filter type 0, then RGB
      block[:, 1::3] = x * 255 // (w - 1)
      block[:, 2::3] = y * 255 // (h - 1)
      block[:, 3::3] = (x + y) % 2 * 255
      f.write(chunk(b'IDAT', compress.compress(block.tobytes())))
    f.write(chunk(b'IDAT', compress.flush()) + chunk(b'IEND', b''))


LOAD_AND_MEASURE = r'''
import json, resource, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from vit_jax_analytics import data, decode
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = data.load_image(sys.argv[2], 224)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
np.save(sys.argv[3], out)
print(json.dumps({'growth_mib': (after - before) / 1024}))
'''


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='ru_maxrss is in KiB on Linux')
def test_huge_png_loads_in_bounded_memory(tmp_path):
  """12000x12000 pixels: converting all of it to float took 3.9 GB. Now the peak is the
  576 MB Pillow holds for the decoded pixels (4 bytes each) plus a few strips."""
  n, size = 12000, 224
  write_big_png(tmp_path / 'big.png', n, n)
  run = subprocess.run([sys.executable, '-c', LOAD_AND_MEASURE, str(ROOT),
                        str(tmp_path / 'big.png'), str(tmp_path / 'out.npy')],
                       capture_output=True, text=True)
  assert run.returncode == 0 and 'DecompressionBomb' not in run.stderr, run.stderr
  growth = json.loads(run.stdout)['growth_mib']
  assert growth < 700, growth
  # Red and green vary along one axis: their full-size bilinear resize is that of their 1-D
  # profile. The checkerboard averages to 0.5 (it would alias without antialiasing).
  profile = (np.arange(n) * 255 // (n - 1) / 255.).astype(np.float32)
  ramp = np.asarray(Image.fromarray(profile[None], 'F').resize((size, 1), Image.BILINEAR))[0]
  expected = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], np.float32(.5)), -1)
  np.testing.assert_allclose(np.load(tmp_path / 'out.npy'), (expected - .5) / .5, atol=1e-3)


def test_long_strips_are_reduced_along_their_long_side(tmp_path, monkeypatch):
  """Over _REDUCE_ANYWAY_PIXELS (2**24) a strip with one short side is reduced along the
  long one, not converted whole to float: here 40x3000 by (62, 1) for a 16-pixel output."""
  monkeypatch.setattr(decode, '_REDUCE_ANYWAY_PIXELS', 1000)
  assert decode._reduce_factors((3000, 40), 16) == (62, 1)
  assert decode._reduce_factors((90, 40), 16) == (1, 1)  # too short to reduce at all
  path = tmp_path / 'strip.png'
  picture(40, 3000).save(path)
  diff = np.abs(data.load_image(path, 16) - old_load_image(path, 16))
  assert diff.max() < .06 and diff.mean() < .01, (diff.max(), diff.mean())
