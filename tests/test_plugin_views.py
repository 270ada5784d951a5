"""Issue 15 in a real browser: views a researcher can trust. One test (or more) per item of
the issue, each against the real `tensorboard` serving a logdir written by the real analysis
of a tiny model, driven in headless Chromium. Screenshots of every view land in
test-artifacts/."""

import json
import math
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from tests import fake_runs
from tests.tiny import TINY
from tb_plugin.browser import CHROMEDRIVER, CHROMIUM, chromium, open_plugin, tensorboard
from tb_plugin.browser import js_fmt as fmt
from tb_plugin.vit_analytics_plugin import ALONE_PATH
from vit_jax_analytics.logdir import reader

ARTIFACTS = Path(__file__).resolve().parents[1] / 'test-artifacts'


@pytest.fixture(scope='module')
def logdir(analysis_logdir, tmp_path_factory):
  """A copy of the analysis logdir, per module that uses it: tests write new runs into it."""
  root = tmp_path_factory.mktemp('views') / 'logs'
  shutil.copytree(analysis_logdir, root)
  return root


@pytest.fixture(scope='module')
def written(logdir):
  return reader.read_run(logdir / 'tiny')


@pytest.fixture(scope='module')
def server(logdir):
  with tensorboard(logdir, 'false') as url:
    yield url


@pytest.fixture(scope='module')
def browser():
  assert Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists(), (
      'the browser test needs Debian chromium and chromium-driver')
  with chromium() as driver:
    yield driver


