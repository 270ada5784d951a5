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

from vit_jax_analytics import importance, model as model_lib, patterns, strength


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
  labels = jax.ShapeDtypeStruct((b,), jnp.int32)
  out = {'forward': flops(jax.jit(model_lib.apply, static_argnums=1).lower(params, config, images))}
  out['strength'] = flops(strength.strength_batch.lower(params, config, images))
  out['taylor'] = flops(importance.taylor_batch.lower(params, config, images, labels))
  # XLA counts a loop body once, not once per iteration: every mask is vmapped at once here
  # (CHUNK above any mask count: lax.map then has no loop), so each mask is counted.
  out['ablation scan'] = flops(importance.ablation_batch.lower(params, config, images, labels,
                                                               CHUNK))
  opts = importance.ImportanceOptions()
  variants = importance.partial_variants(config, opts.partial_radii, opts.partial_region)
  n_heads = config.num_layers * config.num_heads
  counts = importance.curve_counts(config, opts.curve_points)
  masks = jax.ShapeDtypeStruct(((len(importance.ORDER_METRICS) + opts.random_orders)
                                * len(counts), config.num_layers, config.num_heads), jnp.float32)
  n_partial = n_heads if n_heads <= 48 else 12
  heads = np.sort(np.random.default_rng(0).permutation(n_heads)[:n_partial])
  layers = tuple(int(h) // config.num_heads for h in heads)
  keeps = np.stack([v.keep for v in variants])
  out['curves + partial'] = flops(importance.pruning_batch.lower(
      params, config, images, labels, masks, jnp.asarray(heads), jnp.asarray(keeps), False,
      layers, CHUNK))
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
    print(f'| full analysis (all parts) | {total / 1e9:.1f} | {total / f["forward"]:.1f} |')


if __name__ == '__main__':
  main()
