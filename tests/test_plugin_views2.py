"""Issue 21 ("Views II") in a real browser: one test (or more) per item, each against the
real `tensorboard` serving a logdir written by the real analysis of a tiny model, in headless
Chromium. One server and one browser for the module; the page is reopened only where a test
needs a fresh one."""

import math
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from tb_plugin.browser import CHROMEDRIVER, CHROMIUM, chromium, tensorboard
from tb_plugin.vit_analytics_plugin import ALONE_PATH
from tests.test_plugin_views import Page, logdir  # noqa: F401 (a copy of the logdir per module)
from vit_jax_analytics import head_kinds
from vit_jax_analytics.logdir import reader

STATIC = Path(__file__).resolve().parents[1] / 'tb_plugin' / 'static'




@pytest.fixture(scope='module')
def server(logdir):
  with tensorboard(logdir, 'false') as url:
    yield url


@pytest.fixture(scope='module')
def browser():
  assert Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists(), (
      'the browser test needs Debian chromium and chromium-driver')
  with chromium('1400,1000') as driver:
    yield driver


@pytest.fixture(scope='module')
def tiny(logdir):
  return {'importance': reader.read_importance(logdir / 'tiny'),
          'strength': reader.read_strength(logdir / 'tiny')}


class Alone(Page):
  """The plugin's page alone (its own address, its own hash), with run `run` shown; the
  element helpers are Page's."""

  def __init__(self, driver, url, hash_='', run='tiny'):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    self.d, self.By, self.url = driver, By, url
    driver.get('about:blank')
    driver.get(f'{url}{ALONE_PATH}{hash_}')
    self.wait = WebDriverWait(driver, 90)
    self.wait.until(self.ready)
    if run and self.js('return document.getElementById("run-select").value') != run:
      self.switch(run)

  def ready(self, d=None):
    return self.d.execute_script('return document.body.dataset.ready') == 'true'

  def switch(self, run):
    from selenium.webdriver.support.ui import Select
    Select(self.one('#run-select')).select_by_value(run)
    self.wait.until(lambda d: self.ready() and self.one('#run-select').get_attribute('value') == run)

  def head(self, layer, head):
    self.js('document.querySelector(`#importance-grid rect[data-layer="${arguments[0]}"]'
            '[data-head="${arguments[1]}"]`).dispatchEvent(new MouseEvent("click"))', layer, head)
    self.wait.until(lambda d: self.one('#selected-head').text == f'L{layer} H{head}')

  def module(self, name):
    """A frontend module as the page itself has it (the same instance)."""
    return f'(await import("/data/plugin/vit_analytics/static/{name}"))'

  def run_async(self, body, *args):
    return self.d.execute_async_script(
        f'const done = arguments[arguments.length - 1];'
        f'(async () => {{ {body} }})().then(done, (e) => done("ERROR " + e.message));', *args)


@pytest.fixture
def page(server, browser):
  return Alone(browser, server)


def add_run(logdir, name, analyses):
  """A new run made of some of run 'tiny''s event files (one per analysis)."""
  (logdir / name).mkdir(exist_ok=True)
  for a in analyses:
    src = next((logdir / 'tiny').glob(f'events.out.tfevents.*.{a}.step0'))
    shutil.copy(src, logdir / name / src.name)


# --- bugs 1-4 --------------------------------------------------------------------------------

def test_1_the_page_alone_keeps_its_address_and_reloads_to_the_selection(page):
  page.head(1, 2)
  address = page.d.current_url
  assert ALONE_PATH in address and '#vit=' in address, address   # not /data/plugin/vit_analytics/#…
  assert 'layer%3A1' in address and 'head%3A2' in address
  page.d.get('about:blank')
  page.d.get(address)
  page.wait.until(page.ready)
  assert 'Not found' not in page.one('body').text
  assert page.one('#selected-head').text == 'L1 H2'


def test_2_a_runs_new_analyses_are_drawn_without_a_reload(server, browser, logdir):
  add_run(logdir, 'late', ['importance'])
  p = Alone(browser, server, run=None)
  p.wait.until(lambda d: 'late' in [o.get_attribute('value') for o in p.all('#run-select option')])
  p.switch('late')
  assert 'Not computed' in p.one('#view-strength').text
  add_run(logdir, 'late', ['strength', 'patterns'])
  # TensorBoard re-reads the logdir every second, the page polls every 5 s.
  p.wait.until(lambda d: p.ready() and p.all('#view-strength canvas.offset-small')
               and p.all('#pattern-map .pattern-cell'))
  assert 'Not computed' not in p.one('#view-strength').text
  assert p.one('#run-select').get_attribute('value') == 'late'


