"""Compares every stored value of two run directories: arrays (exactly, or within --rtol of
each array's largest magnitude), JSON and PNG. Exits 1 on any difference.

  python scripts/compare_runs.py logdir_a/run logdir_b/run [--rtol 0] [--ignore-meta options]

Used to check that a refactor leaves results unchanged: analyse the same checkpoint and
images before and after, then compare.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def compare(a: dict, b: dict, rtol: float = 0., ignore_meta=('versions',)) -> list:
  """Differences between two {tag: value} maps (as reader.read_run returns them)."""
  problems = [f'{t}: only in the first' for t in sorted(set(a) - set(b))]
  problems += [f'{t}: only in the second' for t in sorted(set(b) - set(a))]
  for tag in sorted(set(a) & set(b)):
    x, y = a[tag], b[tag]
    if isinstance(x, np.ndarray):
      if x.shape != y.shape or x.dtype != y.dtype:
        problems.append(f'{tag}: {x.dtype}{x.shape} vs {y.dtype}{y.shape}')
        continue
      scale = max(float(np.nanmax(np.abs(x))) if x.size else 0., 1e-30)
      diff = np.abs(x.astype(np.float64) - y.astype(np.float64))
      worst = float(np.nanmax(diff)) if diff.size else 0.
      if worst > rtol * scale or not np.array_equal(np.isnan(x), np.isnan(y)):
        problems.append(f'{tag}: max |difference| {worst:.3g} (largest value {scale:.3g})')
    elif isinstance(x, dict) and tag.endswith('/meta'):
      keys = (set(x) | set(y)) - set(ignore_meta)
      problems += [f'{tag}[{k!r}] differs' for k in sorted(keys) if x.get(k) != y.get(k)]
    elif x != y:
      problems.append(f'{tag}: differs')
  return problems


def main(argv=None) -> int:
  from vit_jax_analytics.logdir import reader

  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('first', type=Path)
  p.add_argument('second', type=Path)
  p.add_argument('--rtol', type=float, default=0.,
                 help="tolerance relative to each array's largest magnitude (default: exact)")
  p.add_argument('--ignore-meta', nargs='*', default=['versions'],
                 help='meta keys not compared (default: versions)')
  args = p.parse_args(argv)
  a, b = reader.read_run(args.first), reader.read_run(args.second)
  problems = compare(a, b, args.rtol, args.ignore_meta)
  for line in problems:
    print(line)
  print(f'{len(set(a) & set(b))} values compared, {len(problems)} difference(s)')
  return 1 if problems else 0


if __name__ == '__main__':
  sys.exit(main())
