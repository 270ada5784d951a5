"""The plugin fuzzer: a deliberately malformed logdir, hostile strings, a seeded request
generator and the checks every response must pass (tests/tb_plugin/
test_vit_analytics_plugin_fuzz.py and benchmarks/bench_fuzz.py run it)."""

import collections
import io
import json
import random
import time
import urllib.parse

import numpy as np
import pytest
from PIL import Image
from tensorboard.compat.proto import (event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2,
                                      types_pb2)
from tensorboard.summary.writer.record_writer import RecordWriter
from tensorboard.util import tensor_util

from vit_jax_analytics.logdir import metadata
from tests.tb_plugin.client import PREFIX

SEED = 1826
REQUESTS = 3000        # per logdir
MIN_REQUESTS = 2000
DEADLINE_S = 25        # per logdir; 3000 requests take about 3 s on a busy 2-core machine
ROUTES = ('/runs', '/meta', '/array', '/png', '/attention', '/first_view')
PARAMS = ('run', 'tag', 'analysis', 'index', 'index2', 'image', 'query', 'tags', 'analyses')
OTHER_METHODS = ('POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS', 'TRACE', 'CONNECT', 'FOO')
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'

# --- a malformed logdir ----------------------------------------------------------------------


def _png_bytes():
  buf = io.BytesIO()
  Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(buf, format='PNG')
  return buf.getvalue()


def _array(a):
  return tensor_util.make_tensor_proto(np.asarray(a))


def _strings(data):
  return tensor_util.make_tensor_proto(np.array(data, dtype=object))


def _json_text(text):
  return _strings(text.encode() if isinstance(text, str) else text)


def _proto(dtype, shape, **fields):
  dims = [tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in shape]
  return tensor_pb2.TensorProto(dtype=dtype, tensor_shape=tensor_shape_pb2.TensorShapeProto(
      dim=dims), **fields)


def _ours(kind, axes=None):
  return lambda tag: metadata.create_summary_metadata(tag.split('/')[0], kind, axes=axes)


def _raw_metadata(content: bytes):
  """Plugin metadata that `create_summary_metadata` would never write."""
  return lambda tag: summary_pb2.SummaryMetadata(
      plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=metadata.PLUGIN_NAME,
                                                         content=content),
      data_class=summary_pb2.DATA_CLASS_TENSOR)


ARRAY, JSON, PNG = _ours('array'), _ours('json'), _ours('png')
ATTENTION = _ours('array', ['layer', 'head', 'query', 'key'])
ROLLOUT = _ours('array', ['layer', 'query', 'key'])
STRENGTH_META = 'strength/meta'


def _attention(layers=2, heads=2, tokens=5):
  a = np.random.default_rng(0).random((layers, heads, tokens, tokens), np.float32)
  return a / a.sum(-1, keepdims=True)


