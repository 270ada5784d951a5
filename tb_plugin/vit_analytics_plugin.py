"""The TensorBoard plugin: read-only JSON routes over the format in docs/logdir-format.md,
and the ES-module frontend in static/.

Every run, tag and index parameter is validated against what the data provider lists; no
parameter ever reaches the filesystem. Stored values are checked against their kind before
they are served. Every error is a 4xx JSON body `{"error": ...}`, never a 500: the routes,
parameters and status codes are listed in http_api.md.
"""

from __future__ import annotations

import collections
import math
import mimetypes
import threading
import time
from pathlib import Path

import numpy as np
from tensorboard.backend import http_util
from tensorboard.data import provider
from tensorboard.plugins import base_plugin

from tb_plugin.serving import (  # noqa: F401 (refusal, unpack: for clients and tests)
    FIRST_VIEW_TAGS, MAX_ARRAY_ELEMENTS, WHAT, BadRequest, Failure, decode_value, first_view_tags,
    in_range, install_checked_make_ndarray, integer, json_response, listed, logger, pack,
    param, reading, refusal, route, show, unpack)
from vit_jax_analytics.logdir import metadata

STATIC = Path(__file__).parent / 'static'
ALONE_PATH = f'/data/plugin_entry.html?name={metadata.PLUGIN_NAME}'
CACHE_BYTES = 512 * 2 ** 20
LISTING_TTL = 1.0
MAX_STEPS = 100_000  # steps of a tag read at once (all of them: the step is chosen here)
NAMED_AXES = ('layer', 'head')  # /array selects along these by name, wherever they are


