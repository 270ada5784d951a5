"""The error bfloat16 forwards introduce in every in-training metric, against float32.

Models: the bundled demo ViT on its first 256 held-out digits, and a ViT-B/16-shaped model
(random weights, query and key kernels x2 so that attention is not uniform) on 8 random 224² images. For each
metric: the largest absolute difference over heads, that divided by the metric's largest
magnitude ("rel"), and whether the head order (argsort) agrees (Spearman rho).

Run: python benchmarks/bench_bf16.py [--b16-images 8] [--demo-images 256]
"""

import argparse
import time

import jax
import numpy as np

from vit_jax_analytics import checkpoints, data, model as model_lib, training


def spearman(a, b):
  ra, rb = np.argsort(np.argsort(a.ravel())), np.argsort(np.argsort(b.ravel()))
  return float(np.corrcoef(ra, rb)[0, 1])


def compare(name, params, config, probe, ablation):
  out = {}
  for dtype in ('float32', 'bfloat16'):
    o = training.TrainingAnalysisOptions(dtype=dtype, ablation=ablation, batch_size=64,
                                         print_cost=False)
    start = time.time()
    st = training.probe_strength(params, config, probe, o)
    imp = training.probe_importance(params, config, probe, o)
    out[dtype] = (st, imp, time.time() - start)
  (s32, i32, t32), (s16, i16, t16) = out['float32'], out['bfloat16']
  metrics = {'strength/' + k: (getattr(s32, k), getattr(s16, k))
             for k in ('mean_distance', 'entropy', 'self_share', 'cls_share', 'offset_mean',
                       'neighbourhood_share')}
  metrics.update({'importance/' + k: (getattr(i32, k), getattr(i16, k))
                  for k in ('taylor', 'ablation_loss', 'ablation_kl', 'ablation_top1')
                  if ablation or k == 'taylor'})
  metrics['baseline/loss'] = (np.asarray(i32.baseline.loss), np.asarray(i16.baseline.loss))
  metrics['baseline/top1'] = (np.asarray(i32.baseline.top1), np.asarray(i16.baseline.top1))
  print(f'\n{name}: {len(probe.images)} images; float32 {t32:.1f} s, bfloat16 {t16:.1f} s '
        f'(CPU, incl. compilation)')
  print(f'| metric | max abs error | rel (/ max abs f32) | Spearman rho of heads |')
  print('| --- | --- | --- | --- |')
  for k, (a, b) in metrics.items():
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    err = float(np.max(np.abs(a - b)))
    rel = err / max(float(np.max(np.abs(a))), 1e-30)
    rho = spearman(a, b) if a.size > 1 else float('nan')
    print(f'| {k} | {err:.3g} | {rel:.3g} | {rho:.4f} |')


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--demo-images', type=int, default=256)
  p.add_argument('--b16-images', type=int, default=8)
  args = p.parse_args()
  params, config = checkpoints.load_checkpoint('checkpoints/demo_vit')
  source = data.ImageFolderSource(data.image_folder('checkpoints/demo_images'),
                                  config.image_size).take(args.demo_images)
  images, labels = [], []
  for batch in source.batches(64, progress=False):
    images.append(batch.images[batch.valid]); labels.append(batch.labels[batch.valid])
  compare('demo ViT (trained)', params, config,
          training.Probe(np.concatenate(images), np.concatenate(labels)), ablation=True)

  config = model_lib.get_config('ViT-B/16')
  params = model_lib.init_params(config, jax.random.key(0))
  params = jax.tree.map(np.asarray, params)
  rng = np.random.default_rng(0)
  params['head']['kernel'] = rng.normal(0, 0.05, params['head']['kernel'].shape).astype(np.float32)
  for i in range(config.num_layers):
    att = params['Transformer'][f'encoderblock_{i}']['MultiHeadDotProductAttention_1']
    for name in ('query', 'key'):
      att[name]['kernel'] = att[name]['kernel'] * 2.
  images = rng.uniform(-1, 1, (args.b16_images, 224, 224, 3)).astype(np.float32)
  compare('ViT-B/16-shaped (random weights, query/key x2)', params, config,
          training.Probe(images), ablation=False)


if __name__ == '__main__':
  main()
