"""The error `--dtype bfloat16` introduces in every metric, against float32.

Demo: the bundled trained demo ViT on its first held-out digits, through the analyses
themselves (`compute_strength`, the whole `compute_importance` — Taylor, the ablation scan,
pruning curves and partial pruning on the default 20-image subset — and the pattern
samples), as the CLI runs them with --dtype. B/16: a ViT-B/16-shaped model (random
weights, query and key kernels x2 so that attention is not uniform) on a few random 224²
images, strength and Taylor importance only (the ablation scan of B/16 is too slow for a
CPU), through the in-training path (the same jitted functions).

For each metric: the largest absolute difference over heads (and curve points, variants,
sample cells), that divided by the metric's largest float32 magnitude ("rel"), and whether
the head order agrees (Spearman rho of the per-head values).

Run: python benchmarks/bench_bf16.py [--demo-images 256] [--b16-images 4]
"""

import argparse
import time

import jax
import numpy as np

from vit_jax_analytics import (checkpoints, data, importance, model as model_lib, patterns,
                               strength, training)
from vit_jax_analytics.batches import ArraySource


def spearman(a, b):
  ra, rb = np.argsort(np.argsort(a.ravel())), np.argsort(np.argsort(b.ravel()))
  return float(np.corrcoef(ra, rb)[0, 1])


def table(name, metrics, note):
  print(f'\n{name}: {note}')
  print('| metric | max abs error | rel (/ max abs f32) | Spearman rho of heads |')
  print('| --- | --- | --- | --- |')
  for k, (a, b, per_head) in metrics.items():
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    err = float(np.max(np.abs(a - b))) if a.size else 0.
    rel = err / max(float(np.max(np.abs(a))), 1e-30) if a.size else 0.
    rho = f'{spearman(a, b):.4f}' if per_head and a.size > 1 else '–'
    print(f'| {k} | {err:.3g} | {rel:.3g} | {rho} |', flush=True)


def demo(n_images):
  params, config = checkpoints.load_checkpoint('checkpoints/demo_vit')
  source = data.ImageFolderSource(data.image_folder('checkpoints/demo_images'),
                                  config.image_size).take(n_images)
  images, labels = [], []
  for batch in source.batches(64, progress=False):
    images.append(batch.images[batch.valid]); labels.append(batch.labels[batch.valid])
  source = ArraySource(np.concatenate(images), np.concatenate(labels))
  out, seconds = {}, {}
  for dtype in ('float32', 'bfloat16'):
    start = time.time()
    st = strength.compute_strength(params, config, source, strength.StrengthOptions(
        batch_size=64, map_images=0, progress=False, dtype=dtype))
    imp = importance.compute_importance(params, config, source, importance.ImportanceOptions(
        batch_size=64, progress=False, dtype=dtype))
    samples = patterns.extract_samples(params, config, source, max_images=64, batch_size=64,
                                       progress=False, dtype=dtype)
    out[dtype], seconds[dtype] = (st, imp, samples), time.time() - start
  (s32, i32, p32), (s16, i16, p16) = out['float32'], out['bfloat16']
  metrics = {f'strength/{k}': (getattr(s32, k), getattr(s16, k), True)
             for k in ('mean_distance', 'entropy', 'self_share', 'cls_share', 'offset_mean',
                       'neighbourhood_share')}
  metrics.update({f'importance/{k}': (getattr(i32, k), getattr(i16, k), True)
                  for k in ('taylor', 'ablation_loss', 'ablation_kl', 'ablation_top1')})
  # Stage 2's orders and partially pruned heads come from stage 1's scores: compared where
  # both precisions chose the same (they did on this model; otherwise say so).
  same_plan = (np.array_equal(i32.partial.heads, i16.partial.heads))
  # Curves along the random orders evaluate the same masks in both precisions; along the
  # metric orders, each precision follows its own stage-1 scores (order changes included).
  random = np.asarray([o.startswith('random') for o in i32.curves.orders])
  assert list(i32.curves.orders) == list(i16.curves.orders)
  for k in ('curve_loss', 'curve_top1'):
    a, b = getattr(i32, k), getattr(i16, k)
    metrics[f'importance/{k} (random orders)'] = (a[random], b[random], False)
    metrics[f'importance/{k} (metric orders)'] = (a[~random], b[~random], False)
  metrics.update({f'importance/{k}': (getattr(i32, k), getattr(i16, k), False)
                  for k in ('partial_loss', 'partial_kl') if same_plan})
  metrics['baseline/loss'] = (i32.baseline.loss, i16.baseline.loss, False)
  metrics['baseline/top1'] = (i32.baseline.top1, i16.baseline.top1, False)
  metrics['patterns/sample maps (re-centred)'] = (p32.recentred, p16.recentred, False)
  table('demo ViT (trained, 6 x 4 heads)', metrics,
        f'{len(source)} held-out digits (patterns: 64); float32 {seconds["float32"]:.0f} s, '
        f'bfloat16 {seconds["bfloat16"]:.0f} s (CPU, incl. compilation); same partially '
        f'pruned heads: {same_plan}')


def b16(n_images):
  config = model_lib.get_config('ViT-B/16')
  params = jax.tree.map(np.asarray, model_lib.init_params(config, jax.random.key(0)))
  rng = np.random.default_rng(0)
  params['head']['kernel'] = rng.normal(0, 0.05, params['head']['kernel'].shape).astype(
      np.float32)
  for i in range(config.num_layers):
    att = params['Transformer'][f'encoderblock_{i}']['MultiHeadDotProductAttention_1']
    for name in ('query', 'key'):
      att[name]['kernel'] = att[name]['kernel'] * 2.
  probe = training.Probe(rng.uniform(-1, 1, (n_images, 224, 224, 3)).astype(np.float32))
  out = {}
  for dtype in ('float32', 'bfloat16'):
    o = training.TrainingAnalysisOptions(dtype=dtype, batch_size=64, print_cost=False)
    out[dtype] = (training.probe_strength(params, config, probe, o),
                  training.probe_importance(params, config, probe, o))
  (s32, i32), (s16, i16) = out['float32'], out['bfloat16']
  metrics = {f'strength/{k}': (getattr(s32, k), getattr(s16, k), True)
             for k in ('mean_distance', 'entropy', 'self_share', 'cls_share', 'offset_mean',
                       'neighbourhood_share')}
  metrics['importance/taylor'] = (i32.taylor, i16.taylor, True)
  metrics['baseline/loss'] = (i32.baseline.loss, i16.baseline.loss, False)
  table('ViT-B/16-shaped (random weights, query/key x2)', metrics,
        f'{n_images} random 224² images; strength and Taylor only')


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--demo-images', type=int, default=256)
  p.add_argument('--b16-images', type=int, default=4)
  args = p.parse_args()
  demo(args.demo_images)
  if args.b16_images:
    b16(args.b16_images)


if __name__ == '__main__':
  main()
