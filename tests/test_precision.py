"""`--dtype bfloat16`: every analysis runs its forwards in bfloat16, close to float32.

Reference: the same analysis in float32 on the same images. Tolerances (of each array's
largest float32 magnitude), on the tiny random ViT, which is harder than a trained one
(benchmarks/bench_bf16.py: on the trained demo, strength <= 0.3%, importance scores
<= 2%): strength statistics and stored maps 5%; importance (Taylor, ablation, curves
along the same orders, partial pruning) 10%; pattern samples 5%. Observed on this model:
<= 2.7%, <= 4.1% and 2.6%. The float32 run must not equal the bfloat16 one (the option is
wired through) and every metric stays float32 or wider.
"""

import numpy as np
import pytest

from tests import numerics
from tests.tiny import TINY, tiny_images, tiny_params, write_images
from vit_jax_analytics import checkpoints, cli, importance, patterns, strength
from vit_jax_analytics.batches import ArraySource
from vit_jax_analytics.logdir import reader


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / np.max(np.abs(a)))


@pytest.fixture(scope='module')
def both():
  source = ArraySource(tiny_images(8), np.arange(8) % TINY.num_classes)
  out = {}
  for dtype in ('float32', 'bfloat16'):
    out[dtype] = (
        strength.compute_strength(tiny_params(), TINY, source, strength.StrengthOptions(
            batch_size=4, map_images=2, progress=False, dtype=dtype)),
        importance.compute_importance(tiny_params(), TINY, source, importance.ImportanceOptions(
            batch_size=4, curve_points=4, random_orders=1, partial_heads=2, partial_radii=(1,),
            progress=False, dtype=dtype)),
        patterns.extract_samples(tiny_params(), TINY, source, batch_size=4, progress=False,
                                 dtype=dtype))
  return out


def test_strength_in_bfloat16_is_close_to_float32(both):
  f32, bf16 = both['float32'][0], both['bfloat16'][0]
  assert not np.array_equal(f32.entropy, bf16.entropy)
  for name in ('entropy', 'mean_distance', 'self_share', 'cls_share', 'offset_mean',
               'neighbourhood_share', 'cls_attention', 'map_attention', 'map_rollout'):
    assert _rel(getattr(f32, name), getattr(bf16, name)) < 0.05, name
  assert bf16.entropy.dtype == np.float64 and bf16.map_attention.dtype == np.float16


def test_importance_in_bfloat16_is_close_to_float32(both):
  f32, bf16 = both['float32'][1], both['bfloat16'][1]
  assert not np.array_equal(f32.taylor, bf16.taylor)
  # The curves and partial pruning follow stage 1's scores: here the same orders and heads.
  assert list(f32.curves.orders) == list(bf16.curves.orders)
  np.testing.assert_array_equal(f32.partial.heads, bf16.partial.heads)
  for name in ('taylor', 'ablation_loss', 'ablation_kl', 'curve_loss', 'partial_loss',
               'partial_kl'):
    assert _rel(numerics.importance_array(f32, name), numerics.importance_array(bf16, name)) < 0.1, name
  assert abs(f32.baseline.loss - bf16.baseline.loss) < 0.01 * abs(f32.baseline.loss)


def test_pattern_samples_in_bfloat16_are_close_to_float32(both):
  f32, bf16 = both['float32'][2], both['bfloat16'][2]
  np.testing.assert_array_equal(f32.index, bf16.index)
  assert not np.array_equal(f32.recentred, bf16.recentred)
  assert _rel(f32.recentred, bf16.recentred) < 0.05


def test_dtype_flag_is_recorded_in_the_logdir_meta(tmp_path, capsys):
  write_images(tmp_path / 'images', n=5)
  ckpt = checkpoints.save_checkpoint(tmp_path / 'ckpt', tiny_params(), TINY)
  code = cli.main(['strength', '--checkpoint', str(ckpt), '--images', str(tmp_path / 'images'),
                   '--logdir', str(tmp_path / 'logs'), '--batch-size', '4', '--map-images', '0',
                   '--no-progress', '--no-compile-cache', '--dtype', 'bfloat16'])
  assert code == 0
  meta = reader.read_run(tmp_path / 'logs' / 'ckpt')['strength/meta']
  assert meta['options']['dtype'] == 'bfloat16'


def test_unknown_dtype_is_a_one_line_error_naming_the_field():
  with pytest.raises(ValueError, match=r'^dtype: expected one of float32, bfloat16'):
    importance.ImportanceOptions(dtype='float16')
