"""Plugin latency on a ViT-L/16-sized analysis (24 layers x 16 heads, 14 x 14 patches).

Writes a logdir through the real writer (vit_jax_analytics.logdir) with random values of
the real shapes, starts the real `tensorboard`, and prints, each with its target:

* the p50/p95 latency of every route the frontend uses (target: p95 < 100 ms);
* the first paint of the plugin page in headless Chromium (target < 2 s), as the median of
  --repeats page loads, each in a fresh browser: from navigation, and split at the moment
  TensorBoard's page starts the plugin's frame (before it: TensorBoard's bundle arriving,
  being parsed and run, its first data requests; after it: the plugin's share);
* the plugin's page alone (TensorBoard's entry document of the plugin, opened as a page of
  its own: no TensorBoard page around it), first paint and every view (target < 2 s);
* TensorBoard's own page alone: on an empty logdir, the time to the frame's start with a
  one-word probe plugin instead of this one (benchmarks/tb_boot_probe.py), and with this one;
* the image overview of a 10,000-image ViT-L/16-shaped run: when its rows are drawn, and
  what two sorts, a page and another sort take in the page (target < 1 s);
* with --interactions LOGDIR (e.g. the photo demo's): how long the page takes to repaint
  after selecting a head (every view; target < 150 ms), switching the metric (< 100 ms)
  and switching the run (< 300 ms), medians of --interaction-repeats, in the plugin's page
  alone (a second run is a copy of the first, so that there is a run to switch to).

With --baseline REV, a second `tensorboard` serves the plugin (routes and frontend) of git
revision REV on the same logdir, and the page loads alternate between the two, so that
before and after are measured in one run, under the same machine load.

  python benchmarks/bench_plugin.py [--load-fast false|true] [--requests 40] [--repeats 5]
                                    [--baseline main] [--logdir DIR] [--overview-images N]
                                    [--interactions LOGDIR [--interactions-only]]
"""

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def write_vit_l_logdir(logdir: Path, images=500, map_images=4, samples=20000, seed=0):
  """A ViT-L/16-shaped run of random typed results, written through the real schema."""
  from tests import fake_runs
  from vit_jax_analytics import model as model_lib, results as R
  from vit_jax_analytics.logdir import schema, writer
  from vit_jax_analytics import strength as strength_lib
  from vit_jax_analytics.strength import HIST_BINS, QUANTILES

  rng = np.random.default_rng(seed)
  config = model_lib.get_config('ViT-L/16')
  L, H, n, t = config.num_layers, config.num_heads, config.grid_size, config.num_tokens
  u = lambda *s: rng.uniform(0, 1, s).astype(np.float32)
  meta = fake_runs.meta(config, images, 1000, 'ViT-L_16.npz (random)')
  orders = ('taylor', 'ablation_loss', 'ablation_kl', 'ablation_top1') + tuple(
      f'random_{i}' for i in range(5))
  variants = tuple((f'v{i}', f'variant {i}') for i in range(10))
  imp = fake_runs.random_importance(config, images, rng, 1000, orders=orders, points=21,
                                    variants=variants, partial_heads=12)
  writer.write_analysis(logdir, 'vit-l16', 'importance', schema.importance_values(imp, meta))

  st = R.StrengthResult(
      images=images, offset_mean=u(L, H, 2 * n - 1, 2 * n - 1),
      offset_ratio=u(L, H, 2 * n - 1, 2 * n - 1), offset_pairs=u(2 * n - 1, 2 * n - 1),
      neighbourhood_share=np.sort(u(L, H, n), -1), mean_distance=u(L, H), entropy=u(L, H),
      self_share=u(L, H), cls_share=u(L, H), quantile_levels=QUANTILES,
      distributions={s: R.ScalarDistribution((0., 1.), u(L, H, HIST_BINS),
                                             np.sort(u(L, H, len(QUANTILES)), -1))
                     for s in ('mean_distance', 'entropy', 'self_share', 'cls_share')},
      cls_attention=u(L, H, n, n), to_cls=u(L, H, n, n),
      map_image_index=np.arange(map_images, dtype=np.int32),
      map_attention=u(map_images, L, H, t, t).astype(np.float16),
      map_rollout=u(map_images, L, t, t).astype(np.float16),
      baselines=strength_lib.baselines(config),
      qk_embedding=u(L, H, 2, map_images * t, 2), qk_images=np.arange(map_images, dtype=np.int32))
  pics = (u(map_images, 224, 224, 3) * 255).astype(np.uint8)
  writer.write_analysis(logdir, 'vit-l16', 'strength', schema.strength_values(st, meta, pics))

  g, c = 12, 2 * n - 1
  smp = R.Samples(recentred=u(samples, c, c).astype(np.float16),
                  plain=u(samples, n, n).astype(np.float16), to_cls=None,
                  index=rng.integers(0, [images, L, H, n * n], (samples, 4)).astype(np.int32))
  pat = R.PatternResult(
      map=u(g, g, c, c), map_extent=np.array([[0., 1.], [0., 1.]]), sample_latent=u(samples, 2),
      sample_cell=rng.integers(0, g, (samples, 2)), head_density=u(L, H, g, g),
      head_cluster=rng.integers(0, 6, (L, H)), cluster_pattern=u(6, c, c),
      cluster_names=('global',) * 6, reconstruction_error=0.01, data_variance=0.1,
      head_reconstruction_error=u(L, H),
      history=R.TrainingHistory(tuple(u(60)), tuple(u(60)), 59, False), samples=smp)
  writer.write_analysis(logdir, 'vit-l16', 'patterns', schema.patterns_values(pat, meta))
  return config


