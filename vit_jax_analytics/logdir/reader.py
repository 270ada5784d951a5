"""Reads a run directory back: every value by tag, or an analysis's typed result.
For tests and notebooks (the plugin reads through TensorBoard's data provider). A run
directory may be on an object store (an fsspec URL, `storage.py`)."""

from __future__ import annotations

import json

from tensorboard.compat.proto import event_pb2
from tensorboard.util import tensor_util

from vit_jax_analytics import storage
from vit_jax_analytics.errors import ReadError
from vit_jax_analytics.logdir import metadata, records, schema
from vit_jax_analytics.logdir.writer import file_analysis_step


def steps(run_dir) -> dict:
  """{analysis: sorted steps written} of a run directory."""
  out = {}
  for path in storage.location(run_dir).glob('events.out.tfevents.*'):
    analysis, step = file_analysis_step(path)
    if analysis is not None:
      out.setdefault(analysis, set()).add(step)
  return {a: sorted(s) for a, s in sorted(out.items())}


def read_run(run_dir, step=None, analyses=None) -> dict:
  """{tag: value} of every vit_analytics value in a run directory at `step` (default:
  each analysis at its latest step; the newest file wins), of `analyses` only when given:
  arrays as numpy, json as Python objects, png as bytes."""
  latest = {a: s[-1] for a, s in steps(run_dir).items()}
  files = []
  for p in sorted(storage.location(run_dir).glob('events.out.tfevents.*')):
    analysis, file_step = file_analysis_step(p)
    if analysis is not None and (analyses is None or analysis in analyses) and \
        file_step == (latest[analysis] if step is None else step):
      files.append(p)
  return _read_files(files)


def read_series(run_dir, tag: str) -> dict:
  """{step: value} of one tag over every step written (e.g. 'strength/entropy')."""
  analysis = tag.split('/', 1)[0]
  return {s: _read_files([p for p in sorted(storage.location(run_dir).glob('events.out.tfevents.*'))
                          if file_analysis_step(p) == (analysis, s)]).get(tag)
          for s in steps(run_dir).get(analysis, [])}


def _read_files(paths) -> dict:
  values = {}
  for path in paths:
    for record in records.read_records(path):
      event = event_pb2.Event.FromString(record)
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


def _read_result(run_dir, step, analysis: str, from_tags):
  """from_tags(the analysis's tags) at `step`; ReadError (one line, naming the directory)
  where the run or the analysis is missing, or its values are not of this format."""
  run_dir = storage.location(run_dir)
  if not run_dir.is_dir():
    raise ReadError(f'{run_dir}: no such run directory')
  written = steps(run_dir).get(analysis)
  if not written:
    raise ReadError(f'{run_dir}: no {analysis} results in this run directory (expected an '
                    f'event file written by `vit-analytics {analysis}` or `analyze`)')
  if step is not None and step not in written:
    raise ReadError(f'{run_dir}: no {analysis} results at step {step}; steps written: '
                    f'{written[:20]}')
  tags = read_run(run_dir, step, (analysis,))
  if f'{analysis}/meta' not in tags:
    raise ReadError(f'{run_dir}: the {analysis} event file holds no {analysis}/meta; '
                    f'expected a complete file written by vit-analytics')
  try:
    return from_tags(tags)
  except (KeyError, TypeError, ValueError) as e:
    raise ReadError(f'{run_dir}: the {analysis} values are incomplete or of another format '
                    f'({type(e).__name__}: {str(e)[:100]})') from None


def read_importance(run_dir, step=None):
  """-> results.ImportanceResult (float32 as stored) at `step` (default the latest)."""
  return _read_result(run_dir, step, 'importance', schema.importance_from)


def read_strength(run_dir, step=None):
  """-> results.StrengthResult (float32 as stored) at `step` (default the latest)."""
  return _read_result(run_dir, step, 'strength', schema.strength_from)


def read_patterns(run_dir, step=None):
  """-> results.PatternResult (float32 as stored) at `step` (default the latest)."""
  return _read_result(run_dir, step, 'patterns', schema.patterns_from)