class VitAnalyticsPlugin(base_plugin.TBPlugin):
  plugin_name = metadata.PLUGIN_NAME

  def __init__(self, context):
    self._provider = context.data_provider
    # (run, tag, wall_time) -> (value or Failure, bytes): a value is checked once, when read
    self._cache = collections.OrderedDict()
    self._listing = {}                        # experiment id -> (time, tags)
    self._cache_bytes = 0
    self._lock = threading.Lock()
    install_checked_make_ndarray()

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
          info = listed(metadata.parse_plugin_metadata(ts.plugin_content))
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
      raise BadRequest(f'unknown run {show(run)}', 404)
    if tag not in tags[run]:
      raise BadRequest(f'unknown tag {show(tag)} in run {show(run)}', 404)
    return tags[run][tag]

  def _value(self, request, run, tag, kind, mismatch=400):
    """The decoded value of (run, tag) at the request's `step` (default: the latest),
    which must be of `kind` (else status `mismatch`): numpy array, parsed JSON, or PNG
    bytes. A stored value that does not hold what its kind promises is 422, and that
    answer is cached like a value."""
    info = self._check(request, run, tag)
    if info['kind'] != kind:
      raise BadRequest(f'tag {show(tag)} is not {WHAT[kind]} (kind {info["kind"]!r})',
                       mismatch)
    step = integer(request, 'step')
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
    if isinstance(value, Failure):
      raise BadRequest(value.message, value.code)
    return info, value

  def _series(self, request, run, tag):
    """[(step, datum)] of (run, tag), one per step (a step written twice: the newer); a
    datum's `numpy` is a Refused where its tensor was not decoded."""
    ctx, eid = self._ctx(request)
    reading.active = True  # values too large to decode come back as Refused
    try:
      data = self._provider.read_tensors(
          ctx, experiment_id=eid, plugin_name=metadata.PLUGIN_NAME, downsample=MAX_STEPS,
          run_tag_filter=provider.RunTagFilter(runs=[run], tags=[tag]))
    finally:
      reading.active = False
    by_step = {}
    for datum in data.get(run, {}).get(tag) or ():
      if datum.step not in by_step or datum.wall_time >= by_step[datum.step].wall_time:
        by_step[datum.step] = datum
    return sorted(by_step.items())

  def _read(self, request, run, tag, kind, step=None):
    """(decoded value or Failure, its size in bytes) of (run, tag) at `step` (None: the
    latest), from the provider."""
    try:
      series = self._series(request, run, tag)
    except Exception:  # a tensor proto that does not decode (bad dtype, size, shape)
      logger.warning('%s: cannot read %r of run %r', metadata.PLUGIN_NAME, tag, run,
                     exc_info=True)
      return Failure(f'tag {show(tag)} cannot be decoded', 422), 0
    if not series:
      raise BadRequest(f'no data for {show(tag)} in run {show(run)}', 404)
    if step is None:
      datum = series[-1][1]
    else:
      datum = dict(series).get(step)
      if datum is None:
        raise BadRequest(f'no step {step} of {show(tag)} in run {show(run)} (steps '
                         f'{[s for s, _ in series][:20]})', 404)
    arr = datum.numpy
    try:
      value = decode_value(tag, kind, arr)
    except BadRequest as e:
      return Failure(str(e), e.code), 0
    return value, (value.nbytes if kind == 'array' else len(arr.item()))

  # --- routes ------------------------------------------------------------------------------

  @route
  def _serve_static(self, request):
    name = request.path.rsplit('/static/', 1)[-1]
    allowed = {p.name: p for p in STATIC.iterdir() if p.is_file()}
    if name not in allowed:  # no path from the request reaches the filesystem
      raise BadRequest(f'no static file {show(name)}', 404)
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

  @route
  def _serve_runs(self, request):
    return json_response(request, {'runs': self._runs(self._tags(request))})

  def _meta(self, request, run, analysis):
    """The parsed `<analysis>/meta` of a run, which must be a JSON object (else 422)."""
    tag = f'{analysis}/meta'
    _, value = self._value(request, run, tag, 'json', mismatch=422)
    if not isinstance(value, dict):
      raise BadRequest(f'tag {tag!r} is not a JSON object', 422)
    return value

  @route
  def _serve_meta(self, request):
    run, analysis = param(request, 'run'), param(request, 'analysis')
    if analysis not in metadata.ANALYSES:
      raise BadRequest(f'parameter "analysis" must be one of {list(metadata.ANALYSES)}')
    return json_response(request, self._meta(request, run, analysis))

  @route
  def _serve_array(self, request):
    index, index2 = integer(request, 'index'), integer(request, 'index2')
    if index is None and index2 is not None:
      raise BadRequest('parameter "index2" needs "index"')
    named = {a: integer(request, a) for a in NAMED_AXES}
    tag = param(request, 'tag')
    info, value = self._value(request, param(request, 'run'), tag, 'array')
    axes = list(info.get('axes') or [])
    for name, i in (('index', index), ('index2', index2)):  # successive leading-axis slices
      if i is not None:
        value = value[in_range(name, i, value.shape[0] if value.ndim else 0)]
        axes = axes[1:]
    # One head's values of a per-image array ([image, layer, head] -> [image]): the image
    # overview of 10,000 images needs 40 KB of it, not the whole array.
    for name, i in named.items():
      if i is None:
        continue
      if name not in axes or len(axes) != value.ndim:
        raise BadRequest(f'parameter "{name}": tag {show(tag)} has no axis {name!r} '
                         f'(axes {axes})')
      d = axes.index(name)
      value = np.take(value, in_range(name, i, value.shape[d]), axis=d)
      axes.pop(d)
    if value.size > MAX_ARRAY_ELEMENTS:
      raise BadRequest(f'array {show(tag)} has {value.size} elements; ask for a slice with '
                       f'index=... (first axis {axes[0] if axes else "?"})', 413)
    return json_response(request, {'axes': axes, **pack(value)})

  @route
  def _serve_png(self, request):
    _, value = self._value(request, param(request, 'run'), param(request, 'tag'), 'png')
    return http_util.Respond(request, value, 'image/png')

  @route
  def _serve_attention(self, request):
    """One query patch of one stored image: its attention in every head [L, H, T] and
    its rollout row in every layer [L, T]."""
    run = param(request, 'run')
    image, query = integer(request, 'image'), integer(request, 'query')
    if image is None or query is None:
      raise BadRequest('parameters "image" and "query" are required')
    images = self._meta(request, run, 'strength').get('map_image_index', [])
    if not isinstance(images, list):
      raise BadRequest('"map_image_index" of tag \'strength/meta\' is not a list', 422)
    in_range('image', image, len(images))
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
    in_range('query', query, attention.shape[2])
    return json_response(request, {'attention': pack(attention[:, :, query]),
                           'rollout': pack(rollout[:, query])})

  def _steps(self, request, run, tags):
    """{analysis: [steps]} of a known run."""
    out = {}
    for analysis in metadata.ANALYSES:
      tag = f'{analysis}/meta'
      if tag in tags[run]:
        out[analysis] = [int(s) for s, _ in self._series(request, run, tag)]
    return out

  @route
  def _serve_steps(self, request):
    """{analysis: [steps]} of a run: the steps at which each analysis was written."""
    run = param(request, 'run')
    tags = self._tags(request)
    if not run or run not in tags:
      raise BadRequest(f'unknown run {show(run)}', 404)
    return json_response(request, {'steps': self._steps(request, run, tags)})

  @route
  def _serve_first_view(self, request):
    """What the page needs before its first view, in one request: the runs (as /runs),
    the run shown (`run` if listed, else the first), its steps (as /steps), the metas of
    `analyses` and the arrays `tags` (comma-separated), at `step` as the other routes
    (default: the latest). What the run lacks or cannot serve is named in `missing`; the
    page asks for it on its own, and gets the route's own answer."""
    step = integer(request, 'step')
    if step is not None and step < 0:
      raise BadRequest(f'parameter "step" must be >= 0, got {step}')
    given = param(request, 'tags')
    names = [t for t in (given or '').split(',') if t]
    if len(names) > FIRST_VIEW_TAGS:
      raise BadRequest(f'parameter "tags" names {len(names)} tags; at most {FIRST_VIEW_TAGS}')
    analyses = [a for a in (param(request, 'analyses') or '').split(',') if a]
    for a in analyses:
      if a not in metadata.ANALYSES:
        raise BadRequest(f'parameter "analyses" names {show(a)}; each must be one of '
                         f'{list(metadata.ANALYSES)}')
    tags = self._tags(request)
    run = param(request, 'run')
    if run not in tags:
      run = min(tags) if tags else None
    out = {'runs': self._runs(tags), 'run': run, 'steps': {}, 'meta': {}, 'arrays': {},
           'missing': []}
    if run is None:
      return json_response(request, out)
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
    return json_response(request, out)

  @route
  def _serve_series(self, request):
    """One [layer, head] array tag at every step: {steps, values: packed [step, layer,
    head]} (the over-training view); steps where it is missing are left out."""
    run, tag = param(request, 'run'), param(request, 'tag')
    info = self._check(request, run, tag)
    if info['kind'] != 'array' or list(info.get('axes') or []) != ['layer', 'head']:
      raise BadRequest(f'tag {show(tag)} is not a [layer, head] array', 400)
    steps, values = [], []
    for step, datum in self._series(request, run, tag):
      arr = decode_value(tag, 'array', datum.numpy)
      if values and arr.shape != values[0].shape:
        raise BadRequest(f'tag {show(tag)} changes shape across steps', 422)
      steps.append(int(step))
      values.append(arr)
    return json_response(request, {'steps': steps, 'axes': ['step', 'layer', 'head'],
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