def write_overview_run(logdir: Path, run='vit-l16-10k-images', images=10_000, seed=1):
  """An importance-only ViT-L/16-shaped run over `images` images (the image overview's
  table), random values written through the real schema."""
  from tests import fake_runs
  from vit_jax_analytics import model as model_lib
  return fake_runs.write_importance_run(logdir, run, model_lib.get_config('ViT-L/16'), images,
                                        classes=1000, seed=seed,
                                        checkpoint='ViT-L_16.npz (random)')


# Tags the timed routes read (TensorBoard lists a file's tags as it reads them).
NEEDED = {'importance/per_image_loss', 'importance/per_image_taylor', 'strength/qk_embedding',
          'strength/map_attention/1', 'strength/map_rollout/1', 'patterns/sample_latent',
          'patterns/sample_plain', 'patterns/head_density'}


def time_routes(url, config, requests):
  from urllib.parse import urlencode
  base = f'{url}/data/plugin/vit_analytics'
  run = 'vit-l16'
  routes = {
      'runs': '/runs',
      'meta': '/meta?' + urlencode({'run': run, 'analysis': 'importance'}),
      'array importance/taylor': '/array?' + urlencode({'run': run, 'tag': 'importance/taylor'}),
      'array importance/curve_top1': '/array?' + urlencode({'run': run, 'tag': 'importance/curve_top1'}),
      'array importance/per_image_taylor': '/array?' + urlencode(
          {'run': run, 'tag': 'importance/per_image_taylor'}),
      'array strength/offset_ratio': '/array?' + urlencode({'run': run, 'tag': 'strength/offset_ratio'}),
      'array patterns/map': '/array?' + urlencode({'run': run, 'tag': 'patterns/map'}),
      'array patterns/head_density': '/array?' + urlencode({'run': run, 'tag': 'patterns/head_density'}),
      'png strength/map_image/0': '/png?' + urlencode({'run': run, 'tag': 'strength/map_image/0'}),
      'attention (image 1, query 100)': '/attention?' + urlencode({'run': run, 'image': 1, 'query': 100}),
      'array importance/per_image_loss': '/array?' + urlencode({'run': run, 'tag': 'importance/per_image_loss'}),
      'array strength/qk_embedding[3, 5]': '/array?' + urlencode(
          {'run': run, 'tag': 'strength/qk_embedding', 'index': 3, 'index2': 5}),
      'array patterns/sample_latent': '/array?' + urlencode({'run': run, 'tag': 'patterns/sample_latent'}),
      'array patterns/sample_plain[7]': '/array?' + urlencode(
          {'run': run, 'tag': 'patterns/sample_plain', 'index': 7}),
  }
  rows = []
  for name, path in routes.items():
    times = []
    for i in range(requests):
      start = time.perf_counter()
      with urllib.request.urlopen(base + path, timeout=60) as r:
        r.read()
      times.append(time.perf_counter() - start)
    times = np.asarray(times) * 1000
    rows.append((name, np.percentile(times, 50), np.percentile(times, 95), times[0]))
  return rows


