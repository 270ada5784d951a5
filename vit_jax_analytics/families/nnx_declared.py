"""Declared attention (intercept_nnx.DeclaredAttention) of NNX models whose attention is not
`nnx.MultiHeadAttention.__call__`: jax-image-models' (`jimm`) transformer block.

jimm's `TransformerEncoder.__call__(x, pos_emb)` computes its RoPE attention itself (DINOv3:
`pos_emb` = (cos, sin) of its 2-D RoPE): the block's own query/key/value projections, jimm's
own `apply_rope` on the patch tokens, softmax(q k / sqrt(D/H)), then its `attn.out`. The
twin below is that method line for line with the attention handed to `attend` (so head masks,
attention edits and records apply); LayerScale, the (gated) MLP and the residuals are the
block's own. Without `pos_emb` (jimm's ViT, CLIP, SigLIP, DINOv2 blocks) the same path runs
without RoPE; their attention dropout must be 0 (evaluation), as with nnx.MultiHeadAttention.

    from vit_jax_analytics import pipeline
    from vit_jax_analytics.families import nnx_declared
    pipeline.analyse_nnx(dinov3, images, {'cls': [0], 'registers': [1, 2, 3, 4],
                                          'grid': (14, 14)},
                         output='embedding', attention=nnx_declared.jimm_block())
"""

from __future__ import annotations

from vit_jax_analytics.families.intercept_nnx import DeclaredAttention


def _jimm_block_call(self, attend, x, pos_emb=None):
  """jimm.common.transformer.TransformerEncoder.__call__ with its attention by `attend`."""
  from jimm.common.sharding import reshard_like
  from jimm.common.transformer import apply_rope

  if self.attn.dropout_rate and not self.attn.deterministic:
    raise ValueError('jimm TransformerEncoder with attention dropout: interception runs '
                     'the model in evaluation (dropout_rate 0)')
  if self.attn_mask is not None:
    raise ValueError('jimm TransformerEncoder with an attention mask (a text tower) is not '
                     'supported')
  normed = self.norm1(x)
  batch, seq, _ = normed.shape
  split = lambda y: y.reshape(batch, seq, self.num_heads, self.head_dim)
  q, k, v = (split(p(normed)) for p in (self.attn.query, self.attn.key, self.attn.value))
  if pos_emb is not None:   # jimm's RoPE on [B, H, T, D/H]
    q, k = apply_rope(q.transpose(0, 2, 1, 3), k.transpose(0, 2, 1, 3), *pos_emb)
    q, k = q.transpose(0, 2, 1, 3), k.transpose(0, 2, 1, 3)
  attn_out = reshard_like(self.attn.out(attend(q, k, v)), x)
  x = x + (self.layer_scale1[...] * attn_out if self.use_layer_scale else attn_out)
  mlp_out = reshard_like(self._mlp(self.norm2(x)), x)
  return x + (self.layer_scale2[...] * mlp_out if self.use_layer_scale else mlp_out)


def _stack(block):
  kernel = block.attn.query.kernel[...]
  return kernel.shape[0] if kernel.ndim == 4 else None   # [L, D, H, D/H] under nnx.scan


def jimm_block() -> DeclaredAttention:
  """jimm's transformer block as the declared attention (needs jax-image-models)."""
  from jimm.common.transformer import TransformerEncoder
  return DeclaredAttention(cls=TransformerEncoder, compute=_jimm_block_call, stack=_stack)
