"""Fixtures shared by tests/ and the tests beside tb_plugin/, and the markers of the slow
kinds of test that `make test-fast` leaves out."""

import contextlib
import fcntl
import inspect
import os
from pathlib import Path

import pytest

# The kinds of test that `make test-fast` leaves out (`-m 'not slow_kind'`), by module; tests
# that start eight-device JAX subprocesses are found by what they call.
SLOW_KINDS = {
    'browser': ('test_plugin_browser', 'test_plugin_views', 'test_plugin_views2',
                'test_training_browser', 'test_demo_tour', 'test_siglip_end_to_end'),
    'server': ('test_plugin_memory_bomb',),
    'multiprocess': ('test_multiprocess',),
    'crosslib': ('test_crosscheck_hf', 'test_crosscheck_siglip', 'test_families_hf',
                 'test_families_onnx', 'test_families_timm', 'test_crosscheck_siglip2',
                 'test_siglip2_naflex_end_to_end'),
    'demo': ('test_demo_tour',),
}


def pytest_configure(config):
  for kind, why in (('browser', 'drives the plugin in headless Chromium'),
                    ('server', 'serves a logdir with a real tensorboard'),
                    ('multiprocess', 'starts other JAX processes (2 processes, 8 devices)'),
                    ('crosslib', 'checks against PyTorch / transformers / timm / onnxruntime'),
                    ('demo', "runs or reads the photo demo's analysis"),
                    ('slow_kind', 'any of the above: left out by `make test-fast`')):
    config.addinivalue_line('markers', f'{kind}: {why}')


def pytest_collection_modifyitems(items):
  for item in items:
    module = item.module.__name__.rsplit('.', 1)[-1] if item.module else ''
    kinds = {kind for kind, modules in SLOW_KINDS.items() if module in modules}
    function = getattr(item, 'function', None)
    if function is not None and 'run_on_eight_cpu_devices' in inspect.getsource(function):
      kinds.add('multiprocess')
    for kind in sorted(kinds):
      item.add_marker(kind)
    if kinds:
      item.add_marker('slow_kind')


def shared_directory(tmp_path_factory, name: str) -> Path:
  """A directory of this test run that every pytest-xdist worker sees (the workers' base
  temporary directories are siblings), for what one worker makes and the others reuse."""
  base = tmp_path_factory.getbasetemp()
  if os.environ.get('PYTEST_XDIST_WORKER'):
    base = base.parent
  path = base / name
  path.mkdir(exist_ok=True)
  return path


@contextlib.contextmanager
def made_once(directory: Path):
  """Yields True to the one worker that must make `directory`'s contents, False to the
  others, which wait until it is done (an exclusive lock; a `done` marker)."""
  with open(directory / '.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      done = directory / '.done'
      yield not done.exists()
      done.touch()
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(autouse=True, scope='session')
def _compile_cache_in_a_temporary_directory(tmp_path_factory):
  """The CLI keeps compiled programs in $XDG_CACHE_HOME: not the user's, in tests. One
  directory for the whole run, shared by the workers and the CLI subprocesses, and JAX's
  persistent cache on in this process too: a program that one test compiled, another test
  (or worker) with the same shapes loads instead of compiling again. VIT_TEST_CACHE_DIR keeps
  that cache between runs (the edit-test loop: only what changed compiles again)."""
  from vit_jax_analytics import cost
  kept = os.environ.get('VIT_TEST_CACHE_DIR')   # `make test-fast`: kept between runs
  os.environ['XDG_CACHE_HOME'] = kept or str(shared_directory(tmp_path_factory, 'xdg_cache'))
  cost.enable_compile_cache(cost.default_cache_dir())


@pytest.fixture(scope='session')
def analysis_logdir(tmp_path_factory):
  """A logdir written by the real analysis (importance, strength, patterns) of a tiny
  random ViT on 6 images, in run 'tiny'; plus a second run with importance only. Made once
  per test run (by whichever worker needs it first); treat it as read-only."""
  from tests.tiny import TINY, tiny_params, write_images
  from vit_jax_analytics import checkpoints, importance, patterns, pipeline, strength

  root = shared_directory(tmp_path_factory, 'analysis')
  logdir = root / 'logs'
  with made_once(root) as make:
    if make:
      write_images(root / 'images', n=6)
      ckpt = checkpoints.save_checkpoint(root / 'tiny_ckpt', tiny_params(), TINY)
      inputs = pipeline.Inputs(checkpoint=ckpt, images=root / 'images')
      pipeline.run_analysis(inputs, logdir, 'tiny', {
          'importance': importance.ImportanceOptions(batch_size=4, per_image=True,
                                                     curve_points=5, random_orders=2,
                                                     progress=False),
          'strength': strength.StrengthOptions(batch_size=4, map_images=3, progress=False),
          'patterns': patterns.PatternOptions(
              per_head=4, batch_size=4, grid=4, clusters=3, progress=False,
              ae=patterns.AEOptions(epochs=3, batch_size=32, progress=False))})
      pipeline.run_importance(inputs, logdir, 'importance-only', importance.ImportanceOptions(
          batch_size=6, curve_points=3, random_orders=1, progress=False))
  return logdir
