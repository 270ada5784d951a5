"""The accelerator benchmark keeps working: benchmarks/bench_device.py at its tiny size
(a 2-layer ViT-Ti/16 at 64², 4 images, float32 only here) writes its one table with
every row measured."""

from benchmarks import bench_device


def test_device_benchmark_writes_its_table(tmp_path):
  out = tmp_path / 'table.md'
  text = bench_device.main(['--size', 'tiny', '--dtypes', 'float32', '--repeats', '1',
                            '--out', str(out)])
  assert out.read_text() == text
  rows = {line.split(' | ')[0].strip('| '): line.split(' | ')[1].strip(' |')
          for line in text.splitlines() if line.startswith('| ') and '---' not in line}
  for name in ('forward, ours (images/s)', 'ablation scan (images/s)',
               'ablation scan / its FLOP limit', 'Taylor pass (images/s)',
               'analyze 4 images (s)', 'projected ImageNet val, 50k images (h)'):
    assert float(rows[name]) > 0, (name, rows)
  assert any(name.startswith('peak memory') and float(v) > 0 for name, v in rows.items())
  assert 'device cpu' in text.splitlines()[0]