# Injected into every frame before its scripts run: the plugin frame records (in its own
# performance.now()) when the importance grid first is in the document, and the next frame
# after that (when it has been painted). Works for any version of the frontend.
MARKS = r"""
(() => {
  if (window === window.top) return;
  const marks = window.__benchMarks = {};
  const check = () => {
    if (marks.grid == null && document.querySelector('#importance-grid rect')) {
      marks.grid = performance.now();
      requestAnimationFrame(() => setTimeout(() => { marks.painted = performance.now(); }, 0));
    }
    if (marks.ready == null && document.body && document.body.dataset.ready === 'true') {
      marks.ready = performance.now();
    }
  };
  new MutationObserver(check).observe(document, {subtree: true, childList: true, attributes: true});
})();
"""


# TensorBoard's page, as the top document's resource timing sees it: when its JS bundle has
# arrived, when it first asks for data (the bundle has been parsed and run: every request
# before that is the page's HTML, the bundle and fonts), when it has the plugin listing, and
# when it starts the plugin's frame (the frame's document request).
TOP_TIMES = r"""
const r = performance.getEntriesByType('resource');
const at = (test, key) => { const e = r.find((e) => test(e.name)); return e ? e[key] : null; };
const nav = performance.getEntriesByType('navigation')[0];
return {
  bundle: at((n) => /\/index\.js\?_file_hash=/.test(n), 'responseEnd'),
  data: Math.min(...r.filter((e) => /\/data\//.test(e.name)).map((e) => e.startTime)),
  listing: at((n) => n.endsWith('/data/plugins_listing'), 'responseEnd'),
  entry: at((n) => n.includes('/data/plugin_entry.html'), 'startTime'),
  dcl: nav ? nav.domContentLoadedEventEnd : null,
};
"""


def first_paint(url, tab='vit_analytics', painted='#importance-grid rect', ready=True,
                returning=False):
  """One page load in a fresh browser, timed from navigation (seconds): first paint (the
  `painted` selector in the plugin's frame) and every view drawn (`ready`), as WebDriver
  sees them (polling every 20 ms); the same moments as the page records them; and
  TensorBoard's own steps before the frame (TOP_TIMES). `returning`: the timed load is the
  browser's third visit of the page (its HTTP cache and V8's code cache of TensorBoard's
  bundle are warm, as for someone who opens TensorBoard again)."""
  from selenium.webdriver.common.by import By
  from selenium.webdriver.support.ui import WebDriverWait

  from tb_plugin.browser import chromium

  with chromium(window='1400,1800') as driver:
    driver.execute_cdp_cmd('Page.addScriptToEvaluateOnNewDocument', {'source': MARKS})
    for _ in range(2 if returning else 0):
      driver.get(f'{url}/#{tab}')
      driver.switch_to.frame(WebDriverWait(driver, 60).until(
          lambda d: d.find_elements(By.TAG_NAME, 'iframe'))[0])
      WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, painted))
      time.sleep(1)   # V8 writes the code cache after the scripts ran
      driver.switch_to.default_content()
      driver.get('about:blank')
    start = time.perf_counter()
    driver.get(f'{url}/#{tab}')
    frame = WebDriverWait(driver, 60, poll_frequency=0.02).until(
        lambda d: d.find_elements(By.TAG_NAME, 'iframe'))[0]
    seen_frame = time.perf_counter() - start
    top_origin = driver.execute_script('return performance.timeOrigin')
    driver.switch_to.frame(frame)
    WebDriverWait(driver, 60, poll_frequency=0.02).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, painted))
    grid = time.perf_counter() - start
    out = {'seen_frame': seen_frame, 'grid': grid}
    if ready:
      WebDriverWait(driver, 60, poll_frequency=0.02).until(
          lambda d: d.find_element(By.TAG_NAME, 'body').get_attribute('data-ready') == 'true')
      out['ready'] = time.perf_counter() - start
    time.sleep(0.1)
    marks = driver.execute_script(
        'return {origin: performance.timeOrigin, ...(window.__benchMarks || {})}')
    driver.switch_to.default_content()
    top = driver.execute_script(TOP_TIMES)
  shift = marks.pop('origin') - top_origin   # the frame's clock starts later than the page's
  page = {k: (v + shift) / 1000 for k, v in marks.items() if v is not None}
  out.update({'page_frame': shift / 1000, **{f'page_{k}': v for k, v in page.items()},
              **{f'tb_{k}': v / 1000 for k, v in top.items() if v is not None}})
  if 'page_painted' in out:   # the plugin's own share of the first paint
    out['plugin_painted'] = out['page_painted'] - out['page_frame']
  return out


