import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import numerics
from tests.tiny import TINY
from vit_jax_analytics import model as model_lib
from vit_jax_analytics.model import ViTConfig


@pytest.fixture(scope='module')
def tiny():
  params = model_lib.init_params(TINY, jax.random.key(0))
  # A non-zero head so logits depend on the encoder.
  params['head']['kernel'] = jax.random.normal(jax.random.key(1), params['head']['kernel'].shape)
  images = jax.random.uniform(jax.random.key(2), (3, 16, 16, 3), minval=-1, maxval=1)
  return params, images


def numpy_forward(params, c, images, head_mask):
  """Plain-NumPy ViT forward (token classifier, tanh GELU): logits and attention."""
  p = jax.tree.map(np.asarray, params)
  x = np.asarray(images, np.float64)
  b, s = x.shape[0], c.patch_size
  g = c.image_size // s
  patches = x.reshape(b, g, s, g, s, 3).transpose(0, 1, 3, 2, 4, 5).reshape(b, g * g, -1)
  k = p['embedding']['kernel'].reshape(-1, c.hidden_size)
  t = patches @ k + p['embedding']['bias']
  t = np.concatenate([np.repeat(p['cls'], b, 0), t], 1)
  t = t + p['Transformer']['posembed_input']['pos_embedding']

  def ln(v, q):
    mu, var = v.mean(-1, keepdims=True), v.var(-1, keepdims=True)
    return (v - mu) / np.sqrt(var + 1e-6) * q['scale'] + q['bias']

  gelu = lambda v: 0.5 * v * (1 + np.tanh(np.sqrt(2 / np.pi) * (v + 0.044715 * v ** 3)))
  attn_all = []
  for i in range(c.num_layers):
    blk = p['Transformer'][f'encoderblock_{i}']
    a = blk['MultiHeadDotProductAttention_1']
    y = ln(t, blk['LayerNorm_0'])
    q, kk, v = (np.einsum('btd,dhe->bthe', y, a[n]['kernel']) + a[n]['bias']
                for n in ('query', 'key', 'value'))
    logits = np.einsum('bqhe,bkhe->bhqk', q, kk) / np.sqrt(q.shape[-1])
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    attn_all.append(w)
    heads = np.einsum('bhqk,bkhe->bqhe', w, v) * head_mask[i][None, None, :, None]
    t = t + np.einsum('bqhe,hed->bqd', heads, a['out']['kernel']) + a['out']['bias']
    m = blk['MlpBlock_3']
    y = gelu(ln(t, blk['LayerNorm_2']) @ m['Dense_0']['kernel'] + m['Dense_0']['bias'])
    t = t + y @ m['Dense_1']['kernel'] + m['Dense_1']['bias']
  t = ln(t, p['Transformer']['encoder_norm'])
  return t[:, 0] @ p['head']['kernel'] + p['head']['bias'], np.stack(attn_all, 1)


@numerics.in_float64  # both sides in float64: a tolerance no CPU's rounding reaches
def test_forward_matches_numpy_with_head_mask(tiny):
  params, images = numerics.as64(tiny)
  mask = np.ones((3, 4), np.float32)
  mask[0, 1], mask[2, 3], mask[1, 0] = 0., 0., 0.5
  logits, attn = model_lib.apply(params, TINY, images, head_mask=jnp.asarray(mask),
                                 return_attention=True)
  ref_logits, ref_attn = numpy_forward(params, TINY, images, mask)
  assert attn.shape == (3, 3, 4, 17, 17)  # [batch, layer, head, query, key]
  numerics.assert_close64(logits, ref_logits)
  numerics.assert_close64(attn, ref_attn)


def test_head_mask_of_ones_is_no_mask_and_zero_changes_output(tiny):
  params, images = tiny
  plain = model_lib.apply(params, TINY, images)
  ones = model_lib.apply(params, TINY, images, head_mask=jnp.ones((3, 4)))
  np.testing.assert_array_equal(plain, ones)
  masked = model_lib.apply(params, TINY, images, head_mask=jnp.ones((3, 4)).at[1, 2].set(0.))
  assert np.max(np.abs(masked - plain)) > 1e-4


