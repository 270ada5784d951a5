"""FLOPs per image of each analysis, and the projected time and cost of the full analysis
of an image set, for docs/scaling.md. Nothing is run (lowering only), so it works for
ViT-L/16 on a laptop.

Per image at batch 8 (divided by 8), default options (`ImportanceOptions()`,
`PatternOptions()`): one forward, strength and the pattern-sampling forward from XLA's cost
analysis of the lowered computations; Taylor likewise. The importance stages loop over
layers, masks and heads (one compiled suffix graph), and XLA counts a loop body once
whatever its trip count, so their figures come from cost.py's model of the same graphs
(`cost.stage1`, `cost.stage2`: exact for the matmuls, checked against XLA piece by piece
by benchmarks/bench_cost.py) times XLA's count of one forward. Stage 2 is planned as the
run's planner does (`cost.stage2_expected`): the curve masks' first layers as under random
orders, the partially pruned heads in the middle layer.

The full analysis of N images per image: stage 1 and strength on every image, stage 2 on
the subset (--subset-images, default 20) and pattern sampling on --pattern-images (default
200): stage1 + strength + stage2 * min(N, 20) / N + patterns * min(N, 200) / N.

Run: python benchmarks/bench_flops.py [--configs ViT-B/16 ViT-L/16] [--images 50000]
"""

import argparse

import jax
import jax.numpy as jnp

from vit_jax_analytics import cost, importance, model as model_lib, patterns, strength

# The projection's assumptions (docs/scaling.md states and discusses them).
PEAK = {'1 x H100, bfloat16': 989e12, '1 x H100, float32 (TF32)': 494.5e12,
        'TPU v5e-256, bfloat16': 256 * 197e12}
PRICE_PER_HOUR = {'1 x H100, bfloat16': 3.00, '1 x H100, float32 (TF32)': 3.00,
                  'TPU v5e-256, bfloat16': 256 * 1.20}
UTILISATION = 0.40


def flops(lowered) -> float:
  analysis = lowered.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0]
  return float(analysis['flops'])


def per_image(name: str, b: int = 8) -> dict:
  config = model_lib.get_config(name)
  params = model_lib.param_shapes(config)
  images = jax.ShapeDtypeStruct((b, config.image_size, config.image_size, 3), jnp.float32)
  labels = jax.ShapeDtypeStruct((b,), jnp.int32)
  out = {'forward': flops(jax.jit(model_lib.apply, static_argnums=1).lower(params, config,
                                                                            images))}
  out['strength'] = flops(strength.strength_batch.lower(params, config, images))
  out['taylor (forward + mask backward)'] = flops(
      importance.taylor_pool_batch.lower(params, config, images, labels))
  fwd = out['forward'] / b
  opts = importance.ImportanceOptions()
  variants = importance.partial_variants(config, opts.partial_radii, opts.partial_region)
  out['importance stage 1 (Taylor + ablation scan)'] = cost.stage1(config) * fwd * b
  out['importance stage 2 (per subset image)'] = cost.stage2_expected(
      config, opts, len(variants)) * fwd * b
  out['patterns (sampling forward)'] = flops(jax.jit(
      lambda p, x: model_lib.apply(p, config, x, return_attention=True)).lower(params, images))
  return {k: v / b for k, v in out.items()}


def full_per_image(f: dict, n_images: int) -> float:
  """FLOPs per image of the whole `analyze` of n_images with the default options."""
  subset = min(n_images, importance.DEFAULT_SUBSET_IMAGES)
  sampled = min(n_images, patterns.PatternOptions().max_images)
  return (f['importance stage 1 (Taylor + ablation scan)'] + f['strength']
          + f['importance stage 2 (per subset image)'] * subset / n_images
          + f['patterns (sampling forward)'] * sampled / n_images)


def seconds(work: float, device: str) -> float:
  return work / (PEAK[device] * UTILISATION)


def duration(s: float) -> str:
  return f'{s:.1f} s' if s < 120 else f'{s / 60:.1f} min' if s < 7200 else f'{s / 3600:.1f} h'


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--configs', nargs='+', default=['ViT-B/16', 'ViT-L/16'])
  p.add_argument('--images', type=int, default=50_000)
  args = p.parse_args()
  rows = []
  for name in args.configs:
    f = per_image(name)
    full = full_per_image(f, args.images)
    print(f'\n{name} at 224²: GFLOP per image (XLA cost analysis; importance stages from '
          f'cost.py x XLA\'s forward), and in forwards')
    print('| part | GFLOP / image | forwards |')
    print('| --- | --- | --- |')
    for k, v in f.items():
      print(f'| {k} | {v / 1e9:,.1f} | {v / f["forward"]:.2f} |')
    print(f'| **full analysis of {args.images:,} images**, per image | **{full / 1e9:,.1f}** | '
          f'**{full / f["forward"]:.2f}** |')
    cheap = f['strength'] + f['taylor (forward + mask backward)']
    rows.append((name, full * args.images, cheap * args.images))
  print(f'\nProjected: {args.images:,} images at {UTILISATION:.0%} of peak')
  print('| model | device | work (FLOP) | full analysis | cost | strength + Taylor only |')
  print('| --- | --- | --- | --- | --- | --- |')
  for name, work, cheap in rows:
    for device in PEAK:
      s = seconds(work, device)
      price = s / 3600 * PRICE_PER_HOUR[device]
      print(f'| {name} | {device} | {work:.3g} | {duration(s)} | ${price:.2f} | '
            f'{duration(seconds(cheap, device))} |')


if __name__ == '__main__':
  main()
