"""The forwards every importance kernel shares: one unmasked forward recording the
intermediates that prefix reuse resumes from, and full forwards over a stack of head masks
(the path of models that cannot resume mid-way)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vit_jax_analytics import model as model_lib
from vit_jax_analytics.importance.objective import Objective, image_metrics, targets_from


def unmasked_forward(params, config, images, labels, obj: Objective):
  """One unmasked forward recording the intermediates (the 'intermediates' collection sown
  by model.py) -> (targets [B], reference (log p_full [B, C] or the embedding),
  intermediates ({'Transformer': the blocks', 'pool_input': a MAP head's}), outputs)."""
  if not model_lib.supports_prefix_reuse(config):
    # A foreign (intercepted) model: no intermediates to resume from; each layer's "input"
    # is the images, from which it runs whole (edits and masks name their layer).
    logits = model_lib.apply(params, config, images)
    state = {'intermediates': {'Transformer': {
        f'encoderblock_{l}': {'block_input': (images,)} for l in range(config.num_layers)}}}
    return targets_from(logits, labels, obj), obj.reference(logits), state['intermediates'], \
        logits
  logits, state = model_lib.VisionTransformer(config).apply(
      {'params': params}, images, mutable=['intermediates'])
  return (targets_from(logits, labels, obj), obj.reference(logits), state['intermediates'],
          logits)


def single_head_masks(config) -> jnp.ndarray:
  """[L*H, L, H]: mask m removes head (m // H, m % H)."""
  n = config.num_layers * config.num_heads
  return 1. - jnp.eye(n, dtype=jnp.float32).reshape(n, config.num_layers, config.num_heads)


def masked_forwards(params, config, images, targets, logp_full, masks, chunk,
                    objective: Objective):
  """Full forwards, vmapped over masks [M, L, H] in chunks -> metrics [M, B]."""
  def one(mask):
    return image_metrics(model_lib.apply(params, config, images, head_mask=mask), targets,
                         logp_full, objective)
  return jax.lax.map(one, masks, batch_size=chunk)


def single_head_forwards(params, config, images, targets, logp_full, chunk,
                         objective: Objective):
  """Every single-head ablation as a full forward (no prefix reuse), vmapped over the L*H
  masks in chunks -> {metric: [L, H, B]}."""
  m = masked_forwards(params, config, images, targets, logp_full, single_head_masks(config),
                      chunk, objective)
  shape = (config.num_layers, config.num_heads, images.shape[0])
  return {k: v.reshape(shape) for k, v in m.items()}
