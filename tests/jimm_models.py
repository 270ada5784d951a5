"""Small random jax-image-models (jimm) vision models for the NNX tests, with weights moved
off their inits (attention far from uniform), and a float64 twin of jimm's RoPE table
(jimm computes it in float32, ~1e-7 off a float64 reference)."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.nnx.nn.attention import dot_product_attention_weights

import jimm
from jimm.common.sharding import NoSharding

MESH = jax.make_mesh((1, 1), ('data', 'fsdp'))
KINDS = ('vit', 'clip', 'siglip', 'dinov2', 'dinov3')


def plain_attention(q, k, v, causal=False, **_):
  """flax's own attention weights, unfused (float64 throughout; jimm's default fused
  attention takes its softmax in float32)."""
  return jnp.einsum('...hqk,...khd->...qhd', dot_product_attention_weights(q, k), v)


def rope_cos_sin64(img_h, img_w, patch_size, head_dim, rope_theta):
  """jimm.common.transformer.rope_cos_sin, computed in float64."""
  n_h, n_w = img_h // patch_size, img_w // patch_size
  ch = (jnp.arange(0.5, n_h, dtype=jnp.float64) / n_h) * 2 - 1
  cw = (jnp.arange(0.5, n_w, dtype=jnp.float64) / n_w) * 2 - 1
  coords = jnp.stack(jnp.meshgrid(ch, cw, indexing='ij'), axis=-1).reshape(-1, 2)
  inv_freq = 1.0 / rope_theta ** jnp.arange(0.0, 1.0, 4.0 / head_dim, dtype=jnp.float64)
  angles = 2 * jnp.pi * coords[:, :, None] * inv_freq[None, None, :]
  angles = jnp.tile(angles.reshape(n_h * n_w, -1), (1, 2))
  return jnp.cos(angles), jnp.sin(angles)


def build(kind, dtype=jnp.float64, gated=True, seed=0, attention_fn=plain_attention):
  """A 16 x 16-pixel, 4-pixel-patch, 2-layer, 2-head jimm model of `kind` (KINDS)."""
  kw = dict(rngs=nnx.Rngs(seed), dtype=dtype, param_dtype=dtype)
  with jax.set_mesh(MESH):
    if kind == 'vit':
      m = jimm.VisionTransformer(num_classes=5, img_size=16, patch_size=4, num_layers=2,
                                 num_heads=2, mlp_dim=32, hidden_size=16, dropout_rate=0.0,
                                 attention_fn=attention_fn, **kw)
    elif kind == 'clip':
      m = jimm.CLIPVisionModel(image_resolution=16, vision_layers=2, vision_hidden_size=128,
                               vision_patch_size=4, projection_dim=24,
                               attention_fn=attention_fn, **kw)
    elif kind == 'siglip':
      m = jimm.SigLIPVisionModel(image_resolution=16, vision_layers=2, vision_hidden_size=128,
                                 vision_patch_size=4, attention_fn=attention_fn, **kw)
    elif kind == 'dinov2':   # its sharding spec does not run on a (1, 1) mesh on CPU
      m = jimm.DINOv2Model(img_size=16, patch_size=4, hidden_size=16, num_layers=2,
                           num_heads=2, mlp_dim=32, layer_scale_init=0.7,
                           attention_fn=attention_fn, sharding=NoSharding, **kw)
    else:
      m = jimm.DINOv3Model(img_size=16, patch_size=4, hidden_size=32, num_layers=2,
                           num_heads=2, mlp_dim=48, num_register_tokens=2,
                           layer_scale_init=0.7, use_gated_mlp=gated,
                           hidden_act='silu' if gated else 'gelu', sharding=NoSharding, **kw)
  rng = np.random.default_rng(seed)
  for _, v in nnx.iter_graph(m):
    if isinstance(v, nnx.Param) and jnp.issubdtype(v[...].dtype, jnp.floating):
      v[...] = v[...] + np.asarray(0.2 * rng.normal(size=v[...].shape), v[...].dtype)
  for _, node in nnx.iter_graph(m):
    if isinstance(node, nnx.MultiHeadAttention):
      for proj in (node.query, node.key):
        proj.kernel[...] = proj.kernel[...] * 3.
  return m


def call(m, x):
  """The module's own forward, under the mesh its parameters are annotated for."""
  with jax.set_mesh(MESH):
    return m(jnp.asarray(x))


def own_ablation_and_taylor(m, out_kernel, x, labels, w=None):
  """The module's own single-head ablation losses [L, H] (each head's rows of its output
  projection `out_kernel(m)` [L, H, D/H, D] zeroed in the module) and Taylor scores [B, L, H]
  (autograd of each image's loss on that kernel, times it), the loss being the cross-entropy
  of `labels` on the output (or on `output @ w.T`, a class matrix)."""
  kernel = out_kernel(m)
  original = kernel[...]
  graphdef, state, rest = nnx.split(m, nnx.Param, ...)

  def losses(state, images):
    out = nnx.merge(graphdef, state, jax.tree.map(lambda a: a, rest))(images)
    logits = out if w is None else out @ w.T
    return -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], -1)[:, 0]

  n_layers, n_heads = original.shape[:2]
  ablation = np.zeros((n_layers, n_heads, len(labels)))
  for layer in range(n_layers):
    for head in range(n_heads):
      kernel[...] = original.at[layer, head].set(0.)
      ablation[layer, head] = np.asarray(losses(nnx.split(m, nnx.Param, ...)[1], x))
  kernel[...] = original
  taylor = np.zeros((len(labels), n_layers, n_heads))
  for i in range(len(labels)):
    with jax.set_mesh(MESH):  # the module's own sharding annotations need their mesh here
      g = jax.grad(lambda s: losses(s, x)[i])(state)
    gk = out_kernel(nnx.merge(graphdef, g, jax.tree.map(lambda a: a, rest)))[...]
    taylor[i] = np.abs(np.sum(gk * original, axis=(-2, -1)))
  return ablation, taylor
