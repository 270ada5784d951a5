"""The TensorBoard plugin: read-only JSON routes over the format in docs/logdir-format.md,
and the ES-module frontend in static/.

Every run, tag and index parameter is validated against what the data provider lists; no
parameter ever reaches the filesystem. Stored values are checked against their kind before
they are served. Every error is a 4xx JSON body `{"error": ...}`, never a 500: the routes,
parameters and status codes are listed in http_api.md.
"""

from __future__ import annotations

import base64
import collections
import json
import logging
import math
import mimetypes
import re
import threading
import time
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
# The plugin's page alone, without TensorBoard's page around it: TensorBoard's own entry
# document for module plugins (the one its frame loads). Its hash holds the selection.
ALONE_PATH = f'/data/plugin_entry.html?name={metadata.PLUGIN_NAME}'
MAX_ARRAY_ELEMENTS = 4_000_000   # larger arrays are served only sliced (index=...)
# A stored tensor is decoded only if its declared element count is at most this (1 GiB of
# float32: ViT-L/16's attention of one image at 384² is 128 M), and a tensor that fills its
# declared shape from fewer stored values (one float_val for [20000, 20000]: 1.6 GB from a
# few bytes) only up to MAX_ARRAY_ELEMENTS; the writer never stores such a fill.
MAX_DECODED_ELEMENTS = 2 ** 28
MAX_STEPS = 100_000  # steps of a tag read at once (all of them: the step is chosen here)
CACHE_BYTES = 512 * 2 ** 20
LISTING_TTL = 1.0
METHODS = ('GET', 'HEAD')
# An index is ASCII digits with an optional '-': str.isdigit() also accepts '²' or '⑴',
# which int() then rejects.
INDEX_PATTERN = re.compile(r'-?[0-9]{1,12}')
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
SHOWN_CHARS = 60  # of a parameter echoed in an error message
FIRST_VIEW_TAGS = 64  # arrays /first_view serves at most
NAMED_AXES = ('layer', 'head')  # /array selects along these by name, wherever they are
WHAT = {'array': 'an array', 'png': 'an image', 'json': 'JSON'}

logger = logging.getLogger(__name__)


class BadRequest(Exception):
  """An error answered as JSON {"error": message} with a 4xx status: 400 bad query,
  404 unknown run or tag, 405 method, 413 too large, 422 malformed stored data."""

  def __init__(self, message, code=400):
    super().__init__(message)
    self.code = code


def _show(value) -> str:
  """A parameter for an error message: repr, cut to SHOWN_CHARS characters."""
  if isinstance(value, str) and len(value) > SHOWN_CHARS:
    return repr(value[:SHOWN_CHARS]) + '...'
  return repr(value)


def _json(request, obj, code=200, headers=None):
  return http_util.Respond(request, json.dumps(obj, allow_nan=False, separators=(',', ':')),
                           'application/json', code=code, headers=headers)


def _route(fn):
  """Wraps a handler: only GET and HEAD (else 405); BadRequest -> JSON error with its
  status code; any other exception is logged here and answered 422, never 500."""
  @wrappers.Request.application
  def handler(self, request):
    if request.method not in METHODS:
      return _json(request, {'error': f'method {_show(request.method)} is not allowed; '
                                      f'use {" or ".join(METHODS)}'},
                   405, headers=[('Allow', ', '.join(METHODS))])
    try:
      return fn(self, request)
    except BadRequest as e:
      return _json(request, {'error': str(e)}, e.code)
    except Exception:  # a case the checks below missed: log it, keep the body clean
      logger.exception('%s: cannot serve %s?%s', metadata.PLUGIN_NAME, request.path,
                       request.query_string[:200])
      return _json(request, {'error': 'stored value cannot be served; see the TensorBoard '
                                      'log'}, 422)
  return handler


def _param(request, name):
  """The value of query parameter `name`, or None; 400 if it is given more than once."""
  values = request.args.getlist(name)
  if len(values) > 1:
    raise BadRequest(f'parameter "{name}" is given {len(values)} times; give it once')
  return values[0] if values else None


