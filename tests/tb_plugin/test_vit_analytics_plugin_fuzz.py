"""Hostile queries against the plugin's routes, table-driven and generated, over the real
analysis logdir and over a deliberately malformed one written here.

Whatever the query or the stored data: no 5xx, every non-200 body is JSON with an "error",
no traceback in any body, and nothing from a file outside the logdir. The generator is a
seeded `random.Random`, so a failure names a reproducible request.
"""

import json
import shutil

import pytest

from tests.tb_plugin.client import make_client
from tests.tb_plugin.fuzzing import (
    DEADLINE_S, MIN_REQUESTS, REQUESTS, SEED, check, fuzz, malformed_runs, plant_secret, send, write_logdir)


@pytest.fixture(scope='module')
def malformed(tmp_path_factory):
  logdir = tmp_path_factory.mktemp('malformed') / 'logs'
  write_logdir(logdir)
  secret = plant_secret(logdir)
  client, plugin = make_client(logdir)
  return client, plugin, logdir, secret


@pytest.fixture(scope='module')
def real(analysis_logdir, tmp_path_factory):
  """A copy of the real analysis logdir, with a secret planted beside it."""
  logdir = tmp_path_factory.mktemp('real') / 'logs'
  shutil.copytree(analysis_logdir, logdir)
  secret = plant_secret(logdir)
  client, plugin = make_client(logdir)
  return client, plugin, logdir, secret


