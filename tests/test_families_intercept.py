"""A Flax ViT the project did not write (families/example_compact_vit.py), analysed through
nn.intercept_methods: equal to the native path on the same weights, planted heads included."""

import jax
import numpy as np

from tests import numerics
from tests.tiny import TINY, arrays_of, offset_heads_model, tiny_images, tiny_params
from vit_jax_analytics import importance, model as model_lib, pipeline, strength
from vit_jax_analytics.batches import ArraySource
from vit_jax_analytics.families import intercept
from vit_jax_analytics.families.example_compact_vit import compact_for, params_from_native

# The tests run in float64 (tests/numerics.py): the two paths agree to F64_RTOL of each
# array's largest magnitude; arrays stored in float16 (attention maps) or float32 (per-image
# rows) to their own rounding.
TOL = {np.float16: 2e-3, np.float32: numerics.ROUNDED_ULPS * numerics.F32_EPS}


def _close(a, b, name=''):
  tol = TOL.get(np.asarray(b).dtype.type, numerics.F64_RTOL)
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  scale = max(np.nanmax(np.abs(b)), 1e-12)
  np.testing.assert_allclose(a, b, rtol=0, atol=tol * scale, err_msg=name)


def _foreign(params, config, images):
  module, foreign = compact_for(config), params_from_native(params, config)
  grid = config.grid_shape
  return foreign, intercept.intercepted_config(module, foreign, images,
                                               token_layout={'cls': [0], 'grid': grid})


@numerics.in_float64
def test_forward_hooks_equal_native():
  params, images = numerics.as64(tiny_params()), numerics.as64(tiny_images(4))
  foreign, fconfig = _foreign(params, TINY, images)
  assert (fconfig.num_layers, fconfig.num_heads, fconfig.num_tokens) == (3, 4, 17)
  assert not model_lib.supports_prefix_reuse(fconfig)
  mask = np.ones((3, 4), np.float32)
  mask[1, 2] = 0.
  mask[0, 0] = 0.5
  edit = lambda w, l: w * (0.3 if l == 2 else 1.)
  for kw in ({'return_attention': True}, {'head_mask': mask, 'return_attention': True},
             {'attention_edit': edit, 'return_attention': True}):
    n_out, n_att = model_lib.apply(params, TINY, images, **kw)
    f_out, f_att = model_lib.apply(foreign, fconfig, images, **kw)
    _close(f_out, n_out, str(kw))
    _close(f_att, n_att, str(kw))


@numerics.in_float64
def test_ablation_scan_falls_back_to_full_forwards_and_agrees():
  params, images = numerics.as64(tiny_params()), numerics.as64(tiny_images(4))
  labels = np.array([0, 1, 2, 3])
  foreign, fconfig = _foreign(params, TINY, images)
  assert 'full forwards' in importance.ablation_strategy(fconfig)
  assert 'prefix reuse' in importance.ablation_strategy(TINY)
  n_abl, _ = importance.ablation_batch(params, TINY, images, labels)
  f_abl, _ = importance.ablation_batch(foreign, fconfig, images, labels)
  for k in n_abl:
    _close(f_abl[k], n_abl[k], k)


@numerics.in_float64
def test_planted_offset_heads_through_interception():
  params, config = offset_heads_model(grid=4, patterns=('left', 'uniform'))
  params, images = numerics.as64(params), np.zeros((2, 16, 16, 3))
  foreign, fconfig = _foreign(params, config, images)
  n = strength.strength_batch(params, config, images)
  f = strength.strength_batch(foreign, fconfig, images)
  for a, b in zip(jax.tree.leaves(f), jax.tree.leaves(n)):
    _close(a, b)
  _, att = model_lib.apply(foreign, fconfig, images, return_attention=True)
  # Head 0 attends to the left neighbour: query patch (1, 1) -> key patch (1, 0).
  assert float(att[0, 0, 0, 1 + 5, 1 + 4]) > 0.99


@numerics.in_float64
def test_analyse_module_equals_native_compute():
  params, images = numerics.as64(tiny_params()), numerics.as64(tiny_images(6))
  labels = np.arange(6) % 5
  module, foreign = compact_for(TINY), params_from_native(params, TINY)
  opts = importance.ImportanceOptions(batch_size=6, progress=False, random_orders=1,
                                      curve_points=3, partial_heads=2)
  sopts = strength.StrengthOptions(batch_size=6, progress=False, map_images=2)
  got = pipeline.analyse_module(module, foreign, images, {'cls': [0], 'grid': (4, 4)}, labels,
                                analyses=('importance', 'strength'),
                                options={'importance': opts, 'strength': sopts})
  source = ArraySource(images, labels)
  ref_imp = importance.compute_importance(params, TINY, source, opts)
  ref_str = strength.compute_strength(params, TINY, source, sopts)
  for name, (ref, res) in {'importance': (ref_imp, got['importance']),
                           'strength': (ref_str, got['strength'])}.items():
    ref_arrays, got_arrays = arrays_of(ref), arrays_of(res)
    # The Q/K embedding needs this model's sown block inputs: not stored for a foreign one.
    missing = {'qk_images', 'qk_embedding'} if name == 'strength' else set()
    assert set(got_arrays) == set(ref_arrays) - missing
    for k in got_arrays:
      if np.issubdtype(np.asarray(ref_arrays[k]).dtype, np.number):
        _close(got_arrays[k], ref_arrays[k], f'{name}.{k}')