class Page:
  """The plugin's frame, with the run 'tiny' shown."""

  def __init__(self, driver, url, run='tiny', hash_=None, alone=False):
    """hash_: TensorBoard's URL hash to open (default: the plugin's tab); alone: the
    plugin's page alone (ALONE_PATH, with hash_ as its own hash), not inside TensorBoard's."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait
    self.d, self.By = driver, By
    driver.set_window_size(1400, 2200)
    if hash_ is None and not alone:
      self.wait = open_plugin(driver, url)
    else:
      driver.switch_to.default_content()
      driver.get('about:blank')
      driver.get(f'{url}{ALONE_PATH}{hash_ or ""}' if alone else f'{url}/{hash_}')
      if not alone:
        frame = WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.TAG_NAME, 'iframe'))[0]
        driver.switch_to.frame(frame)
      self.wait = WebDriverWait(driver, 90)
    self.wait.until(self.ready)
    if run and Select(self.one('#run-select')).first_selected_option.get_attribute('value') != run:
      Select(self.one('#run-select')).select_by_value(run)
      self.wait.until(lambda d: self.ready(d) and self.all('.thumb'))

  def ready(self, d=None):
    return (d or self.d).find_element(self.By.TAG_NAME, 'body').get_attribute('data-ready') == 'true'

  def all(self, css):
    return self.d.find_elements(self.By.CSS_SELECTOR, css)

  def one(self, css):
    return self.d.find_element(self.By.CSS_SELECTOR, css)

  def js(self, script, *args):
    return self.d.execute_script(script, *args)

  def select(self, css, value):
    from selenium.webdriver.support.ui import Select
    Select(self.one(css)).select_by_value(value)

  def click(self, element):
    self.js('arguments[0].scrollIntoView({block: "center"})', element)
    element.click()

  def head(self, layer, head):
    cell = next(c for c in self.all('#importance-grid rect.imp-cell')
                if c.get_attribute('data-layer') == str(layer)
                and c.get_attribute('data-head') == str(head))
    self.click(cell)
    self.wait.until(lambda d: self.one('#selected-head').text == f'L{layer} H{head}')

  def shot(self, name, css=None):
    """A screenshot of one element (below the sticky header) or of the window."""
    ARTIFACTS.mkdir(exist_ok=True)
    if css:
      node = self.one(css)
      self.js('arguments[0].scrollIntoView(); window.scrollBy(0, -document.getElementById('
              '"sticky-header").offsetHeight - 4)', node)
      time.sleep(0.2)
      node.screenshot(str(ARTIFACTS / name))
    else:
      self.d.save_screenshot(str(ARTIFACTS / name))

  def ticks(self, css):
    return [t.text for t in self.all(f'{css} text.x-tick')]


def numbers(texts):
  return [float(t.replace('−', '-')) for t in texts if t]


# --- bugs 1-11 -----------------------------------------------------------------------------

def test_1_another_image_drops_the_previous_images_attention(server, browser):
  from selenium.webdriver.common.action_chains import ActionChains
  p = Page(browser, server)
  stage = p.one('#image-stage')
  p.js('arguments[0].scrollIntoView()', stage)
  blank = p.js("return document.querySelector('#image-stage canvas').toDataURL()")
  ActionChains(browser).move_to_element_with_offset(stage, 20, 20).click().perform()
  p.wait.until(lambda d: p.all('#head-multiples canvas'))
  assert p.js("return document.querySelector('#image-stage canvas').toDataURL()") != blank
  p.click(p.all('.thumb')[1])
  p.wait.until(lambda d: p.one('#query-label').text == 'no patch selected')
  # No overlay and no small multiples of the previous image remain.
  assert p.js("return document.querySelector('#image-stage canvas').toDataURL()") == blank
  assert not p.all('#head-multiples canvas') and p.all('#head-multiples-empty')
  assert 'selected' in p.all('.thumb')[1].get_attribute('class')


def test_2_locality_plots_draw_uniform_and_self_baselines(server, browser, written):
  p = Page(browser, server)
  base = written['strength/meta']['baselines']
  # The uniform reference in every trend, at its value, and both references in the profile.
  for chart in ('#trend-distance', '#trend-entropy', '#trend-share'):
    assert p.all(f'{chart} line.reference'), chart
    assert 'uniform' in p.one(chart).text
  assert len(p.all('#neighbourhood .reference-curve')) == 2
  assert p.one('#locality-table tr.reference-row').text.startswith('uniform')
  assert fmt(base['uniform']['mean_distance']) in p.one('#locality-table tr.reference-row').text
  # The y axis includes the uniform value; y-from-zero puts 0 on it.
  assert 0. not in numbers(t.text for t in p.all('#trend-distance text.y-tick'))
  p.click(p.one('#y-from-zero'))
  p.wait.until(lambda d: 0. in numbers(t.text for t in p.all('#trend-distance text.y-tick')))
  # The uniform line stays inside the plot, above the zero tick.
  zero_y = next(float(t.get_attribute('y')) for t in p.all('#trend-distance text.y-tick')
                if t.text == '0')
  line = p.one('#trend-distance line.reference')
  assert 8 <= float(line.get_attribute('y1')) < zero_y
  p.click(p.one('#y-from-zero'))


def test_3_colour_scales_diverge_at_uniform_and_zero_and_every_map_has_a_legend(server, browser, written):
  p = Page(browser, server)
  # Offset maps: a log-ratio legend from the data's smallest to its largest ratio, with the
  # 1x uniform tick where 1 falls between them (issue 21: fitted, not symmetric).
  for css in ('#multiples-legend', '#focus-legend'):
    legend = p.one(css)
    assert legend.get_attribute('data-kind') == 'ratio'
    ticks = legend.find_elements(p.By.CSS_SELECTOR, 'text.legend-tick')
    centre = [t for t in ticks if t.text in ('1× uniform', '1×')]
    lo, hi = (float(ticks[i].text.rstrip('×').replace('−', '-')) for i in (0, -1))
    width = float(legend.find_element(p.By.TAG_NAME, 'rect').get_attribute('width'))
    if centre:
      want = 10 + width * (0 - math.log(lo)) / (math.log(hi) - math.log(lo))
      assert float(centre[0].get_attribute('x')) == pytest.approx(want, abs=0.01 * width)
  # The cell of the focus map at 1x uniform would be white: the centre colour of the ramp.
  # Signed metrics on a scale centred at 0, unsigned on a sequential one.
  for metric in ('ablation_top1', 'ablation_loss', 'taylor'):
    p.select('#metric-select', metric)
    signed = written[f'importance/{metric}'].min() < 0
    p.wait.until(lambda d: p.one('#importance-grid').get_attribute('data-scale') ==
                 ('signed' if signed else 'sequential'))
    labels = [t.text for t in p.all('#importance-legend text.legend-tick')]
    assert ('0' in labels) == signed
  # Class-token maps, cluster thumbnails and per-patch multiples have legends too.
  assert len(p.all('#view-strength .cls-map')) == 2
  assert p.all('#cluster-legend')
  # Per-map scales: every map then says it has its own scale (clusters: one legend each).
  p.select('#scale-mode', 'per-map')
  p.wait.until(lambda d: p.ready(d) and p.all('p#multiples-legend'))
  clusters = p.all('.cluster')
  assert all(c.find_elements(p.By.CSS_SELECTOR, 'svg.legend') for c in clusters)
  p.select('#scale-mode', 'shared')
  p.wait.until(lambda d: p.ready(d) and p.all('svg#multiples-legend'))


def test_4_partial_pruning_bars_are_signed_with_definitions_and_metrics(server, browser, written):
  p = Page(browser, server)
  H = written['importance/taylor'].shape[1]
  flat = int(written['importance/partial_heads'][0])
  p.head(flat // H, flat % H)
  variants = written['importance/meta']['partial_variants']
  for metric, tag in (('loss', 'partial_loss'), ('top1', 'partial_top1'), ('kl', 'partial_kl')):
    p.select('#partial-metric', metric)
    p.wait.until(lambda d: p.one('#partial-bars').get_attribute('data-metric') == metric)
    zero = float(p.one('#partial-bars line.zero-line').get_attribute('x1'))
    bars = p.all('#partial-bars rect.bar')
    assert len(bars) == len(variants) + 1
    values = [float(b.get_attribute('data-value')) for b in bars]
    np.testing.assert_allclose(values[1:], written[f'importance/{tag}'][0], rtol=1e-5, atol=1e-7)
    for b, v in zip(bars, values):   # signed: negative bars end at zero from the left
      x, w = float(b.get_attribute('x')), float(b.get_attribute('width'))
      if v < 0:
        assert x + w == pytest.approx(zero, abs=0.5)
      elif w > 1:
        assert x == pytest.approx(zero, abs=0.5)
    assert p.all('#partial-bars text.x-tick')   # an axis with numbers
  text = p.one('#variant-definitions').get_attribute('textContent')
  for v in variants:
    assert v['description'] in text


def test_5_pattern_map_fades_empty_cells_and_shows_real_samples(server, browser, written):
  p = Page(browser, server)
  cells = written['patterns/sample_cell']
  g = written['patterns/map'].shape[0]
  counts = np.zeros((g, g), int)
  np.add.at(counts, (cells[:, 0], cells[:, 1]), 1)
  canvases = p.all('#pattern-map canvas')
  assert len(canvases) == g * g
  faded = {(int(c.get_attribute('data-row')), int(c.get_attribute('data-col')))
           for c in canvases if 'empty-cell' in c.get_attribute('class')}
  assert faded == {tuple(rc) for rc in np.argwhere(counts == 0)}
  # Every sample in the latent scatter, coloured by layer (or head, with a key).
  assert len(p.all('#sample-scatter circle.sample-point')) == len(cells)
  p.select('#sample-colour', 'head')
  p.wait.until(lambda d: p.one('#sample-scatter').get_attribute('data-colour') == 'head')
  assert 'colour = head' in p.one('#view-patterns .category-key').text
  # A click on an occupied cell shows real samples with image and query patch, and the
  # page below does not move.
  below = p.one('#view-patterns .cluster')
  r, c = np.argwhere(counts > 0)[0]
  target = canvases[r * g + c]
  p.click(target)
  y0 = below.location['y']
  p.wait.until(lambda d: p.all('#sample-gallery .sample'))
  samples = p.all('#sample-gallery .sample')
  assert len(samples) == min(6, counts[r, c])
  assert re.search(r'query \(\d+, \d+\)', samples[0].text)
  names = written['patterns/meta']['image_names']
  assert any(n in samples[0].text for n in names)
  p.click(canvases[r * g + c])
  assert below.location['y'] == y0
  if (counts == 0).any():
    r, c = np.argwhere(counts == 0)[0]
    p.click(p.all('#pattern-map canvas')[r * g + c])
    p.wait.until(lambda d: p.all('#cell-empty'))
    assert below.location['y'] == y0
  p.shot('views-patterns.png', '#view-patterns')


def test_6_cluster_names_show_their_statistics_and_thresholds(server, browser, written):
  p = Page(browser, server)
  names = written['patterns/meta']['cluster_names']
  clusters = p.all('.cluster')
  assert len(clusters) == len(names)
  for cluster, name in zip(clusters, names):
    rules = cluster.find_elements(p.By.CSS_SELECTOR, 'table.rules tr')
    fired = cluster.find_elements(p.By.CSS_SELECTOR, 'table.rules tr.fired')
    assert len(fired) == 1 and len(rules) >= 7
    word = name.split(' ')[0]
    assert f'→ {word}' in fired[0].get_attribute('textContent') or (
        word == 'global' and 'global (≥' in fired[0].get_attribute('textContent')), name
    text = cluster.get_attribute('textContent')
    for stat in ('class-token share', 'share within 1 patch', 'entropy', '> 0.6'):
      assert stat in text


def test_7_comparison_follows_the_metric_and_shows_delta_and_ranks(server, browser, written):
  p = Page(browser, server)
  L, H = written['importance/taylor'].shape
  p.select('#compare-select', 'importance-only')
  p.wait.until(lambda d: p.ready(d) and len(p.all('#view-compare svg.compare-grid')) == 2)
  assert 'L0' in p.one('#compare-grid-0').text and 'H0' in p.one('#compare-grid-0').text
  assert len(p.all('#compare-delta rect.imp-cell')) == L * H
  assert re.search(r'Spearman ρ = -?\d\.\d{3}', p.one('#spearman').text)
  assert p.all('#compare-makeup .makeup')
  # The metric switch redraws the comparison.
  p.select('#metric-select', 'ablation_kl')
  p.wait.until(lambda d: 'KL' in p.one('#compare-importance h3').text)
  assert 'Taylor' not in p.one('#compare-importance').text
  # The selected head is highlighted in every comparison grid.
  p.head(1, 2)
  p.wait.until(lambda d: len(p.all('#compare-importance rect.imp-cell.selected')) == 3)
  p.shot('views-compare.png', '#view-compare')
  # A run compared with itself: every delta 0, rho 1.
  p.select('#compare-select', 'tiny')
  p.wait.until(lambda d: p.ready(d) and p.all('#compare-self'))
  p.wait.until(lambda d: p.all('#spearman'))
  assert 'ρ = 1.000' in p.one('#spearman').text
  p.select('#compare-select', '')
  p.wait.until(lambda d: p.ready(d) and not p.all('#view-compare'))
  p.select('#metric-select', 'taylor')


def test_8_axes_have_integer_ticks_readable_labels_and_keys(server, browser):
  p = Page(browser, server)
  for chart in ('#trend-distance', '#trend-entropy', '#neighbourhood', '#training-chart'):
    ticks = numbers(p.ticks(chart))
    assert ticks and all(float(t).is_integer() for t in ticks), (chart, ticks)
  # No tick is float noise around 0 ("-1.6e-9").
  for t in p.all('text.y-tick, text.x-tick'):
    if re.fullmatch(r'-?[0-9.]+e-?[0-9]+', t.text):
      assert abs(float(t.text)) > 1e-7, t.text
  # Tick labels stay inside their chart; the y label does not overlap the y ticks.
  for chart in ('#importance-scatter', '#trend-distance', '#per-image-hist', '#pruning-curves'):
    box = p.js('return arguments[0].getBoundingClientRect().toJSON()', p.one(chart))
    for t in p.all(f'{chart} text.x-tick, {chart} text.y-tick'):
      r = p.js('return arguments[0].getBoundingClientRect().toJSON()', t)
      assert r['left'] >= box['left'] - 0.5 and r['right'] <= box['right'] + 0.5, (chart, t.text)
    label = p.js("return arguments[0].querySelectorAll('text.axis-label')[1]"
                 ".getBoundingClientRect().toJSON()", p.one(chart))
    lefts = [p.js('return arguments[0].getBoundingClientRect().left', t)
             for t in p.all(f'{chart} text.y-tick')]
    if lefts:
      assert label['right'] <= min(lefts), chart
  # The focus offset map has dx/dy numbers and says which way is which.
  assert '0' in [t.text for t in p.all('#offset-focus text.offset-tick')]
  assert 'key to the right' in p.one('#offset-focus').text
  # Every categorical colour has a key.
  assert p.all('#scatter-layer-legend')
  assert 'colour = head' in p.one('#view-strength .category-key').text or \
      len(p.all('#view-strength .category-key')) == 2


def test_9_tooltips_do_not_go_stale_and_counts_are_counts(server, browser):
  from selenium.webdriver.common.action_chains import ActionChains
  p = Page(browser, server)
  cell = p.all('#importance-grid rect.imp-cell')[5]
  p.js('arguments[0].scrollIntoView({block: "center"})', cell)
  ActionChains(browser).move_to_element(cell).perform()
  p.wait.until(lambda d: p.one('#vit-tooltip').is_displayed())
  cell.click()     # the grid is redrawn under the pointer
  p.wait.until(lambda d: not p.one('#vit-tooltip').is_displayed())
  # Pattern cells say how many samples, not a percentage.
  canvas = next(c for c in p.all('#pattern-map canvas') if c.get_attribute('data-samples') != '0')
  p.js('arguments[0].scrollIntoView({block: "center"})', canvas)
  ActionChains(browser).move_to_element(canvas).perform()
  p.wait.until(lambda d: p.one('#vit-tooltip').is_displayed())
  text = p.one('#vit-tooltip').text
  assert re.search(r'\d+ of \d+ samples', text) and '%' not in text


def test_10_new_runs_appear_without_a_reload(server, browser, logdir):
  p = Page(browser, server)
  p.js('window.__marker = 1')
  shutil.copytree(logdir / 'importance-only', logdir / 'added-run')
  # Read in the page: the select's options are replaced when the run list changes.
  options = lambda d: p.js("return [...document.querySelectorAll('#run-select option')]"
                           ".map((o) => o.value)")
  p.wait.until(lambda d: 'added-run' in options(d))
  assert p.js('return window.__marker') == 1       # the page was not reloaded
  assert 'added-run' in p.one('#run-note').text
  assert 'added-run' in p.js("return [...document.querySelectorAll('#compare-select option')]"
                             ".map((o) => o.value)")


def test_11_per_image_histogram_is_log_scaled_and_linked_to_images(server, browser, written):
  p = Page(browser, server)
  p.head(0, 0)
  taylor = written['importance/per_image_taylor'][:, 0, 0]
  assert 'log scale' in p.one('#per-image-hist').text
  bars = p.all('#per-image-hist rect.hist-bar')
  assert sum(int(b.get_attribute('data-count')) for b in bars) == int((taylor > 0).sum())
  bar = next(b for b in bars if b.get_attribute('data-count') != '0')
  count = int(bar.get_attribute('data-count'))
  p.click(bar)
  p.wait.until(lambda d: p.all('#overview-filter'))
  assert len(p.all('#overview-table tbody tr')) == count
  p.click(p.one('#overview-filter button'))
  p.wait.until(lambda d: not p.all('#overview-filter'))


# --- missing views ---------------------------------------------------------------------------

def test_12_image_overview_lists_sorts_and_opens_images(server, browser, written):
  p = Page(browser, server)
  meta = written['importance/meta']
  N = len(meta['image_names'])
  rows = p.all('#overview-table tbody tr')
  assert len(rows) == min(50, N)
  prediction = written['importance/per_image_prediction']
  labels = np.array(meta['labels'])
  right = int(((prediction == labels) & (labels >= 0)).sum())
  assert f'{right} of {int((labels >= 0).sum())} labelled images predicted correctly' in \
      p.one('#overview-summary').text
  # Sorted by the selected head's per-image Taylor importance, largest first.
  p.head(1, 1)
  p.click(p.one('#overview-table th[data-key="taylor"]'))
  p.wait.until(lambda d: '▼' in p.one('#overview-table th[data-key="taylor"]').text)
  first = int(p.one('#overview-table tbody tr').get_attribute('data-image'))
  assert first == int(np.nanargmax(written['importance/per_image_taylor'][:, 1, 1]))
  # A stored image opens in the attention view.
  stored = written['strength/meta']['map_image_index']
  p.click(p.one('#overview-table th[data-key="index"]'))
  row = p.one(f'#overview-table tbody tr[data-image="{stored[1]}"]')
  assert 'stored' in row.get_attribute('class')
  p.click(row)
  p.wait.until(lambda d: 'selected' in p.all('.thumb')[1].get_attribute('class'))
  p.shot('views-overview.png', '#view-overview')


def write_many_images(logdir, images=10_000, seed=0):
  """An importance-only run of the tiny model's shape over 10,000 images, random values."""
  fake_runs.write_importance_run(logdir, 'many', TINY, images, classes=10, seed=seed,
                                 checkpoint='tiny (random)')


