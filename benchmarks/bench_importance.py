"""Head-importance throughput on ViT-B/16 at 224 x 224 with random weights.

Prints images/s for the single-head ablation scan as (i) a Python loop of L*H + 1 jitted
forwards, (ii) one jitted pass vmapped over all masks, (iii) the same reusing the unmasked
prefix; and the Taylor pass against one plain forward. All figures come from one run.

  python benchmarks/bench_importance.py [--config ViT-B/16] [--batch-size 2]
"""

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import add_baseline_flag, best_time, run_baseline  # noqa: E402
from tests.reference import importance_kernels as reference  # noqa: E402
from vit_jax_analytics import importance, model as model_lib  # noqa: E402


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument('--config', default='ViT-B/16')
  p.add_argument('--batch-size', type=int, default=2)
  p.add_argument('--chunk', type=int, default=None,
                 help='masks vmapped at once (default: 1 on CPU, 8 on accelerators)')
  p.add_argument('--repeats', type=int, default=2)
  add_baseline_flag(p)
  args = p.parse_args()
  if args.baseline:
    run_baseline(args.baseline, 'bench_importance.py', sys.argv[1:])

  config = model_lib.get_config(args.config)
  args.chunk = args.chunk or importance.default_chunk()
  params = model_lib.init_params(config, jax.random.key(0))
  rng = np.random.default_rng(0)
  b, s = args.batch_size, config.image_size
  images = jnp.asarray(rng.uniform(-1, 1, (b, s, s, 3)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, config.num_classes, b), jnp.int32)
  masks = importance.single_head_masks(config)

  forward = jax.jit(lambda p, x, m: model_lib.apply(p, config, x, head_mask=m))

  def python_loop(params, images):
    out = [forward(params, images, jnp.ones((config.num_layers, config.num_heads)))]
    for m in masks:
      out.append(forward(params, images, m))
    return out

  plain = best_time(forward, params, images, jnp.ones((config.num_layers, config.num_heads)),
                    repeats=args.repeats)
  t_loop = best_time(python_loop, params, images, repeats=args.repeats)
  t_vmap = best_time(reference.ablation_batch_no_reuse, params, config, images, labels,
                     args.chunk, repeats=args.repeats)
  t_reuse = best_time(importance.ablation_batch, params, config, images, labels, args.chunk,
                      repeats=args.repeats)
  t_taylor = best_time(importance.taylor_batch, params, config, images, labels,
                       repeats=args.repeats)

  n = len(masks) + 1
  print(f'{args.config} at {s}x{s}, batch {b}, {jax.device_count()} {jax.default_backend()} '
        f'device(s); ablation scan = {n} masks, chunk {args.chunk}')
  print(f'  plain forward               {b / plain:9.2f} images/s')
  print(f'  (i)   loop of {n} forwards   {b / t_loop:9.3f} images/s')
  print(f'  (ii)  vmapped, no reuse     {b / t_vmap:9.3f} images/s  ({t_loop / t_vmap:.2f}x (i))')
  print(f'  (iii) vmapped, prefix reuse {b / t_reuse:9.3f} images/s  ({t_loop / t_reuse:.2f}x (i))'
        f'   target >= 1.8x')
  print(f'  Taylor pass                 {b / t_taylor:9.2f} images/s  '
        f'({t_taylor / plain:.2f}x one forward)   target <= 3.5x')


if __name__ == '__main__':
  main()