def first_paint_alone(url, painted='#importance-grid rect'):
  """One load of the plugin's page alone (ALONE_PATH: TensorBoard's entry document of the
  plugin, without TensorBoard's page around it) in a fresh browser, from navigation
  (seconds): {'grid': first paint, 'ready': every view drawn}, as WebDriver sees them."""
  from selenium.webdriver.common.by import By
  from selenium.webdriver.support.ui import WebDriverWait

  from tb_plugin.browser import chromium
  from tb_plugin.vit_analytics_plugin import ALONE_PATH

  with chromium(window='1400,1800') as driver:
    start = time.perf_counter()
    driver.get(f'{url}{ALONE_PATH}')
    wait = WebDriverWait(driver, 60, poll_frequency=0.02)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, painted))
    grid = time.perf_counter() - start
    wait.until(lambda d: d.find_element(By.TAG_NAME, 'body').get_attribute('data-ready') == 'true')
    return {'grid': grid, 'ready': time.perf_counter() - start}


def overview_responsiveness(url, run):
  """The image overview of `run` (10,000 images): when its first page of rows is in the
  document (from navigation), and what sorting it twice by loss, paging on and sorting by
  Taylor importance take (ms, in the page)."""
  from selenium.webdriver.common.by import By
  from selenium.webdriver.support.ui import WebDriverWait

  from tb_plugin.browser import chromium

  with chromium(window='1400,1800') as driver:
    start = time.perf_counter()
    driver.get(f'{url}/#vit_analytics&vit=' + urllib.parse.quote(f'run:{run}'))
    frame = WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.TAG_NAME, 'iframe'))[0]
    driver.switch_to.frame(frame)
    WebDriverWait(driver, 120, poll_frequency=0.02).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, '#overview-table tbody tr'))
    rows = time.perf_counter() - start
    WebDriverWait(driver, 120, poll_frequency=0.05).until(
        lambda d: d.find_element(By.TAG_NAME, 'body').get_attribute('data-ready') == 'true')
    pages = driver.find_element(By.CSS_SELECTOR, '#overview-page').text
    ms = driver.execute_script("""
      const t0 = performance.now();
      const th = (k) => document.querySelector(`#overview-table th[data-key="${k}"]`);
      th('loss').click(); th('loss').click();
      document.querySelector('#overview-next').click();
      th('taylor').click();
      return performance.now() - t0;""")
  return rows, ms, pages


# In the page: fetches in flight are counted (window.__pending), so that "repainted" means
# every view's requests answered, their draws done and the next frame painted.
COUNT_FETCHES = '''
  if (!window.__pending) {
    window.__pending = 0;
    const real = window.fetch;
    window.fetch = (...a) => { window.__pending++;
      return real(...a).finally(() => setTimeout(() => { window.__pending--; }, 0)); };
  }'''
SETTLED = '''
  const settled = async (t0) => {
    for (;;) {
      await new Promise((r) => requestAnimationFrame(() => setTimeout(r, 0)));
      if (!window.__pending && document.body.dataset.ready === 'true') return performance.now() - t0;
    }
  };'''


