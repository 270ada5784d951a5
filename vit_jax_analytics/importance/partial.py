"""Partial pruning: part of one head's attention removed (local/global by radius, to/from the
class token, a query region), by prefix reuse, or by rerunning the whole model for models
that cannot resume mid-way."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax_analytics import model as model_lib, prefix_reuse
from vit_jax_analytics.errors import OptionError
from vit_jax_analytics.importance.forwards import unmasked_forward
from vit_jax_analytics.importance.objective import Objective, image_metrics, resolve_objective
from vit_jax_analytics.model import ViTConfig


@dataclasses.dataclass(frozen=True)
class PartialVariant:
  name: str
  description: str
  keep: np.ndarray  # [T, T] multiplier on the attention weights (query, key)


def partial_variants(config: ViTConfig, radii=(1, 2, 3), region=None,
                     strict: bool = True) -> list:
  """The ways of removing part of a head's attention.

  region: (row0, col0, row1, col1) in patch units, half-open; default the central half.
  Grids may be rectangular (h x w); tokens before the patches (class token, registers) are
  untouched by the spatial variants. strict=False (a NaFlex batch's own grid, checked
  strictly on the canvas): a radius may reach past the grid, and `region` is clipped to it.
  """
  (gh, gw), cls, pre = config.grid_shape, int(config.has_cls_token), config.num_prefix_tokens
  t = config.num_tokens
  rows, cols = np.divmod(np.arange(gh * gw), gw)
  cheb = np.maximum(abs(rows[:, None] - rows[None]), abs(cols[:, None] - cols[None]))
  variants = []

  def patch_pairs(remove):  # remove [P, P] over patch pairs; class-token pairs untouched
    keep = np.ones((t, t), np.float32)
    keep[pre:, pre:] = 1. - remove
    return keep

  for r in radii:
    if strict and r >= max(gh, gw):
      raise OptionError('partial_radii', f'radius {r} must be below the patch grid size '
                        f'{max(gh, gw)}')
    variants.append(PartialVariant(f'local_r{r}', f'attention to keys within Chebyshev '
                                   f'distance {r} of the query patch removed',
                                   patch_pairs((cheb <= r).astype(np.float32))))
    variants.append(PartialVariant(f'global_r{r}', f'attention to keys farther than {r} '
                                   f'patches from the query patch removed',
                                   patch_pairs((cheb > r).astype(np.float32))))
  if cls:
    keep = np.ones((t, t), np.float32)
    keep[:, 0] = 0.
    variants.append(PartialVariant('to_cls', 'attention to the class token removed', keep))
    keep = np.ones((t, t), np.float32)
    keep[0, :] = 0.
    variants.append(PartialVariant('from_cls', "the class token's own attention removed", keep))
  if region is None:
    region = (gh // 4, gw // 4, gh - gh // 4, gw - gw // 4)
  r0, c0, r1, c1 = region
  if not strict:
    r0, r1, c0, c1 = min(r0, gh), min(r1, gh), min(c0, gw), min(c1, gw)
  elif not (0 <= r0 < r1 <= gh and 0 <= c0 < c1 <= gw):
    raise OptionError('partial_region', f'{tuple(region)}: expected row0 < row1 and '
                      f'col0 < col1 within the {gh} x {gw} patch grid')
  inside = (rows >= r0) & (rows < r1) & (cols >= c0) & (cols < c1)
  for name, queries in (('region_in', inside), ('region_out', ~inside)):
    keep = np.ones((t, t), np.float32)
    keep[pre:][queries] = 0.
    variants.append(PartialVariant(
        name, f"attention of query patches {'inside' if name == 'region_in' else 'outside'} "
              f'rows {r0}-{r1 - 1}, columns {c0}-{c1 - 1} removed', keep))
  return variants


def edit_attention(w, keep, renormalize: bool):
  """Attention weights w [..., Q, K] times the multiplier keep (broadcast), renormalised
  over the keys when `renormalize` (a query whose kept weights are all 0 keeps none)."""
  w_kept = w * keep.astype(w.dtype)
  if renormalize:
    total = jnp.sum(w_kept, -1, keepdims=True)
    w_kept = jnp.where(total > 0, w_kept / jnp.where(total > 0, total, 1.), 0.)
  return w_kept


def partial_whole_model(params, config, images, targets, logp_full, head_index, keeps,
                        renormalize, chunk, objective: Objective):
  """Partial pruning by rerunning the whole model with the edit in each head's layer (for
  intercepted models, which cannot resume mid-way; the layer may be traced)
  -> {metric: [P, V, B]}."""
  h_count, p_count, v_count = config.num_heads, head_index.shape[0], keeps.shape[0]

  def run(pair):
    flat_head, keep = pair
    layer = flat_head // h_count
    edit_mask = 1. - jax.nn.one_hot(flat_head % h_count, h_count)[:, None, None] * (
        1. - keep)[None]                                                # [H, T, T]

    def edit(weights, l):
      return jnp.where(l == layer, edit_attention(weights, edit_mask, renormalize), weights)

    out = model_lib.apply(params, config, images, attention_edit=edit)
    return image_metrics(out, targets, logp_full, objective)

  pairs = (jnp.repeat(head_index, v_count), jnp.tile(keeps, (p_count, 1, 1)))
  m = jax.lax.map(run, pairs, batch_size=chunk)
  return {k: v.reshape(p_count, v_count, -1) for k, v in m.items()}


def partial_reuse(params, config, blocks, targets, logp_full, head_index, keeps,
                  renormalize, layers, chunk, objective: Objective):
  """Partial pruning with prefix reuse -> {metric: [P, V, B]}, one row per head of
  head_index [P] (flat indices, ascending; `layers` [P] theirs), one column per keeps [V].

  Removing part of head h's attention in layer l changes only head h's output, by
  (w - w_edited) @ v_h; its share of the `out` projection is subtracted from the recorded
  residual stream after layer l's attention, and only the rest of layer l (its MLP) and the
  later layers run again (one compiled graph for every layer, see
  `prefix_reuse.run_from_layer`), as in the ablation scan. Head h's weights and values are recomputed from the recorded block
  input (one head's projections, not the layer's). `layers` may be traced.
  """
  stacked = prefix_reuse.stacked_layers(params, config)
  inputs_all = prefix_reuse.stacked_intermediates(blocks, config, 'block_input')  # [L, B, T, D]
  post_all = prefix_reuse.stacked_intermediates(blocks, config, 'post_attention')

  def per_head(head_layer):
    flat_head, layer = head_layer
    h = flat_head % config.num_heads
    p = jax.tree.map(lambda a: a[layer], stacked)
    w, v = model_lib.one_head_attention(p, config, inputs_all[layer], h)
    out_kernel = p['MultiHeadDotProductAttention_1']['out']['kernel'][h]   # [D/H, D]
    post = post_all[layer]

    def per_variant(keep):
      removed = jnp.einsum('bqk,bke->bqe', w - edit_attention(w, keep, renormalize), v)
      share = jnp.einsum('bte,ed->btd', removed, out_kernel)
      out = prefix_reuse.run_from_layer(params, config, stacked, post - share, layer,
                                        skip_first_attention=True)
      return image_metrics(out, targets, logp_full, objective)

    return jax.lax.map(per_variant, keeps, batch_size=chunk)

  return jax.lax.map(per_head, (jnp.asarray(head_index), jnp.asarray(layers, jnp.int32)))


@functools.partial(jax.jit, static_argnums=(1, 6, 8, 9))
def partial_batch(params, config: ViTConfig, images, labels, head_index, keeps,
                  renormalize: bool, layers, chunk: int = 8, objective=None):
  """Partial pruning of one batch with prefix reuse -> {metric: [P, V, B]}
  (see partial_reuse; head_index sorted ascending, `layers` their layers)."""
  objective = resolve_objective(config, objective)
  targets, logp_full, state, _ = unmasked_forward(params, config, images, labels, objective)
  return partial_reuse(params, config, state['Transformer'], targets, logp_full, head_index,
                       keeps, renormalize, layers, chunk, objective)