def malformed_runs():
  """{run: [(tag, tensor proto, metadata(tag))]}: every way a stored value can be wrong."""
  good_meta = _json_text('{"map_image_index": [0, 1, 2, 3]}')
  return {
      'meta-a': [
          ('importance/meta', _json_text('{"config": '), JSON),              # invalid JSON
          ('strength/meta', _json_text('[1, 2, 3]'), JSON),                  # a list
          ('patterns/meta', _json_text('{"error": NaN}'), JSON),             # NaN
      ],
      'meta-d': [
          ('importance/meta', _json_text('{"x": 1e999}'), JSON),             # inf
          ('strength/meta', _array(np.float32(1.5)), JSON),                  # not a string
          ('patterns/meta', _strings([b'{}', b'{}']), JSON),                 # not a scalar
      ],
      'meta-b': [
          ('importance/meta', _json_text('[' * 100_000), JSON),              # too deep
          ('strength/meta', _json_text(b'{"a": "\xff\xfe"}'), JSON),         # not UTF-8
          ('patterns/meta', _json_text('{"n": 1' + '1' * 5000 + '}'), JSON),  # huge int
      ],
      'meta-c': [
          ('importance/meta', _array([1.0, 2.0]), ARRAY),                    # not json kind
          ('strength/meta', _strings(_png_bytes()), PNG),
          ('patterns/meta', _json_text('{"ok": true, "x": [1.5, null]}'), JSON),  # fine
      ],
      'arrays': [
          ('importance/strings', _strings([b'a', b'b']), ARRAY),
          ('importance/string', _strings(b'abc'), ARRAY),
          ('importance/complex', _array(np.array([1 + 2j], np.complex64)), ARRAY),
          ('importance/bool', _array([[True, False]]), ARRAY),
          ('importance/int64', _array(np.arange(6, dtype=np.int64).reshape(2, 3)), ARRAY),
          ('importance/uint8', _array(np.arange(6, dtype=np.uint8)), ARRAY),
          ('importance/float16', _array(np.ones((2, 3), np.float16)), ARRAY),
          ('importance/scalar', _array(np.float32(3.0)), ARRAY),
          ('importance/empty', _array(np.zeros((0, 3), np.float32)), ARRAY),
          ('importance/big', _array(np.zeros(4_000_001, np.uint8)), ARRAY),
          ('importance/short_content', _proto(types_pb2.DT_FLOAT, [3], tensor_content=b'12345'),
           ARRAY),
          ('importance/missing_values', _proto(types_pb2.DT_FLOAT, [3], float_val=[1, 2]),
           ARRAY),
          ('importance/variant', _proto(types_pb2.DT_VARIANT, []), ARRAY),
          # a few bytes that declare 1.6 GB: refused from the declared shape, undecoded
          ('importance/bomb', _proto(types_pb2.DT_FLOAT, [20000, 20000], float_val=[1]), ARRAY),
          ('importance/bomb_json', _proto(types_pb2.DT_STRING, [20000, 20000],
                                          string_val=[b'{}']), JSON),
          ('strength/map_image/0', _array(np.float32(0.5)), PNG),            # float as png
          ('strength/map_image/1', _strings(b'GIF89a not a png'), PNG),
          ('strength/map_image/2', _strings([_png_bytes()] * 2), PNG),      # not a scalar
          ('strength/map_image/3', _strings(_png_bytes()), PNG),            # fine
          ('strength/map_image/4', _proto(types_pb2.DT_STRING, []), PNG),   # no value
      ],
      'attn-shapes': [
          (STRENGTH_META, good_meta, JSON),
          ('strength/map_attention/0', _array(_attention()[0]), ATTENTION),  # rank 3
          ('strength/map_rollout/0', _array(_attention()[0]), ROLLOUT),
          ('strength/map_attention/1', _array(_attention()), ATTENTION),
          ('strength/map_rollout/1', _array(_attention(tokens=4)[0]), ROLLOUT),  # 4 tokens
          ('strength/map_attention/2', _array(_attention()), ATTENTION),
          ('strength/map_rollout/2', _array(_attention()[0, 0]), ROLLOUT),  # rank 2
          ('strength/map_attention/3', _array(_attention()), ATTENTION),
          ('strength/map_rollout/3', _array(_attention(layers=3)[:, 0]), ROLLOUT),  # 3 layers
      ],
      'attn-kinds': [
          (STRENGTH_META, good_meta, JSON),
          ('strength/map_attention/0', _strings([[b'a']]), ATTENTION),        # strings
          ('strength/map_rollout/0', _array(_attention()[:, 0]), ROLLOUT),
          ('strength/map_attention/1', _strings(_png_bytes()), PNG),         # png kind
          ('strength/map_rollout/1', _array(_attention()[:, 0]), ROLLOUT),
          ('strength/map_attention/2', _array(_attention()), ATTENTION),     # fine
          ('strength/map_rollout/2', _array(_attention()[:, 0]), ROLLOUT),
          # image 3 is in map_image_index but has no maps
      ],
      'index-int': [(STRENGTH_META, _json_text('{"map_image_index": 3}'), JSON)],
      'index-dict': [(STRENGTH_META, _json_text('{"map_image_index": {"0": 1}}'), JSON)],
      'index-str': [(STRENGTH_META, _json_text('{"map_image_index": "abc"}'), JSON)],
      'index-none': [(STRENGTH_META, _json_text('{"images": 3}'), JSON)],
      'plugin-metadata': [
          ('importance/ok', _array([1.0]), ARRAY),
          ('importance/version_str', _array([1.0]),
           _raw_metadata(b'{"kind": "array", "analysis": "importance", "version": "1"}')),
          ('importance/axes_int', _array([1.0]),
           _raw_metadata(b'{"kind": "array", "analysis": "importance", "axes": 5}')),
          ('importance/axes_nan', _array([1.0]),
           _raw_metadata(b'{"kind": "array", "analysis": "importance", "axes": [NaN]}')),
          ('importance/no_analysis', _array([1.0]), _raw_metadata(b'{"kind": "array"}')),
          ('importance/analysis_list', _array([1.0]),
           _raw_metadata(b'{"kind": "array", "analysis": ["a"]}')),
          ('importance/kind_list', _array([1.0]), _raw_metadata(b'{"kind": ["array"]}')),
          ('importance/not_json', _array([1.0]), _raw_metadata(b'\xff{')),
          ('importance/a_list', _array([1.0]), _raw_metadata(b'[1]')),
      ],
  }