def test_12_image_overview_stays_responsive_with_10000_images(browser, tmp_path):
  """The table draws one page at a time: first paint, sorting 10,000 rows and paging stay
  fast; the page fetches the selected head's per-image values, never the whole
  [image, layer, head] array, and the Taylor column holds that head's values."""
  write_many_images(tmp_path)
  per_image = reader.read_run(tmp_path / 'many')['importance/per_image_taylor']
  with tensorboard(tmp_path, 'false') as url:
    t0 = time.time()
    p = Page(browser, url, run='many')
    p.wait.until(lambda d: p.all('#overview-table tbody tr'))
    first_paint = time.time() - t0
    assert len(p.all('#overview-table tbody tr')) == 50
    assert 'of 200' in p.one('#overview-page').text
    elapsed = p.js("""
      const t0 = performance.now();
      const th = () => document.querySelector('#overview-table th[data-key="loss"]');
      th().click(); th().click();
      document.querySelector('#overview-next').click();
      document.querySelector('#overview-table th[data-key="taylor"]').click();
      return performance.now() - t0;""")
    print(f'10,000 images: page ready {first_paint:.2f} s, 2 sorts + page + sort {elapsed:.0f} ms')
    assert elapsed < 1000
    assert 'page 1 of 200' in p.one('#overview-page').text
    l, h = map(int, re.search(r'L(\d+) H(\d+)',
                              p.one('#overview-table th[data-key="taylor"]').text).groups())
    first = int(p.one('#overview-table tbody tr').get_attribute('data-image'))
    assert first == int(np.argmax(per_image[:, l, h])), (l, h)
    fetched = [u for u in p.js("return performance.getEntriesByType('resource').map((e) => e.name)")
               if 'per_image_taylor' in u]
    assert fetched and all(f'layer={l}' in u and f'head={h}' in u for u in fetched), fetched