def test_mask_gradient_is_defined(tiny):
  params, images = tiny
  grad = jax.grad(lambda m: model_lib.apply(params, TINY, images, head_mask=m).sum())(
      jnp.ones((3, 4)))
  assert grad.shape == (3, 4) and np.all(np.isfinite(grad)) and np.any(grad != 0)


@numerics.in_float64  # both sides in float64: a tolerance no CPU's rounding reaches
def test_attention_reduce_equals_reducing_full_attention(tiny):
  params, images = numerics.as64(tiny)
  _, full = model_lib.apply(params, TINY, images, return_attention=True)
  reduce = lambda w, layer: {'mean_over_queries': w.mean(2), 'layer': jnp.asarray(layer)}
  _, reduced = model_lib.apply(params, TINY, images, attention_reduce=reduce)
  numerics.assert_close64(reduced['mean_over_queries'],
                          np.moveaxis(np.asarray(full).mean(3), 1, 0))
  np.testing.assert_array_equal(reduced['layer'], [0, 1, 2])


@numerics.in_float64  # both sides in float64: a tolerance no CPU's rounding reaches
def test_prefix_then_suffix_equals_full_forward(tiny):
  params, images = numerics.as64(tiny)
  mask = jnp.ones((3, 4)).at[2, 0].set(0.)
  tokens = model_lib.apply(params, TINY, images, last_layer=2)
  assert tokens.shape == (3, 17, 32)
  rest = model_lib.apply(params, TINY, tokens, head_mask=mask, first_layer=2)
  numerics.assert_close64(rest, model_lib.apply(params, TINY, images, head_mask=mask))


@numerics.in_float64  # both sides in float64: a tolerance no CPU's rounding reaches
def test_attention_edit_zeroing_one_head_equals_head_mask(tiny):
  params, images = numerics.as64(tiny)
  edit = lambda w, layer: w.at[:, 1].set(0.) if layer == 1 else w
  edited = model_lib.apply(params, TINY, images, attention_edit=edit)
  masked = model_lib.apply(params, TINY, images, head_mask=jnp.ones((3, 4)).at[1, 1].set(0.))
  numerics.assert_close64(edited, masked)


def test_gap_and_pre_logits_and_features():
  c = TINY.replace(classifier='gap', representation_size=8, num_classes=0)
  params = model_lib.init_params(c, jax.random.key(0))
  assert 'cls' not in params and params['pre_logits']['kernel'].shape == (32, 8)
  assert c.num_tokens == 16
  out = model_lib.apply(params, c, jnp.zeros((2, 16, 16, 3)))
  assert out.shape == (2, 8)


@pytest.mark.parametrize('name,layers,heads,width', [
    ('ViT-Ti/16', 12, 3, 192), ('ViT-S/16', 12, 6, 384), ('ViT-B/16', 12, 12, 768),
    ('ViT-B/32', 12, 12, 768), ('ViT-L/16', 24, 16, 1024)])
def test_presets_have_published_sizes(name, layers, heads, width):
  c = model_lib.get_config(name)
  shapes = model_lib.param_shapes(c)
  n = sum(np.prod(x.shape) for x in jax.tree.leaves(shapes))
  published = {'ViT-Ti/16': 5.7e6, 'ViT-S/16': 22.1e6, 'ViT-B/16': 86.6e6,
               'ViT-B/32': 88.2e6, 'ViT-L/16': 304.3e6}[name]
  assert (c.num_layers, c.num_heads, c.hidden_size) == (layers, heads, width)
  assert abs(n - published) / published < 0.01


def test_bad_config_is_a_clear_error():
  with pytest.raises(ValueError, match='classifier'):
    ViTConfig(classifier='cls')
  with pytest.raises(ValueError, match='unknown model config'):
    model_lib.get_config('ViT-X/3')
  with pytest.raises(ValueError, match='divisible'):
    ViTConfig(hidden_size=10, num_heads=3)