def write_logdir(logdir):
  """Each run as one event file, written with TensorBoard's record writer."""
  for run, values in malformed_runs().items():
    (logdir / run).mkdir(parents=True)
    with open(logdir / run / 'events.out.tfevents.1700000000.fuzz.1.malformed', 'wb') as f:
      writer = RecordWriter(f)
      writer.write(event_pb2.Event(wall_time=1.7e9, file_version='brain.Event:2')
                   .SerializeToString())
      for tag, tensor, meta in values:
        value = summary_pb2.Summary.Value(tag=tag, tensor=tensor, metadata=meta(tag))
        writer.write(event_pb2.Event(wall_time=1.7e9, step=0, summary=summary_pb2.Summary(
            value=[value])).SerializeToString())
      writer.flush()


def plant_secret(logdir):
  """A file beside the logdir whose content no response may contain."""
  secret = f'SECRET-{random.Random(SEED).getrandbits(64):016x}'
  (logdir.parent / 'secret.txt').write_text(secret)
  (logdir.parent / 'events.out.tfevents.secret').write_text(secret)
  return secret


# --- requests and the checks every response must pass ----------------------------------------


def send(client, route, params=(), method='GET'):
  """(status, headers, body) of one request; params: (name, value) pairs, repeats allowed,
  or a ready query string."""
  query = params if isinstance(params, str) else urllib.parse.urlencode(list(params))
  r = client.open(f'{PREFIX}{route}', method=method, query_string=query)
  return r.status_code, r.headers, r.get_data()


def check(response, route, method, secret, where):
  """The invariants of every response; `where` names the request in a failure."""
  code, headers, body = response
  assert code < 500, where
  assert secret.encode() not in body and b'root:x:0:0' not in body, where
  assert b'Traceback' not in body, where
  if method not in ('GET', 'HEAD'):
    assert code == 405 and headers.get('Allow') == 'GET, HEAD', where
  if method == 'HEAD':
    assert body == b'', where
    return
  if code != 200 or route not in ('/png', '/static/index.js'):
    assert headers.get('Content-Type', '').startswith('application/json'), where
    # strict JSON: no NaN or Infinity, which browsers' JSON.parse rejects
    parsed = json.loads(body, parse_constant=lambda c: pytest.fail(f'{c} in {where}'))
    if code != 200:
      assert isinstance(parsed, dict) and isinstance(parsed.get('error'), str), where
      assert '\n' not in parsed['error'], where
  elif route == '/png':
    assert body.startswith(PNG_SIGNATURE), where