def test_13_locality_table_and_class_token_attention(server, browser, written):
  p = Page(browser, server)
  L, H = written['importance/taylor'].shape
  rows = p.all('#locality-table tbody tr')
  assert len(rows) == L * H + 1
  p.head(2, 1)
  row = p.one('#locality-table tr.selected')
  assert row.get_attribute('data-layer') == '2' and row.get_attribute('data-head') == '1'
  cells = [c.text for c in row.find_elements(p.By.TAG_NAME, 'td')]
  assert cells[2] == fmt(written['strength/mean_distance'][2, 1])   # after head and kind
  uniform = written['strength/meta']['baselines']['uniform']['mean_distance']
  assert cells[3] == fmt(written['strength/mean_distance'][2, 1] / uniform)
  header = p.one('#locality-table thead').text
  for column in ('mean distance', 'share ≤', 'entropy', 'class-token share', 'p5–p95'):
    assert column in header
  # Sorting by a column, and a row click selects its head.
  p.click(p.one('#locality-table th[data-key="entropy"]'))
  first = p.one('#locality-table tbody tr:nth-child(2)')
  l, h = int(first.get_attribute('data-layer')), int(first.get_attribute('data-head'))
  assert written['strength/entropy'][l, h] == written['strength/entropy'].max()
  p.click(first)
  p.wait.until(lambda d: p.one('#selected-head').text == f'L{l} H{h}')
  assert p.all('#cls-attention') and p.all('#to-cls')
  p.shot('views-strength.png', '#view-strength')