def test_3_no_null_text_legends_do_not_overlap_and_layer_colours_do_not_repeat(page):
  page.select('#scale-mode', 'per-map')
  page.wait.until(lambda d: page.ready() and page.one('#scale-mode').get_attribute('value') == 'per-map')
  page.wait.until(lambda d: page.all('.cluster'))
  assert not re.search(r'\bnull\b', page.js('return document.getElementById("content").innerText'))
  # Every legend's tick labels are apart (small ones included).
  overlaps = page.js("""
    const out = [];
    for (const lg of document.querySelectorAll('svg.legend')) {
      const boxes = [...lg.querySelectorAll('text.legend-tick')].map((t) => t.getBBox());
      for (let i = 1; i < boxes.length; i++) {
        if (boxes[i].x < boxes[i - 1].x + boxes[i - 1].width) out.push(lg.id || lg.outerHTML.slice(0, 80));
      }
    }
    return out;""")
  assert overlaps == []
  page.select('#scale-mode', 'shared')
  page.wait.until(lambda d: page.ready() and page.one('#scale-mode').get_attribute('value') == 'shared')
  # Layer colours: 12 layers, 12 different colours (Tableau 10 made L10 = L0), in order.
  colours = page.run_async(f'const m = {page.module("charts.js")};'
                           'return Array.from({length: 12}, (_, l) => m.layerColour(l, 12));')
  assert len(set(colours)) == 12, colours


def test_4_a_late_response_of_the_previous_run_draws_nothing_and_asks_for_nothing(page):
  """The previous run's strength meta arrives after the switch: its views must neither ask
  for the new run's data in their name nor register their listeners."""
  page.js("""
    window.asked = [];
    const real = window.fetch;
    window.fetch = (url, ...rest) => {
      window.asked.push(String(url));
      const late = String(url).includes('run=tiny') && String(url).includes('analysis=strength');
      return late ? new Promise((r) => setTimeout(() => r(real(url, ...rest)), 2500)) : real(url, ...rest);
    };""")
  page.select('#scale-mode', 'per-map')      # redraws run tiny: its strength meta is late
  time.sleep(0.3)
  page.switch('importance-only')
  time.sleep(3.5)                            # the late meta has arrived
  asked = page.js('return window.asked')
  wrong = [u for u in asked if 'run=importance-only' in u and ('strength' in u or 'patterns' in u)]
  assert wrong == [], wrong
  page.head(0, 1)                            # no listener of the old views throws or draws
  assert 'Could not draw' not in page.one('#content').text
  page.js('window.fetch = window.fetch; document.getElementById("scale-mode").value = "shared"')


# --- item 18: frontend state -----------------------------------------------------------------

def test_18_views_publish_only_declared_keys_and_one_table_lists_the_views():
  texts = {p.name: p.read_text() for p in STATIC.glob('*.js')}
  ad_hoc = re.compile(r'state\.(imp|showImage|redrawOverview|storedImages|data)\b')
  assert not [n for n, t in texts.items() if ad_hoc.search(t)]
  declared = set(re.findall(r"^  (\w+): '", texts['state.js'].split('PUBLISHED = {')[1].split('};')[0], re.M))
  used = {k for t in texts.values() for k in re.findall(r"\b(?:publish|use|whenPublished)\('(\w+)'", t)}
  assert used and used <= declared, used - declared
  # One table: app.js and index.js name no view; every row has its module exporting render.
  ids = re.findall(r"\{id: '(\w+)'", texts['views.js'])
  assert ids[:2] == ['importance', 'strength'] and len(ids) == len(set(ids))
  for i in ids:
    assert f"view_{i}.js" in texts and re.search(r'export \{\w+ as render\}', texts[f'view_{i}.js']), i
    assert f"'{i}'" not in texts['app.js'] and f"'{i}'" not in texts['index.js'], i
  assert 'FIRST_VIEW_TAGS' not in texts['index.js']   # the plugin picks the first view's arrays
  # Every await in a view is followed by no use of `q(`/`array(` for another scope: the data
  # functions take the scope at call time and settle only while it is shown.
  assert 'guard(s,' in texts['data.js']


def test_18_fetches_of_a_replaced_scope_never_settle(page):
  result = page.run_async(f"""
    const d = {page.module('data.js')};
    const old = d.currentScope();
    let settled = false;
    const p = d.array('importance/taylor').then(() => {{ settled = true; }});
    d.newScope(old.run, old.step);           // the run is shown anew: the old fetch is dropped
    await new Promise((r) => setTimeout(r, 1500));
    const fresh = await d.array('importance/taylor');
    return [settled, fresh.length];""")
  assert result[0] is False and result[1] > 0, result


# --- misleading displays ---------------------------------------------------------------------

