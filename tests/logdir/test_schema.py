"""Typed results survive the logdir: written by the schema, read back equal (float32)."""

import dataclasses

import numpy as np

from tests.tiny import arrays_of
from vit_jax_analytics.logdir import reader, schema, writer


def assert_same(got, want):
  a, b = arrays_of(got), arrays_of(want)
  assert set(a) == set(b)
  for k in b:
    np.testing.assert_array_equal(a[k], np.asarray(b[k]).astype(a[k].dtype), err_msg=k)
  for f in dataclasses.fields(want):
    v = getattr(want, f.name)
    if dataclasses.is_dataclass(v) and not isinstance(v, type) and f.name != 'samples':
      assert_same(getattr(got, f.name), v)  # curves, partial pruning: their arrays above
    elif not isinstance(v, (np.ndarray, dict)) and f.name != 'samples':
      assert getattr(got, f.name) == v, f.name


def test_every_analysis_roundtrips(analysis_logdir):
  run = analysis_logdir / 'tiny'
  tags = reader.read_run(run)
  for read, values, analysis in ((reader.read_importance, schema.importance_values, 'importance'),
                                 (reader.read_strength, schema.strength_values, 'strength'),
                                 (reader.read_patterns, schema.patterns_values, 'patterns')):
    result = read(run)
    meta = {k: v for k, v in tags[f'{analysis}/meta'].items()}
    written = values(result, meta) if analysis != 'strength' else values(result, meta, [])
    # The tags a result makes are exactly the ones in the file (images aside: the maps' PNGs
    # and the thumbnail atlas, which the pipeline passes beside the result).
    stored = {t.split('/', 1)[1] for t in tags if t.startswith(f'{analysis}/')}
    assert set(written) == {t for t in stored if not t.startswith('map_image/')} - {'thumbnails'}
    assert analysis != 'importance' or 'thumbnails' in stored
    out = analysis_logdir.parent / f'again-{analysis}'
    writer.write_analysis(out, 'r', analysis, written)
    assert_same(read(out / 'r'), result)
