"""Taylor importance: |dL/d xi[l,h]| at xi = 1 (Michel et al. 2019), every image's own
gradient from one forward + backward.

Under the embedding objective every distortion is at its minimum at xi = 1, so its own
gradient is 0 and says nothing; instead we take the scalar s = u . e(xi) / |e| for K random
Gaussian probes u per image (seeded by the image index) and report
sqrt(pi/2) * mean_k |ds/dxi|, whose expectation is |de/dxi| / |e|: the first-order change
of the embedding when the head is removed, relative to its norm (E|u.v| = sqrt(2/pi)|v| for
Gaussian u).
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax_analytics import model as model_lib, precision
from vit_jax_analytics.importance.objective import (Objective, flat_embedding, resolve_objective,
                                                    targets_from)
from vit_jax_analytics.model import ViTConfig


def taylor_grads(params, config, images, labels, obj: Objective, index, record=False):
  """One forward + backward: (|dL_i/d xi| [B, L, H], |dL_i/d xi_pool| [B, H] or None (no
  MAP head), full outputs [B, ...], the forward's intermediates of the B images when
  `record`, else None).

  Each image gets its own copy of the mask, so the gradient of the summed loss with respect
  to the [B, L, H] mask is every image's own gradient, in one backward pass. Under the
  embedding objective each image is run once per random probe (see the module docstring);
  index [B] seeds an image's probes, so they do not depend on batching.
  """
  b = images.shape[0]
  k = obj.taylor_probes if obj.kind == 'embedding' else 1
  x = jnp.tile(images, (k, 1, 1, 1)) if k > 1 else images
  index = jnp.arange(b) if index is None else index
  pool = config.has_pool_attention

  def forward(mask, pool_mask):
    masks = dict(head_mask=mask, pool_mask=pool_mask if pool else None)
    if not record:
      return model_lib.apply(params, config, x, **masks), None
    out, state = model_lib.VisionTransformer(config).apply(
        {'params': params}, x, mutable=['intermediates'], **masks)
    return out, state['intermediates']

  def total(masks):
    out, state = forward(*masks)
    if obj.kind == 'classification':
      targets = targets_from(jax.lax.stop_gradient(out), labels, obj)
      logp = jax.nn.log_softmax(obj.logits(out))
      return -jnp.sum(jnp.take_along_axis(logp, targets[:, None], axis=-1)), (out, state)
    e = precision.widen(flat_embedding(out))                         # [K * B, E]
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(obj.seed), i))(index)
    u = jax.vmap(lambda key: jax.random.normal(key, (k, e.shape[-1]), e.dtype))(keys)
    u = jnp.swapaxes(u, 0, 1).reshape(k * b, -1)                      # [K * B, E]
    norm = jax.lax.stop_gradient(jnp.linalg.norm(e, axis=-1, keepdims=True))
    return jnp.sum(u * e / jnp.maximum(norm, 1e-30)), (out, state)

  # float64 masks for float64 params (a float32 mask would round their gradients to
  # float32); float32 for float32 and bfloat16 params, as before.
  dtype = jnp.promote_types(precision.float_dtype(params), jnp.float32)
  ones = (jnp.ones((k * b, config.num_layers, config.num_heads), dtype),
          jnp.ones((k * b, config.num_heads), dtype))
  (grads, pool_grads), (out, state) = jax.grad(total, has_aux=True)(ones)
  factor = np.sqrt(np.pi / 2) if obj.kind == 'embedding' else 1.
  grads = factor * jnp.mean(jnp.abs(grads).reshape(k, b, *grads.shape[1:]), 0)
  pool_grads = (factor * jnp.mean(jnp.abs(pool_grads).reshape(k, b, -1), 0) if pool else None)
  return grads, pool_grads, out[:b], jax.tree.map(lambda a: a[:b], state)


@functools.partial(jax.jit, static_argnums=(1, 4))
def taylor_pool_batch(params, config: ViTConfig, images, labels,
                      objective: Optional[Objective] = None, index=None):
  """One forward + backward: (|dL_i/d xi| [B, L, H], |dL_i/d xi_pool| [B, H] or None (no
  MAP head), full outputs [B, ...]); see taylor_grads."""
  grads, pool_grads, out, _ = taylor_grads(params, config, images, labels,
                                           resolve_objective(config, objective), index)
  return grads, pool_grads, out


def taylor_batch(params, config: ViTConfig, images, labels,
                 objective: Optional[Objective] = None, index=None):
  """(|dL_i/d xi| [B, L, H], full outputs [B, C]); see taylor_pool_batch."""
  grads, _, out = taylor_pool_batch(params, config, images, labels, objective, index)
  return grads, out
