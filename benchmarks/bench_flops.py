"""FLOPs per image of each analysis, from XLA's cost analysis of the lowered computations
(nothing is run, so it works for ViT-L/16 on a laptop). Used by docs/scaling.md.

Counts per image at batch 8 (divided by 8), default options: the pruning curves evaluate
(4 metric orders + 5 random) x 21 points = 189 masks; partial pruning 12 heads (48 for
models with <= 48 heads) x 10 variants (radii 1, 2, 3 local/global, to_cls, from_cls,
region in/out).

Run: python benchmarks/bench_flops.py [--configs ViT-B/16 ViT-L/16]
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax_analytics import cost, importance, model as model_lib, patterns, strength


CHUNK = 1_000_000


def flops(lowered) -> float:
  cost = lowered.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost['flops'])


def per_image(name: str, b: int = 8) -> dict:
  config = model_lib.get_config(name)
  params = model_lib.param_shapes(config)
  images = jax.ShapeDtypeStruct((b, config.image_size, config.image_size, 3), jnp.float32)
  out = {'forward': flops(jax.jit(model_lib.apply, static_argnums=1).lower(params, config, images))}
  out['strength'] = flops(strength.strength_batch.lower(params, config, images))
  # The importance stages loop over layers, masks and heads (one compiled suffix graph), and
  # XLA counts a loop body once: their figures come from cost.py's model of the same graphs,
  # which benchmarks/bench_cost.py checks against XLA piece by piece (within 0.3%).
  fwd = out['forward'] / b
  opts = importance.ImportanceOptions()
  variants = importance.partial_variants(config, opts.partial_radii, opts.partial_region)
  n_masks = (len(importance.ORDER_METRICS) + opts.random_orders) * len(
      importance.curve_counts(config, opts.curve_points))
  mid = (config.num_layers - 1) / 2  # partially pruned heads: a middle layer on average
  out['importance stage 1'] = cost.stage1(config) * fwd * b
  out['importance stage 2 (per subset image)'] = cost.stage2(
      config, [0] * n_masks, [mid] * opts.partial_heads, len(variants)) * fwd * b
  out['patterns (samples)'] = flops(jax.jit(
      lambda p, x: model_lib.apply(p, config, x, return_attention=True)).lower(params, images))
  return {k: v / b for k, v in out.items()}


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--configs', nargs='+', default=['ViT-B/16', 'ViT-L/16'])
  args = p.parse_args()
  for name in args.configs:
    f = per_image(name)
    total = sum(v for k, v in f.items() if k != 'forward')
    print(f'\n{name} at 224²: GFLOPs per image (XLA cost analysis), and in forwards')
    print('| part | GFLOP / image | forwards |')
    print('| --- | --- | --- |')
    for k, v in f.items():
      print(f'| {k} | {v / 1e9:.1f} | {v / f["forward"]:.1f} |')
    print(f'| full analysis (all parts; stage 2 on every image) | {total / 1e9:.1f} | {total / f["forward"]:.1f} |')


if __name__ == '__main__':
  main()
