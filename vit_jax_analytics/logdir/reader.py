"""Reads a run directory back: every value by tag, or an analysis's typed result.
For tests and notebooks (the plugin reads through TensorBoard's data provider)."""

from __future__ import annotations

import json
from pathlib import Path

from tensorboard.util import tensor_util

from vit_jax_analytics.logdir import metadata, schema


def read_run(run_dir) -> dict:
  """{tag: value} of every vit_analytics value in a run directory (newest file wins):
  arrays as numpy, json as Python objects, png as bytes."""
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


def read_importance(run_dir):
  """-> results.ImportanceResult (float32 as stored)."""
  return schema.importance_from(read_run(run_dir))


def read_strength(run_dir):
  """-> results.StrengthResult (float32 as stored)."""
  return schema.strength_from(read_run(run_dir))


def read_patterns(run_dir):
  """-> results.PatternResult (float32 as stored)."""
  return schema.patterns_from(read_run(run_dir))
