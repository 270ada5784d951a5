"""HTTP routes of the plugin on a logdir written by the real analysis (werkzeug client)."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from tb_plugin import vit_analytics_plugin
from tb_plugin.vit_analytics_plugin import unpack
from vit_jax_analytics.logdir import reader
from tests.tb_plugin.client import PREFIX, get, make_client



@pytest.fixture(scope='module')
def client(analysis_logdir):
  return make_client(analysis_logdir)[0]


def test_runs_lists_every_analysis(client):
  code, body = get(client, '/runs')
  assert code == 200
  runs = {r['run']: r for r in body['runs']}
  assert set(runs) == {'tiny', 'importance-only'}
  assert runs['tiny']['analyses'] == ['importance', 'patterns', 'strength']
  assert runs['importance-only']['analyses'] == ['importance']
  assert runs['tiny']['tags']['importance/taylor']['axes'] == ['layer', 'head']


def test_arrays_equal_what_the_analysis_wrote(client, analysis_logdir):
  written = reader.read_run(analysis_logdir / 'tiny')
  for tag in ('importance/taylor', 'importance/curve_top1', 'strength/offset_ratio',
              'patterns/head_density', 'importance/per_image_taylor'):
    code, body = get(client, '/array', run='tiny', tag=tag)
    assert code == 200, body
    assert body['shape'] == list(written[tag].shape)
    np.testing.assert_array_equal(unpack(body), written[tag].astype(unpack(body).dtype))
  # Nothing was lost to TensorBoard's sampling: every tag holds its full array.
  code, body = get(client, '/array', run='tiny', tag='patterns/sample_index')
  assert body['shape'][0] == written['patterns/sample_index'].shape[0] == 6 * 3 * 4 * 4


def test_meta_png_and_attention(client, analysis_logdir):
  code, meta = get(client, '/meta', run='tiny', analysis='importance')
  assert code == 200 and meta['config']['num_heads'] == 4 and len(meta['image_names']) == 6
  code, png = get(client, '/png', run='tiny', tag='strength/map_image/1')
  assert code == 200 and png[:8] == b'\x89PNG\r\n\x1a\n'
  code, body = get(client, '/attention', run='tiny', image=1, query=5)
  assert code == 200
  written = reader.read_run(analysis_logdir / 'tiny')
  np.testing.assert_array_equal(unpack(body['attention']),
                                written['strength/map_attention/1'][:, :, 5].astype(np.float32))
  np.testing.assert_array_equal(unpack(body['rollout']),
                                written['strength/map_rollout/1'][:, 5].astype(np.float32))
  code, body = get(client, '/array', run='tiny', tag='strength/map_attention/2', index=2,
                   index2=1)
  assert code == 200 and body['shape'] == [17, 17] and body['axes'] == ['query', 'key']


def test_one_heads_values_by_axis_name(client, analysis_logdir):
  """layer=/head= select along the axes of those names: one head's [image] values of the
  per-image array, and a head's row or column of a [layer, head] grid."""
  written = reader.read_run(analysis_logdir / 'tiny')
  per_image = written['importance/per_image_taylor'].astype(np.float32)   # [image, layer, head]
  for l, h in ((0, 0), (1, 3), (1, 2)):
    code, body = get(client, '/array', run='tiny', tag='importance/per_image_taylor', layer=l,
                     head=h)
    assert code == 200, body
    assert body['axes'] == ['image'] and body['shape'] == [per_image.shape[0]]
    np.testing.assert_array_equal(unpack(body), per_image[:, l, h])
  code, body = get(client, '/array', run='tiny', tag='importance/per_image_taylor', head=2)
  assert body['axes'] == ['image', 'layer']
  np.testing.assert_array_equal(unpack(body), per_image[:, :, 2])
  code, body = get(client, '/array', run='tiny', tag='importance/per_image_taylor', index=4,
                   layer=1)
  assert body['axes'] == ['head']
  np.testing.assert_array_equal(unpack(body), per_image[4, 1])


