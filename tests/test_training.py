"""In-training analysis: `training.analyse_step` and `train-demo --log-every`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from tests import numerics
from tests.tiny import TINY, tiny_images, tiny_params
from vit_jax_analytics import importance, strength, training
from vit_jax_analytics.batches import ArraySource
from vit_jax_analytics.logdir import reader


@numerics.in_float64  # both sides in float64: a tolerance no CPU's rounding reaches
def test_probe_results_equal_the_analyses(tmp_path, capsys):
  params, images = numerics.as64((tiny_params(), tiny_images(6)))
  labels = np.array([0, 1, 2, -1, 4, 0])
  probe = training.Probe(images, labels)
  st = training.probe_strength(params, TINY, probe)
  ref = strength.compute_strength(params, TINY, ArraySource(images, labels),
                                  strength.StrengthOptions(progress=False, map_images=0))
  numerics.assert_close64(st.entropy, ref.entropy)
  numerics.assert_close64(st.offset_mean, ref.offset_mean)
  options = training.TrainingAnalysisOptions(ablation=True, batch_size=4)
  imp = training.probe_importance(params, TINY, probe, options)
  full = importance.compute_importance(params, TINY, ArraySource(images, labels),
                                       importance.ImportanceOptions(progress=False))
  # probe_importance rounds the unmasked logits to float32 (training.py, for bfloat16
  # forwards), so its baseline loss is the float64 one within float32 rounding, and
  # ablation_loss (mean masked loss - baseline) is exact once the baseline is added back.
  numerics.assert_close64(imp.baseline.loss, full.baseline.loss, 'baseline', rounded=np.float32)
  numerics.assert_close64(imp.ablation_loss + imp.baseline.loss,
                          full.ablation_loss + full.baseline.loss, 'ablation_loss')
  for name in ('taylor', 'ablation_kl', 'ablation_top1'):
    numerics.assert_close64(getattr(imp, name), getattr(full, name), name)
  cheap = training.probe_importance(params, TINY, probe)
  assert np.isnan(cheap.ablation_loss).all() and cheap.curves.metrics['top1'].mean.size == 0
  numerics.assert_close64(cheap.taylor, full.taylor)


def test_analyse_step_writes_each_step_with_sharded_params(tmp_path, capsys):
  """Params sharded over the local devices are used as they are; each step is kept."""
  params = tiny_params()
  mesh = Mesh(np.asarray(jax.devices()), ('model',))
  params = jax.device_put(params, NamedSharding(mesh, P()))
  probe = (tiny_images(5), None)
  for step in (0, 10, 20):
    written = training.analyse_step(params, TINY, probe, tmp_path, 'train', step)
    assert set(written) == {'strength', 'importance'}
  err = capsys.readouterr().err
  assert err.count('forward-equivalents') == 1  # the cost, printed once
  run = tmp_path / 'train'
  assert reader.steps(run) == {'importance': [0, 10, 20], 'strength': [0, 10, 20]}
  st = reader.read_strength(run, 10)
  assert st.entropy.shape == (TINY.num_layers, TINY.num_heads) and st.images == 5
  imp = reader.read_importance(run, 20)
  assert imp.taylor.shape == (3, 4) and np.isnan(imp.ablation_loss).all()
  assert reader.read_run(run, 10)['importance/meta']['step'] == 10
  series = reader.read_series(run, 'strength/mean_distance')
  assert sorted(series) == [0, 10, 20]


def test_cost_in_forward_equivalents():
  parts = training.cost_forward_equivalents(
      tiny_params(), TINY, training.Probe(tiny_images(4)),
      training.TrainingAnalysisOptions(ablation=True))
  # strength: about one forward; Taylor: forward + backward; ablation: L*H suffix forwards
  assert 0.5 < parts['strength'] < 2.5 and 1.5 < parts['taylor'] < 5
  assert parts['ablation'] > parts['taylor']


def test_bfloat16_forwards_are_close_to_float32():
  params, probe = tiny_params(), training.Probe(tiny_images(8))
  f32 = training.probe_strength(params, TINY, probe)
  bf16 = training.probe_strength(params, TINY, probe,
                                 training.TrainingAnalysisOptions(dtype='bfloat16'))
  np.testing.assert_allclose(bf16.entropy, f32.entropy, rtol=0.05)
  assert training.cast({'a': jnp.ones(2), 'i': jnp.ones(2, jnp.int32)},
                       'bfloat16')['i'].dtype == jnp.int32


def test_train_demo_logs_every_k_steps(tmp_path):
  from vit_jax_analytics import demo
  rng = np.random.default_rng(0)
  rows = np.concatenate([rng.integers(0, 256, (60, 784)), rng.integers(0, 10, (60, 1))], 1)
  csv = tmp_path / 'digits.csv'
  np.savetxt(csv, rows, fmt='%d', delimiter=',')
  demo.train_demo(tmp_path / 'out', max_steps=4, batch_size=16, held_out=20, mnist_csv=csv,
                  progress=False, log_every=2, logdir=tmp_path / 'logs', run='demo-training',
                  probe_images=8)
  run = tmp_path / 'logs' / 'demo-training'
  assert reader.steps(run) == {'importance': [0, 2, 4], 'strength': [0, 2, 4]}
  assert not np.allclose(reader.read_strength(run, 0).entropy,
                         reader.read_strength(run, 4).entropy)