def interactions(url, runs, repeats):
  """Milliseconds from an interaction to the page repainted with every view settled, in
  the plugin's page alone: {'head': [...], 'metric': [...], 'run': [...]} (`runs`: two run
  names; the metric switches between taylor and ablation_loss)."""
  from selenium.webdriver.common.by import By
  from selenium.webdriver.support.ui import WebDriverWait

  from tb_plugin.browser import chromium
  from tb_plugin.vit_analytics_plugin import ALONE_PATH

  out = {'head': [], 'metric': [], 'run': []}
  with chromium(window='1600,1000') as driver:
    driver.set_script_timeout(60)
    driver.get(f'{url}{ALONE_PATH}#vit=' + urllib.parse.quote(f'run:{runs[0]}'))
    WebDriverWait(driver, 120).until(
        lambda d: d.find_element(By.TAG_NAME, 'body').get_attribute('data-ready') == 'true')
    driver.execute_script(COUNT_FETCHES)
    run_js = lambda body: driver.execute_async_script(
        'const done = arguments[arguments.length - 1];' + SETTLED +
        f'(async () => {{ {body} }})().then(done, (e) => done(-1));')
    heads = [(8, 3), (1, 1), (11, 2), (3, 4), (5, 0), (0, 5), (9, 1), (2, 3)]
    for i in range(repeats):
      l, h = heads[i % len(heads)]
      out['head'].append(run_js(f'''
        const cell = document.querySelector('#importance-grid rect[data-layer="{l}"][data-head="{h}"]');
        const t0 = performance.now();
        cell.dispatchEvent(new MouseEvent('click', {{bubbles: true}}));
        return settled(t0);'''))
    for i in range(repeats):
      metric = 'ablation_loss' if i % 2 == 0 else 'taylor'
      out['metric'].append(run_js(f'''
        const s = document.getElementById('metric-select');
        const t0 = performance.now();
        s.value = '{metric}'; s.dispatchEvent(new Event('change'));
        return settled(t0);'''))
    for i in range(repeats):
      run = runs[(i + 1) % 2]
      out['run'].append(run_js(f'''
        const s = document.getElementById('run-select');
        const t0 = performance.now();
        s.value = '{run}'; s.dispatchEvent(new Event('change'));
        await new Promise((r) => setTimeout(r, 0));
        return settled(t0);'''))
  return out


def runs_loaded(url, runs):
  """Until both runs list every analysis the first has on disk, with a stable tag count."""
  import json
  deadline, seen, stable = time.time() + 300, None, 0
  while time.time() < deadline:
    with urllib.request.urlopen(f'{url}/data/plugin/vit_analytics/runs') as r:
      listed = {x['run']: x for x in json.loads(r.read())['runs']}
    counts = tuple(len(listed[r]['tags']) if r in listed else 0 for r in runs)
    stable = stable + 1 if counts == seen and all(counts) else 0
    seen = counts
    if stable >= 3:
      return
    time.sleep(1)
  raise RuntimeError(f'{url}: the runs did not finish loading')


def interaction_logdir(source: Path, target: Path) -> list:
  """`source`'s first run and a copy of it as a second run, in `target`: [run, copy]."""
  import shutil
  run = sorted(p for p in source.iterdir() if p.is_dir())[0]
  for name in (run.name, f'{run.name}-copy'):
    if not (target / name).exists():
      shutil.copytree(run, target / name)
  return [run.name, f'{run.name}-copy']


def print_interactions(servers, logdir, repeats, load_fast):
  """Times the interactions on `logdir` for every plugin in `servers` ({label: cwd}),
  alternating, and prints the medians against their targets."""
  from tb_plugin.browser import tensorboard
  targets = {'head': ('select a head (every view)', 150), 'metric': ('switch the metric', 100),
             'run': ('switch the run', 300)}
  with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
    runs = interaction_logdir(logdir, Path(tmp))
    urls = {}
    for label, cwd in servers.items():
      with pythonpath_first(cwd):
        urls[label] = stack.enter_context(tensorboard(Path(tmp), load_fast, cwd=cwd, reload_interval=30))
      runs_loaded(urls[label], runs)
    before = load_now()
    times = {label: {k: [] for k in targets} for label in urls}
    for i in range(2):   # two browser sessions each, alternating
      for label, u in (urls.items() if i % 2 == 0 else reversed(urls.items())):
        for k, v in interactions(u, runs, repeats).items():
          times[label][k] += v
    print(f'interactions on {logdir} (runs {runs[0]} and a copy; medians of {2 * repeats}; '
          f'{before} before, {load_now()} after):')
    for label, t in times.items():
      parts = []
      for k, (what, target) in targets.items():
        m = float(np.median(t[k]))
        parts.append(f'{what} {m:.0f} ms (min {min(t[k]):.0f}, max {max(t[k]):.0f}; target < '
                     f'{target} ms: {"met" if m < target else "NOT met"})')
      print(f'  {label}: ' + '; '.join(parts))