def test_14_joint_query_key_embedding_linked_to_the_image_view(server, browser, written):
  p = Page(browser, server)
  embedding = written['strength/qk_embedding']
  L, H, roles, tokens, _ = embedding.shape
  T = tokens // len(written['strength/qk_images'])
  p.head(1, 2)
  p.wait.until(lambda d: 'L1 H2' in p.one('#qk-panel h3').text)
  points = p.all('#qk-scatter circle.qk-point')
  assert len(points) == roles * tokens
  # The scatter is the stored embedding of the selected head (first query point).
  xs = sorted(float(c.get_attribute('cx')) for c in points)
  assert xs[0] < xs[-1]
  assert len(p.all('#qk-scatter circle.qk-point.mine')) == 2 * T   # image 0's tokens
  p.select('#qk-colour', 'position')
  p.wait.until(lambda d: p.one('#qk-scatter').get_attribute('data-colour') == 'position')
  # A click on a query point of image 1 opens image 1 with that patch as the query.
  target = next(c for c in p.all('#qk-scatter circle.qk-point')
                if c.get_attribute('data-image') == '1' and c.get_attribute('data-role') == '0'
                and c.get_attribute('data-token') == '6')
  p.js("arguments[0].dispatchEvent(new MouseEvent('click', {bubbles: true}))", target)
  p.wait.until(lambda d: 'selected' in p.all('.thumb')[1].get_attribute('class'))
  p.wait.until(lambda d: 'row 1, col 1' in p.one('#query-label').text)   # token 6 = patch 5
  p.wait.until(lambda d: p.all('#qk-selected'))
  assert len(p.all('#head-multiples canvas')) == L * H
  p.shot('views-qk.png', '#view-images')