@pytest.mark.parametrize('route,params,code,message', [
    ('/array', {'run': 'tiny', 'tag': 'importance/per_image_taylor', 'head': 4}, 400,
     'out of range'),
    ('/array', {'run': 'tiny', 'tag': 'importance/per_image_taylor', 'layer': 'x'}, 400,
     'integer'),
    ('/array', {'run': 'tiny', 'tag': 'importance/per_image_taylor', 'layer': [0, 1]}, 400,
     'given 2 times'),
    ('/array', {'run': 'tiny', 'tag': 'strength/offset_pairs', 'head': 0}, 400,
     "has no axis 'head'"),
    ('/array', {'run': 'tiny', 'tag': 'importance/taylor', 'index': 0, 'layer': 0}, 400,
     "has no axis 'layer'"),
    ('/array', {'run': '../../etc', 'tag': 'importance/taylor'}, 404, 'unknown run'),
    ('/array', {'run': 'tiny', 'tag': '../../../etc/passwd'}, 404, 'unknown tag'),
    ('/array', {'run': 'nope', 'tag': 'importance/taylor'}, 404, 'unknown run'),
    ('/array', {'tag': 'importance/taylor'}, 400, 'missing parameter "run"'),
    ('/array', {'run': 'tiny'}, 400, 'missing parameter "tag"'),
    ('/array', {'run': 'tiny', 'tag': 'importance/meta'}, 400, 'is not an array'),
    ('/array', {'run': 'tiny', 'tag': 'importance/taylor', 'index': 7}, 400, 'out of range'),
    ('/array', {'run': 'tiny', 'tag': 'importance/taylor', 'index': '9' * 40}, 400,
     'must be an integer'),
    ('/array', {'run': 'tiny', 'tag': 'importance/taylor', 'index': 'x'}, 400, 'integer'),
    # str.isdigit() accepts these, int() does not: they were 500s
    ('/array', {'run': 'tiny', 'tag': 'importance/taylor', 'index': '²'}, 400, 'integer'),
    ('/array', {'run': 'tiny', 'tag': 'importance/taylor', 'index': '⑴'}, 400, 'integer'),
    ('/array', {'run': 'tiny', 'tag': 'importance/taylor', 'index': '--1'}, 400, 'integer'),
    ('/array', {'run': 'tiny', 'tag': 'importance/taylor', 'index2': 0}, 400, 'needs "index"'),
    ('/array', {'run': ['tiny', 'tiny'], 'tag': 'importance/taylor'}, 400, 'given 2 times'),
    ('/attention', {'run': 'tiny', 'image': '٠', 'query': 0}, 400, 'integer'),
    ('/png', {'run': 'tiny', 'tag': 'importance/taylor'}, 400, 'is not an image'),
    ('/attention', {'run': 'tiny', 'image': 3, 'query': 0}, 400, 'out of range'),
    ('/attention', {'run': 'tiny', 'image': 0, 'query': -1}, 400, 'out of range'),
    ('/attention', {'run': 'tiny', 'image': 0}, 400, 'required'),
    ('/attention', {'run': 'importance-only', 'image': 0, 'query': 0}, 404, 'unknown tag'),
    ('/attention', {'run': 'tiny', 'image': 0, 'query': 17}, 400, 'out of range'),
    ('/meta', {'run': 'tiny', 'analysis': '../x'}, 400, 'must be one of'),
    ('/first_view', {'analyses': 'importance,../x'}, 400, 'must be one of'),
    ('/first_view', {'tags': ','.join(['importance/taylor'] * 65)}, 400, 'at most 64'),
    ('/first_view', {'step': '-1'}, 400, 'must be >= 0'),
    ('/first_view', {'step': 'x'}, 400, 'integer'),
    ('/first_view', {'run': ['tiny', 'tiny']}, 400, 'given 2 times'),
])
def test_bad_parameters_are_4xx_json(client, route, params, code, message):
  got, body = get(client, route, **params)
  assert got == code and message in body['error']


@pytest.mark.parametrize('method', ['POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS'])
@pytest.mark.parametrize('route', ['/runs', '/meta', '/array', '/png', '/attention',
                                   '/first_view', '/static/index.js'])
def test_read_routes_allow_only_get_and_head(client, route, method):
  r = client.open(f'{PREFIX}{route}', method=method, query_string={'run': 'tiny'})
  assert r.status_code == 405 and r.headers['Allow'] == 'GET, HEAD'
  assert 'not allowed' in json.loads(r.get_data())['error']


def test_head_answers_like_get_without_a_body(client):
  r = client.head(f'{PREFIX}/array', query_string={'run': 'tiny', 'tag': 'importance/taylor'})
  assert r.status_code == 200 and r.get_data() == b'' and r.mimetype == 'application/json'
  r = client.head(f'{PREFIX}/array', query_string={'run': 'nope', 'tag': 'importance/taylor'})
  assert r.status_code == 404 and r.get_data() == b''


def test_static_files_only_from_the_static_folder(client):
  r = client.get(f'{PREFIX}/static/index.js')
  assert r.status_code == 200 and b'export async function render' in r.get_data()
  assert r.mimetype == 'application/javascript'
  for bad in ('../vit_analytics_plugin.py', '..%2fmetadata.py', 'nope.js'):
    r = client.get(f'{PREFIX}/static/{bad}')
    assert r.status_code == 404


def test_every_frontend_module_is_served_as_javascript(client):
  """index.js and, recursively, every module it imports (statically, or later with
  `import('./x.js')`, or as a row of views.js's VIEWS): a missing file fails here, and so does a MIME type the browser would
  refuse for a module. Every file of static/ is reached."""
  imports = re.compile(r"^import\s+(?:[^;]*?\s+from\s+)?['\"]\./([\w.-]+)['\"]", re.M)
  dynamic = re.compile(r"\bimport\(\s*['\"]\./([\w.-]+)['\"]\s*\)")
  served, todo = set(), ['index.js']
  while todo:
    name = todo.pop()
    if name in served:
      continue
    r = client.get(f'{PREFIX}/static/{name}')
    assert r.status_code == 200, f'{name} is imported but not served'
    assert r.mimetype == 'application/javascript', name
    served.add(name)
    text = r.get_data(as_text=True)
    todo += imports.findall(text) + dynamic.findall(text)
    if name == 'views.js':   # app.js imports each view's module by its row of the table
      todo += [f'view_{v}.js' for v in re.findall(r"\{id: '(\w+)'", text)]
  assert len(served) > 1  # the frontend is split into modules
  static = Path(vit_analytics_plugin.__file__).parent / 'static'
  assert served == {p.name for p in static.glob('*.js')}