# --- table: every known cause of a 500, with the answer chosen for it ------------------------


UNICODE_DIGITS = ['²', '⑴', '٣', '１', '߀', '৪', '𝟘', '½', 'Ⅻ', '¹²', '٠١٢']
BAD_INTEGERS = ['--1', '+1', ' 1', '1 ', '1.0', '0x10', '1e3', '', '-', '−1', '1_000', 'NaN',
                'inf', '0' * 13, '9' * 12, '-' + '9' * 12, '9' * 40, '9' * 5000, '1\n',
                '1\x00', '١٢', 'true', '[1]', '%00']


def hostile_strings(secret_path, logdir):
  return ['', ' ', '.', '..', '/', '../../etc/passwd', '..%2F..%2Fetc%2Fpasswd',
          '/etc/passwd', str(secret_path), '../secret.txt', 'tiny/../../secret.txt',
          str(logdir / '..' / 'secret.txt'), 'events.out.tfevents.secret',
          '../events.out.tfevents.secret', '\x00', 'tiny\x00', '%00', 'a' * 10_000,
          'x\r\nSet-Cookie: a=b', '"}', '<script>alert(1)</script>', 'NaN', 'null', '[]',
          '{}', 'ü', '\u202e', '🙂' * 50, 'strength/meta', 'importance/', '*', '%', '%zz',
          'C:\\Windows\\win.ini', 'file:///etc/passwd']


