"""The single-head ablation scan: every head masked out alone, with prefix reuse (one
unmasked forward, then per head only the rest of its layer and the layers after it), its
heads optionally split over a mesh's 'masks' axis; a MAP head's pooling heads as one more
row."""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp

from vit_jax_analytics import model as model_lib, parallel, prefix_reuse
from vit_jax_analytics.importance.forwards import (masked_forwards, single_head_forwards,
                                                   single_head_masks,
                                                   unmasked_forward)
from vit_jax_analytics.importance.objective import Objective, image_metrics, resolve_objective
from vit_jax_analytics.model import ViTConfig


def _layer_scan(params, config, blocks, targets, logp_full, chunk, objective=None,
                   mesh=None):
  """The single-head ablation scan from one unmasked forward's intermediates `blocks`
  (see ablation_batch) -> {metric: [L, H, B]}. One compiled run_from_layer graph serves
  every layer: a scan over layers, the heads of each mapped in chunks. mesh: a ('batch',
  'masks') mesh whose 'masks' axis splits each layer's heads (every device runs every layer
  for its H / K heads; the layer is not batched, so the run_from_layer graph still skips the
  layers below it), or None."""
  stacked = prefix_reuse.stacked_layers(params, config)
  out_all = stacked['MultiHeadDotProductAttention_1']['out']['kernel']  # [L, H, D/H, D]

  def scan(heads, post_all, heads_all, targets, logp_full):
    """Heads `heads` [m] of every layer removed -> {metric: [L, m, B]}."""
    def per_layer(layer):
      post, layer_heads, out_kernel = post_all[layer], heads_all[layer], out_all[layer]

      def without_head(h):
        share = jnp.einsum('bte,ed->btd', layer_heads[:, :, h], out_kernel[h])
        logits_h = prefix_reuse.run_from_layer(params, config, stacked, post - share, layer,
                                               skip_first_attention=True)
        return image_metrics(logits_h, targets, logp_full, objective)

      return jax.lax.map(without_head, heads, batch_size=chunk)
    return jax.lax.map(per_layer, jnp.arange(config.num_layers))

  recorded = functools.partial(prefix_reuse.stacked_intermediates, blocks, config)
  args = (recorded('post_attention'),                                    # [L, B, T, D]
          recorded('MultiHeadDotProductAttention_1', 'heads'),           # [L, B, T, H, D/H]
          targets, logp_full)
  if mesh is None or parallel.mask_shards(mesh) <= 1:
    return scan(jnp.arange(config.num_heads), *args)
  return _over_mask_shards(mesh, config.num_heads, scan, args, (1, 1, 0, 0), lead=1)


def _pool_ablation(params, config, state, targets, reference, objective, chunk):
  """Every single MAP-head (pooling) head masked out, rerunning only the pooling on its
  sown input -> {metric: [H, B]}."""
  tokens = state['pool_input'][0]

  def without_head(h):
    mask = 1. - jax.nn.one_hot(h, config.num_heads)
    out = model_lib.apply_pooling(params, config, tokens, pool_mask=mask)
    return image_metrics(out, targets, reference, objective)

  return jax.lax.map(without_head, jnp.arange(config.num_heads), batch_size=chunk)


def _over_mask_shards(mesh, n, fn, args, batch_axes, lead: int):
  """fn(indices [m], *args) -> {metric: [<lead axes>, m, B]}, run with the n indices split
  over the 'masks' axis of `mesh` (padded to a multiple of its size by repeating the last
  index; the padding is dropped) and each of `args` over its 'batch' axis along its axis
  batch_axes[i] -> {metric: [<lead axes>, n, B]}."""
  from jax.sharding import PartitionSpec as P
  per = -(-n // parallel.mask_shards(mesh))

  def local(*local_args):
    start = jax.lax.axis_index('masks') * per
    return fn(jnp.minimum(start + jnp.arange(per), n - 1), *local_args)

  in_specs = tuple(P(*(None,) * axis, 'batch') for axis in batch_axes)
  out = jax.shard_map(local, mesh=mesh, in_specs=in_specs,
                      out_specs=P(*(None,) * lead, 'masks', 'batch'))(*args)
  return jax.tree.map(lambda v: v[(slice(None),) * lead + (slice(0, n),)], out)


def single_head_forwards_sharded(params, config, images, targets, logp_full, chunk,
                                 objective, mesh):
  """The L*H single-head masks as full forwards (no prefix reuse), split over the mesh's
  'masks' axis -> {metric: [L, H, B]}."""
  masks = single_head_masks(config)

  def run(index, images, targets, logp_full):
    return masked_forwards(params, config, images, targets, logp_full, masks[index], chunk,
                           objective)

  m = _over_mask_shards(mesh, config.num_layers * config.num_heads, run,
                        (images, targets, logp_full), (0, 0, 0), lead=0)
  shape = (config.num_layers, config.num_heads, images.shape[0])
  return {k: v.reshape(shape) for k, v in m.items()}


def ablation_scan(params, config, state, targets, reference, chunk, objective, mesh=None):
  """The single-head ablation scan and, with a MAP head, its pooling row, from one unmasked
  forward's intermediates `state` -> ({metric: [L, H, B]}, {metric: [H, B]} or None).
  mesh: a ('batch', 'masks') mesh to split the scan's heads over, or None."""
  blocks = _layer_scan(params, config, state['Transformer'], targets, reference, chunk,
                          objective, mesh)
  pool = (_pool_ablation(params, config, state, targets, reference, objective, chunk)
          if config.has_pool_attention else None)
  return blocks, pool


@functools.partial(jax.jit, static_argnums=(1, 4, 5))
def ablation_pool_batch(params, config: ViTConfig, images, labels, chunk: int = 8,
                        objective: Optional[Objective] = None):
  """Every single-head ablation, reusing what the ablation cannot change, plus the pooling
  heads of a MAP head.

  Masking head h of layer l leaves layers < l and the other heads of layer l as they were:
  one unmasked forward records, per layer, the residual stream after attention and each
  head's output; removing head h is subtracting its share of the `out` projection from that
  stream, and only the rest of layer l (its MLP) and the layers after it are run again,
  vmapped over the heads. A pooling head is removed by rerunning only the MAP head on its
  recorded input. -> ({metric: [L, H, B]}, {metric: [H, B]} or None, full outputs).
  """
  obj = resolve_objective(config, objective)
  targets, reference, state, out = unmasked_forward(params, config, images, labels, obj)
  if not model_lib.supports_prefix_reuse(config):  # intercepted: full forwards
    return (single_head_forwards(params, config, images, targets, reference, chunk, obj), None,
            out)
  return (*ablation_scan(params, config, state, targets, reference, chunk, obj), out)


def ablation_batch(params, config: ViTConfig, images, labels, chunk: int = 8,
                   objective: Optional[Objective] = None):
  """ablation_pool_batch without the pooling row -> ({metric: [L, H, B]}, full outputs)."""
  blocks, _, out = ablation_pool_batch(params, config, images, labels, chunk, objective)
  return blocks, out


def ablation_strategy(config: ViTConfig) -> str:
  """How the single-head ablation scan runs, for cost tables and reports."""
  n = config.num_layers * config.num_heads
  if model_lib.supports_prefix_reuse(config):
    return (f'prefix reuse: one unmasked forward, then per head only the rest of its layer '
            f'and the layers after it ({n} partial forwards, about L/2 layers each)')
  return (f'full forwards vmapped over the {n} single-head masks (no prefix reuse: the model '
          f'is intercepted, not resumable mid-way; about L/2 times the cost of prefix reuse)')
