"""Writes analysis results to a TensorBoard logdir — the only writer of that format.

The format is documented in docs/logdir-format.md. In short: each analysis of a run is one
TensorBoard event file, `<logdir>/<run>/events.out.tfevents.<time>.<host>.<analysis>`,
holding one value per tag at step 0 (so TensorBoard's per-tag sampling drops nothing),
each with `vit_analytics` plugin metadata. The file is written under a name TensorBoard
ignores and renamed into place when complete; a previous file of the same analysis is then
removed. Partial progress for resuming lives in `<logdir>/<run>/.vit_analytics_state/`.
"""

from __future__ import annotations

import io
import json
import os
import re
import socket
import time
from pathlib import Path
from typing import Mapping, Optional

import numpy as np
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter
from tensorboard.util import tensor_util

from tb_plugin import metadata
from vit_jax_analytics.errors import VitAnalyticsError

_RUN_NAME = re.compile(r'^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$')
STATE_DIR = '.vit_analytics_state'


def check_run_name(run: str) -> str:
  if not _RUN_NAME.match(run or '') or '..' in run:
    raise VitAnalyticsError(f'run name {run!r}: expected letters, digits, ".", "_" or "-" '
                            f'(at most 128, not starting with a dot)')
  return run


def run_directory(logdir, run: str) -> Path:
  return Path(logdir) / check_run_name(run)


