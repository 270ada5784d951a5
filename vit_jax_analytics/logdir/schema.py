"""Each analysis's tags: its typed result as `writer.Value`s, and back from what a reader
returns. Tag by tag as in docs/logdir-format.md."""

from __future__ import annotations

import dataclasses

import numpy as np

from vit_jax_analytics.logdir.writer import Value
from vit_jax_analytics.results import (ABLATION_METRICS as METRICS, Baseline, Estimate,
                                       ImportanceResult, PartialPruning, PatternResult,
                                       PruningCurves, Samples, ScalarDistribution,
                                       StrengthResult, TrainingHistory)

LH = ('layer', 'head')
IMAGE_LH = ('image', 'layer', 'head')

# --- importance ------------------------------------------------------------------------------

IMPORTANCE_DEFINITIONS = {
    'taylor': 'mean over images of |dL/d xi[l,h]| at xi = 1 (Michel et al. 2019); L is the '
              'cross-entropy with the target',
    'taylor_normalized': 'taylor, L2-normalised within each layer',
    'ablation_loss': 'increase of the mean loss when only this head is masked out',
    'ablation_top1': 'drop of top-1 accuracy when only this head is masked out',
    'ablation_top5': 'drop of top-5 accuracy when only this head is masked out',
    'ablation_kl': 'mean KL(p_unmasked || p_masked) when only this head is masked out '
                   '(label-free)',
}
PER_IMAGE = ('per_image_taylor', 'per_image_ablation_loss', 'per_image_ablation_kl')
# Per image, the unmasked model: [image] (with --per-image).
PER_IMAGE_MODEL = {
    'per_image_loss': 'cross-entropy of the unmasked model with the target, per image '
                      '(NaN if unreadable)',
    'per_image_prediction': "the unmasked model's top-1 class per image (-1 if unreadable)",
}
POOL = ('pool_taylor', 'pool_ablation_loss', 'pool_ablation_top1', 'pool_ablation_top5',
        'pool_ablation_kl')


def importance_definitions(objective) -> dict:
  """IMPORTANCE_DEFINITIONS, reworded for the objective of the run (None: classification)."""
  if not objective or objective.get('kind', 'classification') == 'classification' and (
      objective.get('classes') is None):
    return dict(IMPORTANCE_DEFINITIONS)
  d = objective['definitions']
  return {'taylor': d['taylor'], 'taylor_normalized': 'taylor, L2-normalised within each layer',
          'ablation_loss': f"increase of the mean {d['loss']} when only this head is masked out",
          'ablation_top1': f"drop of {d['top1']} when only this head is masked out",
          'ablation_top5': f"drop of {d['top5']} when only this head is masked out",
          'ablation_kl': f"mean {d['kl']} when only this head is masked out"}


def _array(data, *args):
  return None if data is None else Value.array(data, *args)


