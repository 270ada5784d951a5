"""A Flax Vision Transformer with per-head masks and per-layer attention hooks.

Module and parameter names mirror google-research/vision_transformer
(`vit_jax/models_vit.py`, with the pre-linen block names its `.npz` files carry), so those
checkpoints load by name:

  embedding/{kernel,bias}                                   conv [p, p, 3, D]
  cls                                                       [1, 1, D] (classifier='token')
  Transformer/posembed_input/pos_embedding                  [1, T, D]
  Transformer/encoderblock_{i}/LayerNorm_0
  Transformer/encoderblock_{i}/MultiHeadDotProductAttention_1/{query,key,value}/kernel [D, H, D/H]
  Transformer/encoderblock_{i}/MultiHeadDotProductAttention_1/out/kernel              [H, D/H, D]
  Transformer/encoderblock_{i}/LayerNorm_2
  Transformer/encoderblock_{i}/MlpBlock_3/Dense_{0,1}
  Transformer/encoder_norm
  pre_logits (optional, tanh), head

and, beyond vit_jax, big_vision's pooling head `MAPHead_0/{probe, MultiHeadDotProductAttention_0,
LayerNorm_0, MlpBlock_0}` (classifier='map': a learned probe attends to all tokens) and
`registers` [1, R, D] (extra tokens without a position embedding, after the class token).

Token layout: [class token (classifier='token')] + [R registers] + [h x w patches, row-major].
`ViTConfig.num_prefix_tokens` tokens come before the patches; `grid_shape` is (h, w).

Shapes in this package: B batch, L layers, H heads, T tokens (= Q queries = K keys),
D hidden size.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
# attention_reduce(weights [B, H, Q, K], layer) -> any pytree; stacked over layers to [L, ...].
AttentionReduce = Callable[[Array, int], Any]
# attention_edit(weights [B, H, Q, K], layer) -> weights [B, H, Q, K]; applied after softmax.
AttentionEdit = Callable[[Array, int], Array]


from vit_jax_analytics import blocks
from vit_jax_analytics.blocks import (ACTIVATIONS, MlpBlock, activation_fn,  # noqa: F401
                                      mlp_for)
# ViTConfig moved to config.py; imported from here as before.
from vit_jax_analytics.config import CONFIGS, POOLINGS, ViTConfig, get_config  # noqa: F401


def dot_product_attention(q, k, v, attention_edit: Optional[AttentionEdit] = None, layer=0,
                          mask=None):
  """The attention of every head, the one implementation in this package (the model, the
  intercepted foreign models and importance's one-head recomputation all call it).
  q [..., Q, H, D/H], k and v [..., K, H, D/H] (as the projections make them); mask
  (optional, broadcast to [..., H, Q, K]): False where a key is hidden; attention_edit is
  applied to the weights after the softmax -> (heads [..., Q, H, D/H], weights
  [..., H, Q, K])."""
  head_dim = q.shape[-1]
  # Heads first, [..., H, T, D/H], for the two attention products: with the heads axis
  # between tokens and features ([..., T, H, D/H], as the projections make them), XLA's
  # CPU backend ran q k^T - softmax - (.) v about 2x slower (ViT-B/16, 4 images: 26.1 vs
  # 12.7 ms a layer; benchmarks/bench_forward.py); the same sums either way.
  q, k, v = (jnp.swapaxes(a, -3, -2) for a in (q, k, v))
  logits = jnp.einsum('...hqd,...hkd->...hqk', q / jnp.sqrt(head_dim).astype(q.dtype), k)
  if mask is not None:
    logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
  weights = jax.nn.softmax(logits, axis=-1)
  if attention_edit is not None:
    weights = attention_edit(weights, layer)
  heads = jnp.swapaxes(jnp.einsum('...hqk,...hkd->...hqd', weights, v), -3, -2)
  return heads, weights


def one_head_attention(block_params, config: 'ViTConfig', block_input, h):
  """Head h's attention weights [B, Q, K] and values [B, K, D/H] in the encoder block with
  parameters `block_params`, recomputed from the block's input [B, T, D] (its recorded
  'block_input'): the block's first LayerNorm, head h's projections alone (not the
  layer's), its q/k norms and RoPE (blocks.transform_qk), then dot_product_attention."""
  att = block_params['MultiHeadDotProductAttention_1']
  y = blocks.norm(config).apply({'params': block_params['LayerNorm_0']}, block_input)

  def proj(name):
    kernel, bias = att[name]['kernel'][:, h], att[name]['bias'][h]   # [D, D/H], [D/H]
    return (jnp.einsum('btd,de->bte', y, kernel) + bias)[:, :, None]  # [B, T, 1, D/H]

  v = proj('value')
  q, k = blocks.transform_qk(proj('query'), proj('key'), config, att, h)
  _, weights = dot_product_attention(q, k, v)
  return weights[:, 0], v[:, :, 0]


class MultiHeadDotProductAttention(nn.Module):
  """Self-attention whose per-head outputs can be scaled by a head mask; with `config`, the
  encoder's: q/k norms and RoPE as the config asks (blocks.py), applied to q and k before
  dot_product_attention."""
  num_heads: int
  config: Optional[ViTConfig] = None

  @nn.compact
  def __call__(self, x, head_mask_row=None, attention_edit=None, layer=0, inputs_kv=None):
    """x [B, Q, D] (queries), inputs_kv [B, K, D] (keys and values; default x),
    head_mask_row [H] or [B, H] -> (y [B, Q, D], weights [B, H, Q, K])."""
    d = x.shape[-1]
    kv = x if inputs_kv is None else inputs_kv
    head_dim = d // self.num_heads
    proj = functools.partial(nn.DenseGeneral, features=(self.num_heads, head_dim))
    q = proj(name='query')(x)
    k = proj(name='key')(kv)
    v = proj(name='value')(kv)
    c = self.config
    if c is not None and c.qk_norm:
      q = blocks.norm(c, 'query_norm')(q)
      k = blocks.norm(c, 'key_norm')(k)
    if c is not None and c.rope is not None:
      freqs = (self.param('rope_freqs', nn.initializers.normal(0.1),
                          (2, self.num_heads, head_dim // 2)) if c.rope == 'mixed' else None)
      q, k = blocks.rope_qk(q, k, c, freqs)
    heads, weights = dot_product_attention(q, k, v, attention_edit, layer)  # [B, T, H, D/H]
    # The per-head outputs [B, T, H, D/H], for callers that rebuild `out` without one head.
    self.sow('intermediates', 'heads', heads)
    if head_mask_row is not None:
      # Masking before `out` is what "removing head h" means in Michel et al. 2019.
      m = head_mask_row.astype(heads.dtype)
      heads = heads * (m[:, None, :, None] if m.ndim == 2 else m[None, None, :, None])
    y = nn.DenseGeneral(features=d, axis=(-2, -1), name='out')(heads)
    return y, weights


class Encoder1DBlock(nn.Module):
  config: ViTConfig

  @nn.compact
  def __call__(self, x, head_mask_row=None, attention_edit=None, layer=0,
               skip_attention=False):
    """skip_attention: x is already the residual stream after this block's attention."""
    c = self.config
    weights = None
    self.sow('intermediates', 'block_input', x)
    if not skip_attention:
      y = blocks.norm(c, 'LayerNorm_0')(x)
      y, weights = MultiHeadDotProductAttention(
          c.num_heads, c, name='MultiHeadDotProductAttention_1')(y, head_mask_row,
                                                                 attention_edit, layer)
      x = x + y
      self.sow('intermediates', 'post_attention', x)
    y = blocks.norm(c, 'LayerNorm_2')(x)
    y = mlp_for(c, 'MlpBlock_3')(y)
    return x + y, weights


class MAPHead(nn.Module):
  """big_vision's multi-head attention pooling (`MAPHead`): a learned probe attends to all
  tokens, then a LayerNorm + MLP residual; its output is the pooled token.

  Its attention weights [B, H, 1, T] are sown as 'pool_attention' (collection
  'intermediates'); `head_mask_row` masks its heads, `attention_edit(w, L)` edits them."""
  config: ViTConfig

  @nn.compact
  def __call__(self, x, head_mask_row=None, attention_edit=None):
    c = self.config
    b, _, d = x.shape
    probe = self.param('probe', nn.initializers.xavier_uniform(), (1, 1, d))
    probe = jnp.tile(probe.astype(x.dtype), (b, 1, 1))
    y, weights = MultiHeadDotProductAttention(
        c.num_heads, name='MultiHeadDotProductAttention_0')(
            probe, head_mask_row, attention_edit, c.num_layers, inputs_kv=x)
    self.sow('intermediates', 'pool_attention', weights)
    z = blocks.norm(c, 'LayerNorm_0')(y)
    y = y + MlpBlock(c.mlp_dim, c.map_activation or c.mlp_activation, name='MlpBlock_0')(z)
    return y[:, 0]


class PositionEmbedding(nn.Module):
  """x [B, T, D] + the learned embedding [1, T, D]; NaFlex (posemb_grid set): the embedding
  is stored at posemb_grid [1, gh * gw, D] and resized to the input's patch `grid` (h, w)
  by a constant matrix (blocks.naflex_posemb_matrix, float64 NumPy at trace time)."""
  posemb_grid: Optional[tuple] = None

  @nn.compact
  def __call__(self, x, grid=None):
    init = nn.initializers.normal(stddev=0.02)
    if self.posemb_grid is None:
      return x + self.param('pos_embedding', init, (1,) + x.shape[1:])
    gh, gw = self.posemb_grid
    pe = self.param('pos_embedding', init, (1, gh * gw, x.shape[-1]))[0]
    m = jnp.asarray(blocks.naflex_posemb_matrix(self.posemb_grid, grid), pe.dtype)
    return x + jnp.einsum('pq,qd->pd', m, pe).astype(x.dtype)[None]


class Encoder(nn.Module):
  """Runs blocks [first_layer, last_layer); adds the position embedding when the input is
  patch tokens from images (add_position_embedding)."""
  config: ViTConfig

  @nn.compact
  def __call__(self, x, head_mask=None, attention_reduce=None, attention_edit=None,
               first_layer=0, last_layer=None, skip_first_attention=False,
               add_position_embedding=True, registers=None, grid=None):
    """grid: the images' patch grid (h, w) (a NaFlex position embedding is resized to it)."""
    c = self.config
    last_layer = c.num_layers if last_layer is None else last_layer
    if add_position_embedding:
      if c.position_embedding:
        x = PositionEmbedding(c.posemb_grid, name='posembed_input')(x, grid)
      if registers is not None:  # after the class token, without a position embedding
        cls = int(c.has_cls_token)
        x = jnp.concatenate([x[:, :cls], jnp.tile(registers, (x.shape[0], 1, 1)), x[:, cls:]],
                            axis=1)
      if c.pre_norm:
        x = blocks.norm(c, 'pre_norm')(x)
    per_layer = []
    for i in range(first_layer, last_layer):
      mask_row = None
      if head_mask is not None:  # [L, H] or per example [B, L, H]
        mask_row = head_mask[:, i] if head_mask.ndim == 3 else head_mask[i]
      skip = skip_first_attention and i == first_layer
      x, weights = Encoder1DBlock(c, name=f'encoderblock_{i}')(
          x, mask_row, attention_edit, i, skip)
      if attention_reduce is not None and not skip:
        # Reduced here, per layer, so that [B, L, H, Q, K] never needs to exist at once.
        per_layer.append(attention_reduce(weights, i))
    if last_layer == c.num_layers and c.encoder_norm:
      x = blocks.norm(c, 'encoder_norm')(x)
    stacked = (jax.tree.map(lambda *xs: jnp.stack(xs), *per_layer)
               if per_layer else None)
    return x, stacked


class VisionTransformer(nn.Module):
  """ViT classifier or embedding model.

  __call__(inputs, head_mask=None, attention_reduce=None, attention_edit=None,
           return_attention=False, first_layer=0, last_layer=None, pool_mask=None)

  inputs: images [B, height, width, 3] in [-1, 1], or the tokens [B, T, D] entering block
    `first_layer` (position embedding included; from a call with last_layer=first_layer), or
    with skip_first_attention the residual stream after that block's attention (sown as
    'post_attention' in the 'intermediates' collection). Both let callers reuse a prefix.
  head_mask: [L, H] float, or [B, L, H] per example; 1 keeps a head, 0 removes it,
    fractions scale it.
  pool_mask: [H] or [B, H], the same for the heads of a MAP pooling head.
  attention_reduce: fn(weights [B, H, Q, K], layer) -> pytree, stacked to [L', ...].
  attention_edit: fn(weights [B, H, Q, K], layer) -> weights, to mask parts of attention;
    the MAP head's weights [B, H, 1, T] come as layer L.
  return_attention: also return all attention weights [B, L, H, Q, K].

  Returns logits [B, num_classes] (or the pooled embedding [B, D] when num_classes == 0;
  [B, T, ...] with pooling 'none'), or tokens [B, T, D] when last_layer < L; paired with the
  per-layer results when any were asked for. The MAP head's attention is sown as
  'pool_attention' (apply with mutable=['intermediates']).
  """
  config: ViTConfig

  @nn.compact
  def __call__(self, inputs, head_mask=None, attention_reduce=None, attention_edit=None,
               return_attention=False, first_layer=0, last_layer=None,
               skip_first_attention=False, pool_mask=None):
    c = self.config
    if return_attention:
      if attention_reduce is not None:
        raise ValueError('pass either return_attention or attention_reduce, not both')
      attention_reduce = lambda w, _: w
    if head_mask is not None and tuple(head_mask.shape[-2:]) != (c.num_layers, c.num_heads) or (
        head_mask is not None and head_mask.ndim not in (2, 3)):
      raise ValueError(f'head_mask: expected shape [layers, heads] = ({c.num_layers}, '
                       f'{c.num_heads}) or [batch, layers, heads], got {tuple(head_mask.shape)}')
    if pool_mask is not None and (not c.has_pool_attention or pool_mask.shape[-1] != c.num_heads):
      raise ValueError(f'pool_mask: expected [heads] = ({c.num_heads},) for a MAP-pooled '
                       f'model, got {tuple(pool_mask.shape)} (pooling {c.pooling!r})')
    x = inputs
    from_images = inputs.ndim == 4
    registers, grid = None, None
    if c.num_registers:
      registers = self.param('registers', nn.initializers.normal(0.02),
                             (1, c.num_registers, c.hidden_size))
    if from_images:
      x = nn.Conv(c.hidden_size, (c.patch_size,) * 2, strides=(c.patch_size,) * 2,
                  padding='VALID', name='embedding')(x)
      b, h, w, d = x.shape
      grid = (h, w)
      x = jnp.reshape(x, (b, h * w, d))
      if c.has_cls_token:
        cls = self.param('cls', nn.initializers.zeros, (1, 1, d))
        x = jnp.concatenate([jnp.tile(cls, (b, 1, 1)), x], axis=1)
    x, per_layer = Encoder(c, name='Transformer')(
        x, head_mask, attention_reduce, attention_edit, first_layer, last_layer,
        skip_first_attention, from_images, registers, grid)
    if last_layer is None or last_layer == c.num_layers:
      if c.has_pool_attention:  # for callers that rerun only the pooling (apply_pooling)
        self.sow('intermediates', 'pool_input', x)
      x = pool(self, c, x, pool_mask, attention_edit)
      if c.fc_norm:
        x = blocks.norm(c, 'fc_norm')(x)
      if c.representation_size is not None:
        x = jnp.tanh(nn.Dense(c.representation_size, name='pre_logits')(x))
      if c.num_classes:
        x = nn.Dense(c.num_classes, name='head', kernel_init=nn.initializers.zeros)(x)
    if attention_reduce is None:
      return x
    if return_attention:
      per_layer = jnp.moveaxis(per_layer, 0, 1)  # [L, B, H, Q, K] -> [B, L, H, Q, K]
    return x, per_layer


def pool(module, c: ViTConfig, x, pool_mask=None, attention_edit=None):
  """The encoder's output tokens [B, T, D] -> the pooled representation."""
  if c.classifier == 'token':
    return x[:, 0]
  if c.classifier == 'gap':
    return jnp.mean(x[:, c.num_prefix_tokens:], axis=1)
  if c.classifier == 'token_gap':
    return jnp.concatenate([x[:, 0], jnp.mean(x[:, c.num_prefix_tokens:], axis=1)], axis=-1)
  if c.classifier == 'token_dist':
    return jnp.concatenate([x[:, 0], x[:, 1]], axis=-1)
  if c.classifier == 'map':
    return MAPHead(c, name='MAPHead_0')(x, pool_mask, attention_edit)
  return x  # 'none'


def apply_pooling(params, config: ViTConfig, tokens, pool_mask=None, attention_edit=None):
  """The MAP head, `pre_logits` and `head` alone, on the normalised encoder output
  [B, T, D] (sown as 'pool_input'): the same output as `apply`, for callers that rerun
  only the pooling (e.g. with pool heads masked)."""
  x = MAPHead(config).apply({'params': params['MAPHead_0']}, tokens, pool_mask, attention_edit)
  if config.fc_norm:
    x = blocks.norm(config).apply({'params': params['fc_norm']}, x)
  if config.representation_size is not None:
    x = jnp.tanh(x @ params['pre_logits']['kernel'] + params['pre_logits']['bias'])
  if config.num_classes:
    x = x @ params['head']['kernel'] + params['head']['bias']
  return x


def init_params(config: ViTConfig, rng: Array):
  """Random parameters (a nested dict) for `config`."""
  images = jnp.zeros((1, *config.image_hw, 3), jnp.float32)
  return VisionTransformer(config).init(rng, images)['params']


def param_shapes(config: ViTConfig):
  """The parameter tree of `config` as jax.ShapeDtypeStruct leaves, without allocating."""
  return jax.eval_shape(lambda: init_params(config, jax.random.key(0)))


def apply(params, config: ViTConfig, inputs, **kwargs):
  """Pure-function form of `VisionTransformer(config)(inputs, **kwargs)`; a config carrying
  a `foreign_model` (families/intercept.py: any Flax linen ViT) runs that model instead."""
  foreign = getattr(config, 'foreign_model', None)
  if foreign is not None:
    return foreign.apply(params, inputs, **kwargs)
  return VisionTransformer(config).apply({'params': params}, inputs, **kwargs)


def supports_prefix_reuse(config: ViTConfig) -> bool:
  """Whether the model can resume from a layer's sown intermediates (`first_layer` with
  tokens, `skip_first_attention`): this model yes, an intercepted foreign model no."""
  return getattr(config, 'foreign_model', None) is None