def test_15_sticky_header_url_state_and_wide_layout(server, browser, written):
  p = Page(browser, server)
  p.head(2, 3)
  numbers_text = p.one('#head-numbers').text
  assert fmt(written['importance/taylor'][2, 3]) in numbers_text
  assert fmt(written['strength/mean_distance'][2, 3]) in numbers_text
  # The header stays at the top while scrolling.
  p.js('window.scrollTo(0, document.body.scrollHeight)')
  time.sleep(0.2)
  assert abs(p.js("return document.getElementById('sticky-header').getBoundingClientRect().top")) < 1
  # The selection is in TensorBoard's URL; opening that URL restores it.
  browser.switch_to.default_content()
  url = browser.current_url
  assert 'vit=' in url and 'layer%3A2' in url and 'head%3A3' in url
  hash_ = url[url.index('#'):]
  p2 = Page(browser, server, run=None, hash_=hash_)
  p2.wait.until(lambda d: p2.one('#selected-head').text == 'L2 H3')
  assert p2.one('#run-select').get_attribute('value') == 'tiny'
  assert len(p2.all('#importance-grid rect.imp-cell.selected')) == 1
  # Wide screens: views side by side.
  browser.set_window_size(2400, 1600)
  p2.wait.until(lambda d: p2.one('#view-strength').location['y'] ==
                p2.one('#view-importance').location['y'])
  browser.switch_to.default_content()
  browser.save_screenshot(str(ARTIFACTS / 'views-wide.png'))
  browser.set_window_size(1400, 2200)


