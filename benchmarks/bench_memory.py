"""Peak memory of each analysis on N and 4N images: it should not grow with the images.

A random-weight vit_jax ViT-Ti/16 `.npz` (224 x 224, 10 classes) and a folder of 4N
images; each of `vit-analytics importance` (without --per-image), `strength` and `patterns`
runs on the first N, then the first 4N, each in a fresh process with the same batch size;
the peak resident set size of that process (its own `wait4` rusage, so nothing else counts)
is printed with the ratio 4N / N and the growth per extra image, beside what a run must
keep per image: the size of one decoded image (float32) and, for patterns, its stored
samples (L * H * per_head samples of a (2n-1)^2 re-centred and an n^2 plain map in
float16, for images up to --pattern-images). Targets: ratio <= 1.05 for importance and
strength; patterns keeps its samples (up to --max-images, default 200), so it grows by at
most 2x its stored samples per extra image, once N images give more samples than one
autoencoder evaluation chunk (patterns.EVAL_CHUNK = 512 samples: 4 images of ViT-Ti/16;
below that the chunk's activations grow with the samples too).

  python benchmarks/bench_memory.py [--images 16] [--batch-size 8] [--analyses importance,...]
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
from benchmarks.common import cli_env, load_average, write_vit_inputs  # noqa: E402
from vit_jax_analytics import model as model_lib  # noqa: E402
from vit_jax_analytics.patterns import EVAL_CHUNK  # noqa: E402

TARGET_RATIO = 1.05


def peak_rss(analysis, checkpoint, images, n, batch_size, logdir):
  """(peak RSS in MiB, seconds) of `vit-analytics ANALYSIS` on the first n images."""
  cmd = [sys.executable, '-m', 'vit_jax_analytics.cli', analysis, '--checkpoint',
         str(checkpoint), '--images', str(images), '--max-images', str(n), '--batch-size',
         str(batch_size), '--logdir', str(logdir), '--run', f'{analysis}_{n}',
         '--no-compile-cache', '--no-progress']
  env = cli_env()
  t0 = time.perf_counter()
  proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                          cwd=ROOT)
  err = proc.stderr.read()
  _, status, usage = os.wait4(proc.pid, 0)
  proc.returncode = os.waitstatus_to_exitcode(status)
  if proc.returncode:
    sys.exit(f'{analysis} on {n} images failed (exit {proc.returncode}):\n'
             f'{err.decode()[-3000:]}')
  return usage.ru_maxrss / 1024, time.perf_counter() - t0  # ru_maxrss: KiB on Linux


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument('--config', default='ViT-Ti/16')
  p.add_argument('--images', type=int, default=16, help='N (and 4N)')
  p.add_argument('--batch-size', type=int, default=8)
  p.add_argument('--analyses', default='importance,strength,patterns')
  args = p.parse_args()
  c = model_lib.get_config(args.config)
  n, big = args.images, 4 * args.images
  gh, gw = c.grid_shape
  image_kib = c.image_hw[0] * c.image_hw[1] * 3 * 4 / 1024
  samples_kib = (c.num_layers * c.num_heads * 4 * ((2 * max(gh, gw) - 1) ** 2 + gh * gw + 1) * 2
                 + c.num_layers * c.num_heads * 4 * 16) / 1024
  print(f'{args.config} random weights, {c.image_hw[0]} x {c.image_hw[1]}, batch size '
        f'{args.batch_size}; peak RSS of each analysis on {n} and {big} images (fresh process '
        f'each); one decoded image is {image_kib:.0f} KiB, one image\'s pattern samples '
        f'{samples_kib:.0f} KiB', flush=True)
  print(f'  {"analysis":<11} {f"{n} img MiB":>11} {f"{big} img MiB":>12} {"ratio":>6} '
        f'{"KiB / extra image":>18}  {"time s":>13}  load', flush=True)
  with tempfile.TemporaryDirectory() as d:
    d = Path(d)
    checkpoint, images = write_vit_inputs(d, args.config, big)
    for analysis in args.analyses.split(','):
      small_mib, small_s = peak_rss(analysis, checkpoint, images, n, args.batch_size,
                                    d / 'logdir')
      big_mib, big_s = peak_rss(analysis, checkpoint, images, big, args.batch_size,
                                d / 'logdir')
      ratio = big_mib / small_mib
      per_image = (big_mib - small_mib) * 1024 / (big - n)
      if analysis != 'patterns':
        target = f'target <= {TARGET_RATIO}: ' + ('meets' if ratio <= TARGET_RATIO else 'MISSES')
      else:
        chunked = n * c.num_layers * c.num_heads * 4 >= EVAL_CHUNK
        target = (f'target <= 2 x {samples_kib:.0f} KiB stored samples per image: '
                  + ('meets' if per_image <= 2 * samples_kib else 'MISSES')
                  + ('' if chunked else f'; N below one {EVAL_CHUNK}-sample chunk: not '
                                        'comparable'))
      print(f'  {analysis:<11} {small_mib:11.0f} {big_mib:12.0f} {ratio:6.3f} {per_image:18.1f}'
            f'  {small_s:5.0f} / {big_s:5.0f}  {load_average():.2f}   ({target})', flush=True)


if __name__ == '__main__':
  main()
