"""A stored tensor that declares far more than it stores (one float_val for [20000, 20000]:
a few dozen bytes on disk, 1.6 GB decoded) is answered 413 at once on every route that
decodes a tensor, by the real `tensorboard` serving the file, without the server's memory
growing: the declared element count is checked before anything is decoded."""

import concurrent.futures
import json
import time
import urllib.error
import urllib.parse
import urllib.request

import numpy as np
import pytest
from tensorboard.compat.proto import event_pb2, summary_pb2, types_pb2
from tensorboard.summary.writer.record_writer import RecordWriter
from tensorboard.util import tensor_util

from tb_plugin import vit_analytics_plugin
from tb_plugin.browser import tensorboard
from tests.tb_plugin.fuzzing import _ours as _meta, _proto
from vit_jax_analytics.logdir import metadata

BOMB = [20000, 20000]   # 4e8 elements: 1.6 GB as float32, 3.2 GB of object pointers as strings
MAX_SECONDS = 2.0       # per request (decoding the bomb took 6-13 s)
MAX_GROWTH_MIB = 150    # of the server's peak resident memory (the bomb: +3 GB)
PREFIX = f'/data/plugin/{metadata.PLUGIN_NAME}'




def _attention():
  a = np.full((2, 2, 5, 5), 0.2, np.float32)
  return tensor_util.make_tensor_proto(a)


def bomb_values():
  """[(tag, tensor proto, metadata)]: a bomb of every kind, beside a fine value."""
  float_bomb = _proto(types_pb2.DT_FLOAT, BOMB, float_val=[1.0])
  return [
      ('importance/bomb', float_bomb, _meta('array', ['layer', 'head'])),
      ('importance/int_bomb', _proto(types_pb2.DT_INT32, BOMB, int_val=[7]), _meta('array')),
      ('importance/negative', _proto(types_pb2.DT_FLOAT, [-20000, -20000], float_val=[1.0]),
       _meta('array')),
      ('importance/fine', tensor_util.make_tensor_proto(np.ones((2, 3), np.float32)),
       _meta('array', ['layer', 'head'])),
      ('importance/meta', _proto(types_pb2.DT_STRING, BOMB, string_val=[b'{}']), _meta('json')),
      ('strength/meta', tensor_util.make_tensor_proto(
          np.array(b'{"map_image_index": [0]}', dtype=object)), _meta('json')),
      ('strength/map_attention/0', _proto(types_pb2.DT_FLOAT, [2, 2, 10000, 10000],
                                          float_val=[0.5]),
       _meta('array', ['layer', 'head', 'query', 'key'])),
      ('strength/map_rollout/0', _attention(), _meta('array', ['layer', 'query', 'key'])),
      ('strength/map_image/0', _proto(types_pb2.DT_STRING, BOMB, string_val=[b'\x89PNG']),
       _meta('png')),
  ]


def write_bomb_logdir(logdir, run='bomb'):
  (logdir / run).mkdir(parents=True)
  with open(logdir / run / 'events.out.tfevents.1700000000.bomb.1.v2', 'wb') as f:
    writer = RecordWriter(f)
    writer.write(event_pb2.Event(wall_time=1.7e9, file_version='brain.Event:2')
                 .SerializeToString())
    for step in (0, 1):  # two steps: /series and /steps read each
      for tag, tensor, meta in bomb_values():
        value = summary_pb2.Summary.Value(tag=tag, tensor=tensor, metadata=meta(tag))
        writer.write(event_pb2.Event(wall_time=1.7e9 + step, step=step, summary=summary_pb2.Summary(
            value=[value])).SerializeToString())
    writer.flush()
  return logdir


def _peak_mib(pid):
  """The process's peak resident memory (VmHWM), MiB."""
  with open(f'/proc/{pid}/status') as f:
    for line in f:
      if line.startswith('VmHWM:'):
        return int(line.split()[1]) / 1024
  raise AssertionError('no VmHWM')


def _get(url):
  """(status, parsed JSON or bytes, seconds)."""
  start = time.monotonic()
  try:
    with urllib.request.urlopen(url, timeout=60) as r:
      code, body, ctype = r.status, r.read(), r.headers.get('Content-Type', '')
  except urllib.error.HTTPError as e:
    code, body, ctype = e.code, e.read(), e.headers.get('Content-Type', '')
  seconds = time.monotonic() - start
  return code, json.loads(body) if ctype.startswith('application/json') else body, seconds