def test_5_scales_fit_the_data_and_below_uniform_patches_are_clear(page, server, tiny):
  ratio = tiny['strength'].offset_ratio
  hi = float(ratio.max())
  # The focus map's own scale (per map) ends at its data's largest ratio, not a symmetric range.
  page.select('#scale-mode', 'per-map')
  page.wait.until(lambda d: page.ready() and page.all('p#multiples-legend'))
  l, h = np.unravel_index(np.nanargmax(ratio.reshape(*ratio.shape[:2], -1).max(-1)), ratio.shape[:2])
  page.head(int(l), int(h))
  num = lambda s: float(s.lstrip('≤≥').replace('×', '').replace('−', '-').split()[0])
  page.wait.until(lambda d: num(page.all('#focus-legend text.legend-tick')[-1].text) == pytest.approx(hi, rel=6e-3))
  page.select('#scale-mode', 'shared')
  page.wait.until(lambda d: page.ready() and page.all('svg#multiples-legend'))
  page.head(0, 0)
  # The brightest cell is the scale's full red, whatever the low side's range.
  reddest = page.run_async(f'const m = {page.module("charts.js")};'
                           f'const s = m.ratio([[{hi}, 0.5, 1]]); return [s.colour({hi}), s.colour(1)];')
  assert reddest == ['rgb(178,24,43)', 'rgb(247,247,247)']
  # The overlay: a patch below uniform leaves the photograph clear; one above is painted.
  page.js('document.getElementById("images-anchor")')
  stage = page.one('#image-stage')
  page.js('arguments[0].scrollIntoView()', stage)
  from selenium.webdriver.common.action_chains import ActionChains
  ActionChains(page.d).move_to_element_with_offset(stage, 10, 10).click().perform()
  page.wait.until(lambda d: page.all('#head-multiples canvas'))
  n = page.js('return document.querySelector("#image-stage canvas").width')
  alpha = page.js("""
    const c = document.querySelector('#image-stage canvas.overlay');
    const ctx = c.getContext('2d');
    return [...Array(arguments[0] * arguments[0]).keys()].map((p) => {
      const k = p % arguments[0], r = Math.floor(p / arguments[0]);
      const s = c.width / arguments[0];
      return ctx.getImageData(Math.floor((k + 0.5) * s), Math.floor((r + 0.5) * s), 1, 1).data[3];
    });""", 4)
  assert n > 0 and len(alpha) == 16
  import json
  import urllib.request
  query = page.js('return location.hash')
  q = int(re.search(r'query%3A(\d+)', query).group(1))
  with urllib.request.urlopen(f'{server}/data/plugin/vit_analytics/attention?run=tiny&image=0&query={q + 1}') as r:
    body = json.loads(r.read())
  from tb_plugin.vit_analytics_plugin import unpack
  att = unpack(body['attention'])[0, 0, 1:]                    # L0 H0, the patches
  T = att.shape[0] + 1
  for p_, a in enumerate(alpha):
    if p_ == q:
      continue   # the query's outline
    assert (a > 0) == (att[p_] * T > 1), (p_, a, att[p_] * T)
  assert page.all('#overlay-opacity')