def _integer(request, name):
  """Query parameter `name` as an int (ASCII digits, optional leading '-'), or None."""
  raw = _param(request, name)
  if raw is None:
    return None
  if not INDEX_PATTERN.fullmatch(raw):
    raise BadRequest(f'parameter "{name}" must be an integer, got {_show(raw)}')
  return int(raw)


def _in_range(name, i, size):
  if i is not None and not 0 <= i < size:
    raise BadRequest(f'parameter "{name}" = {i} is out of range [0, {size})')
  return i


def _finite(text):
  f = float(text)  # '1e999' parses to inf, which the strict responses cannot carry
  if not math.isfinite(f):
    raise ValueError(f'number {text[:20]} is not finite')
  return f


def _no_constant(name):
  raise ValueError(f'{name} is not allowed')


def _decode(tag, kind, arr):
  """The value a stored tensor holds, checked against its kind: a numeric ndarray, PNG
  bytes, or parsed JSON without NaN or infinities (the responses are strict JSON).
  BadRequest(422) when it holds anything else; a tensor refused undecoded: its own code."""
  if isinstance(arr, _Refused):
    raise BadRequest(f'tag {_show(tag)} {arr.message}', arr.code)
  if kind == 'array':
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in 'biuf':
      raise BadRequest(f'tag {_show(tag)} is not a numeric array (dtype '
                       f'{getattr(arr, "dtype", type(arr).__name__)})', 422)
    return arr
  raw = arr.item() if isinstance(arr, np.ndarray) and arr.shape == () else None
  if not isinstance(raw, bytes):
    raise BadRequest(f'tag {_show(tag)} is not a scalar string tensor (kind {kind!r})', 422)
  if kind == 'png':
    if not raw.startswith(PNG_SIGNATURE):
      raise BadRequest(f'tag {_show(tag)} does not hold PNG data', 422)
    return raw
  try:
    return json.loads(raw.decode('utf-8'), parse_float=_finite, parse_constant=_no_constant)
  except (ValueError, RecursionError) as e:  # also UnicodeDecodeError, JSONDecodeError
    raise BadRequest(f'tag {_show(tag)} is not valid JSON: {str(e)[:100]}', 422) from None


def _listed(parsed):
  """The plugin metadata of one tag as the routes use it, or None if its fields are not
  of the documented types (such a tag is left out, like one of another format)."""
  analysis, axes = parsed.get('analysis'), parsed.get('axes')
  if not isinstance(analysis, str):
    return None
  if axes is not None and not (isinstance(axes, list) and all(isinstance(a, str) for a in axes)):
    return None
  return parsed


PER_IMAGE_AXES = ('image', 'subset_image')


def first_view_tags(listing, analyses) -> list:
  """The arrays /first_view serves when no `tags` are named: every array tag of the
  `analyses` without a per-image axis (those are fetched a head at a time), at most
  FIRST_VIEW_TAGS of them, by name. `listing`: {tag: plugin metadata} of one run."""
  out = [tag for tag, info in sorted(listing.items())
         if info.get('kind') == 'array' and tag.split('/', 1)[0] in analyses
         and not set(info.get('axes') or ()) & set(PER_IMAGE_AXES)]
  return out[:FIRST_VIEW_TAGS]


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


_Failure = collections.namedtuple('_Failure', 'message code')


class _Refused:
  """Stands for a stored tensor that was not decoded: what it declares is too large (413)
  or malformed (422). `_decode` answers it with `message` and `code`."""

  def __init__(self, message, code):
    self.message, self.code = message, code