def thumbnail_atlas(images: np.ndarray) -> tuple:
  """[M, s, s, 3] uint8 -> (one PNG-able [rows * s, columns * s, 3] atlas, columns):
  thumbnail m at row m // columns, column m % columns."""
  m, s = len(images), images.shape[1]
  columns = max(1, int(np.ceil(np.sqrt(m))))
  rows = max(1, -(-m // columns))
  atlas = np.full((rows * s, columns * s, 3), 255, np.uint8)
  for k, image in enumerate(images):
    atlas[k // columns * s:(k // columns + 1) * s, k % columns * s:(k % columns + 1) * s] = image
  return atlas, columns


def importance_values(r: ImportanceResult, meta: dict, thumbnails=None,
                      thumbnail_budget_mib=None) -> dict:
  """thumbnails: (index [M], images [M, s, s, 3] uint8) for the image overview, or None."""
  definitions = importance_definitions(r.objective)
  thumbs = {}
  if thumbnails is not None and len(thumbnails[0]):
    atlas, columns = thumbnail_atlas(np.asarray(thumbnails[1]))
    thumbs = {'thumbnails': {'index': [int(i) for i in thumbnails[0]],
                             'px': int(thumbnails[1].shape[1]), 'columns': columns,
                             'budget_mib': thumbnail_budget_mib}}
  values = {'meta': Value.json({
      **thumbs,
      **meta, 'definitions': definitions, 'objective': r.objective,
      'pool_heads': r.pool_taylor is not None, 'baseline': dataclasses.asdict(r.baseline),
      'images': r.images, 'labelled_images': r.labelled_images, 'label_free': r.label_free,
      'curve_orders': list(r.curves.orders),
      'partial_variants': [{'name': n, 'description': d} for n, d in r.partial.variants],
      'subset_images': r.subset_images,
      'subset_baseline': (dataclasses.asdict(r.subset_baseline)
                          if r.subset_baseline is not None else None),
  })}
  if thumbs:
    values['thumbnails'] = Value.png(atlas, 'thumbnails of meta.thumbnails.index, px square, '
                                            'in rows of meta.thumbnails.columns')
  for name, description in definitions.items():
    values[name] = _array(getattr(r, name), LH, description)
  for name in POOL:  # the MAP head's heads: the pooling row
    if getattr(r, name) is not None:
      values[name] = Value.array(getattr(r, name), ('head',),
                                 f"{definitions[name[len('pool_'):]]} (MAP pooling head)")
  values['curve_counts'] = _array(r.curves.counts, ('point',),
                                  'heads removed at each point of the pruning curves')
  for m in METRICS:
    values[f'curve_{m}'] = _array(r.curves.metrics[m].mean, ('order', 'point'),
                                  f'mean {m} with the first heads of each order removed')
  values['partial_heads'] = _array(r.partial.heads, ('head_index',),
                                   'flat index layer * heads + head of each row')
  for m in METRICS:
    values[f'partial_{m}'] = _array(r.partial.change[m].mean, ('head_index', 'variant'),
                                    f'{m} change with part of the head removed')
  for k in PER_IMAGE:
    values[k] = _array(getattr(r, k), IMAGE_LH)
  if r.subset_index is not None:
    values['subset_index'] = Value.array(
        np.asarray(r.subset_index, np.int64), ('subset_image',),
        'images (indices into image_names) the pruning curves and partial pruning averaged')
    for m in METRICS:
      whole = r.partial.whole_head.get(m, Estimate(None))
      values[f'curve_{m}_se'] = _array(r.curves.metrics[m].se, ('order', 'point'),
                                       f'standard error of curve_{m} over the subset')
      values[f'partial_{m}_se'] = _array(r.partial.change[m].se,
                                         ('head_index', 'variant'),
                                         f'standard error of partial_{m} over the subset')
      values[f'partial_whole_{m}'] = _array(
          whole.mean, ('head_index',),
          f'{m} change with the whole head removed, over the same subset as partial_{m}')
      values[f'partial_whole_{m}_se'] = _array(
          whole.se, ('head_index',), f'standard error of partial_whole_{m} over the subset')
  for k, description in PER_IMAGE_MODEL.items():
    values[k] = _array(getattr(r, k), ('image',), description)
  # Metrics not computed (in-training analysis without the ablation scan or curves) are
  # None and have no tag.
  return {k: v for k, v in values.items() if v is not None}


def importance_from(tags: dict) -> ImportanceResult:
  """The result from a run's tags ({tag: value} as `reader.read_run` returns them)."""
  get = lambda name: tags.get(f'importance/{name}')
  meta = get('meta')
  whole = {m: Estimate(get(f'partial_whole_{m}'), get(f'partial_whole_{m}_se'))
           for m in METRICS if get(f'partial_whole_{m}') is not None}
  return ImportanceResult(
      **{name: get(name) for name in IMPORTANCE_DEFINITIONS},
      baseline=Baseline(**meta['baseline']),
      curves=PruningCurves(get('curve_counts'), tuple(meta['curve_orders']),
                           {m: Estimate(get(f'curve_{m}'), get(f'curve_{m}_se'))
                            for m in METRICS}),
      partial=PartialPruning(
          get('partial_heads'),
          tuple((v['name'], v['description']) for v in meta['partial_variants']),
          {m: Estimate(get(f'partial_{m}'), get(f'partial_{m}_se')) for m in METRICS}, whole),
      images=meta['images'], labelled_images=meta['labelled_images'],
      label_free=meta['label_free'], **{k: get(k) for k in PER_IMAGE},
      subset_index=get('subset_index'),
      subset_baseline=(Baseline(**meta['subset_baseline']) if meta.get('subset_baseline')
                       else None),
      **{k: get(k) for k in PER_IMAGE_MODEL},
      objective=meta.get('objective'), **{k: get(k) for k in POOL})


# --- strength --------------------------------------------------------------------------------

STRENGTH_DEFINITIONS = {
    'offset_mean': 'mean attention weight a query patch gives the key patch at offset '
                   '(dy, dx) = key - query, over valid query positions and images',
    'offset_ratio': 'offset_mean divided by the uniform baseline 1/T (T tokens)',
    'offset_pairs': '(query, key) pairs contributing to each offset',
    'neighbourhood_share': "share of a query patch's attention on patches within Chebyshev "
                           'distance 0, 1, 2, ... (cumulative), mean over queries and images',
    'mean_distance': 'attention-weighted distance between query and key patch centres in '
                     'pixels (Dosovitskiy et al. 2021, Fig. 7), over patch keys, mean over '
                     'images',
    'entropy': 'entropy (nats) of a query patch\'s attention, mean over queries and images',
    'self_share': 'attention of a query patch to itself, mean over queries and images',
    'cls_share': 'attention of a query patch to the class token, mean over queries and images',
    'cls_attention': "the class token's attention to each patch, mean over images",
    'to_cls': "each patch's attention to the class token, mean over images",
    'pool_attention': "the MAP pooling head's attention (its learned probe, per head) to "
                      'each patch, mean over images: where a model without a class token '
                      'looks',
}
_STRENGTH_AXES = {
    'offset_mean': ('layer', 'head', 'dy', 'dx'), 'offset_ratio': ('layer', 'head', 'dy', 'dx'),
    'offset_pairs': ('dy', 'dx'), 'neighbourhood_share': ('layer', 'head', 'distance'),
    'cls_attention': ('layer', 'head', 'row', 'col'), 'to_cls': ('layer', 'head', 'row', 'col'),
    'pool_attention': ('head', 'row', 'col'),
}


def strength_values(r: StrengthResult, meta: dict, map_images=()) -> dict:
  """map_images: [M, S, S, 3] uint8, the images of `map_image_index` as the model saw them."""
  values = {'meta': Value.json({
      **meta, 'definitions': STRENGTH_DEFINITIONS, 'images': r.images,
      'quantiles': list(r.quantile_levels),
      'histogram_ranges': {k: list(d.range) for k, d in r.distributions.items()},
      'map_image_index': [int(i) for i in r.map_image_index],
      **({'baselines': r.baselines} if r.baselines else {})})}
  for name, description in STRENGTH_DEFINITIONS.items():
    if getattr(r, name) is not None:
      values[name] = Value.array(getattr(r, name), _STRENGTH_AXES.get(name, LH), description)
  for name, d in r.distributions.items():
    values[f'{name}_quantiles'] = Value.array(d.quantiles, LH + ('quantile',))
    values[f'{name}_hist'] = Value.array(d.hist, LH + ('bin',))
  # One tag per stored image, so the image view reads one image's maps at a time.
  for k in range(len(r.map_image_index)):
    values[f'map_attention/{k}'] = Value.array(r.map_attention[k],
                                               ('layer', 'head', 'query', 'key'))
    values[f'map_rollout/{k}'] = Value.array(r.map_rollout[k], ('layer', 'query', 'key'))
    if r.map_pool_attention is not None:
      values[f'map_pool_attention/{k}'] = Value.array(
          r.map_pool_attention[k], ('head', 'key'), "the MAP pooling head's attention")
      values[f'map_pool_rollout/{k}'] = Value.array(
          r.map_pool_rollout[k], ('key',), 'rollout started from the MAP pooling head')
  for k, image in enumerate(map_images):
    values[f'map_image/{k}'] = Value.png(image)
  if r.qk_embedding is not None:
    values['qk_embedding'] = Value.array(
        r.qk_embedding, ('layer', 'head', 'role', 'token', 'axis'),
        'queries (role 0) and keys (role 1) of the tokens of the embedded images, projected '
        'together onto the first two principal axes of each head; token m * T + t is token t '
        'of stored map qk_images[m]')
    values['qk_images'] = Value.array(r.qk_images, ('image',),
                                      'the stored map (index k of map_image/k) of each embedded image')
  return values


def strength_from(tags: dict) -> StrengthResult:
  get = lambda name: tags.get(f'strength/{name}')
  meta = get('meta')
  maps = range(len(meta['map_image_index']))
  stack = lambda name: np.stack([get(f'{name}/{k}') for k in maps]) if maps else None
  return StrengthResult(
      images=meta['images'], **{name: get(name) for name in STRENGTH_DEFINITIONS},
      quantile_levels=tuple(meta['quantiles']),
      distributions={s: ScalarDistribution(tuple(rng), get(f'{s}_hist'), get(f'{s}_quantiles'))
                     for s, rng in meta['histogram_ranges'].items()},
      map_image_index=np.asarray(meta['map_image_index'], np.int32),
      baselines=meta.get('baselines'), qk_embedding=get('qk_embedding'),
      qk_images=get('qk_images'),
      map_attention=stack('map_attention'), map_rollout=stack('map_rollout'),
      **({'map_pool_attention': stack('map_pool_attention'),
          'map_pool_rollout': stack('map_pool_rollout')}
         if maps and get('map_pool_attention/0') is not None else {}))


# --- patterns --------------------------------------------------------------------------------

def map_png(maps: np.ndarray, pad: int = 1) -> np.ndarray:
  """[g, g, c, c] values in [0, 1] -> one [g*(c+pad)+pad]^2 grayscale uint8 image."""
  g, _, c, _ = maps.shape
  size = g * (c + pad) + pad
  img = np.full((size, size), 255, np.uint8)
  for r in range(g):
    for col in range(g):
      y, x = pad + r * (c + pad), pad + col * (c + pad)
      img[y:y + c, x:x + c] = np.clip(255 - maps[r, col] * 255, 0, 255).astype(np.uint8)
  return img


def patterns_values(r: PatternResult, meta: dict) -> dict:
  s, h = r.samples, r.history
  values = {'meta': Value.json({
      **meta, 'cluster_names': list(r.cluster_names),
      'reconstruction_error': r.reconstruction_error, 'data_variance': r.data_variance,
      'best_epoch': h.best_epoch, 'stopped_early': h.stopped_early,
      'samples': int(len(s.index))})}
  values['map'] = Value.array(r.map.astype(np.float32), ('grid_row', 'grid_col', 'dy', 'dx'),
                              'the latent plane decoded on a regular grid (pattern peak 1)')
  values['map_image'] = Value.png(map_png(r.map), 'the decoded map, dark = strong')
  values['map_extent'] = Value.array(r.map_extent, ('axis', 'bound'),
                                     'latent [[x0, x1], [y0, y1]] covered by the map')
  values['head_density'] = Value.array(r.head_density, ('layer', 'head', 'grid_row', 'grid_col'),
                                       "share of each head's samples in each map cell")
  values['head_cluster'] = Value.array(r.head_cluster, LH, 'k-means cluster of each head')
  values['cluster_pattern'] = Value.array(r.cluster_pattern, ('cluster', 'dy', 'dx'),
                                          "mean re-centred attention of the cluster's heads")
  values['head_reconstruction_error'] = Value.array(r.head_reconstruction_error, LH)
  values['train_loss'] = Value.array(np.asarray(h.train_loss), ('epoch',))
  values['val_loss'] = Value.array(np.asarray(h.val_loss), ('epoch',))
  values['sample_latent'] = Value.array(r.sample_latent, ('sample', 'axis'))
  values['sample_cell'] = Value.array(r.sample_cell, ('sample', 'rowcol'))
  values['sample_index'] = Value.array(s.index, ('sample', 'image_layer_head_query'))
  values['sample_recentred'] = Value.array(s.recentred, ('sample', 'dy', 'dx'))
  if s.plain is not None:
    values['sample_plain'] = Value.array(s.plain, ('sample', 'row', 'col'),
                                         'the same attention on the n x n patch grid')
  if s.grids is not None:  # NaFlex: each sample's own image grid (the plain map at its top left)
    values['sample_grid'] = Value.array(s.grids, ('sample', 'hw'),
                                        "each sample's own patch grid (h, w)")
  return values


def patterns_from(tags: dict) -> PatternResult:
  get = lambda name: tags.get(f'patterns/{name}')
  meta = get('meta')
  train, val = get('train_loss'), get('val_loss')
  return PatternResult(
      map=get('map'), map_extent=get('map_extent'), sample_latent=get('sample_latent'),
      sample_cell=get('sample_cell'), head_density=get('head_density'),
      head_cluster=get('head_cluster'), cluster_pattern=get('cluster_pattern'),
      cluster_names=tuple(meta['cluster_names']),
      reconstruction_error=meta['reconstruction_error'], data_variance=meta['data_variance'],
      head_reconstruction_error=get('head_reconstruction_error'),
      history=TrainingHistory(tuple(train.tolist()), tuple(val.tolist()), meta['best_epoch'],
                              meta['stopped_early']),
      samples=Samples(get('sample_recentred'), get('sample_plain'), None, get('sample_index'),
                      get('sample_grid')))


VALUES = {ImportanceResult: ('importance', importance_values),
          StrengthResult: ('strength', strength_values),
          PatternResult: ('patterns', patterns_values)}