def test_6_partial_pruning_whole_head_on_the_same_images_with_whiskers(page, tiny):
  imp = tiny['importance']
  H = imp.taylor.shape[1]
  flat = int(imp.partial.heads[0])
  page.head(flat // H, flat % H)
  page.wait.until(lambda d: page.all('#partial-bars rect.bar'))
  bars = page.all('#partial-bars rect.bar')
  whole = float(bars[0].get_attribute('data-value'))
  assert whole == pytest.approx(float(imp.partial.whole_head['loss'].mean[0]), rel=1e-5, abs=1e-7)
  assert float(bars[0].get_attribute('data-se')) == pytest.approx(float(imp.partial.whole_head['loss'].se[0]), rel=1e-5)
  with_se = [b for b in bars if b.get_attribute('data-se') not in ('', '0')]
  assert len(with_se) >= len(bars) - 2
  assert len(page.all('#partial-bars g.whisker')) == len(with_se)   # every SE is drawn
  names = [v[0] for v in imp.partial.variants]
  rows = page.all('#local-global tr')
  assert len(rows) == sum(n.startswith('local_r') for n in names)
  j, g = names.index('local_r1'), names.index('global_r1')
  d = imp.partial.change['loss'].mean[0, g] - imp.partial.change['loss'].mean[0, j]
  se = math.hypot(imp.partial.change['loss'].se[0, g], imp.partial.change['loss'].se[0, j])
  text = rows[0].text
  assert 'global − local' in text and 'SE' in text
  from_page = float(re.search(r'local = ([+−-]?[\d.e−-]+)', text).group(1).replace('−', '-'))
  assert from_page == pytest.approx(d, rel=6e-3, abs=1e-9)
  z = float(re.search(r'([\d.e−-]+) SE$', text).group(1).replace('−', '-'))
  assert z == pytest.approx(abs(d) / se, rel=6e-3)


def test_7_head_kinds_agree_with_the_command_line_and_are_shown(page, tiny):
  want = head_kinds.head_kinds(tiny['strength'])
  L, H = want.shape
  kinds = page.run_async(f'return {page.module("state.js")}.use("headKinds");')
  assert np.array(kinds).tolist() == want.tolist()
  page.head(1, 0)
  assert f'kind: {want[1, 0]}' in page.one('#head-numbers').text
  table = {r.get_attribute('data-layer') + ',' + r.get_attribute('data-head'): r.find_elements(page.By.TAG_NAME, 'td')[1].text
           for r in page.all('#locality-table tbody tr[data-layer]')}
  assert table['1,0'] == want[1, 0] and len(table) == L * H
  # Cluster names are a kind (the most common of the members'), never the bare fallback.
  names = [b.text for b in page.all('.cluster-name')]
  assert names and all(n.split(': ', 1)[1] in head_kinds.KINDS for n in names), names


def test_9_10_only_defined_metrics_log_and_rank_scales_padded_scatter_with_rho(page, tiny):
  options = [o.get_attribute('value') for o in page.all('#metric-select option')]
  assert 'ablation_top1' in options                  # the tiny model has a classifier
  page.select('#grid-scale', 'log')
  page.wait.until(lambda d: 'log' in page.one('#importance-legend').text)
  page.select('#grid-scale', 'rank')
  page.wait.until(lambda d: 'rank 1' in page.one('#importance-legend').text)
  fills = {r.get_attribute('fill') for r in page.all('#importance-grid rect.imp-cell')}
  assert len(fills) == tiny['importance'].taylor.size   # every head its own colour by rank
  page.select('#grid-scale', 'linear')
  # The scatter: no point on or past an axis.
  inside = page.js("""
    const s = document.getElementById('importance-scatter');
    const w = +s.getAttribute('width'), h = +s.getAttribute('height');
    return [...s.querySelectorAll('circle')].every((c) => +c.getAttribute('cx') > 58 + 2 &&
        +c.getAttribute('cx') < w - 18 - 2 && +c.getAttribute('cy') > 8 + 2 && +c.getAttribute('cy') < h - 34 - 2);""")
  assert inside
  imp = tiny['importance']
  rank = lambda a: np.argsort(np.argsort(-a.ravel(), kind='stable'), kind='stable')
  rho = np.corrcoef(rank(imp.taylor), rank(imp.ablation_loss))[0, 1]
  shown = float(re.search(r'ρ = (−?-?[\d.]+)', page.one('#scatter-spearman').text).group(1).replace('−', '-'))
  assert shown == pytest.approx(rho, abs=0.006)


def test_9_an_embedding_run_offers_no_top1(page):
  """The same metric filter on an embedding objective (the photo demo's own is checked in
  tests/test_demo_tour.py): the frontend's rule, applied to that meta."""
  out = page.run_async(f"""
    const f = {page.module('format.js')};
    return [f.metricLabel({{objective: {{kind: 'embedding'}}}}, 'taylor'),
            f.metricLabel({{objective: {{kind: 'classification'}}}}, 'taylor')];""")
  assert out == ['Taylor (embedding distortion)', 'Taylor |dL/dξ|']


def test_11_one_number_format(page):
  out = page.run_async(f"""
    const f = {page.module('format.js')};
    return [51.6683, 7.023e-4, 5.96e-8, 0, -0.122, 123456, 0.5].map((v) => f.fmt(v))
        .concat([f.fmt(51.6683, 'px'), f.fmtSigned(0.122), f.fmtSigned(0)]);""")
  assert out == ['51.7', '7.02e-4', '5.96e-8', '0', '−0.122', '1.23e5', '0.5', '51.7 px', '+0.122', '0']
  text = page.js('return document.getElementById("content").innerText + document.getElementById("sticky-header").innerText')
  digits = lambda t: len(t.replace('.', '').lstrip('0'))   # significant digits of a decimal
  long = [t for t in re.findall(r'(?<![\d.])\d+\.\d+', text) if digits(t) > 3]
  assert not long, long[:5]
  assert not re.search(r'\de[+]', text)


def test_8_comparison_labels_and_distance_against_each_runs_uniform(page):
  page.select('#compare-select', 'tiny')
  page.wait.until(lambda d: page.ready() and page.all('#compare-distance'))
  chart = page.one('#compare-distance')
  assert chart.get_attribute('data-ratio') == 'true'
  assert '÷' in chart.text and 'px' not in chart.text
  page.select('#compare-select', '')
  page.wait.until(lambda d: page.ready() and not page.all('#view-compare'))


# --- layout ----------------------------------------------------------------------------------

def test_14_16_header_has_one_height_and_runs_without_steps_have_no_training_section(page):
  heights = set()
  for l, h in ((0, 0), (1, 1), (0, 2)):
    page.head(l, h)
    heights.add(page.js('return document.getElementById("sticky-header").offsetHeight'))
  assert len(heights) == 1, heights
  assert not page.all('#view-training')
  # The per-patch multiples are labelled by layer and head.
  stage = page.one('#image-stage')
  from selenium.webdriver.common.action_chains import ActionChains
  page.js('arguments[0].scrollIntoView()', stage)
  ActionChains(page.d).move_to_element_with_offset(stage, 10, 10).click().perform()
  page.wait.until(lambda d: page.all('#head-multiples canvas'))
  labels = [t.text for t in page.all('#head-multiples .tick-label')]
  assert 'L0' in labels and 'H0' in labels


def test_15_every_heads_queries_and_keys_as_small_multiples_select_the_head(page, tiny):
  L, H = tiny['strength'].qk_embedding.shape[:2]
  page.wait.until(lambda d: len(page.all('#qk-matrix canvas.qk-small')) == L * H)
  labels = [t.text for t in page.all('#qk-matrix .tick-label')]
  assert labels[:H] == [f'H{h}' for h in range(H)] and 'L0' in labels
  target = page.one(f'#qk-matrix canvas[data-layer="{L - 1}"][data-head="1"]')
  page.js('arguments[0].dispatchEvent(new MouseEvent("click"))', target)
  page.wait.until(lambda d: page.one('#selected-head').text == f'L{L - 1} H1')
  assert 'selected' in target.get_attribute('class')
  # Each multiple is the stored embedding: not blank, queries and keys both drawn.
  colours = page.js("""
    const c = arguments[0], d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let blue = 0, orange = 0;
    for (let i = 0; i < d.length; i += 4) { if (d[i + 2] > d[i] + 30) blue++; if (d[i] > d[i + 2] + 60) orange++; }
    return [blue, orange];""", target)
  assert colours[0] > 0 and colours[1] > 0, colours


def test_12_the_image_overview_shows_every_image_as_a_thumbnail_in_the_tables_order(page, logdir):
  meta = reader.read_run(logdir / 'tiny')['importance/meta']
  N = len(meta['image_names'])
  page.wait.until(lambda d: len(page.all('#overview-thumbs .overview-thumb')) == N)
  order = lambda: [int(t.get_attribute('data-image')) for t in page.all('#overview-thumbs .overview-thumb')]
  assert order() == list(range(N))
  page.js('document.querySelector(\'#overview-table th[data-key="taylor"]\').click()')
  page.wait.until(lambda d: order()[0] == int(page.one('#overview-table tbody tr').get_attribute('data-image')))
  rows = [int(r.get_attribute('data-image')) for r in page.all('#overview-table tbody tr')]
  assert order() == rows                                    # the table's order
  # Each is its own tile of the atlas (distinct background offsets).
  offsets = {t.get_attribute('style').split('background:')[1].split(';')[0].split(')')[1]
             for t in page.all('#overview-thumbs .overview-thumb')}
  assert len(offsets) == N
  page.select('#thumb-colour', 'loss')
  page.wait.until(lambda d: 'dark' in page.one('#overview-thumbs-box').text)


def test_12_images_laid_out_by_their_heads_and_brushing_filters_the_table(page, logdir):
  per_image = reader.read_run(logdir / 'tiny')['importance/per_image_taylor']
  N = per_image.shape[0]
  page.wait.until(lambda d: len(page.all('#overview-layout circle.layout-point')) == N)
  pts = sorted(page.all('#overview-layout circle.layout-point'), key=lambda c: int(c.get_attribute('data-image')))
  xy = np.array([[float(c.get_attribute('cx')), -float(c.get_attribute('cy'))] for c in pts])
  # The first two principal axes of the standardised [image, layer * head] vectors (numpy).
  X = per_image.reshape(N, -1).astype(np.float64)
  X = (X - X.mean(0)) / np.where(X.std(0) > 0, X.std(0), 1)
  _, _, vt = np.linalg.svd(X, full_matrices=False)
  for a in range(2):
    assert abs(np.corrcoef(xy[:, a], X @ vt[a])[0, 1]) > 0.999, a
  # A rectangle around the left half of the points filters the thumbnails and the table.
  box = page.one('#overview-layout')
  mid = float(np.median(xy[:, 0]))
  inside = sorted(int(c.get_attribute('data-image')) for c in pts if float(c.get_attribute('cx')) <= mid)
  page.js("""
    const s = arguments[0], r = s.getBoundingClientRect();
    const ev = (type, x, y) => s.dispatchEvent(new MouseEvent(type, {clientX: r.left + x, clientY: r.top + y, bubbles: true}));
    ev('mousedown', 1, 1); ev('mousemove', arguments[1], 259); ev('mouseup', arguments[1], 259);""", box, mid + 0.01)
  page.wait.until(lambda d: page.all('#overview-filter'))
  rows = sorted(int(r.get_attribute('data-image')) for r in page.all('#overview-table tbody tr'))
  assert rows == inside
  thumbs = sorted(int(t.get_attribute('data-image')) for t in page.all('#overview-thumbs .overview-thumb'))
  assert thumbs == inside


def test_13_pattern_cells_framed_by_their_samples_cluster(page, logdir):
  tags = reader.read_run(logdir / 'tiny', analyses=['patterns'])
  cells, index, clusters = (tags[f'patterns/{k}'] for k in ('sample_cell', 'sample_index', 'head_cluster'))
  g = tags['patterns/map'].shape[0]
  want = {}
  for r in range(g):
    for k in range(g):
      mine = [int(clusters[index[s, 1], index[s, 2]]) for s in np.flatnonzero((cells[:, 0] == r) & (cells[:, 1] == k))]
      want[(r, k)] = min(set(mine), key=lambda j: (-mine.count(j), j)) if mine else -1
  page.wait.until(lambda d: len(page.all('#pattern-map .pattern-cell')) == g * g)
  got = {(int(c.get_attribute('data-row')), int(c.get_attribute('data-col'))): int(c.get_attribute('data-cluster'))
         for c in page.all('#pattern-map .pattern-cell')}
  assert got == want
  assert page.all('#pattern-cluster-key')


# --- issue 21, second session: items 12, 13, 16, 17 and readable offset multiples ------------

def standardised(per_image):
  """The overview's image vectors: [image, layer * head], each head to unit variance (float64)."""
  X = np.nan_to_num(per_image.reshape(per_image.shape[0], -1).astype(np.float64))
  return (X - X.mean(0)) / np.where(X.std(0) > 0, X.std(0), 1)


def brush_left_half(page):
  """Drags a rectangle over the left half of the image layout; returns the images inside."""
  pts = page.all('#overview-layout circle.layout-point')
  cx = {int(c.get_attribute('data-image')): float(c.get_attribute('cx')) for c in pts}
  mid = float(np.median(list(cx.values())))
  page.js("""
    const s = arguments[0], r = s.getBoundingClientRect();
    const ev = (type, x, y) => s.dispatchEvent(new MouseEvent(type, {clientX: r.left + x, clientY: r.top + y, bubbles: true}));
    ev('mousedown', 1, 1); ev('mousemove', arguments[1], 259); ev('mouseup', arguments[1], 259);""",
          page.one('#overview-layout'), mid + 0.01)
  return sorted(i for i, x in cx.items() if x <= mid)


def test_12_brushing_the_layout_filters_the_histogram_pattern_samples_and_image_strip_and_back(page, logdir):
  tags = reader.read_run(logdir / 'tiny')
  per_image, index, cells = (tags[k] for k in ('importance/per_image_taylor', 'patterns/sample_index',
                                               'patterns/sample_cell'))
  stored = tags['strength/meta']['map_image_index']
  N = per_image.shape[0]
  page.head(0, 1)
  page.wait.until(lambda d: len(page.all('#overview-layout circle.layout-point')) == N)
  inside = brush_left_half(page)
  assert 0 < len(inside) < N
  # The histogram of the selected head: each bar's dark part is how many chosen images fall
  # in it, in all as many as the chosen images with a positive value.
  page.wait.until(lambda d: page.one('#per-image-hist').get_attribute('data-filtered') == str(len(inside)))
  taylor = per_image[:, 0, 1]
  chosen = sum(int(r.get_attribute('data-count')) for r in page.all('#per-image-hist rect.hist-chosen'))
  assert chosen == int((taylor[inside] > 0).sum())
  # The pattern samples of the chosen images are marked; the image strip fades the others.
  want = int(np.isin(index[:, 0], inside).sum())
  page.wait.until(lambda d: page.one('#sample-filtered').get_attribute('data-count') == str(want))
  faded = sorted(int(t.get_attribute('data-image')) for t in page.all('.thumb.faded'))
  assert faded == sorted(set(stored) - set(inside))
  # And back: the images of a pattern become the filter of the overview and the histogram.
  page.js('document.getElementById("overview-show-all").click()')
  page.wait.until(lambda d: not page.all('#overview-filter') and not page.all('#per-image-hist rect.hist-chosen'))
  r, k = (int(x) for x in cells[0])
  page.js(f'document.querySelector(\'#pattern-map .pattern-cell[data-row="{r}"][data-col="{k}"]\').click()')
  page.wait.until(lambda d: page.all('#cell-images'))
  page.js('document.getElementById("cell-images").click()')
  page.wait.until(lambda d: page.all('#overview-filter'))
  of_cell = sorted(set(int(i) for i in index[(cells[:, 0] == r) & (cells[:, 1] == k), 0]))
  rows = sorted(int(x.get_attribute('data-image')) for x in page.all('#overview-table tbody tr'))
  assert rows == of_cell
  assert page.one('#per-image-hist').get_attribute('data-filtered') == str(len(of_cell))
  page.js('document.getElementById("overview-show-all").click()')


def test_12_the_layout_is_coloured_by_image_cluster_a_kmeans_fixed_point(page, logdir):
  per_image = reader.read_run(logdir / 'tiny', analyses=['importance'])['importance/per_image_taylor']
  N = per_image.shape[0]
  page.wait.until(lambda d: len(page.all('#overview-layout circle.layout-point')) == N)
  page.select('#thumb-colour', 'cluster')
  page.wait.until(lambda d: page.one('#overview-layout').get_attribute('data-colour') == 'cluster')
  pts = sorted(page.all('#overview-layout circle.layout-point'), key=lambda c: int(c.get_attribute('data-image')))
  label = np.array([int(c.get_attribute('data-cluster')) for c in pts])
  fill = [c.get_attribute('fill') for c in pts]
  assert len(set(label)) >= 2
  assert all((fill[i] == fill[j]) == (label[i] == label[j]) for i in range(N) for j in range(N))
  # Each image is nearest to its own cluster's centroid (Lloyd's fixed point), in the
  # standardised space of every head's per-image importance (numpy, float64).
  X = standardised(per_image)
  centres = np.stack([X[label == j].mean(0) for j in range(label.max() + 1)])
  d = ((X[:, None] - centres[None]) ** 2).sum(-1)
  assert (d[np.arange(N), label] <= d.min(1) + 1e-9).all()
  # Numbered by size, the largest first; the key says how many each holds.
  sizes = np.bincount(label)
  assert (np.diff(sizes) <= 0).all()
  assert f'0 ({sizes[0]})' in page.one('#overview-thumbs-box .overview-cluster-key').text
  # The thumbnails are framed in the same colours.
  frames = {int(t.get_attribute('data-image')): t.get_attribute('style') for t in page.all('#overview-thumbs .overview-thumb')}
  rgb = lambda hex_: 'rgb({},{},{})'.format(*(int(hex_[j:j + 2], 16) for j in (1, 3, 5)))
  assert frames and all(rgb(fill[i]) in frames[i].replace(' ', '') for i in frames)


def test_12_a_run_with_fewer_stored_maps_names_the_flag_and_value_that_store_all(page, logdir):
  from vit_jax_analytics import model as model_lib, strength
  meta = reader.read_run(logdir / 'tiny', analyses=['strength'])['strength/meta']
  N = meta['images']
  assert len(meta['map_image_index']) < N
  per = strength.map_bytes(model_lib.ViTConfig.from_dict(meta['config'])) / 2 ** 20
  flag = f'--map-budget-mib {math.ceil(N * per * 10 + 1) / 10:g}'
  assert N * per < float(flag.split()[1])
  for css in ('#overview-note', '#images-note'):
    page.wait.until(lambda d: page.all(css))
    assert flag in page.one(css).text and f'Store all {N}' in page.one(css).text, page.one(css).text


def test_13_the_selected_heads_density_is_a_heat_over_the_map_samples_on_hover_clusters_outlined(page, logdir):
  tags = reader.read_run(logdir / 'tiny', analyses=['patterns'])
  density, cells, index, clusters = (tags[f'patterns/{k}'] for k in ('head_density', 'sample_cell',
                                                                      'sample_index', 'head_cluster'))
  g = density.shape[-1]
  l, h = np.unravel_index(np.argmax(density.max((2, 3))), density.shape[:2])
  page.head(int(l), int(h))
  heat = page.one('#pattern-density')
  page.wait.until(lambda d: (heat.get_attribute('data-layer'), heat.get_attribute('data-head')) == (str(l), str(h)))
  # Before any hover, the samples panel shows the selected head's most common pattern.
  mine = (index[:, 1] == l) & (index[:, 2] == h)
  counts = np.zeros((g, g), int)
  np.add.at(counts, (cells[mine, 0], cells[mine, 1]), 1)
  common = np.unravel_index(np.argmax(counts), counts.shape)  # first of equals, as the page
  page.wait.until(lambda d: page.all('#sample-gallery .sample'))
  panel = page.one('#cell-panel')
  assert (panel.get_attribute('data-row'), panel.get_attribute('data-col')) == tuple(map(str, common))
  assert 'most common' in panel.text
  # One pixel a cell, its opacity the square root of the head's share there over its peak.
  alpha = np.array(page.js("""
    const c = document.getElementById('pattern-density');
    return [...c.getContext('2d').getImageData(0, 0, c.width, c.height).data].filter((_, i) => i % 4 === 3);""")).reshape(g, g)
  d = density[l, h].astype(np.float64)
  assert np.abs(alpha - np.round(255 * 0.85 * np.sqrt(d / d.max()))).max() <= 1
  assert (alpha[d == 0] == 0).all() and alpha.max() == round(255 * 0.85)
  # Hovering a pattern shows its real samples beside the map, without selecting it.
  r, k = (int(x) for x in cells[0])
  page.js(f'document.querySelector(\'#pattern-map .pattern-cell[data-row="{r}"][data-col="{k}"]\')'
          '.dispatchEvent(new MouseEvent("mouseenter"))')
  page.wait.until(lambda d: page.all('#sample-gallery .sample'))
  panel = page.one('#cell-panel')
  assert (panel.get_attribute('data-row'), panel.get_attribute('data-col')) == (str(r), str(k))
  in_cell = set(np.flatnonzero((cells[:, 0] == r) & (cells[:, 1] == k)).tolist())
  assert {int(x.get_attribute('data-sample')) for x in page.all('#sample-gallery .sample')} <= in_cell
  assert not page.all('#pattern-map .pattern-cell.selected')
  # Each cluster's region outlined: one edge for every cell side whose neighbour (or the
  # map's end) belongs to another region; each region numbered.
  owner = {}
  for rr in range(g):
    for kk in range(g):
      mine = [int(clusters[index[s, 1], index[s, 2]]) for s in np.flatnonzero((cells[:, 0] == rr) & (cells[:, 1] == kk))]
      owner[rr, kk] = min(set(mine), key=lambda j: (-mine.count(j), j)) if mine else -1
  edges = sum(1 for (rr, kk), j in owner.items() if j >= 0
              for dr, dk in ((-1, 0), (1, 0), (0, -1), (0, 1)) if owner.get((rr + dr, kk + dk), -2) != j)
  assert len(page.all('#pattern-outlines line.cluster-edge')) == edges
  assert sorted(int(t.text) for t in page.all('#pattern-outlines text.cluster-label')) == sorted({j for j in owner.values() if j >= 0})


def test_16_the_importance_view_fits_one_1600_by_1000_screen_and_wraps_below_1400(page, tiny):
  H = tiny['importance'].taylor.shape[1]
  l, h = divmod(int(tiny['importance'].partial.heads[0]), H)
  page.head(l, h)                         # a head with partial bars (the address keeps it)
  try:
    for size in ((1600, 1000), (1280, 800)):
      page.d.set_window_size(*size)
      page.d.refresh()
      page.wait.until(page.ready)
      page.wait.until(lambda d: page.all('#per-image-hist') and page.all('#partial-bars'))
      boxes = page.js("""
        const s = document.getElementById('view-importance');
        s.scrollIntoView(); window.scrollBy(0, -document.getElementById('sticky-header').offsetHeight);
        const panels = [...s.querySelectorAll('.row > .panel, .row > .column > .panel')].map((p) => p.getBoundingClientRect());
        const box = (id) => document.getElementById(id).getBoundingClientRect();
        return {panels: panels.map((b) => [b.top, b.bottom, b.left]), view: [s.getBoundingClientRect().top, innerHeight],
                wide: document.documentElement.scrollWidth - innerWidth,
                hist: [box('per-image-hist').top, box('per-image-hist').left], bars: [box('detail-panel').bottom, box('partial-bars').left]};""")
      tops = {round(t) for t, _, left in boxes['panels'] if left < 1400 and t < boxes['view'][0] + 200}
      assert boxes['wide'] <= 0, size                                   # nothing cut off sideways
      if size[0] == 1600:
        assert max(b for _, b, _ in boxes['panels']) <= boxes['view'][1], boxes   # histogram included
        assert len({round(t) for t, _, _ in boxes['panels'] if t < boxes['view'][0] + 200}) == 1, boxes  # one row
        # The histogram beside the partial bars' panel (below the pruning curves), not under it.
        assert boxes['hist'][0] < boxes['bars'][0] and boxes['hist'][1] < boxes['bars'][1], boxes
      else:
        assert len({round(l) for _, _, l in boxes['panels']}) < len(boxes['panels']) or len(tops) > 1, boxes  # wrapped
  finally:
    page.d.set_window_size(1400, 1000)


def test_17_a_head_click_restyles_rather_than_rebuilds_and_a_run_shown_before_asks_for_nothing(page):
  page.js('window.kept = [document.getElementById("locality-table"), document.querySelector("#view-patterns .cluster")]')
  page.head(1, 1)
  assert page.js('return window.kept.every((n) => n.isConnected)')            # not drawn anew
  assert 'selected' in page.one('#locality-table tr[data-layer="1"][data-head="1"]').get_attribute('class')
  page.switch('importance-only')
  page.js("""
    window.asked = [];
    const real = window.fetch;
    window.fetch = (url, ...rest) => { window.asked.push(String(url)); return real(url, ...rest); };""")
  page.switch('tiny')
  page.wait.until(lambda d: page.all('#pattern-map .pattern-cell'))
  asked = page.js('return window.asked')
  assert not [u for u in asked if re.search(r'/(array|meta|attention)\?', u)], asked


def test_offset_multiples_share_a_scale_fitted_to_the_bulk_of_the_data_centred_on_uniform(page, tiny):
  ratio = tiny['strength'].offset_ratio.astype(np.float64)
  v = ratio[np.isfinite(ratio) & (ratio > 0)]
  hi = np.exp(np.percentile(np.log(v[v > 1]), 95))
  lo = np.exp(-np.percentile(-np.log(v[v < 1]), 95))
  labels = [t.text for t in page.all('#multiples-legend text.legend-tick')]
  num = lambda s: float(s.lstrip('≤≥').replace('×', '').replace('−', '-'))
  assert labels[-1].startswith('≥') and num(labels[-1]) == pytest.approx(hi, rel=6e-3), labels
  assert labels[0].startswith('≤') and num(labels[0]) == pytest.approx(max(lo, 1e-3), rel=6e-3), labels
  # A cell at or above that end is the scale's full red in its small multiple.
  l, h = np.unravel_index(np.nanargmax(ratio.reshape(*ratio.shape[:2], -1).max(-1)), ratio.shape[:2])
  r, c = np.unravel_index(np.nanargmax(ratio[l, h]), ratio.shape[2:])
  pixel = page.js("""
    const c = document.querySelector(`#view-strength canvas.offset-small[data-layer="${arguments[0]}"][data-head="${arguments[1]}"]`);
    const s = c.width / arguments[3];
    return [...c.getContext('2d').getImageData(Math.floor((arguments[2][1] + 0.5) * s), Math.floor((arguments[2][0] + 0.5) * s), 1, 1).data];""",
                  int(l), int(h), [int(r), int(c)], ratio.shape[3])
  assert pixel[:3] == [178, 24, 43]
