"""What every route of the plugin uses: request checks (parameters, methods, errors as JSON
4xx, never 500) and stored values (a tensor refused by its declared shape before it is
decoded, checked against its kind, packed for JSON)."""

from __future__ import annotations

import base64
import collections
import json
import logging
import math
import re
import threading

import numpy as np
from tensorboard.backend import http_util
from tensorboard.util import tensor_util
from werkzeug import wrappers

from vit_jax_analytics.logdir import metadata

# The plugin's page alone, without TensorBoard's page around it: TensorBoard's own entry
# document for module plugins (the one its frame loads). Its hash holds the selection.
MAX_ARRAY_ELEMENTS = 4_000_000   # larger arrays are served only sliced (index=...)
# A stored tensor is decoded only if its declared element count is at most this (1 GiB of
# float32: ViT-L/16's attention of one image at 384² is 128 M), and a tensor that fills its
# declared shape from fewer stored values (one float_val for [20000, 20000]: 1.6 GB from a
# few bytes) only up to MAX_ARRAY_ELEMENTS; the writer never stores such a fill.
MAX_DECODED_ELEMENTS = 2 ** 28
METHODS = ('GET', 'HEAD')
# An index is ASCII digits with an optional '-': str.isdigit() also accepts '²' or '⑴',
# which int() then rejects.
INDEX_PATTERN = re.compile(r'-?[0-9]{1,12}')
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
FIRST_VIEW_TAGS = 64  # arrays /first_view serves at most
SHOWN_CHARS = 60  # of a parameter echoed in an error message
WHAT = {'array': 'an array', 'png': 'an image', 'json': 'JSON'}

logger = logging.getLogger(__name__)


class BadRequest(Exception):
  """An error answered as JSON {"error": message} with a 4xx status: 400 bad query,
  404 unknown run or tag, 405 method, 413 too large, 422 malformed stored data."""

  def __init__(self, message, code=400):
    super().__init__(message)
    self.code = code


def show(value) -> str:
  """A parameter for an error message: repr, cut to SHOWN_CHARS characters."""
  if isinstance(value, str) and len(value) > SHOWN_CHARS:
    return repr(value[:SHOWN_CHARS]) + '...'
  return repr(value)


def json_response(request, obj, code=200, headers=None):
  return http_util.Respond(request, json.dumps(obj, allow_nan=False, separators=(',', ':')),
                           'application/json', code=code, headers=headers)


def route(fn):
  """Wraps a handler: only GET and HEAD (else 405); BadRequest -> JSON error with its
  status code; any other exception is logged here and answered 422, never 500."""
  @wrappers.Request.application
  def handler(self, request):
    if request.method not in METHODS:
      return json_response(request, {'error': f'method {show(request.method)} is not allowed; '
                                      f'use {" or ".join(METHODS)}'},
                   405, headers=[('Allow', ', '.join(METHODS))])
    try:
      return fn(self, request)
    except BadRequest as e:
      return json_response(request, {'error': str(e)}, e.code)
    except Exception:  # a case the checks below missed: log it, keep the body clean
      logger.exception('%s: cannot serve %s?%s', metadata.PLUGIN_NAME, request.path,
                       request.query_string[:200])
      return json_response(request, {'error': 'stored value cannot be served; see the TensorBoard '
                                      'log'}, 422)
  return handler


def param(request, name):
  """The value of query parameter `name`, or None; 400 if it is given more than once."""
  values = request.args.getlist(name)
  if len(values) > 1:
    raise BadRequest(f'parameter "{name}" is given {len(values)} times; give it once')
  return values[0] if values else None


def integer(request, name):
  """Query parameter `name` as an int (ASCII digits, optional leading '-'), or None."""
  raw = param(request, name)
  if raw is None:
    return None
  if not INDEX_PATTERN.fullmatch(raw):
    raise BadRequest(f'parameter "{name}" must be an integer, got {show(raw)}')
  return int(raw)