@contextlib.contextmanager
def revision_plugin(rev):
  """A folder holding tb_plugin/ as of git revision `rev`, to put first on PYTHONPATH."""
  with tempfile.TemporaryDirectory() as tmp:
    archive = subprocess.run(['git', '-C', str(ROOT), 'archive', rev, 'tb_plugin'],
                             check=True, capture_output=True).stdout
    subprocess.run(['tar', '-x', '-C', tmp], input=archive, check=True)
    yield Path(tmp)


@contextlib.contextmanager
def pythonpath_first(folder):
  """PYTHONPATH with `folder` first, then this tree (the `tensorboard` subprocess imports
  the plugin by its module name, from the first folder that has it; it also runs in
  `folder`, which `python -m` puts before PYTHONPATH)."""
  old = os.environ.get('PYTHONPATH')
  os.environ['PYTHONPATH'] = os.pathsep.join([str(folder), str(ROOT)] + ([old] if old else []))
  try:
    yield
  finally:
    if old is None:
      del os.environ['PYTHONPATH']
    else:
      os.environ['PYTHONPATH'] = old


def wait_until_loaded(url):
  """Until every analysis file is loaded (a file's tags appear as TensorBoard reads it)."""
  import json
  deadline = time.time() + 300
  seen, stable = None, 0
  while time.time() < deadline:
    with urllib.request.urlopen(f'{url}/data/plugin/vit_analytics/runs') as r:
      run = json.loads(r.read())['runs'][0]
    count = len(run['tags'])
    stable = stable + 1 if count == seen else 0
    seen = count
    if len(run['analyses']) == 3 and stable >= 3 and NEEDED <= set(run['tags']):
      return
    time.sleep(1)
  raise RuntimeError(f'{url}: the analysis did not finish loading')


def check_frontend(url, static, label):
  """The served frontend is the one in `static` (not, say, an installed copy)."""
  for name in sorted(p.name for p in static.iterdir() if p.suffix == '.js'):
    with urllib.request.urlopen(f'{url}/data/plugin/vit_analytics/static/{name}') as r:
      if r.read() != (static / name).read_bytes():
        raise RuntimeError(f'{label}: {url} serves another {name} than {static}')
  print(f'  {label}: frontend served from {static}')


def summary(loads, key):
  v = np.array([x[key] for x in loads if key in x])
  return f'{np.median(v):5.2f} s (min {v.min():.2f}, max {v.max():.2f})' if len(v) else '–'


def median(loads, key):
  v = [x[key] for x in loads if key in x]
  return float(np.median(v)) if v else float('nan')