class Value:
  """One tagged value of an analysis: an array, a JSON-able object, or PNG bytes."""

  def __init__(self, kind, data, axes=None, description=''):
    self.kind, self.data, self.axes, self.description = kind, data, axes, description

  @classmethod
  def array(cls, data, axes=None, description=''):
    data = np.asarray(data)
    if axes is not None and len(axes) != data.ndim:
      raise ValueError(f'axes {axes} do not match an array of shape {data.shape}')
    if data.dtype == np.float64:
      data = data.astype(np.float32)
    return cls('array', data, axes, description)

  @classmethod
  def json(cls, obj, description=''):
    return cls('json', obj, None, description)

  @classmethod
  def png(cls, image_u8, description=''):
    """image_u8: [H, W] or [H, W, 3|4] uint8."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image_u8, np.uint8)).save(buf, format='PNG')
    return cls('png', buf.getvalue(), None, description)

  def to_proto(self, tag: str, analysis: str) -> summary_pb2.Summary.Value:
    if self.kind == 'array':
      tensor = tensor_util.make_tensor_proto(self.data)
    elif self.kind == 'json':
      tensor = tensor_util.make_tensor_proto(
          np.array(json.dumps(self.data, allow_nan=False).encode(), dtype=object))
    else:
      tensor = tensor_util.make_tensor_proto(np.array(self.data, dtype=object))
    meta = metadata.create_summary_metadata(analysis, self.kind, self.description, self.axes)
    return summary_pb2.Summary.Value(tag=tag, tensor=tensor, metadata=meta)


def write_analysis(logdir, run: str, analysis: str, values: Mapping[str, Value]) -> Path:
  """Writes `values` as tags `<analysis>/<name>` of one event file in <logdir>/<run>,
  atomically, replacing the previous file of the same analysis. Returns its path."""
  if analysis not in metadata.ANALYSES:
    raise ValueError(f'analysis must be one of {metadata.ANALYSES}, got {analysis!r}')
  directory = run_directory(logdir, run)
  directory.mkdir(parents=True, exist_ok=True)
  now = time.time()
  final = directory / (f'events.out.tfevents.{int(now):010d}.{socket.gethostname()}.'
                       f'{os.getpid()}.{analysis}')
  tmp = directory / f'.{analysis}.{os.getpid()}.partial'  # no 'tfevents': TensorBoard skips it
  try:
    with open(tmp, 'wb') as f:
      writer = RecordWriter(f)
      writer.write(event_pb2.Event(wall_time=now,
                                   file_version='brain.Event:2').SerializeToString())
      for name, value in values.items():
        summary = summary_pb2.Summary(value=[value.to_proto(f'{analysis}/{name}', analysis)])
        writer.write(event_pb2.Event(wall_time=now, step=0, summary=summary).SerializeToString())
      f.flush()
      os.fsync(f.fileno())
    previous = existing_analysis_files(directory, analysis)
    os.replace(tmp, final)
    for old in previous:
      if old != final:
        old.unlink(missing_ok=True)
  finally:
    tmp.unlink(missing_ok=True)
  return final


def existing_analysis_files(directory: Path, analysis: str) -> list:
  return sorted(directory.glob(f'events.out.tfevents.*.{analysis}'))


def read_run(run_dir) -> dict:
  """{tag: value} of every vit_analytics value in a run directory (newest file wins):
  arrays as numpy, json as Python objects, png as bytes. For tests and notebooks."""
  from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

  values = {}
  for path in sorted(Path(run_dir).glob('events.out.tfevents.*')):
    for event in EventFileLoader(str(path)).Load():
      for v in event.summary.value:
        if v.metadata.plugin_data.plugin_name != metadata.PLUGIN_NAME:
          continue
        kind = metadata.parse_plugin_metadata(v.metadata.plugin_data.content)['kind']
        arr = tensor_util.make_ndarray(v.tensor)
        if kind == 'array':
          values[v.tag] = arr
        elif kind == 'json':
          values[v.tag] = json.loads(arr.item())
        else:
          values[v.tag] = arr.item()
  return values


# --- resumable progress --------------------------------------------------------------------

def _state_path(logdir, run, analysis, key) -> Path:
  return run_directory(logdir, run) / STATE_DIR / f'{analysis}-{key}.npz'


def save_progress(logdir, run: str, analysis: str, key: str, next_batch: int,
                  arrays: Mapping[str, np.ndarray]) -> None:
  """Atomically records accumulators after `next_batch` batches for a later resume."""
  path = _state_path(logdir, run, analysis, key)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix('.tmp.npz')
  np.savez(tmp, __next_batch__=np.asarray(next_batch), **arrays)
  os.replace(tmp, path)


def load_progress(logdir, run: str, analysis: str, key: str) -> Optional[tuple]:
  """(next_batch, arrays) saved by an interrupted run with the same key, or None."""
  path = _state_path(logdir, run, analysis, key)
  if not path.exists():
    return None
  try:
    with np.load(path) as f:
      arrays = {k: f[k] for k in f.files if k != '__next_batch__'}
      return int(f['__next_batch__']), arrays
  except (OSError, ValueError, KeyError):
    return None  # unreadable state: start over


def clear_progress(logdir, run: str, analysis: str, key: str) -> None:
  path = _state_path(logdir, run, analysis, key)
  path.unlink(missing_ok=True)
  try:
    path.parent.rmdir()
  except OSError:
    pass


# --- the analyses' tags ----------------------------------------------------------------------

LH = ('layer', 'head')
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


def write_importance(logdir, run: str, result: dict, meta: dict) -> Path:
  """Tags importance/<name>; see docs/logdir-format.md."""
  values = {'meta': Value.json({
      **meta, 'definitions': IMPORTANCE_DEFINITIONS, 'baseline': result['baseline'],
      'images': result['images'], 'labelled_images': result['labelled_images'],
      'label_free': result['label_free'], 'curve_orders': result['curve_orders'],
      'partial_variants': [{'name': n, 'description': d} for n, d in result['partial_variants']],
  })}
  for name, description in IMPORTANCE_DEFINITIONS.items():
    values[name] = Value.array(result[name], LH, description)
  values['curve_counts'] = Value.array(result['curve_counts'], ('point',),
                                       'heads removed at each point of the pruning curves')
  for m in ('top1', 'kl', 'loss'):
    values[f'curve_{m}'] = Value.array(result[f'curve_{m}'], ('order', 'point'),
                                       f'mean {m} with the first heads of each order removed')
  values['partial_heads'] = Value.array(result['partial_heads'], ('head_index',),
                                        'flat index layer * heads + head of each row')
  for m in ('loss', 'top1', 'top5', 'kl'):
    values[f'partial_{m}'] = Value.array(result[f'partial_{m}'], ('head_index', 'variant'),
                                         f'{m} change with part of the head removed')
  for k in ('per_image_taylor', 'per_image_ablation_loss', 'per_image_ablation_kl'):
    if k in result:
      values[k] = Value.array(result[k], ('image', 'layer', 'head'))
  return write_analysis(logdir, run, 'importance', values)


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
}
_STRENGTH_AXES = {
    'offset_mean': ('layer', 'head', 'dy', 'dx'), 'offset_ratio': ('layer', 'head', 'dy', 'dx'),
    'offset_pairs': ('dy', 'dx'), 'neighbourhood_share': ('layer', 'head', 'distance'),
    'cls_attention': ('layer', 'head', 'row', 'col'), 'to_cls': ('layer', 'head', 'row', 'col'),
}


def write_strength(logdir, run: str, result: dict, meta: dict, map_images=()) -> Path:
  """Tags strength/<name>; see docs/logdir-format.md. map_images: [M, S, S, 3] uint8, the
  images of `map_image_index` as the model saw them."""
  from vit_jax_analytics.strength import QUANTILES, SCALARS, scalar_ranges

  values = {'meta': Value.json({
      **meta, 'definitions': STRENGTH_DEFINITIONS, 'images': result['images'],
      'quantiles': list(QUANTILES),
      'histogram_ranges': {k: list(v) for k, v in scalar_ranges(
          _config_from_meta(meta)).items()},
      'map_image_index': [int(i) for i in result.get('map_image_index', [])]})}
  for name, description in STRENGTH_DEFINITIONS.items():
    if name in result:
      values[name] = Value.array(result[name], _STRENGTH_AXES.get(name, LH), description)
  for name in SCALARS:
    if f'{name}_quantiles' in result:
      values[f'{name}_quantiles'] = Value.array(result[f'{name}_quantiles'],
                                                LH + ('quantile',))
      values[f'{name}_hist'] = Value.array(result[f'{name}_hist'], LH + ('bin',))
  # One tag per stored image, so the image view reads one image's maps at a time.
  for k in range(len(result.get('map_image_index', []))):
    values[f'map_attention/{k}'] = Value.array(result['map_attention'][k],
                                               ('layer', 'head', 'query', 'key'))
    values[f'map_rollout/{k}'] = Value.array(result['map_rollout'][k], ('layer', 'query', 'key'))
  for k, image in enumerate(map_images):
    values[f'map_image/{k}'] = Value.png(image)
  return write_analysis(logdir, run, 'strength', values)


def _config_from_meta(meta):
  from vit_jax_analytics.model import ViTConfig
  return ViTConfig.from_dict(meta['config'])


def _to_png_grid(maps: np.ndarray, pad: int = 1) -> np.ndarray:
  """[g, g, c, c] values in [0, 1] -> one [g*(c+pad)+pad]^2 grayscale uint8 image."""
  g, _, c, _ = maps.shape
  size = g * (c + pad) + pad
  img = np.full((size, size), 255, np.uint8)
  for r in range(g):
    for col in range(g):
      y, x = pad + r * (c + pad), pad + col * (c + pad)
      img[y:y + c, x:x + c] = np.clip(255 - maps[r, col] * 255, 0, 255).astype(np.uint8)
  return img


def write_patterns(logdir, run: str, result: dict, samples, meta: dict) -> Path:
  """Tags patterns/<name>; see docs/logdir-format.md."""
  history = result['history']
  values = {'meta': Value.json({
      **meta, 'cluster_names': result['cluster_names'],
      'reconstruction_error': result['reconstruction_error'],
      'data_variance': result['data_variance'], 'best_epoch': history['best_epoch'],
      'stopped_early': history['stopped_early'], 'samples': int(len(samples.index))})}
  values['map'] = Value.array(result['map'].astype(np.float32),
                              ('grid_row', 'grid_col', 'dy', 'dx'),
                              'the latent plane decoded on a regular grid (pattern peak 1)')
  values['map_image'] = Value.png(_to_png_grid(result['map']), 'the decoded map, dark = strong')
  values['map_extent'] = Value.array(result['map_extent'], ('axis', 'bound'),
                                     'latent [[x0, x1], [y0, y1]] covered by the map')
  values['head_density'] = Value.array(result['head_density'],
                                       ('layer', 'head', 'grid_row', 'grid_col'),
                                       "share of each head's samples in each map cell")
  values['head_cluster'] = Value.array(result['head_cluster'], LH, 'k-means cluster of each head')
  values['cluster_pattern'] = Value.array(result['cluster_pattern'], ('cluster', 'dy', 'dx'),
                                          "mean re-centred attention of the cluster's heads")
  values['head_reconstruction_error'] = Value.array(result['head_reconstruction_error'], LH)
  values['train_loss'] = Value.array(np.asarray(history['train_loss']), ('epoch',))
  values['val_loss'] = Value.array(np.asarray(history['val_loss']), ('epoch',))
  values['sample_latent'] = Value.array(result['latent'], ('sample', 'axis'))
  values['sample_cell'] = Value.array(result['sample_cells'], ('sample', 'rowcol'))
  values['sample_index'] = Value.array(samples.index, ('sample', 'image_layer_head_query'))
  values['sample_recentred'] = Value.array(samples.recentred, ('sample', 'dy', 'dx'))
  if samples.plain is not None:
    values['sample_plain'] = Value.array(samples.plain, ('sample', 'row', 'col'),
                                         'the same attention on the n x n patch grid')
  return write_analysis(logdir, run, 'patterns', values)