TABLE = [
    # stored meta values: invalid JSON, a list, NaN, inf, too deep, not UTF-8, huge int
    ('/meta', {'run': 'meta-a', 'analysis': 'importance'}, 422, 'is not valid JSON'),
    ('/meta', {'run': 'meta-a', 'analysis': 'strength'}, 422, 'is not a JSON object'),
    ('/meta', {'run': 'meta-a', 'analysis': 'patterns'}, 422, 'NaN is not allowed'),
    ('/meta', {'run': 'meta-d', 'analysis': 'importance'}, 422, 'not finite'),
    ('/meta', {'run': 'meta-b', 'analysis': 'importance'}, 422, 'is not valid JSON'),
    ('/meta', {'run': 'meta-b', 'analysis': 'strength'}, 422, 'is not valid JSON'),
    ('/meta', {'run': 'meta-b', 'analysis': 'patterns'}, 422, 'is not valid JSON'),
    ('/meta', {'run': 'meta-d', 'analysis': 'strength'}, 422, 'not a scalar string tensor'),
    ('/meta', {'run': 'meta-c', 'analysis': 'importance'}, 422, 'is not JSON (kind'),
    ('/meta', {'run': 'meta-c', 'analysis': 'strength'}, 422, 'is not JSON (kind'),
    ('/meta', {'run': 'meta-c', 'analysis': 'patterns'}, 200, None),
    ('/meta', {'run': 'meta-d', 'analysis': 'patterns'}, 422, 'not a scalar string tensor'),
    ('/meta', {'run': 'meta-a', 'analysis': 'images'}, 400, 'must be one of'),
    # arrays that are not numeric, or do not decode; numeric ones of every dtype are served
    ('/array', {'run': 'arrays', 'tag': 'importance/strings'}, 422, 'is not a numeric array'),
    ('/array', {'run': 'arrays', 'tag': 'importance/string'}, 422, 'is not a numeric array'),
    ('/array', {'run': 'arrays', 'tag': 'importance/complex'}, 422, 'is not a numeric array'),
    ('/array', {'run': 'arrays', 'tag': 'importance/short_content'}, 422, 'cannot be decoded'),
    ('/array', {'run': 'arrays', 'tag': 'importance/missing_values'}, 422,
     'cannot be decoded'),
    ('/array', {'run': 'arrays', 'tag': 'importance/variant'}, 422, 'cannot be decoded'),
    ('/array', {'run': 'arrays', 'tag': 'importance/bomb'}, 413, 'declares 400000000'),
    ('/array', {'run': 'arrays', 'tag': 'importance/bomb', 'index': 3}, 413, 'declares'),
    ('/array', {'run': 'arrays', 'tag': 'importance/bool'}, 200, None),
    ('/array', {'run': 'arrays', 'tag': 'importance/int64', 'index': 1, 'index2': 2}, 200,
     None),
    ('/array', {'run': 'arrays', 'tag': 'importance/uint8'}, 200, None),
    ('/array', {'run': 'arrays', 'tag': 'importance/float16'}, 200, None),
    ('/array', {'run': 'arrays', 'tag': 'importance/scalar'}, 200, None),
    ('/array', {'run': 'arrays', 'tag': 'importance/scalar', 'index': 0}, 400, 'out of range'),
    ('/array', {'run': 'arrays', 'tag': 'importance/empty'}, 200, None),
    ('/array', {'run': 'arrays', 'tag': 'importance/empty', 'index': 0}, 400, 'out of range'),
    ('/array', {'run': 'arrays', 'tag': 'importance/big'}, 413, 'ask for a slice'),
    ('/array', {'run': 'arrays', 'tag': 'importance/big', 'index': 4_000_000}, 200, None),
    ('/array', {'run': 'arrays', 'tag': 'importance/bool', 'index2': 0}, 400, 'needs "index"'),
    ('/array', {'run': 'arrays', 'tag': 'strength/map_image/3'}, 400, 'is not an array'),
    # png values that are not PNG bytes
    ('/png', {'run': 'arrays', 'tag': 'strength/map_image/0'}, 422, 'not a scalar string'),
    ('/png', {'run': 'arrays', 'tag': 'strength/map_image/1'}, 422, 'does not hold PNG data'),
    ('/png', {'run': 'arrays', 'tag': 'strength/map_image/2'}, 422, 'not a scalar string'),
    ('/png', {'run': 'arrays', 'tag': 'strength/map_image/3'}, 200, None),
    ('/png', {'run': 'arrays', 'tag': 'strength/map_image/4'}, 422, 'cannot be decoded'),
    ('/png', {'run': 'arrays', 'tag': 'importance/bool'}, 400, 'is not an image'),
    # attention maps of the wrong rank or sizes, or not numeric arrays
    ('/attention', {'run': 'attn-shapes', 'image': 0, 'query': 0}, 422,
     'expected [layer, head, query, key]'),
    ('/attention', {'run': 'attn-shapes', 'image': 1, 'query': 0}, 422,
     "'strength/map_rollout/1' has shape [2, 4, 4]; expected [layer, query, key] = [2, 5, 5]"),
    ('/attention', {'run': 'attn-shapes', 'image': 2, 'query': 0}, 422, 'has shape [5, 5]'),
    ('/attention', {'run': 'attn-shapes', 'image': 3, 'query': 0}, 422, 'has shape [3, 5, 5]'),
    ('/attention', {'run': 'attn-shapes', 'image': 4, 'query': 0}, 400, 'out of range [0, 4)'),
    ('/attention', {'run': 'attn-kinds', 'image': 0, 'query': 0}, 422, 'not a numeric array'),
    ('/attention', {'run': 'attn-kinds', 'image': 1, 'query': 0}, 422, 'is not an array'),
    ('/attention', {'run': 'attn-kinds', 'image': 2, 'query': 4}, 200, None),
    ('/attention', {'run': 'attn-kinds', 'image': 2, 'query': 5}, 400, 'out of range [0, 5)'),
    ('/attention', {'run': 'attn-kinds', 'image': 3, 'query': 0}, 404, 'unknown tag'),
    # map_image_index that is not a list
    ('/attention', {'run': 'index-int', 'image': 0, 'query': 0}, 422, 'is not a list'),
    ('/attention', {'run': 'index-dict', 'image': 0, 'query': 0}, 422, 'is not a list'),
    ('/attention', {'run': 'index-str', 'image': 0, 'query': 0}, 422, 'is not a list'),
    ('/attention', {'run': 'index-none', 'image': 0, 'query': 0}, 400, 'out of range [0, 0)'),
    ('/attention', {'run': 'meta-a', 'image': 0, 'query': 0}, 422, 'is not a JSON object'),
    ('/attention', {'run': 'meta-b', 'image': 0, 'query': 0}, 422, 'is not valid JSON'),
    # tags whose plugin metadata is malformed are left out, as if absent
    ('/array', {'run': 'plugin-metadata', 'tag': 'importance/ok'}, 200, None),
    ('/array', {'run': 'plugin-metadata', 'tag': 'importance/axes_int'}, 404, 'unknown tag'),
    ('/array', {'run': 'plugin-metadata', 'tag': 'importance/version_str'}, 404,
     'unknown tag'),
    # the integers of the hostile probe
    ('/array', {'run': 'arrays', 'tag': 'importance/bool', 'index': '²'}, 400, 'integer'),
    ('/array', {'run': 'arrays', 'tag': 'importance/bool', 'index': '⑴'}, 400, 'integer'),
    ('/array', {'run': 'arrays', 'tag': 'importance/bool', 'index': '--1'}, 400, 'integer'),
    ('/attention', {'run': 'attn-kinds', 'image': '٢', 'query': 0}, 400, 'integer'),
    ('/attention', {'run': 'attn-kinds', 'image': 2, 'query': '１'}, 400, 'integer'),
]