class Generator:
  """Seeded random requests: mostly plausible (real runs, tags, analyses, small indices),
  salted with every kind of hostile value, repeated parameters and other methods."""

  def __init__(self, seed, listing, secret_path, logdir):
    self.rng = random.Random(seed)
    self.listing = listing  # {run: {tag: kind}}
    self.hostile = hostile_strings(secret_path, logdir)

  def integer(self):
    rng, r = self.rng, self.rng.random()
    if r < 0.5:
      return str(rng.randrange(-2, 20))
    if r < 0.6:
      return str(rng.randrange(-10 ** 15, 10 ** 15))
    if r < 0.75:
      return rng.choice(UNICODE_DIGITS)
    if r < 0.9:
      return rng.choice(BAD_INTEGERS)
    return rng.choice(self.hostile)

  def value(self, name, run):
    rng = self.rng
    if name in ('index', 'index2', 'image', 'query'):
      return self.integer()
    if rng.random() < 0.25:
      return rng.choice(self.hostile)
    if name == 'run':
      return rng.choice(list(self.listing) or ['none'])
    if name == 'tag':
      tags = list(self.listing.get(run) or self.listing.get(rng.choice(list(self.listing)), {}))
      return rng.choice(tags) if tags else 'importance/meta'
    if name == 'analysis':
      return rng.choice(metadata.ANALYSES + ('Importance', 'meta'))
    return rng.choice(self.hostile)

  def method(self):
    r = self.rng.random()
    return 'GET' if r < 0.85 else 'HEAD' if r < 0.9 else self.rng.choice(OTHER_METHODS)

  def query(self):
    """(route, query string, method)."""
    rng = self.rng
    route = rng.choice(ROUTES + ('/static/',))
    if route == '/static/':  # an empty name would leave the plugin's routes
      route += rng.choice(['index.js', 'nope.js', '../vit_analytics_plugin.py', '..%2fsecret.txt',
                           '../../../secret.txt', '%00', 'index.js%00.png', '.',
                           rng.choice(self.hostile)[:200].replace('?', '').replace('#', '')]
                          ) or 'index.js'
    run = rng.choice(list(self.listing) or ['none'])
    if rng.random() < 0.5:  # a plausible request for the route, one value re-drawn
      params = self.plausible(route, run)
      if params:
        i = rng.randrange(len(params))
        params[i] = (params[i][0], self.value(params[i][0], run))
    else:  # any parameters, any values
      params = [(name, run if name == 'run' and rng.random() < 0.7 else self.value(name, run))
                for name in PARAMS if rng.random() < 0.5]
    if params and rng.random() < 0.05:  # a repeated parameter
      name = rng.choice(params)[0]
      params.append((name, self.value(name, run)))
    query = urllib.parse.urlencode(params)
    if rng.random() < 0.05:  # raw, not percent-encoded by us: %00, bad escapes, bytes
      query += '&' + rng.choice(['index=%00', 'run=%ff%fe', 'tag=%', 'query=%zz', '&&=&',
                                 'image=1%001', 'index=%C2%B2', 'index=%E2%91%B4'])
    return route, query, self.method()

  def plausible(self, route, run):
    """Parameters the frontend could send to `route` for `run`."""
    rng = self.rng
    kind = {'/array': 'array', '/png': 'png'}.get(route)
    tags = [t for t, k in self.listing.get(run, {}).items() if k == kind]
    if kind and tags:
      params = [('run', run), ('tag', rng.choice(tags))]
      if kind == 'array':
        params += [(n, str(rng.randrange(0, 6))) for n in ('index', 'index2')[:rng.randrange(3)]]
      return params
    if route == '/meta':
      return [('run', run), ('analysis', rng.choice(metadata.ANALYSES))]
    if route == '/attention':
      return [('run', run), ('image', str(rng.randrange(0, 5))),
              ('query', str(rng.randrange(0, 20)))]
    if route == '/first_view':
      names = list(self.listing.get(run, {}))
      return [('run', run), ('analyses', ','.join(metadata.ANALYSES[:rng.randrange(4)])),
              ('tags', ','.join(rng.sample(names, min(len(names), rng.randrange(0, 20)))))]
    return []

  def coverage(self):
    """Every stored tag through its route, with random indices, plus the attention route
    for every run."""
    rng = self.rng
    for run, tags in sorted(self.listing.items()):
      for tag, kind in sorted(tags.items()):
        if kind == 'json':
          yield '/meta', urllib.parse.urlencode({'run': run, 'analysis': tag.split('/')[0]}), 'GET'
        elif kind == 'png':
          yield '/png', urllib.parse.urlencode({'run': run, 'tag': tag}), 'GET'
        else:
          params = [('run', run), ('tag', tag)]
          for name in ('index', 'index2')[:rng.randrange(3)]:
            params.append((name, str(rng.randrange(-1, 8))))
          yield '/array', urllib.parse.urlencode(params), 'GET'
      for image in range(-1, 4):
        yield '/attention', urllib.parse.urlencode(
            {'run': run, 'image': image, 'query': rng.randrange(-1, 20)}), 'GET'
      yield '/first_view', urllib.parse.urlencode(
          {'run': run, 'analyses': ','.join(metadata.ANALYSES),
           'tags': ','.join(sorted(tags)[:64])}), 'GET'


def fuzz(setup, seed, count, deadline_s):
  """Sends up to `count` generated requests (the first cover every stored tag), checking
  each, for at most `deadline_s` seconds; returns (requests sent, Counter of status codes,
  seconds)."""
  client, _, logdir, secret = setup
  _, _, body = send(client, '/runs')
  listing = {r['run']: {t: info['kind'] for t, info in r['tags'].items()}
             for r in json.loads(body)['runs']}
  gen = Generator(seed, listing, logdir.parent / 'secret.txt', logdir)
  requests = list(gen.coverage())
  requests += [gen.query() for _ in range(count - len(requests))]
  histogram = collections.Counter()
  start = time.monotonic()
  for route, query, method in requests:
    if time.monotonic() - start > deadline_s:
      break
    response = send(client, route, query, method)
    check(response, route, method, secret, (method, route, query[:300]))
    histogram[response[0]] += 1
  return sum(histogram.values()), histogram, time.monotonic() - start
