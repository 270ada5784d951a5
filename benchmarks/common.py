"""Shared helpers for the benchmarks: timing jitted calls after compilation, waiting for a
quiet machine, and running the same benchmark on another git revision (--baseline)."""

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax

ROOT = Path(__file__).resolve().parents[1]


def best_time(fn, *args, repeats=3):
  """Seconds of the fastest of `repeats` calls, after one warm-up call (compilation)."""
  jax.block_until_ready(fn(*args))
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - start)
  return best


def load_average() -> float:
  """The 1-minute load average (os.getloadavg), or nan where there is none."""
  try:
    return os.getloadavg()[0]
  except OSError:
    return float('nan')


def wait_for_quiet(max_load=1.5, max_wait_s=1200., poll_s=60., log=print) -> float:
  """On a shared machine, waits (polling every `poll_s`) until the 1-minute load average is
  below `max_load`, at most `max_wait_s`; returns the load when timing starts, which the
  caller prints beside its figures (timed anyway after the wait: the load says how far to
  trust them)."""
  waited = 0.
  load = load_average()
  while not load < max_load and waited < max_wait_s:
    log(f'  (load {load:.2f} >= {max_load}: waiting {poll_s:.0f} s, {waited:.0f} s so far)')
    time.sleep(poll_s)
    waited += poll_s
    load = load_average()
  return load


def add_quiet_flags(parser) -> None:
  """--max-load and --max-wait, for wait_for_quiet."""
  parser.add_argument('--max-load', type=float, default=1.5,
                      help='wait (up to --max-wait s) for a 1-minute load average below this')
  parser.add_argument('--max-wait', type=float, default=1200.)


def cli_env() -> dict:
  """The environment for `python -m vit_jax_analytics.cli` in a fresh process: this
  checkout first on PYTHONPATH (the benchmarks time this tree, installed or not)."""
  root = str(ROOT)
  return dict(os.environ, PYTHONPATH=os.pathsep.join(
      [root] + [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p]))


def write_vit_inputs(folder, config_name='ViT-Ti/16', n_images=8, classes=10, seed=0):
  """A random-weight vit_jax `.npz` of a preset (peaked attention, as tests/npz_formats
  writes it) and a folder of `n_images` random 224 x 224 PNGs, one sub-folder per class
  (all `classes` folders exist, so class i is folder i): (checkpoint path, image folder)."""
  from pathlib import Path

  import numpy as np
  from PIL import Image

  from tests.npz_formats import random_vit_jax_arrays
  from vit_jax_analytics import model as model_lib

  folder = Path(folder)
  c = model_lib.get_config(config_name)
  arrays = random_vit_jax_arrays(seed, width=c.hidden_size, depth=c.num_layers,
                                 heads=c.num_heads, mlp=c.mlp_dim, patch=c.patch_size,
                                 image=c.image_size, classes=classes)
  np.savez(folder / 'm.npz', **arrays)
  rng = np.random.default_rng(seed)
  for k in range(classes):
    (folder / 'images' / f'class_{k}').mkdir(parents=True, exist_ok=True)
  for i in range(n_images):
    Image.fromarray(rng.integers(0, 256, (c.image_size, c.image_size, 3), np.uint8)).save(
        folder / 'images' / f'class_{i % classes}' / f'{i:05d}.png')
  return folder / 'm.npz', folder / 'images'


def add_baseline_flag(parser) -> None:
  """--baseline REV: the same benchmark of git revision REV, run first in the same call."""
  parser.add_argument('--baseline', metavar='REV', default=None,
                      help='also run this benchmark as of git revision REV (its own code, '
                           'exported to a temporary folder), first, for a before/after from '
                           'one run on the same machine')


def run_baseline(rev: str, script: str, argv) -> str:
  """Runs benchmarks/<script> as of git revision `rev` (package, tests and benchmarks
  exported with `git archive`) with `argv` less --baseline, in a fresh process whose path
  puts that tree first; prints and returns its output (stdout and stderr)."""
  argv = list(argv)
  if '--baseline' in argv:
    i = argv.index('--baseline')
    del argv[i:i + 2]
  argv = [a for a in argv if not a.startswith('--baseline=')]
  with tempfile.TemporaryDirectory() as tree:
    archive = subprocess.run(['git', '-C', str(ROOT), 'archive', rev], check=True,
                             capture_output=True).stdout
    subprocess.run(['tar', '-x', '-C', tree], input=archive, check=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [tree] + [q for q in os.environ.get('PYTHONPATH', '').split(os.pathsep) if q]))
    print(f'=== baseline {rev}: benchmarks/{script} {" ".join(argv)}', flush=True)
    proc = subprocess.run([sys.executable, str(Path(tree) / 'benchmarks' / script), *argv],
                          cwd=tree, env=env, capture_output=True, text=True)
  out = proc.stdout + proc.stderr
  print(out, flush=True)
  if proc.returncode:
    print(f'(baseline {rev} exited with {proc.returncode})', flush=True)
  print(f'=== this tree: benchmarks/{script} {" ".join(argv)}', flush=True)
  return out
