"""Declared attention (intercept_nnx.DeclaredAttention): jax-image-models' DINOv3, whose RoPE
attention is computed in its transformer block, not in nnx.MultiHeadAttention, analysed
through nnx_declared.jimm_block() against the module's own __call__ in float64: the output,
every layer's attention (captured from the block's own softmax), one head removed (its rows
of `out` zeroed in the module itself), the ablation scan and Taylor scores (autograd of the
module's own forward). jimm builds its RoPE table in float32; the tests use a float64 twin
of it (tests/jimm_models.py), so that float64 agreement means float64 rounding.
"""

import numpy as np
import pytest

pytest.importorskip('jimm', reason='test extra: pip install -e .[test] (jax-image-models)')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from tests import jimm_models, numerics  # noqa: E402
from vit_jax_analytics import importance, model as model_lib, pipeline  # noqa: E402
from vit_jax_analytics.families import intercept_nnx, nnx_declared  # noqa: E402

LAYOUT = {'cls': [0], 'registers': [1, 2], 'grid': (4, 4)}


@pytest.fixture
def rope64(monkeypatch):
  import jimm.common.vit
  monkeypatch.setattr(jimm.common.vit, 'rope_cos_sin', jimm_models.rope_cos_sin64)


def own_forward(m, x, monkeypatch):
  """The module's own output and each layer's attention, from its own softmax."""
  import jimm.common.transformer as jt
  captured, softmax = [], jax.nn.softmax

  def capturing(a, axis=-1, **kw):
    w = softmax(a, axis=axis, **kw)
    jax.debug.callback(lambda w: captured.append(np.asarray(w)), w, ordered=True)
    return w

  # The scan body is traced anew (a cached trace of it would not call the patched softmax),
  # and not reused afterwards.
  jax.clear_caches()
  with monkeypatch.context() as mp:
    mp.setattr(jt.jax.nn, 'softmax', capturing)
    out = np.asarray(jimm_models.call(m, x))
    jax.effects_barrier()
  jax.clear_caches()
  return out, captured


def out_kernel(m):
  return m.encoder.layers.attn.out.kernel


@numerics.in_float64
def test_dinov3_declared_attention_equals_the_modules_own_call(rope64, monkeypatch):
  m = jimm_models.build('dinov3')
  x = np.random.default_rng(1).normal(size=(2, 16, 16, 3))
  with pytest.raises(ValueError, match='no nnx.MultiHeadAttention was found'):
    intercept_nnx.nnx_config(m, x, LAYOUT, output='embedding',
                             attention_filter=lambda path, node: False)
  params, config = intercept_nnx.nnx_config(m, x, LAYOUT, output='embedding',
                                            attention=nnx_declared.jimm_block())
  assert (config.num_layers, config.num_heads, config.num_tokens) == (2, 2, 19)
  want, want_att = own_forward(m, x, monkeypatch)
  got, att = model_lib.apply(params, config, x, return_attention=True)
  numerics.assert_close64(got, want, 'output')
  assert len(want_att) == 2
  for layer, a in enumerate(want_att):
    numerics.assert_close64(att[:, layer], a, f'attention {layer}')
  assert min(a.max() for a in want_att) > 5. / 19  # far from uniform

  kernel = out_kernel(m)
  original = kernel[...]
  kernel[...] = original.at[1, 0].set(0.)                 # layer 1, head 0: [L, H, D/H, D]
  want_removed, _ = own_forward(m, x, monkeypatch)
  kernel[...] = original
  mask = np.ones((2, 2))
  mask[1, 0] = 0.
  removed = model_lib.apply(params, config, x, head_mask=mask)
  numerics.assert_close64(removed, want_removed, 'removed head')
  assert np.abs(removed - got).max() > 1e-3 * np.abs(got).max()

  labels = np.array([1, 3])
  w = np.random.default_rng(2).normal(size=(5, config.embedding_size)).astype(np.float32)
  objective = importance.classes_objective(config, w)
  w = w.astype(np.float64)
  abl, _ = importance.ablation_batch(params, config, x, labels, objective=objective)
  grads, _ = importance.taylor_batch(params, config, x, labels, objective)
  want_abl, want_grads = jimm_models.own_ablation_and_taylor(m, out_kernel, x, labels, w)
  numerics.assert_close64(abl['loss'], want_abl, 'ablation')
  numerics.assert_close64(np.asarray(grads, np.float64), want_grads, 'taylor',
                          rounded=np.float32)


def test_dinov3_analysed_end_to_end_and_its_own_call_unaffected():
  """importance, strength and patterns on jimm's DINOv3 (float32, its own float32 RoPE);
  the module's own call outside the analyses is unchanged, and a model whose blocks run
  without the declaration is refused in one line."""
  m = jimm_models.build('dinov3', dtype=jnp.float32, gated=False)
  x = np.random.default_rng(3).uniform(-1, 1, size=(4, 16, 16, 3)).astype(np.float32)
  before = np.asarray(jimm_models.call(m, x))
  with pytest.raises(ValueError, match='no nnx.MultiHeadAttention was found|never reached'):
    pipeline.analyse_nnx(m, x, LAYOUT, output='embedding')
  opts = {'importance': importance.ImportanceOptions(batch_size=4, progress=False,
                                                     random_orders=1, curve_points=2,
                                                     partial_heads=1)}
  got = pipeline.analyse_nnx(m, x, LAYOUT, output='embedding', options=opts, batch_size=4,
                             attention=nnx_declared.jimm_block())
  assert set(got) >= {'importance', 'strength', 'patterns'}
  scores = np.asarray(got['importance'].taylor)
  assert scores.shape[-2:] == (2, 2) and np.isfinite(scores).all() and scores.max() > 0
  np.testing.assert_array_equal(np.asarray(jimm_models.call(m, x)), before)