def refusal(tensor) -> _Refused | None:
  """Why a TensorProto must not be decoded, from its declared shape and what it stores,
  before anything is allocated; None if it may be. Python ints: no overflow."""
  dims = [d.size for d in tensor.tensor_shape.dim]
  if any(d < 0 for d in dims):
    return _Refused(f'declares the shape {dims[:8]} with a negative dimension', 422)
  declared = math.prod(dims)
  if declared > MAX_DECODED_ELEMENTS:
    return _Refused(f'declares {declared} elements (shape {dims[:8]}); the plugin decodes at '
                    f'most {MAX_DECODED_ELEMENTS}', 413)
  if declared > MAX_ARRAY_ELEMENTS:
    stored = (len(tensor.tensor_content) if tensor.tensor_content else
              sum(len(v) for f, v in tensor.ListFields() if f.name.endswith('_val')))
    if stored < declared:
      return _Refused(f'declares {declared} elements (shape {dims[:8]}) but stores {stored} '
                      f'values; a fill over {MAX_ARRAY_ELEMENTS} elements is not decoded', 413)
  return None


# While this thread reads our tensors through the data provider, `make_ndarray` refuses a
# tensor by its declared shape before decoding it: the providers (in-process and the
# data server's) decode every tensor they return, and the provider API offers no way to
# see a shape first. Other plugins' reads, and other threads, are left as they are.
_reading = threading.local()


def _install_checked_make_ndarray():
  original = tensor_util.make_ndarray
  if getattr(original, 'checks_declared_shape', False):
    return

  def make_ndarray(tensor):
    if getattr(_reading, 'active', False):
      refused = refusal(tensor)
      if refused is not None:
        return refused
    return original(tensor)

  make_ndarray.checks_declared_shape = True
  make_ndarray.__doc__ = original.__doc__
  tensor_util.make_ndarray = make_ndarray


