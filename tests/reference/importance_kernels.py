"""The plain (no-reuse) importance kernels that tests and benchmarks compare the prefix-reuse
kernels of `vit_jax_analytics.importance` against: every single-head ablation as a full
forward, and partial pruning rerunning each head's whole layer from its recorded input.
Test-only: the package runs neither."""

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax_analytics import model as model_lib
from vit_jax_analytics.importance.forwards import (masked_forwards, single_head_masks,
                                                   unmasked_forward)
from vit_jax_analytics.importance.objective import (ABLATION_METRICS, Objective, image_metrics,
                                                    resolve_objective, targets_from)
from vit_jax_analytics.model import ViTConfig


@functools.partial(jax.jit, static_argnums=(1, 4, 5))
def ablation_batch_no_reuse(params, config: ViTConfig, images, labels, chunk: int = 8,
                            objective: Optional[Objective] = None):
  """Every single-head ablation as a full forward, vmapped over the L*H masks.
  -> ({metric: [L, H, B]}, full logits [B, C])."""
  obj = resolve_objective(config, objective)
  logits = model_lib.apply(params, config, images)
  targets, logp_full = targets_from(logits, labels, obj), obj.reference(logits)
  m = masked_forwards(params, config, images, targets, logp_full, single_head_masks(config),
                      chunk, obj)
  shape = (config.num_layers, config.num_heads, images.shape[0])
  return {k: v.reshape(shape) for k, v in m.items()}, logits


def _partial_metrics(params, config, blocks, targets, logp_full, head_index, keeps,
                     renormalize, layers, chunk, objective=None):
  """Metrics with part of one head's attention removed, for every (head, variant) pair.

  head_index [P] flat head indices sorted ascending, `layers` (static) their layers;
  keeps [V, T, T] multipliers on that head's attention weights. Each head's run starts
  at its own layer's input from `blocks` (see unmasked_forward). -> {metric: [P, V, B]}.
  """
  h_count, v_count = config.num_heads, keeps.shape[0]

  def run(flat_head, keep, layer):
    one_hot = jax.nn.one_hot(flat_head % h_count, h_count)[:, None, None]
    edit_mask = 1. - one_hot * (1. - keep)[None]                     # [H, T, T]

    def edit(weights, l):
      if l != layer:
        return weights
      w = weights * edit_mask.astype(weights.dtype)
      if renormalize:
        total = jnp.sum(w, -1, keepdims=True)
        w = jnp.where(total > 0, w / jnp.where(total > 0, total, 1.), 0.)
      return w

    block_input = blocks[f'encoderblock_{layer}']['block_input'][0]
    out = model_lib.apply(params, config, block_input, first_layer=layer, attention_edit=edit)
    return image_metrics(out, targets, logp_full, objective)

  results = []
  for layer in sorted(set(layers)):  # one suffix graph per layer, vmapped over its pairs
    idx = np.flatnonzero(np.asarray(layers) == layer)
    pair_heads = jnp.repeat(head_index[idx], v_count)
    pair_keeps = jnp.tile(keeps, (len(idx), 1, 1))
    m = jax.lax.map(lambda hk, layer=layer: run(hk[0], hk[1], layer), (pair_heads, pair_keeps),
                    batch_size=chunk)
    results.append({k: v.reshape(len(idx), v_count, -1) for k, v in m.items()})
  return {k: jnp.concatenate([r[k] for r in results]) for k in ABLATION_METRICS}


@functools.partial(jax.jit, static_argnums=(1, 6, 7, 8, 9))
def partial_batch_plain(params, config: ViTConfig, images, labels, head_index, keeps,
                        renormalize: bool, layers: tuple, chunk: int = 8, objective=None):
  """Partial pruning of one batch by rerunning each head's whole layer from its input
  (the reference for partial_batch) -> {metric: [P, V, B]}."""
  objective = resolve_objective(config, objective)
  targets, logp_full, state, _ = unmasked_forward(params, config, images, labels, objective)
  return _partial_metrics(params, config, state['Transformer'], targets, logp_full,
                          head_index, keeps, renormalize, layers, chunk, objective)