def in_range(name, i, size):
  if i is not None and not 0 <= i < size:
    raise BadRequest(f'parameter "{name}" = {i} is out of range [0, {size})')
  return i


def finite(text):
  f = float(text)  # '1e999' parses to inf, which the strict responses cannot carry
  if not math.isfinite(f):
    raise ValueError(f'number {text[:20]} is not finite')
  return f


def no_constant(name):
  raise ValueError(f'{name} is not allowed')


def decode_value(tag, kind, arr):
  """The value a stored tensor holds, checked against its kind: a numeric ndarray, PNG
  bytes, or parsed JSON without NaN or infinities (the responses are strict JSON).
  BadRequest(422) when it holds anything else; a tensor refused undecoded: its own code."""
  if isinstance(arr, Refused):
    raise BadRequest(f'tag {show(tag)} {arr.message}', arr.code)
  if kind == 'array':
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in 'biuf':
      raise BadRequest(f'tag {show(tag)} is not a numeric array (dtype '
                       f'{getattr(arr, "dtype", type(arr).__name__)})', 422)
    return arr
  raw = arr.item() if isinstance(arr, np.ndarray) and arr.shape == () else None
  if not isinstance(raw, bytes):
    raise BadRequest(f'tag {show(tag)} is not a scalar string tensor (kind {kind!r})', 422)
  if kind == 'png':
    if not raw.startswith(PNG_SIGNATURE):
      raise BadRequest(f'tag {show(tag)} does not hold PNG data', 422)
    return raw
  try:
    return json.loads(raw.decode('utf-8'), parse_float=finite, parse_constant=no_constant)
  except (ValueError, RecursionError) as e:  # also UnicodeDecodeError, JSONDecodeError
    raise BadRequest(f'tag {show(tag)} is not valid JSON: {str(e)[:100]}', 422) from None


def listed(parsed):
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


Failure = collections.namedtuple('Failure', 'message code')


class Refused:
  """Stands for a stored tensor that was not decoded: what it declares is too large (413)
  or malformed (422). `decode_value` answers it with `message` and `code`."""

  def __init__(self, message, code):
    self.message, self.code = message, code


def refusal(tensor) -> Refused | None:
  """Why a TensorProto must not be decoded, from its declared shape and what it stores,
  before anything is allocated; None if it may be. Python ints: no overflow."""
  dims = [d.size for d in tensor.tensor_shape.dim]
  if any(d < 0 for d in dims):
    return Refused(f'declares the shape {dims[:8]} with a negative dimension', 422)
  declared = math.prod(dims)
  if declared > MAX_DECODED_ELEMENTS:
    return Refused(f'declares {declared} elements (shape {dims[:8]}); the plugin decodes at '
                    f'most {MAX_DECODED_ELEMENTS}', 413)
  if declared > MAX_ARRAY_ELEMENTS:
    stored = (len(tensor.tensor_content) if tensor.tensor_content else
              sum(len(v) for f, v in tensor.ListFields() if f.name.endswith('_val')))
    if stored < declared:
      return Refused(f'declares {declared} elements (shape {dims[:8]}) but stores {stored} '
                      f'values; a fill over {MAX_ARRAY_ELEMENTS} elements is not decoded', 413)
  return None


# While this thread reads our tensors through the data provider, `make_ndarray` refuses a
# tensor by its declared shape before decoding it: the providers (in-process and the
# data server's) decode every tensor they return, and the provider API offers no way to
# see a shape first. Other plugins' reads, and other threads, are left as they are.
reading = threading.local()


def install_checked_make_ndarray():
  original = tensor_util.make_ndarray
  if getattr(original, 'checks_declared_shape', False):
    return

  def make_ndarray(tensor):
    if getattr(reading, 'active', False):
      refused = refusal(tensor)
      if refused is not None:
        return refused
    return original(tensor)

  make_ndarray.checks_declared_shape = True
  make_ndarray.__doc__ = original.__doc__
  tensor_util.make_ndarray = make_ndarray
