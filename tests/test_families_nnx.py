"""Flax NNX models analysed through interception (families/intercept_nnx.py), against the
modules' own __call__, in float64: jax-image-models' ViT and CLIP vision tower (their layers
run under nnx.scan), built under the ('data', 'fsdp') mesh their parameters are annotated for.

The reference is the module's own forward. jax-image-models' default attention
(nnx.dot_product_attention -> jax.nn.dot_product_attention) takes its softmax in float32
even for float64 inputs, so the float64 references are built with a declared attention
function computing flax's own `nnx.dot_product_attention_weights` without the fused path;
the default attention is checked too, to its float32 softmax. A head is removed in the
reference by zeroing its rows of the layer's `out` kernel (exactly: zeroing its context before
the output projection); the Taylor reference is autograd of the module's own forward:
d loss / d (scale of head h's out rows) = <d loss / d W_h, W_h>.
"""

import numpy as np
import pytest

jimm = pytest.importorskip('jimm', reason='test extra: pip install -e .[test] '
                                          '(jax-image-models)')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402
from flax.nnx.nn.attention import dot_product_attention_weights  # noqa: E402

from tests import jimm_models, numerics  # noqa: E402
from vit_jax_analytics import importance, model as model_lib, pipeline  # noqa: E402
from vit_jax_analytics.families import intercept_nnx  # noqa: E402

LAYOUT = {'cls': [0], 'grid': (4, 4)}
MESH = jax.make_mesh((1, 1), ('data', 'fsdp'))
CAPTURED = []


def plain_attention(q, k, v, causal=False, **_):
  """flax's own attention weights (nnx.nn.attention), unfused (float64 throughout); captured in call order."""
  w = dot_product_attention_weights(q, k)
  jax.debug.callback(lambda w: CAPTURED.append(np.asarray(w)), w, ordered=True)
  return jnp.einsum('...hqk,...khd->...qhd', w, v)


def build(kind, attention_fn=plain_attention):
  kw = dict(rngs=nnx.Rngs(0), dtype=jnp.float64, param_dtype=jnp.float64,
            attention_fn=attention_fn)
  with jax.set_mesh(MESH):
    if kind == 'vit':
      m = jimm.VisionTransformer(num_classes=5, img_size=16, patch_size=4, num_layers=2,
                                 num_heads=2, mlp_dim=32, hidden_size=16, dropout_rate=0.0, **kw)
    else:
      m = jimm.CLIPVisionModel(image_resolution=16, vision_layers=2, vision_hidden_size=128,
                               vision_patch_size=4, projection_dim=24, **kw)
  # Peaked attention: default inits give nearly uniform attention that hides layout mistakes.
  for _, node in nnx.iter_graph(m):
    if isinstance(node, nnx.MultiHeadAttention):
      for proj in (node.query, node.key):
        proj.kernel[...] = proj.kernel[...] * (6. if kind == 'vit' else 3.)
  return m


def out_kernel(m):
  return next(n for _, n in nnx.iter_graph(m) if isinstance(n, nnx.MultiHeadAttention)).out.kernel


def forward(m, x):
  CAPTURED.clear()
  out = m(jnp.asarray(x))
  jax.effects_barrier()
  return np.asarray(out), list(CAPTURED)


@pytest.mark.parametrize('kind', ['vit', 'clip'])
@numerics.in_float64
def test_intercepted_equals_the_modules_own_call(kind):
  m = build(kind)
  x = np.random.default_rng(1).normal(size=(2, 16, 16, 3))
  output = 'logits' if kind == 'vit' else 'embedding'
  params, config = intercept_nnx.nnx_config(m, x, LAYOUT, output=output)
  assert (config.num_layers, config.num_heads, config.num_tokens) == (2, 2, 17)
  assert not model_lib.supports_prefix_reuse(config)
  want, want_att = forward(m, x)
  got, att = model_lib.apply(params, config, x, return_attention=True)
  numerics.assert_close64(got, want, 'output')
  for layer, a in enumerate(want_att):
    numerics.assert_close64(att[:, layer], a, f'attention {layer}')
  assert min(a.max() for a in want_att) > 5. / 17  # far from uniform

  # One head removed: zero its out rows in the module itself, run its own forward.
  kernel = out_kernel(m)
  original = kernel[...]
  kernel[...] = original.at[1, 0].set(0.)                 # layer 1, head 0: [L, H, D/H, D]
  want_removed, _ = forward(m, x)
  kernel[...] = original
  mask = np.ones((2, 2))
  mask[1, 0] = 0.
  removed = model_lib.apply(params, config, x, head_mask=mask)
  numerics.assert_close64(removed, want_removed, 'removed head')
  assert np.abs(removed - got).max() > 1e-3 * np.abs(got).max()

  # The ablation scan and Taylor scores against the module's own forward and autograd.
  labels = np.array([1, 3])
  objective, w = None, None
  if output == 'embedding':
    w = np.random.default_rng(2).normal(size=(5, config.embedding_size)).astype(np.float32)
    objective = importance.classes_objective(config, w)
    w = w.astype(np.float64)
  abl, _ = importance.ablation_batch(params, config, x, labels, objective=objective)
  grads, _ = importance.taylor_batch(params, config, x, labels, objective)

  want_abl, want_grads = jimm_models.own_ablation_and_taylor(m, out_kernel, x, labels, w)
  numerics.assert_close64(abl['loss'], want_abl, 'ablation')
  # Taylor scores are float32 (gradients of float32 masks).
  numerics.assert_close64(np.asarray(grads, np.float64), want_grads, 'taylor',
                          rounded=np.float32)


@numerics.in_float64
def test_default_fused_attention_agrees_to_its_float32_softmax():
  """jax-image-models as it comes (nnx.dot_product_attention, fused): the same, to the
  float32 softmax jax.nn.dot_product_attention takes inside."""
  m = build('vit', attention_fn=None)
  x = np.random.default_rng(1).normal(size=(2, 16, 16, 3))
  params, config = intercept_nnx.nnx_config(m, x, LAYOUT)
  want = np.asarray(m(jnp.asarray(x)))
  got = np.asarray(model_lib.apply(params, config, x))
  rel = np.abs(got - want).max() / np.abs(want).max()
  assert 1e-12 < rel < 1e-5   # not float64-exact, but float32-softmax close


def test_analyse_end_to_end_and_plain_calls_unaffected():
  """importance, strength and patterns run on the CLIP tower (float32), and the model's own
  call outside the analyses is left as it was."""
  m = build('clip', attention_fn=None)
  x = np.random.default_rng(3).uniform(-1, 1, size=(4, 16, 16, 3)).astype(np.float32)
  before = np.asarray(m(jnp.asarray(x)))
  opts = {'importance': importance.ImportanceOptions(batch_size=4, progress=False,
                                                     random_orders=1, curve_points=2,
                                                     partial_heads=1)}
  got = pipeline.analyse_nnx(m, x, LAYOUT, output='embedding', options=opts, batch_size=4)
  assert set(got) >= {'importance', 'strength', 'patterns'}
  assert 'full forwards' in got['ablation']
  scores = np.asarray(got['importance'].taylor)
  assert scores.shape[-2:] == (2, 2) and np.isfinite(scores).all() and scores.max() > 0
  np.testing.assert_array_equal(np.asarray(m(jnp.asarray(x))), before)