class VitAnalyticsPlugin(base_plugin.TBPlugin):
  plugin_name = metadata.PLUGIN_NAME

  def __init__(self, context):
    self._provider = context.data_provider
    # (run, tag, wall_time) -> (value or _Failure, bytes): a value is checked once, when read
    self._cache = collections.OrderedDict()
    self._listing = {}                        # experiment id -> (time, tags)
    self._cache_bytes = 0
    self._lock = threading.Lock()
    _install_checked_make_ndarray()

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
        '/steps': self._serve_steps,
        '/first_view': self._serve_first_view,
        '/series': self._serve_series,
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
          info = _listed(metadata.parse_plugin_metadata(ts.plugin_content))
        except (ValueError, TypeError):  # TypeError: e.g. a version that is not a number
          info = None
        if info is None:
          continue  # not ours, from a newer format, or malformed: leave it out
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
      raise BadRequest(f'unknown run {_show(run)}', 404)
    if tag not in tags[run]:
      raise BadRequest(f'unknown tag {_show(tag)} in run {_show(run)}', 404)
    return tags[run][tag]

  def _value(self, request, run, tag, kind, mismatch=400):
    """The decoded value of (run, tag) at the request's `step` (default: the latest),
    which must be of `kind` (else status `mismatch`): numpy array, parsed JSON, or PNG
    bytes. A stored value that does not hold what its kind promises is 422, and that
    answer is cached like a value."""
    info = self._check(request, run, tag)
    if info['kind'] != kind:
      raise BadRequest(f'tag {_show(tag)} is not {WHAT[kind]} (kind {info["kind"]!r})',
                       mismatch)
    step = _integer(request, 'step')
    if step is not None and step < 0:
      raise BadRequest(f'parameter "step" must be >= 0, got {step}')
    key = (run, tag, step, info['wall_time'])  # a re-written analysis has a new wall time
    with self._lock:
      cached = self._cache.get(key)
      if cached is not None:
        self._cache.move_to_end(key)
    if cached is None:
      cached = self._read(request, run, tag, kind, step)
      with self._lock:
        if key not in self._cache:
          self._cache[key] = cached
          self._cache_bytes += cached[1]
        while self._cache_bytes > CACHE_BYTES and len(self._cache) > 1:
          self._cache_bytes -= self._cache.popitem(last=False)[1][1]
    value = cached[0]
    if isinstance(value, _Failure):
      raise BadRequest(value.message, value.code)
    return info, value

  def _series(self, request, run, tag):
    """[(step, datum)] of (run, tag), one per step (a step written twice: the newer); a
    datum's `numpy` is a _Refused where its tensor was not decoded."""
    ctx, eid = self._ctx(request)
    _reading.active = True  # values too large to decode come back as _Refused
    try:
      data = self._provider.read_tensors(
          ctx, experiment_id=eid, plugin_name=metadata.PLUGIN_NAME, downsample=MAX_STEPS,
          run_tag_filter=provider.RunTagFilter(runs=[run], tags=[tag]))
    finally:
      _reading.active = False
    by_step = {}
    for datum in data.get(run, {}).get(tag) or ():
      if datum.step not in by_step or datum.wall_time >= by_step[datum.step].wall_time:
        by_step[datum.step] = datum
    return sorted(by_step.items())

  def _read(self, request, run, tag, kind, step=None):
    """(decoded value or _Failure, its size in bytes) of (run, tag) at `step` (None: the
    latest), from the provider."""
    try:
      series = self._series(request, run, tag)
    except Exception:  # a tensor proto that does not decode (bad dtype, size, shape)
      logger.warning('%s: cannot read %r of run %r', metadata.PLUGIN_NAME, tag, run,
                     exc_info=True)
      return _Failure(f'tag {_show(tag)} cannot be decoded', 422), 0
    if not series:
      raise BadRequest(f'no data for {_show(tag)} in run {_show(run)}', 404)
    if step is None:
      datum = series[-1][1]
    else:
      datum = dict(series).get(step)
      if datum is None:
        raise BadRequest(f'no step {step} of {_show(tag)} in run {_show(run)} (steps '
                         f'{[s for s, _ in series][:20]})', 404)
    arr = datum.numpy
    try:
      value = _decode(tag, kind, arr)
    except BadRequest as e:
      return _Failure(str(e), e.code), 0
    return value, (value.nbytes if kind == 'array' else len(arr.item()))

  # --- routes ------------------------------------------------------------------------------

  @_route
  def _serve_static(self, request):
    name = request.path.rsplit('/static/', 1)[-1]
    allowed = {p.name: p for p in STATIC.iterdir() if p.is_file()}
    if name not in allowed:  # no path from the request reaches the filesystem
      raise BadRequest(f'no static file {_show(name)}', 404)
    mime = mimetypes.guess_type(name)[0] or 'application/octet-stream'
    if name.endswith('.js'):
      mime = 'application/javascript'
    return http_util.Respond(request, allowed[name].read_bytes(), mime)

  def _runs(self, tags):
    """The body of /runs from a listing: [{run, analyses, tags}] sorted by run."""
    runs = []
    for run in sorted(tags):
      analyses = sorted({info['analysis'] for info in tags[run].values()})
      # written: when its latest value was written (a re-written analysis changes it, and
      # the page then drops what it had kept of the run).
      runs.append({'run': run, 'analyses': analyses,
                   'written': max((w for info in tags[run].values()
                                   if isinstance(w := info.get('wall_time'), (int, float)) and math.isfinite(w)),
                                  default=0.),
                   'tags': {t: {k: v for k, v in info.items() if k in ('analysis', 'kind', 'axes')}
                            for t, info in sorted(tags[run].items())}})
    return runs

  @_route
  def _serve_runs(self, request):
    return _json(request, {'runs': self._runs(self._tags(request))})

  def _meta(self, request, run, analysis):
    """The parsed `<analysis>/meta` of a run, which must be a JSON object (else 422)."""
    tag = f'{analysis}/meta'
    _, value = self._value(request, run, tag, 'json', mismatch=422)
    if not isinstance(value, dict):
      raise BadRequest(f'tag {tag!r} is not a JSON object', 422)
    return value

  @_route
  def _serve_meta(self, request):
    run, analysis = _param(request, 'run'), _param(request, 'analysis')
    if analysis not in metadata.ANALYSES:
      raise BadRequest(f'parameter "analysis" must be one of {list(metadata.ANALYSES)}')
    return _json(request, self._meta(request, run, analysis))

  @_route
  def _serve_array(self, request):
    index, index2 = _integer(request, 'index'), _integer(request, 'index2')
    if index is None and index2 is not None:
      raise BadRequest('parameter "index2" needs "index"')
    named = {a: _integer(request, a) for a in NAMED_AXES}
    tag = _param(request, 'tag')
    info, value = self._value(request, _param(request, 'run'), tag, 'array')
    axes = list(info.get('axes') or [])
    for name, i in (('index', index), ('index2', index2)):  # successive leading-axis slices
      if i is not None:
        value = value[_in_range(name, i, value.shape[0] if value.ndim else 0)]
        axes = axes[1:]
    # One head's values of a per-image array ([image, layer, head] -> [image]): the image
    # overview of 10,000 images needs 40 KB of it, not the whole array.
    for name, i in named.items():
      if i is None:
        continue
      if name not in axes or len(axes) != value.ndim:
        raise BadRequest(f'parameter "{name}": tag {_show(tag)} has no axis {name!r} '
                         f'(axes {axes})')
      d = axes.index(name)
      value = np.take(value, _in_range(name, i, value.shape[d]), axis=d)
      axes.pop(d)
    if value.size > MAX_ARRAY_ELEMENTS:
      raise BadRequest(f'array {_show(tag)} has {value.size} elements; ask for a slice with '
                       f'index=... (first axis {axes[0] if axes else "?"})', 413)
    return _json(request, {'axes': axes, **pack(value)})

  @_route
  def _serve_png(self, request):
    _, value = self._value(request, _param(request, 'run'), _param(request, 'tag'), 'png')
    return http_util.Respond(request, value, 'image/png')

  @_route
  def _serve_attention(self, request):
    """One query patch of one stored image: its attention in every head [L, H, T] and
    its rollout row in every layer [L, T]."""
    run = _param(request, 'run')
    image, query = _integer(request, 'image'), _integer(request, 'query')
    if image is None or query is None:
      raise BadRequest('parameters "image" and "query" are required')
    images = self._meta(request, run, 'strength').get('map_image_index', [])
    if not isinstance(images, list):
      raise BadRequest('"map_image_index" of tag \'strength/meta\' is not a list', 422)
    _in_range('image', image, len(images))
    names = f'strength/map_attention/{image}', f'strength/map_rollout/{image}'
    _, attention = self._value(request, run, names[0], 'array', mismatch=422)
    _, rollout = self._value(request, run, names[1], 'array', mismatch=422)
    # [layer, head, query, key] and [layer, query, key] of the same sizes
    if attention.ndim != 4:
      raise BadRequest(f'tag {names[0]!r} has shape {list(attention.shape)}; expected '
                       f'[layer, head, query, key]', 422)
    if (rollout.ndim != 3 or rollout.shape[0] != attention.shape[0]
        or rollout.shape[1:] != attention.shape[2:]):
      raise BadRequest(f'tag {names[1]!r} has shape {list(rollout.shape)}; expected [layer, '
                       f'query, key] = {[attention.shape[0], *attention.shape[2:]]}', 422)
    _in_range('query', query, attention.shape[2])
    return _json(request, {'attention': pack(attention[:, :, query]),
                           'rollout': pack(rollout[:, query])})

  def _steps(self, request, run, tags):
    """{analysis: [steps]} of a known run."""
    out = {}
    for analysis in metadata.ANALYSES:
      tag = f'{analysis}/meta'
      if tag in tags[run]:
        out[analysis] = [int(s) for s, _ in self._series(request, run, tag)]
    return out

  @_route
  def _serve_steps(self, request):
    """{analysis: [steps]} of a run: the steps at which each analysis was written."""
    run = _param(request, 'run')
    tags = self._tags(request)
    if not run or run not in tags:
      raise BadRequest(f'unknown run {_show(run)}', 404)
    return _json(request, {'steps': self._steps(request, run, tags)})

  @_route
  def _serve_first_view(self, request):
    """What the page needs before its first view, in one request: the runs (as /runs),
    the run shown (`run` if listed, else the first), its steps (as /steps), the metas of
    `analyses` and the arrays `tags` (comma-separated), at `step` as the other routes
    (default: the latest). What the run lacks or cannot serve is named in `missing`; the
    page asks for it on its own, and gets the route's own answer."""
    step = _integer(request, 'step')
    if step is not None and step < 0:
      raise BadRequest(f'parameter "step" must be >= 0, got {step}')
    given = _param(request, 'tags')
    names = [t for t in (given or '').split(',') if t]
    if len(names) > FIRST_VIEW_TAGS:
      raise BadRequest(f'parameter "tags" names {len(names)} tags; at most {FIRST_VIEW_TAGS}')
    analyses = [a for a in (_param(request, 'analyses') or '').split(',') if a]
    for a in analyses:
      if a not in metadata.ANALYSES:
        raise BadRequest(f'parameter "analyses" names {_show(a)}; each must be one of '
                         f'{list(metadata.ANALYSES)}')
    tags = self._tags(request)
    run = _param(request, 'run')
    if run not in tags:
      run = min(tags) if tags else None
    out = {'runs': self._runs(tags), 'run': run, 'steps': {}, 'meta': {}, 'arrays': {},
           'missing': []}
    if run is None:
      return _json(request, out)
    if given is None:  # the first view's arrays: those of its analyses, less per-image ones
      names = first_view_tags(tags[run], analyses)
    try:
      out['steps'] = self._steps(request, run, tags)
    except Exception:  # left to /steps, which answers for itself
      logger.warning('%s: cannot list the steps of run %r', metadata.PLUGIN_NAME, run,
                     exc_info=True)
      out['steps'] = None
      out['missing'].append('steps')
    for a in analyses:
      try:
        out['meta'][a] = self._meta(request, run, a)
      except BadRequest:
        out['missing'].append(f'{a}/meta')
    for tag in dict.fromkeys(names):
      info = tags[run].get(tag)
      try:
        if info is None or info['kind'] != 'array':
          raise BadRequest('not an array of this run')
        _, value = self._value(request, run, tag, 'array')
        if value.size > MAX_ARRAY_ELEMENTS:
          raise BadRequest('too large')
      except BadRequest:
        out['missing'].append(tag)
        continue
      out['arrays'][tag] = {'axes': list(info.get('axes') or []), **pack(value)}
    return _json(request, out)

  @_route
  def _serve_series(self, request):
    """One [layer, head] array tag at every step: {steps, values: packed [step, layer,
    head]} (the over-training view); steps where it is missing are left out."""
    run, tag = _param(request, 'run'), _param(request, 'tag')
    info = self._check(request, run, tag)
    if info['kind'] != 'array' or list(info.get('axes') or []) != ['layer', 'head']:
      raise BadRequest(f'tag {_show(tag)} is not a [layer, head] array', 400)
    steps, values = [], []
    for step, datum in self._series(request, run, tag):
      arr = _decode(tag, 'array', datum.numpy)
      if values and arr.shape != values[0].shape:
        raise BadRequest(f'tag {_show(tag)} changes shape across steps', 422)
      steps.append(int(step))
      values.append(arr)
    return _json(request, {'steps': steps, 'axes': ['step', 'layer', 'head'],
                           **pack(np.stack(values) if values else np.zeros((0, 0, 0)))})


class VitAnalyticsLoader(base_plugin.TBLoader):
  """Loads the plugin and keeps every step of its values: TensorBoard keeps 10 samples
  per tag of a plugin by default, so without this a run logged at more steps would lose
  some. An explicit --samples_per_plugin=vit_analytics=N is left as given."""

  def fix_flags(self, flags):
    samples = getattr(flags, 'samples_per_plugin', None)
    if isinstance(samples, dict):
      samples.setdefault(metadata.PLUGIN_NAME, 0)  # 0: keep all

  def load(self, context):
    return VitAnalyticsPlugin(context)