def test_first_view_answers_as_the_routes_it_replaces(client):
  """/first_view holds what /runs, /steps, /meta and /array answer for the run shown (the
  one asked for, else the first), and names what it leaves out."""
  tags = ['importance/taylor', 'importance/curve_top1', 'importance/nope', 'importance/meta',
          'strength/offset_ratio', 'importance/taylor']
  for run, shown in (('importance-only', 'importance-only'), ('nope', 'importance-only'),
                     (None, 'importance-only'), ('tiny', 'tiny')):
    params = {'analyses': 'importance,strength', 'tags': ','.join(tags),
              **({} if run is None else {'run': run})}
    code, body = get(client, '/first_view', **params)
    assert code == 200 and body['run'] == shown
    assert body['runs'] == get(client, '/runs')[1]['runs']
    assert body['steps'] == get(client, '/steps', run=shown)[1]['steps']
    assert body['meta']['importance'] == get(client, '/meta', run=shown, analysis='importance')[1]
    for tag in ('importance/taylor', 'importance/curve_top1'):
      assert body['arrays'][tag] == get(client, '/array', run=shown, tag=tag)[1]
    lacks = ['strength/meta'] if shown == 'importance-only' else []
    assert sorted(body['missing']) == sorted(
        lacks + ['importance/nope', 'importance/meta'] + (
            ['strength/offset_ratio'] if shown == 'importance-only' else []))
    assert ('strength' in body['meta']) == (shown == 'tiny')
    assert set(body['arrays']) == {'importance/taylor', 'importance/curve_top1'} | (
        {'strength/offset_ratio'} if shown == 'tiny' else set())


def test_first_view_names_the_first_views_modules():
  """index.js preloads the modules app.js imports statically (all of them, and no other),
  as views.js lists them: a stale list would fetch the first view's modules one level of
  imports at a time. index.js imports only views.js, which imports nothing."""
  static = Path(vit_analytics_plugin.__file__).parent / 'static'
  imports = re.compile(r"^import\s+(?:[^;]*?\s+from\s+)?['\"]\./([\w.-]+)['\"]", re.M)
  closure, todo = set(), ['app.js']
  while todo:
    name = todo.pop()
    if name not in closure:
      closure.add(name)
      todo += imports.findall((static / name).read_text())
  table = (static / 'views.js').read_text()
  listed = re.search(r'FIRST_VIEW_MODULES = \[([^\]]*)\]', table)
  first = re.search(r"VIEWS = \[\s*\{id: '(\w+)'", table).group(1)
  assert 'moduleOf(FIRST_VIEW)' in listed.group(1)
  assert set(re.findall(r"'([\w.-]+)'", listed.group(1))) | {f'view_{first}.js', 'views.js'} == closure
  assert imports.findall((static / 'index.js').read_text()) == ['views.js']
  assert imports.findall(table) == []   # nothing before the first view's fetch


def test_first_view_without_tags_serves_the_analyses_arrays_less_per_image_ones(client):
  """The first view's arrays are chosen by the plugin from the stored tags (no copy of the
  schema in the page): every array of the analysis without a per-image axis."""
  code, body = get(client, '/first_view', analyses='importance', run='tiny')
  assert code == 200
  listing = get(client, '/runs')[1]['runs']
  tags = next(r for r in listing if r['run'] == 'tiny')['tags']
  want = {t for t, i in tags.items() if t.startswith('importance/') and i['kind'] == 'array'
          and not {'image', 'subset_image'} & set(i.get('axes') or ())}
  assert set(body['arrays']) == want and body['missing'] == []
  assert 'importance/taylor' in want and 'importance/partial_loss_se' in want
  assert not any('per_image' in t for t in body['arrays'])


def test_empty_logdir_lists_no_runs(tmp_path):
  client, plugin = make_client(tmp_path)
  assert get(client, '/runs') == (200, {'runs': []})
  assert get(client, '/first_view', tags='importance/taylor', analyses='importance') == (
      200, {'runs': [], 'run': None, 'steps': {}, 'meta': {}, 'arrays': {}, 'missing': []})
  assert plugin.frontend_metadata().es_module_path == '/static/index.js'


def test_half_written_analysis_is_invisible(analysis_logdir, tmp_path):
  """A writer's partial file (no 'tfevents' in its name) is never read."""
  logdir = tmp_path / 'logs'
  shutil.copytree(analysis_logdir / 'importance-only', logdir / 'run')
  partial = next((logdir / 'run').glob('events.out.tfevents.*')).read_bytes()
  (logdir / 'run' / '.strength.123.partial').write_bytes(partial[:len(partial) // 2])
  client, _ = make_client(logdir)
  code, body = get(client, '/runs')
  assert body['runs'][0]['analyses'] == ['importance']