REQUESTS = [  # (route, params, expected status, words of the error)
    ('/array', {'tag': 'importance/bomb'}, 413, 'declares 400000000 elements'),
    ('/array', {'tag': 'importance/bomb', 'index': 0}, 413, 'declares 400000000 elements'),
    ('/array', {'tag': 'importance/bomb', 'step': 0}, 413, 'declares 400000000 elements'),
    ('/array', {'tag': 'importance/int_bomb'}, 413, 'declares 400000000 elements'),
    ('/array', {'tag': 'importance/negative'}, 422, 'negative dimension'),
    ('/array', {'tag': 'importance/fine'}, 200, None),
    ('/series', {'tag': 'importance/bomb'}, 413, 'declares 400000000 elements'),
    ('/series', {'tag': 'importance/fine'}, 200, None),
    ('/meta', {'analysis': 'importance'}, 413, 'declares 400000000 elements'),
    ('/png', {'tag': 'strength/map_image/0'}, 413, 'declares 400000000 elements'),
    ('/attention', {'image': 0, 'query': 0}, 413, 'declares 400000000 elements'),
    ('/steps', {}, 200, None),
]


@pytest.mark.parametrize('load_fast', ['false', 'true'])
def test_a_declared_bomb_is_refused_at_once_without_memory(tmp_path, load_fast):
  logdir = write_bomb_logdir(tmp_path / 'logs')
  with tensorboard(logdir, load_fast) as url:
    # the server process (with --load_fast=true, the data server is a child: Python decodes)
    pid = _server_pid(url)
    before = _peak_mib(pid)
    for route, params, code, words in REQUESTS:
      got, body, seconds = _get(f'{url}{PREFIX}{route}?' + urllib.parse.urlencode(
          {'run': 'bomb', **params}))
      assert got == code, (route, params, body)
      assert seconds < MAX_SECONDS, (route, params, seconds)
      if words:
        assert words in body['error'] and '\n' not in body['error'], body
    # three at once, and /first_view naming every tag
    tags = ','.join(t for t, _, _ in bomb_values())
    urls = [f'{url}{PREFIX}/array?run=bomb&tag=importance/bomb&step={s}' for s in (0, 1, 0)]
    urls.append(f'{url}{PREFIX}/first_view?run=bomb&analyses=importance,strength&tags={tags}')
    with concurrent.futures.ThreadPoolExecutor(len(urls)) as pool:
      answers = list(pool.map(_get, urls))
    assert [a[0] for a in answers] == [413, 413, 413, 200]
    assert all(a[2] < MAX_SECONDS for a in answers), [a[2] for a in answers]
    first_view = answers[-1][1]
    assert list(first_view['arrays']) == ['importance/fine', 'strength/map_rollout/0']
    assert {'importance/meta', 'importance/bomb', 'strength/map_attention/0'} <= set(
        first_view['missing'])
    growth = _peak_mib(pid) - before
    assert growth < MAX_GROWTH_MIB, f'server peak memory grew {growth:.0f} MiB'


def _server_pid(url):
  """The pid of the process listening on the URL's port (the tensorboard we started)."""
  import psutil
  port = int(url.rsplit(':', 1)[1])
  for conn in psutil.net_connections('tcp'):
    if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN:
      return conn.pid
  raise AssertionError(f'no process listens on {port}')


def test_refusal_reads_only_the_declared_shape():
  """The rule itself: a fill over MAX_ARRAY_ELEMENTS or anything over MAX_DECODED_ELEMENTS
  is refused; a stored array of any size up to that, or a small fill, is decoded."""
  refusal = vit_analytics_plugin.refusal
  limit = vit_analytics_plugin.MAX_ARRAY_ELEMENTS
  assert refusal(_proto(types_pb2.DT_FLOAT, BOMB, float_val=[1.0])).code == 413
  assert refusal(_proto(types_pb2.DT_FLOAT, [limit + 1], float_val=[1.0])).code == 413
  assert refusal(_proto(types_pb2.DT_FLOAT, [limit], float_val=[1.0])) is None
  assert refusal(_proto(types_pb2.DT_FLOAT, [2 ** 14, 2 ** 15],
                        tensor_content=b'\0' * 4)).code == 413
  assert refusal(tensor_util.make_tensor_proto(np.zeros(limit + 1, np.uint8))) is None
  assert refusal(_proto(types_pb2.DT_FLOAT, [2 ** 30, 2 ** 34, 2 ** 40])).code == 413
  assert refusal(_proto(types_pb2.DT_FLOAT, [-1, 3])).code == 422
