"""Plugin latency on a ViT-L/16-sized analysis (24 layers x 16 heads, 14 x 14 patches).

Writes a logdir through the real writer (vit_jax_analytics.logdir) with random values of
the real shapes, starts the real `tensorboard`, and prints the p50/p95 latency of every
route the frontend uses, and the time to first paint of the plugin page in headless
Chromium (targets: p95 < 100 ms, first paint < 2 s).

  python benchmarks/bench_plugin.py [--load-fast false|true] [--requests 40]
"""

import argparse
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


def first_paint(url):
  from selenium.webdriver.common.by import By
  from selenium.webdriver.support.ui import WebDriverWait

  from tb_plugin.browser import chromium

  with chromium(window='1400,1800') as driver:
    start = time.perf_counter()
    driver.get(f'{url}/#vit_analytics')
    frame = WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.TAG_NAME, 'iframe'))[0]
    driver.switch_to.frame(frame)
    WebDriverWait(driver, 60, poll_frequency=0.02).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, '#importance-grid rect'))
    grid = time.perf_counter() - start
    WebDriverWait(driver, 60, poll_frequency=0.02).until(
        lambda d: d.find_element(By.TAG_NAME, 'body').get_attribute('data-ready') == 'true')
    ready = time.perf_counter() - start
  return grid, ready


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument('--load-fast', default='false', choices=('false', 'true'))
  p.add_argument('--requests', type=int, default=40)
  p.add_argument('--images', type=int, default=500, help='analysed images (the image overview)')
  args = p.parse_args()
  from tb_plugin.browser import tensorboard

  with tempfile.TemporaryDirectory() as tmp:
    logdir = Path(tmp) / 'logs'
    start = time.perf_counter()
    config = write_vit_l_logdir(logdir, images=args.images)
    size = sum(f.stat().st_size for f in logdir.rglob('*') if f.is_file()) / 2 ** 20
    print(f'ViT-L/16-sized analysis ({config.num_layers} x {config.num_heads} heads) written '
          f'in {time.perf_counter() - start:.1f} s, {size:.0f} MiB; '
          f'tensorboard --load_fast={args.load_fast}')
    with tensorboard(logdir, args.load_fast) as url:
      import json
      deadline = time.time() + 300
      seen, stable = None, 0
      while time.time() < deadline:  # until every analysis file is loaded: all three
        with urllib.request.urlopen(f'{url}/data/plugin/vit_analytics/runs') as r:
          run = json.loads(r.read())['runs'][0]
        # analyses listed, and no new tag for 3 s (a file's tags appear as it is read)
        count = len(run['tags'])
        stable = stable + 1 if count == seen else 0
        seen = count
        if len(run['analyses']) == 3 and stable >= 3 and NEEDED <= set(run['tags']):
          break
        time.sleep(1)
      rows = time_routes(url, config, args.requests)
      print(f'  {"route":36s} {"p50 ms":>8s} {"p95 ms":>8s} {"first ms":>9s}   (target p95 < 100)')
      for name, p50, p95, first in rows:
        print(f'  {name:36s} {p50:8.1f} {p95:8.1f} {first:9.1f}')
      grid, ready = first_paint(url)
      print(f'  first paint (importance grid drawn): {grid:.2f} s from navigation '
            f'(target < 2 s); every view drawn: {ready:.2f} s')


if __name__ == '__main__':
  main()
