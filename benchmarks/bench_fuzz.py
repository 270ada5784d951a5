"""The plugin's long fuzz run: N generated hostile requests (default 10,000) against each of
three logdirs — one written by the real analysis of a tiny random ViT, the hostile one of
tests/tb_plugin/test_vit_analytics_plugin_fuzz.py (every way a stored value can be wrong,
the declared-shape memory bombs included), and both together — with the same checks as the
test (no 5xx, JSON errors of one line, no traceback, nothing from outside the logdir). The
test suite sends 3,000 a logdir within a deadline; this sends all N and reports the status
histogram, the time and this process's peak memory.

  python -m benchmarks.bench_fuzz [--requests 10000] [--seed 1826]
"""

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def real_logdir(root: Path) -> Path:
  """A logdir of the real analysis (importance, strength, patterns) on 6 images."""
  from tests.tiny import TINY, tiny_params, write_images
  from vit_jax_analytics import checkpoints, importance, patterns, pipeline, strength

  write_images(root / 'images', n=6)
  ckpt = checkpoints.save_checkpoint(root / 'tiny_ckpt', tiny_params(), TINY)
  inputs = pipeline.Inputs(checkpoint=ckpt, images=root / 'images')
  logdir = root / 'logs'
  pipeline.run_analysis(inputs, logdir, 'tiny', {
      'importance': importance.ImportanceOptions(batch_size=4, per_image=True, curve_points=5,
                                                 random_orders=2, progress=False),
      'strength': strength.StrengthOptions(batch_size=4, map_images=3, progress=False),
      'patterns': patterns.PatternOptions(
          per_head=4, batch_size=4, grid=4, clusters=3, progress=False,
          ae=patterns.AEOptions(epochs=3, batch_size=32, progress=False))})
  return logdir


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--requests', type=int, default=10_000, help='per logdir')
  p.add_argument('--seed', type=int, default=1826)
  args = p.parse_args(argv)

  from tests.tb_plugin import fuzzing as fz
  from tests.tb_plugin.client import make_client

  with tempfile.TemporaryDirectory() as tmp:
    tmp = Path(tmp)
    start = time.monotonic()
    real = real_logdir(tmp / 'real')
    print(f'real analysis logdir written in {time.monotonic() - start:.0f} s', flush=True)
    hostile = tmp / 'hostile' / 'logs'
    fz.write_logdir(hostile)
    both = tmp / 'both' / 'logs'
    shutil.copytree(hostile, both)
    shutil.copytree(real / 'tiny', both / 'tiny')
    total, fives = 0, 0
    for name, logdir in (('real', real), ('hostile', hostile), ('real + hostile', both)):
      secret = fz.plant_secret(logdir)
      client, plugin = make_client(logdir)
      sent, histogram, seconds = fz.fuzz((client, plugin, logdir, secret), args.seed,
                                         args.requests, deadline_s=float('inf'))
      five = sum(n for c, n in histogram.items() if c >= 500)
      total, fives = total + sent, fives + five
      print(f'{name:>15}: {sent} requests in {seconds:.1f} s ({sent / seconds:.0f}/s), status '
            f'{dict(sorted(histogram.items()))}, 5xx: {five}', flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f'total {total} requests, 5xx: {fives}; peak memory of this process {peak:.0f} MiB')
  return 1 if fives else 0


if __name__ == '__main__':
  sys.exit(main())