def test_15_the_plugin_page_alone_keeps_the_selection_in_its_own_hash(server, browser,
                                                                     written, capsys):
  """TensorBoard's entry document of the plugin, opened as a page of its own (no
  TensorBoard page around it, the first view ~1.5 s sooner): the selection is read from and
  written to its own hash, and the CLI prints its address."""
  p = Page(browser, server, run=None, hash_='#vit=run%3Atiny%2Clayer%3A1%2Chead%3A2',
           alone=True)
  assert not p.all('iframe')
  assert p.one('#selected-head').text == 'L1 H2'
  assert p.one('#run-select').get_attribute('value') == 'tiny'
  assert len(p.all('#importance-grid rect.imp-cell')) == written['importance/taylor'].size
  p.head(0, 3)
  p.wait.until(lambda d: 'layer%3A0' in d.current_url and 'head%3A3' in d.current_url)
  from vit_jax_analytics import cli
  cli.print_view_hint('logs')
  assert f'http://localhost:6006{ALONE_PATH}' in capsys.readouterr().out


def test_16_the_page_explains_itself(server, browser, written):
  p = Page(browser, server)
  p.click(p.one('#about-run summary'))
  p.wait.until(lambda d: p.all('#definitions dt'))
  text = p.one('#about-run').text
  for k, d in written['importance/meta']['definitions'].items():
    assert d in text
  for d in written['strength/meta']['definitions'].values():
    assert d in text
  assert 'num_layers' in p.one('#model-config').text
  assert p.one('#metric-definition').get_attribute('data-text') == written['importance/meta']['definitions']['taylor']
  p.shot('views-about.png', '#about-run')
  p.shot('views-importance.png', '#view-importance')
  p.shot('views-images.png', '#view-images')
  # Empty states say what to run.
  p.select('#run-select', 'importance-only')
  p.wait.until(lambda d: p.ready(d) and p.one('#run-select').get_attribute('value') == 'importance-only')
  assert 'vit-analytics strength' in p.one('#view-strength').text
  assert 'vit-analytics patterns' in p.one('#view-patterns').text


# --- a light page (the plugin benchmark's first paint and every view) ----------------------

