"""Plugin latency on a ViT-L/16-sized analysis (24 layers x 16 heads, 14 x 14 patches).

Writes a logdir through the real writer (vit_jax_analytics.logdir) with random values of
the real shapes, starts the real `tensorboard`, and prints the p50/p95 latency of every
route the frontend uses, and the time to first paint of the plugin page in headless
Chromium (targets: p95 < 100 ms, first paint < 2 s), as the median of --repeats page loads,
each in a fresh browser.

With --baseline REV, a second `tensorboard` serves the plugin (routes and frontend) of git
revision REV on the same logdir, and the page loads alternate between the two, so that
before and after are measured in one run, under the same machine load.

  python benchmarks/bench_plugin.py [--load-fast false|true] [--requests 40] [--repeats 5]
                                    [--baseline main]
"""

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def write_vit_l_logdir(logdir: Path, images=500, map_images=4, samples=20000, seed=0):
  """A ViT-L/16-shaped run of random typed results, written through the real schema."""
  from vit_jax_analytics import model as model_lib, results as R
  from vit_jax_analytics.logdir import schema, writer
  from vit_jax_analytics import strength as strength_lib
  from vit_jax_analytics.strength import HIST_BINS, QUANTILES

  rng = np.random.default_rng(seed)
  config = model_lib.get_config('ViT-L/16')
  L, H, n, t = config.num_layers, config.num_heads, config.grid_size, config.num_tokens
  u = lambda *s: rng.uniform(0, 1, s).astype(np.float32)
  meta = {'checkpoint': 'ViT-L_16.npz (random)', 'config': config.to_dict(),
          'image_folder': 'images', 'image_names': [f'{i:05d}.png' for i in range(images)],
          'labels': [int(i % 1000) for i in range(images)], 'class_names': None,
          'mean': [0.5] * 3, 'std': [0.5] * 3, 'versions': {}, 'options': {}}
  orders = ('taylor', 'ablation_loss', 'ablation_kl', 'ablation_top1') + tuple(
      f'random_{i}' for i in range(5))
  variants = tuple((f'v{i}', f'variant {i}') for i in range(10))
  imp = R.ImportanceResult(
      **{k: u(L, H) for k in schema.IMPORTANCE_DEFINITIONS},
      baseline=R.Baseline(1.0, 0.8, 0.95), curve_counts=np.linspace(0, L * H, 21).astype(int),
      curve_orders=orders, **{f'curve_{m}': u(len(orders), 21) for m in schema.METRICS},
      partial_heads=np.arange(12), partial_variants=variants,
      **{f'partial_{m}': u(12, len(variants)) for m in schema.METRICS},
      images=images, labelled_images=images, label_free=False,
      **{k: u(images, L, H) for k in schema.PER_IMAGE},
      per_image_loss=u(images), per_image_prediction=rng.integers(0, 1000, images).astype(np.int32))
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


def first_paint(url):
  """One page load in a fresh browser, timed from navigation: (first paint, every view drawn)
  as WebDriver sees them (polling every 20 ms), and the same two moments as the page
  records them (grid in the document, next frame after it, every view drawn)."""
  from selenium.webdriver.common.by import By
  from selenium.webdriver.support.ui import WebDriverWait

  from tb_plugin.browser import chromium

  with chromium(window='1400,1800') as driver:
    driver.execute_cdp_cmd('Page.addScriptToEvaluateOnNewDocument', {'source': MARKS})
    start = time.perf_counter()
    driver.get(f'{url}/#vit_analytics')
    frame = WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.TAG_NAME, 'iframe'))[0]
    top_origin = driver.execute_script('return performance.timeOrigin')
    driver.switch_to.frame(frame)
    WebDriverWait(driver, 60, poll_frequency=0.02).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, '#importance-grid rect'))
    grid = time.perf_counter() - start
    WebDriverWait(driver, 60, poll_frequency=0.02).until(
        lambda d: d.find_element(By.TAG_NAME, 'body').get_attribute('data-ready') == 'true')
    ready = time.perf_counter() - start
    time.sleep(0.1)
    marks = driver.execute_script(
        'return {origin: performance.timeOrigin, ...(window.__benchMarks || {})}')
  shift = marks.pop('origin') - top_origin   # the frame's clock starts later than the page's
  page = {k: (v + shift) / 1000 for k, v in marks.items() if v is not None}
  out = {'grid': grid, 'ready': ready, 'page_frame': shift / 1000,
         **{f'page_{k}': v for k, v in page.items()}}
  if 'page_painted' in out:   # the plugin's own share of the first paint
    out['plugin_painted'] = out['page_painted'] - out['page_frame']
  return out


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


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument('--load-fast', default='false', choices=('false', 'true'))
  p.add_argument('--requests', type=int, default=40)
  p.add_argument('--images', type=int, default=500, help='analysed images (the image overview)')
  p.add_argument('--repeats', type=int, default=5, help='page loads timed (the median is shown)')
  p.add_argument('--baseline', metavar='REV', help='git revision whose plugin is timed too, '
                 'in the same run (e.g. main)')
  p.add_argument('--logdir', type=Path, help='keep the written logdir here and reuse it when '
                 'it exists (default: a temporary folder)')
  args = p.parse_args()
  from tb_plugin.browser import tensorboard

  if args.baseline:
    subprocess.run(['git', '-C', str(ROOT), 'rev-parse', '--verify', args.baseline],
                   check=True, capture_output=True)
  print(f'machine load (uptime): {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} '
        f'{os.getloadavg()[2]:.2f} on {os.cpu_count()} CPUs')
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
    server = lambda cwd: tensorboard(logdir, args.load_fast, cwd=cwd, reload_interval=5)
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
    print(f'  {"route":36s} {"p50 ms":>8s} {"p95 ms":>8s} {"first ms":>9s}   (target p95 < 100)')
    for name, p50, p95, first in rows:
      print(f'  {name:36s} {p50:8.1f} {p95:8.1f} {first:9.1f}')
    loads = {label: [] for label in servers}
    first_paint(url)   # warm-up: the first browser start reads Chromium from disk
    for i in range(args.repeats):   # alternating, so both see the same machine load
      for label, (u, _) in (servers.items() if i % 2 == 0 else reversed(servers.items())):
        loads[label].append(first_paint(u))
    print(f'page loads (median of {args.repeats}, fresh browser each; load now '
          f'{os.getloadavg()[0]:.2f}):')
    for label, ls in loads.items():
      print(f'  {label}: first paint (importance grid drawn, seen by WebDriver) '
            f'{summary(ls, "grid")} from navigation (target < 2 s); every view drawn: '
            f'{summary(ls, "ready")}')
      print(f'  {" " * len(label)}  in the page: TensorBoard starts the plugin\'s frame at '
            f'{summary(ls, "page_frame")}; grid in the document {summary(ls, "page_grid")}, '
            f'painted {summary(ls, "page_painted")}; every view {summary(ls, "page_ready")}')
      print(f'  {" " * len(label)}  the plugin\'s share of the first paint (painted - frame '
            f'started): {summary(ls, "plugin_painted")}')


if __name__ == '__main__':
  main()
