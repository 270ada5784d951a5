"""The TensorBoard plugin: read-only JSON routes over the format in docs/logdir-format.md,
and the ES-module frontend in static/.

Every run, tag and index parameter is validated against what the data provider lists; no
parameter ever reaches the filesystem, and errors are 4xx JSON bodies.
"""

from __future__ import annotations

import base64
import collections
import json
import time
import mimetypes
import threading
from pathlib import Path

import numpy as np
import werkzeug
from tensorboard.backend import http_util
from tensorboard.data import provider
from tensorboard.plugins import base_plugin
from tensorboard.util import tensor_util
from werkzeug import wrappers

from vit_jax_analytics.logdir import metadata

STATIC = Path(__file__).parent / 'static'
MAX_ARRAY_ELEMENTS = 4_000_000   # larger arrays are served only sliced (index=...)
CACHE_BYTES = 512 * 2 ** 20
LISTING_TTL = 1.0


class BadRequest(Exception):
  def __init__(self, message, code=400):
    super().__init__(message)
    self.code = code


def _json(request, obj, code=200):
  return http_util.Respond(request, json.dumps(obj, allow_nan=False, separators=(',', ':')),
                           'application/json', code=code)


def _route(fn):
  """Wraps a handler: BadRequest -> JSON error with its status code."""
  @wrappers.Request.application
  def handler(self, request):
    try:
      return fn(self, request)
    except BadRequest as e:
      return _json(request, {'error': str(e)}, e.code)
  return handler


def pack(a) -> dict:
  """An array as JSON: shape, dtype ('float32' or 'int32', little-endian) and its bytes in
  base64 — far faster to make and parse than nested lists; NaN stays NaN."""
  a = np.asarray(a)
  a = a.astype('<f4') if a.dtype.kind == 'f' else a.astype('<i4')
  return {'shape': list(a.shape), 'dtype': 'float32' if a.dtype.kind == 'f' else 'int32',
          'data_b64': base64.b64encode(np.ascontiguousarray(a).tobytes()).decode()}


def unpack(obj) -> np.ndarray:
  """Inverse of `pack` (for clients and tests)."""
  dtype = '<f4' if obj['dtype'] == 'float32' else '<i4'
  return np.frombuffer(base64.b64decode(obj['data_b64']), dtype).reshape(obj['shape'])