@pytest.mark.parametrize('route,params,code,message', TABLE)
def test_malformed_values_are_answered(malformed, route, params, code, message):
  client, _, _, secret = malformed
  response = send(client, route, params.items())
  check(response, route, 'GET', secret, (route, params))
  assert response[0] == code, response[2][:300]
  if message:
    assert message in json.loads(response[2])['error']


def test_runs_leaves_out_malformed_plugin_metadata(malformed):
  client, _, _, secret = malformed
  code, _, body = send(client, '/runs')
  runs = {r['run']: r for r in json.loads(body)['runs']}
  assert code == 200 and list(runs['plugin-metadata']['tags']) == ['importance/ok']
  assert set(runs) == set(malformed_runs())


def test_a_malformed_value_is_read_and_checked_once(malformed, monkeypatch):
  """The answer for a malformed value is cached like a value: no re-read per request."""
  client, plugin = make_client(malformed[2])
  reads = []
  read_tensors = plugin._provider.read_tensors
  monkeypatch.setattr(plugin._provider, 'read_tensors',
                      lambda *a, **k: reads.append(k) or read_tensors(*a, **k))
  for _ in range(3):
    assert send(client, '/png', [('run', 'arrays'), ('tag', 'strength/map_image/1')])[0] == 422
    assert send(client, '/array', [('run', 'arrays'), ('tag', 'importance/variant')])[0] == 422
  assert len(reads) == 2


def test_an_unexpected_error_is_logged_not_served(malformed, monkeypatch, caplog):
  """The last line of defence: an exception no check foresaw is a 422 JSON error; its
  traceback goes to the log only."""
  client, plugin = make_client(malformed[2])

  def fail(*args, **kwargs):
    raise RuntimeError('a detail of the server')

  monkeypatch.setattr(plugin, '_tags', fail)
  for route in ('/runs', '/array'):
    code, headers, body = send(client, route, [('run', 'arrays'), ('tag', 'importance/bool')])
    check((code, headers, body), route, 'GET', malformed[3], route)
    assert code == 422 and b'a detail of the server' not in body
  assert 'a detail of the server' in caplog.text and 'Traceback' in caplog.text


# --- generated requests ----------------------------------------------------------------------

@pytest.mark.parametrize('which', ['real', 'malformed'])
def test_generated_requests(which, request, record_property):
  """Run with -s to see the counts; they are also recorded as junit-xml properties."""
  sent, histogram, seconds = fuzz(request.getfixturevalue(which), SEED, REQUESTS, DEADLINE_S)
  summary = (f'fuzz {which} logdir: {sent} requests in {seconds:.1f} s, status '
             f'{dict(sorted(histogram.items()))}, 5xx: '
             f'{sum(n for c, n in histogram.items() if c >= 500)}')
  print(summary)
  record_property(f'fuzz_{which}', summary)
  assert sent >= MIN_REQUESTS, f'{summary}: too slow for {MIN_REQUESTS} in {DEADLINE_S} s'
  assert not any(c >= 500 for c in histogram)
  # the generator reaches every kind of answer
  assert all(histogram[c] for c in (200, 400, 404, 405)), summary
  assert histogram[422] if which == 'malformed' else not histogram[422], summary
