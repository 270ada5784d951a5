"""Runs of random typed results of any model's shape, written through the real schema: the
plugin's tests and benchmarks/bench_plugin.py draw them (no analysis is run)."""

import numpy as np

from vit_jax_analytics import results as R
from vit_jax_analytics.logdir import schema, writer


def meta(config, images: int, classes: int, checkpoint: str) -> dict:
  """The common meta of a run of `images` images labelled round-robin over `classes`."""
  return {'checkpoint': checkpoint, 'config': config.to_dict(), 'image_folder': 'images',
          'image_names': [f'{i:05d}.png' for i in range(images)],
          'labels': [int(i % classes) for i in range(images)], 'class_names': None,
          'mean': [0.5] * 3, 'std': [0.5] * 3, 'versions': {}, 'options': {}}


def random_importance(config, images: int, rng, classes: int,
                      orders=('taylor', 'random_0'), points: int = 3,
                      variants=(('v0', 'variant 0'),), partial_heads: int = 2):
  """An ImportanceResult of uniform random values, per-image arrays included."""
  L, H = config.num_layers, config.num_heads
  u = lambda *s: rng.uniform(0, 1, s).astype(np.float32)
  return R.ImportanceResult(
      **{k: u(L, H) for k in schema.IMPORTANCE_DEFINITIONS},
      baseline=R.Baseline(1.0, 0.8, 0.95),
      curves=R.PruningCurves(np.linspace(0, L * H, points).astype(int), tuple(orders),
                             {m: R.Estimate(u(len(orders), points)) for m in schema.METRICS}),
      partial=R.PartialPruning(
          np.arange(partial_heads), tuple(variants),
          {m: R.Estimate(u(partial_heads, len(variants)) - 0.5) for m in schema.METRICS}, {}),
      images=images, labelled_images=images, label_free=False,
      **{k: u(images, L, H) for k in schema.PER_IMAGE},
      per_image_loss=u(images),
      per_image_prediction=rng.integers(0, classes, images).astype(np.int32))


def write_importance_run(logdir, run: str, config, images: int, classes: int, seed: int = 0,
                         checkpoint: str = 'random', **kw) -> str:
  """An importance-only run of random values (e.g. 10,000 images for the image overview)."""
  rng = np.random.default_rng(seed)
  result = random_importance(config, images, rng, classes, **kw)
  writer.write_analysis(logdir, run, 'importance',
                        schema.importance_values(result, meta(config, images, classes,
                                                              checkpoint)))
  return run