def test_loading_asks_once_per_meta_keeps_the_page_still_and_makes_no_svg_layers(server, browser):
  """What made the ViT-L/16 page slow must not come back: each analysis' meta is asked for
  once (every view reads it); loading does not scroll the page; and no SVG mark is made
  translucent with CSS `opacity` (each such element becomes its own compositing effect: with
  the ~8,000 points of a large run, every frame spent ~0.6 s deciding layers)."""
  p = Page(browser, server)
  # Drawn anew in a short window, where the locality table is below the fold.
  browser.set_window_size(1400, 700)
  try:
    p.select('#run-select', 'importance-only')
    p.wait.until(lambda d: p.ready(d) and not p.all('#locality-table'))
    p.js('window.scrollTo(0, 0); performance.clearResourceTimings()')
    p.select('#run-select', 'tiny')
    p.wait.until(lambda d: p.ready(d) and p.all('#locality-table'))
    time.sleep(0.3)
    names = p.js("return performance.getEntriesByType('resource').map((e) => e.name)")
    assert 10 < len(names) < 250   # the browser's resource-timing buffer did not overflow
    for analysis in ('importance', 'strength', 'patterns'):
      asked = [n for n in names if f'/meta?run=tiny&analysis={analysis}' in n]
      assert len(asked) == 1, (analysis, asked)
    # The page stays put.
    assert p.one('#locality-table').location['y'] > 700
    assert p.js('return window.scrollY') == 0
    browser.switch_to.default_content()
    assert browser.execute_script('return window.scrollY') == 0
  finally:
    browser.set_window_size(1400, 2200)
  p = Page(browser, server)
  translucent = p.js("""return [...document.querySelectorAll('svg *')]
      .filter((e) => getComputedStyle(e).opacity !== '1')
      .map((e) => e.tagName + '.' + e.getAttribute('class'))""")
  assert translucent == []
  # ... yet the faint marks are still drawn faint.
  assert p.js("return getComputedStyle(document.querySelector('#sample-scatter circle.sample-point'))"
              ".fillOpacity") == '0.55'


def test_first_view_comes_in_one_request_and_shows_the_stored_values(server, browser, written):
  """The page asks for the first view's runs, steps, meta and arrays in one request
  (/first_view, for the run in the URL) and for none of them on its own; the grid drawn
  from it holds the stored values."""
  from selenium.webdriver.common.action_chains import ActionChains
  p = Page(browser, server, run=None, hash_='#vit_analytics&vit=run%3Atiny')
  assert p.one('#run-select').get_attribute('value') == 'tiny'
  names = p.js("return performance.getEntriesByType('resource').map((e) => e.name)")
  first = [n for n in names if '/first_view?' in n]
  assert len(first) == 1 and 'run=tiny' in first[0]
  for alone in ('/meta?run=tiny&analysis=importance', '/array?run=tiny&tag=importance%2Ftaylor',
                '/array?run=tiny&tag=importance%2Fcurve_top1', '/steps?run=tiny',
                '/array?run=tiny&tag=importance%2Fcurve_top1_se'):
    assert not [n for n in names if n.endswith(alone) or f'{alone}&' in n], alone
  assert [n for n in names if '/meta?run=tiny&analysis=strength' in n]   # the others ask
  taylor = written['importance/taylor']
  l, h = np.unravel_index(np.argmax(taylor), taylor.shape)
  cell = p.one(f'#importance-grid rect.imp-cell[data-layer="{l}"][data-head="{h}"]')
  ActionChains(browser).move_to_element(cell).perform()
  p.wait.until(lambda d: f'= {fmt(taylor[l, h])}' in p.one('#vit-tooltip').text)
  assert f'L{l} H{h}' in p.one('#vit-tooltip').text
  assert p.all('#pruning-curves polyline')


def test_focus_map_labels_each_offset_with_the_selected_heads_mean(server, browser, written):
  """The offset map of the selected head reads that head's slice of offset_mean (fetched per
  head): its tooltips show the stored mean, also after another head is selected."""
  from selenium.webdriver.common.action_chains import ActionChains
  p = Page(browser, server)
  mean = written['strength/offset_mean']
  for layer, head in ((0, 0), (2, 3)):
    p.head(layer, head)
    p.wait.until(lambda d: f'L{layer} H{head}' in p.one('#offset-focus').find_element(
        p.By.XPATH, '..').text)
    span = mean.shape[-1]
    r, k = np.unravel_index(np.argmax(mean[layer, head]), (span, span))
    value = mean[layer, head, r, k]
    assert 1e-3 <= abs(value) < 1000
    cell = p.all('#offset-focus rect.offset-cell')[r * span + k]
    p.js('arguments[0].scrollIntoView({block: "center"})', cell)
    ActionChains(browser).move_to_element(cell).perform()
    p.wait.until(lambda d: p.one('#vit-tooltip').is_displayed())
    assert f'mean {fmt(value)} =' in p.one('#vit-tooltip').text