def load_now():
  return f'load {os.getloadavg()[0]:.2f}'


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument('--load-fast', default='false', choices=('false', 'true'))
  p.add_argument('--requests', type=int, default=40)
  p.add_argument('--images', type=int, default=500, help='analysed images of the main run')
  p.add_argument('--overview-images', type=int, default=10_000,
                 help='images of the run whose image overview is timed (0: not timed)')
  p.add_argument('--repeats', type=int, default=5, help='page loads timed (the median is shown)')
  p.add_argument('--returning-repeats', type=int, default=3,
                 help='page loads timed as a returning visitor (this tree only)')
  p.add_argument('--baseline', metavar='REV', help='git revision whose plugin is timed too, '
                 'in the same run (e.g. main)')
  p.add_argument('--interactions', type=Path, metavar='LOGDIR',
                 help='time head, metric and run switches on this logdir (its first run)')
  p.add_argument('--interactions-only', action='store_true',
                 help='with --interactions: time only those (no ViT-L/16 logdir)')
  p.add_argument('--interaction-repeats', type=int, default=8)
  p.add_argument('--logdir', type=Path, help='keep the written logdir here and reuse it when '
                 'it exists (default: a temporary folder); the overview run goes to '
                 'LOGDIR-overview')
  args = p.parse_args()
  from tb_plugin.browser import tensorboard

  if args.baseline:
    subprocess.run(['git', '-C', str(ROOT), 'rev-parse', '--verify', args.baseline],
                   check=True, capture_output=True)
  print(f'machine load (uptime): {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} '
        f'{os.getloadavg()[2]:.2f} on {os.cpu_count()} CPUs')
  if args.interactions:
    with contextlib.ExitStack() as stack:
      trees = {'this tree': ROOT}
      if args.baseline:
        trees[args.baseline] = stack.enter_context(revision_plugin(args.baseline))
      print_interactions(trees, args.interactions, args.interaction_repeats, args.load_fast)
    if args.interactions_only:
      return
  with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
    logdir = args.logdir or Path(tmp) / 'logs'
    start = time.perf_counter()
    if logdir.exists():
      from vit_jax_analytics import model as model_lib
      config = model_lib.get_config('ViT-L/16')
      how = f'reused from {logdir}'
    else:
      config = write_vit_l_logdir(logdir, images=args.images)
      how = f'written in {time.perf_counter() - start:.1f} s'
    size = sum(f.stat().st_size for f in logdir.rglob('*') if f.is_file()) / 2 ** 20
    print(f'ViT-L/16-sized analysis ({config.num_layers} x {config.num_heads} heads) {how}, '
          f'{size:.0f} MiB; tensorboard --load_fast={args.load_fast}')
    # TensorBoard's default reload interval (the tests' 1 s keeps a third of a core busy
    # re-reading this logdir with --load_fast=false, per server).
    server = lambda cwd, d=logdir, **kw: tensorboard(d, args.load_fast, cwd=cwd, reload_interval=5,
                                                     **kw)
    servers = {}
    with pythonpath_first(ROOT):
      servers['this tree'] = (stack.enter_context(server(cwd=ROOT)), ROOT / 'tb_plugin' / 'static')
    if args.baseline:
      old = stack.enter_context(revision_plugin(args.baseline))
      with pythonpath_first(old):
        servers[args.baseline] = (stack.enter_context(server(cwd=old)), old / 'tb_plugin' / 'static')
    for label, (url, static) in servers.items():
      wait_until_loaded(url)
      check_frontend(url, static, label)
    url = servers['this tree'][0]
    rows = time_routes(url, config, args.requests)
    worst = max(p95 for _, _, p95, _ in rows)
    print(f'routes ({load_now()}): worst p95 {worst:.1f} ms (target < 100 ms: '
          f'{"met" if worst < 100 else "NOT met"})')
    print(f'  {"route":36s} {"p50 ms":>8s} {"p95 ms":>8s} {"first ms":>9s}')
    for name, p50, p95, first in rows:
      print(f'  {name:36s} {p50:8.1f} {p95:8.1f} {first:9.1f}')

    loads = {label: [] for label in servers}
    alone = []
    first_paint(url)   # warm-up: the first browser start reads Chromium from disk
    before = load_now()
    for i in range(args.repeats):   # alternating, so both see the same machine load
      for label, (u, _) in (servers.items() if i % 2 == 0 else reversed(servers.items())):
        loads[label].append(first_paint(u))
      alone.append(first_paint_alone(url))
    print(f'page loads of the ViT-L/16 run (median of {args.repeats}, fresh browser each; '
          f'{before} before, {load_now()} after):')
    for label, ls in loads.items():
      fp = median(ls, 'grid')
      print(f'  {label}: first paint (importance grid drawn, seen by WebDriver) '
            f'{summary(ls, "grid")} from navigation (target < 2 s: '
            f'{"met" if fp < 2 else "NOT met"}); every view drawn: {summary(ls, "ready")}')
      pad = ' ' * len(label)
      print(f'  {pad}  TensorBoard before the plugin\'s frame: its JS bundle has arrived at '
            f'{summary(ls, "tb_bundle")}, is parsed and run (first data request) at '
            f'{summary(ls, "tb_data")}, has the plugin listing at {summary(ls, "tb_listing")}, '
            f'starts the frame at {summary(ls, "page_frame")}')
      print(f'  {pad}  the plugin: grid in the document {summary(ls, "page_grid")}, painted '
            f'{summary(ls, "page_painted")}; every view {summary(ls, "page_ready")}')
      print(f'  {pad}  first paint from the frame\'s start (painted - frame started), the '
            f'plugin\'s share: {summary(ls, "plugin_painted")}')
    fp = median(alone, 'grid')
    print(f'  this tree, the plugin\'s page alone (no TensorBoard page around it, loads '
          f'interleaved with the above): first paint {summary(alone, "grid")} (target < 2 s: '
          f'{"met" if fp < 2 else "NOT met"}); every view drawn {summary(alone, "ready")}')

    returning = []
    before = load_now()
    for i in range(args.returning_repeats):
      returning.append(first_paint(url, returning=True))
    if returning:
      print(f'returning visitor (this tree; the timed load is the browser\'s third visit, '
            f'median of {args.returning_repeats}; {before} before, {load_now()} after): first '
            f'paint {summary(returning, "grid")} from navigation; TensorBoard starts the frame '
            f'at {summary(returning, "page_frame")} (bundle parsed and run '
            f'{summary(returning, "tb_data")}); the plugin\'s share '
            f'{summary(returning, "plugin_painted")}')

    # TensorBoard alone: an empty logdir, served (a) with TensorBoard's plugins and a
    # one-word probe plugin instead of ours, (b) with ours (its empty state).
    empty = Path(tmp) / 'empty'
    empty.mkdir()
    with pythonpath_first(ROOT):
      probe = stack.enter_context(server(cwd=ROOT, d=empty, module='benchmarks.tb_boot_probe',
                                         wait_for_runs=False,
                                         ready_path='/data/plugin/boot_probe/ready'))
      ours = stack.enter_context(server(cwd=ROOT, d=empty, wait_for_runs=False))
    boot = {'probe': [], 'ours': []}
    before = load_now()
    for i in range(args.repeats):
      order = [('probe', probe, 'boot_probe', 'body'), ('ours', ours, 'vit_analytics', '#empty-state')]
      for name, u, tab, sel in (order if i % 2 == 0 else order[::-1]):
        boot[name].append(first_paint(u, tab=tab, painted=sel, ready=False))
    print(f'TensorBoard\'s own page on an empty logdir (median of {args.repeats}; {before} '
          f'before, {load_now()} after), time to the plugin frame\'s start:')
    print(f'  without this plugin (a one-word probe plugin in its frame): '
          f'{summary(boot["probe"], "page_frame")}; bundle parsed and run {summary(boot["probe"], "tb_data")}')
    print(f'  with this plugin (its empty state): {summary(boot["ours"], "page_frame")}; '
          f'bundle parsed and run {summary(boot["ours"], "tb_data")}; empty state drawn '
          f'{summary(boot["ours"], "grid")} (WebDriver)')

    if args.overview_images:
      odir = Path(str(logdir) + '-overview') if args.logdir else Path(tmp) / 'overview'
      if not odir.exists():
        start = time.perf_counter()
        run = write_overview_run(odir, images=args.overview_images)
        how = f'written in {time.perf_counter() - start:.1f} s'
      else:
        run, how = 'vit-l16-10k-images', f'reused from {odir}'
      ourls = {}
      with pythonpath_first(ROOT):
        ourls['this tree'] = stack.enter_context(server(cwd=ROOT, d=odir))
      if args.baseline:
        with pythonpath_first(old):
          ourls[args.baseline] = stack.enter_context(server(cwd=old, d=odir))
      for ourl in ourls.values():
        deadline = time.time() + 300
        while time.time() < deadline:   # until the per-image arrays are loaded
          import json
          with urllib.request.urlopen(f'{ourl}/data/plugin/vit_analytics/runs') as r:
            if 'importance/per_image_taylor' in json.loads(r.read())['runs'][0]['tags']:
              break
          time.sleep(1)
      before = load_now()
      results = {label: [] for label in ourls}
      for i in range(3):   # alternating, as the page loads above
        for label, ourl in (ourls.items() if i % 2 == 0 else reversed(ourls.items())):
          results[label].append(overview_responsiveness(ourl, run))
      print(f'image overview, {args.overview_images} images ({how}; median of 3; {before} '
            f'before, {load_now()} after):')
      for label, rs in results.items():
        rows_s = np.median([r[0] for r in rs])
        ms = np.median([r[1] for r in rs])
        print(f'  {label}: {rs[0][2].strip()}; first rows in the document {rows_s:.2f} s from '
              f'navigation; 2 sorts + next page + sort {ms:.0f} ms in the page (target '
              f'< 1000 ms: {"met" if ms < 1000 else "NOT met"})')


if __name__ == '__main__':
  main()