class VitAnalyticsPlugin(base_plugin.TBPlugin):
  plugin_name = metadata.PLUGIN_NAME

  def __init__(self, context):
    self._provider = context.data_provider
    self._cache = collections.OrderedDict()   # (run, tag, wall_time) -> (value, bytes)
    self._listing = {}                        # experiment id -> (time, tags)
    self._cache_bytes = 0
    self._lock = threading.Lock()

  # --- plugin protocol ---------------------------------------------------------------------

  def is_active(self):
    return False  # activity comes from data_plugin_names

  def data_plugin_names(self):
    return (metadata.PLUGIN_NAME,)

  def frontend_metadata(self):
    return base_plugin.FrontendMetadata(es_module_path='/static/index.js',
                                        tab_name='ViT Analytics')

  def get_plugin_apps(self):
    return {
        '/static/*': self._serve_static,
        '/runs': self._serve_runs,
        '/meta': self._serve_meta,
        '/array': self._serve_array,
        '/png': self._serve_png,
        '/attention': self._serve_attention,
    }

  # --- data access -------------------------------------------------------------------------

  def _ctx(self, request):
    from tensorboard import plugin_util
    return plugin_util.context(request.environ), plugin_util.experiment_id(request.environ)

  def _tags(self, request) -> dict:
    """{run: {tag: parsed plugin metadata + 'wall_time'}} for our plugin's values; the
    listing is reused for LISTING_TTL seconds (TensorBoard reloads every few seconds)."""
    ctx, eid = self._ctx(request)
    with self._lock:
      cached = self._listing.get(eid)
      if cached and time.monotonic() - cached[0] < LISTING_TTL:
        return cached[1]
    listing = self._provider.list_tensors(ctx, experiment_id=eid,
                                          plugin_name=metadata.PLUGIN_NAME)
    out = {}
    for run, tags in listing.items():
      for tag, ts in tags.items():
        try:
          info = metadata.parse_plugin_metadata(ts.plugin_content)
        except ValueError:
          continue  # not ours, or from a newer format: leave it out
        out.setdefault(run, {})[tag] = {**info, 'wall_time': ts.max_wall_time}
    with self._lock:
      self._listing[eid] = (time.monotonic(), out)
    return out

  def _check(self, request, run, tag):
    if not run or not isinstance(run, str):
      raise BadRequest('missing parameter "run"')
    if not tag or not isinstance(tag, str):
      raise BadRequest('missing parameter "tag"')
    tags = self._tags(request)
    if run not in tags:
      raise BadRequest(f'unknown run {run!r}', 404)
    if tag not in tags[run]:
      raise BadRequest(f'unknown tag {tag!r} in run {run!r}', 404)
    return tags[run][tag]

  def _value(self, request, run, tag):
    """The decoded value of (run, tag): numpy array, parsed JSON, or PNG bytes."""
    info = self._check(request, run, tag)
    key = (run, tag, info['wall_time'])  # a re-written analysis has a new wall time
    with self._lock:
      if key in self._cache:
        self._cache.move_to_end(key)
        return info, self._cache[key][0]
    ctx, eid = self._ctx(request)
    data = self._provider.read_tensors(
        ctx, experiment_id=eid, plugin_name=metadata.PLUGIN_NAME, downsample=1,
        run_tag_filter=provider.RunTagFilter(runs=[run], tags=[tag]))
    datum = data.get(run, {}).get(tag)
    if not datum:
      raise BadRequest(f'no data for {tag!r} in run {run!r}', 404)
    arr = datum[-1].numpy
    if info['kind'] == 'json':
      value = json.loads(arr.item())
    elif info['kind'] == 'png':
      value = arr.item()
    else:
      value = arr
    with self._lock:
      self._cache[key] = (value, arr.nbytes if info['kind'] == 'array' else len(arr.item()))
      self._cache_bytes += self._cache[key][1]
      while self._cache_bytes > CACHE_BYTES and len(self._cache) > 1:
        self._cache_bytes -= self._cache.popitem(last=False)[1][1]
    return info, value

  # --- routes ------------------------------------------------------------------------------

  @wrappers.Request.application
  def _serve_static(self, request):
    name = request.path.rsplit('/static/', 1)[-1]
    allowed = {p.name: p for p in STATIC.iterdir() if p.is_file()}
    if name not in allowed:  # no path from the request reaches the filesystem
      return _json(request, {'error': f'no static file {name!r}'}, 404)
    mime = mimetypes.guess_type(name)[0] or 'application/octet-stream'
    if name.endswith('.js'):
      mime = 'application/javascript'
    return http_util.Respond(request, allowed[name].read_bytes(), mime)

  @_route
  def _serve_runs(self, request):
    tags = self._tags(request)
    runs = []
    for run in sorted(tags):
      analyses = sorted({info['analysis'] for info in tags[run].values()})
      runs.append({'run': run, 'analyses': analyses,
                   'tags': {t: {k: v for k, v in info.items() if k in ('analysis', 'kind', 'axes')}
                            for t, info in sorted(tags[run].items())}})
    return _json(request, {'runs': runs})

  @_route
  def _serve_meta(self, request):
    run, analysis = request.args.get('run'), request.args.get('analysis')
    if analysis not in metadata.ANALYSES:
      raise BadRequest(f'parameter "analysis" must be one of {list(metadata.ANALYSES)}')
    _, value = self._value(request, run, f'{analysis}/meta')
    return _json(request, value)

  def _index(self, request, name, size):
    raw = request.args.get(name)
    if raw is None:
      return None
    if len(raw) > 12 or not raw.lstrip('-').isdigit():
      raise BadRequest(f'parameter "{name}" must be an integer, got {raw[:20]!r}')
    i = int(raw)
    if not 0 <= i < size:
      raise BadRequest(f'parameter "{name}" = {i} is out of range [0, {size})')
    return i

  def _requested(self, request, kind):
    """(info, value) of the run and tag a request names, which must be of `kind`."""
    tag = request.args.get('tag')
    info, value = self._value(request, request.args.get('run'), tag)
    if info['kind'] != kind:
      what = {'array': 'an array', 'png': 'an image', 'json': 'JSON'}[kind]
      raise BadRequest(f'tag {tag!r} is not {what} (kind {info["kind"]!r})')
    return info, value

  @_route
  def _serve_array(self, request):
    info, value = self._requested(request, 'array')
    tag = request.args.get('tag')
    axes = list(info.get('axes') or [])
    for name in ('index', 'index2'):  # successive slices along the leading axes
      i = self._index(request, name, value.shape[0] if value.ndim else 0)
      if i is not None:
        value = value[i]
        axes = axes[1:]
    if value.size > MAX_ARRAY_ELEMENTS:
      raise BadRequest(f'array {tag!r} has {value.size} elements; ask for a slice with '
                       f'index=... (first axis {axes[0] if axes else "?"})', 413)
    return _json(request, {'axes': axes, **pack(value)})

  @_route
  def _serve_png(self, request):
    _, value = self._requested(request, 'png')
    return http_util.Respond(request, value, 'image/png')

  @_route
  def _serve_attention(self, request):
    """One query patch of one stored image: its attention in every head [L, H, T] and
    its rollout row in every layer [L, T]."""
    run = request.args.get('run')
    _, meta = self._value(request, run, 'strength/meta')
    image = self._index(request, 'image', len(meta.get('map_image_index', [])))
    if image is None or request.args.get('query') is None:
      raise BadRequest('parameters "image" and "query" are required')
    _, attention = self._value(request, run, f'strength/map_attention/{image}')
    _, rollout = self._value(request, run, f'strength/map_rollout/{image}')
    query = self._index(request, 'query', attention.shape[-2])
    return _json(request, {'attention': pack(attention[:, :, query]),
                           'rollout': pack(rollout[:, query])})
