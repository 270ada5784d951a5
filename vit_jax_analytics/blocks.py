"""The building blocks of recent ViTs, as `model.py` runs them: 2-D rotary position
embeddings (RoPE: EVA-02, timm's ROPE-ViT, DINOv3), q/k normalisation, gated MLPs (SwiGLU)
with an optional sub-LayerNorm (EVA-02's norm before the MLP's output projection), and the
MLP nonlinearities. Every block is chosen by plain `ViTConfig` fields whose defaults are the
original ViT's, so existing checkpoints run unchanged.

RoPE rotates pairs of query/key features of the patch tokens (never the class token or
registers) by angles linear in the patch's 2-D coordinates: angle[p, f] = coords[p] .
freqs[:, f] over the D/H / 2 pairs f. The schemes differ in the coordinates and frequencies:

  'axial'     (EVA-02, ROPE-ViT axial)  coords: patch indices (+ rope_offset; rescaled onto
              rope_ref_grid when set, EVA's fine-tuning rule); freqs: the first D/H / 4 pairs
              rotate with the first coordinate, the rest with the second, at
              temperature ** (-j / (D/H / 4)), j = 0 .. D/H / 4 - 1.
  'centered'  (DINOv3)  coords: patch centres normalised to [-1, 1] per axis; freqs as
              'axial' times 2 pi (DINOv3's periods temperature ** (j / (D/H / 4))).
  'mixed'     (ROPE-ViT mixed)  coords: patch indices; freqs: learned, per layer and head
              (`rope_freqs` [2, H, D/H / 2] in each attention), both coordinates in every pair.

Pairs are (2f, 2f + 1) ('interleaved', timm's default) or (f, f + D/H / 2) (rope_half: the
"rotate half" layout of DINOv3 and Llama). rope_xy swaps the coordinates' order (x, y) as
grid_indexing='xy' does. Tables of the fixed schemes are computed in float64 NumPy at trace
time from the config (constants), then cast to the activations' dtype.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# The MLP's nonlinearity: tanh-approximated GELU (vit_jax, big_vision), exact GELU (timm, HF
# ViT/DeiT/DINOv2), CLIP's quick GELU x * sigmoid(1.702 x), SiLU (SwiGLU's gate).
ACTIVATIONS = ('gelu_tanh', 'gelu', 'quick_gelu', 'silu')
# Every normalisation of the model: LayerNorm (scale and bias), or RMSNorm (scale only:
# x / sqrt(mean(x^2) + eps) * scale; timm's `norm_layer='rmsnorm'`, AIMv2, InternViT-6B).
NORMS = ('layer', 'rms')


def norm(config, name=None, epsilon=None):
  """The model's normalisation layer (config.norm) named `name`."""
  eps = config.layer_norm_epsilon if epsilon is None else epsilon
  kind = nn.RMSNorm if getattr(config, 'norm', 'layer') == 'rms' else nn.LayerNorm
  return kind(epsilon=eps, name=name)
ROPE_SCHEMES = ('axial', 'centered', 'mixed')


def activation_fn(name: Any):
  """One of ACTIVATIONS (or a bool: gelu_approximate) -> the function."""
  if isinstance(name, bool):
    name = 'gelu_tanh' if name else 'gelu'
  if name == 'quick_gelu':
    return lambda x: x * jax.nn.sigmoid(1.702 * x)
  if name == 'silu':
    return jax.nn.silu
  return functools.partial(nn.gelu, approximate=name == 'gelu_tanh')


class MlpBlock(nn.Module):
  """Dense_1(act(Dense_0(x))), or gated: Dense_1(norm(act(Dense_gate(x)) * Dense_0(x)))
  (SwiGLU with act 'silu'); `norm` is the optional sub-LayerNorm."""
  mlp_dim: int
  gelu_approximate: Any = True  # a bool (tanh or exact GELU) or one of ACTIVATIONS
  gated: bool = False
  norm: bool = False
  epsilon: float = 1e-6
  rms: bool = False             # the sub-norm an RMSNorm

  @nn.compact
  def __call__(self, x):
    act = activation_fn(self.gelu_approximate)
    if self.gated:
      y = act(nn.Dense(self.mlp_dim, name='Dense_gate')(x)) * nn.Dense(self.mlp_dim,
                                                                        name='Dense_0')(x)
    else:
      y = act(nn.Dense(self.mlp_dim, name='Dense_0')(x))
    if self.norm:
      kind = nn.RMSNorm if self.rms else nn.LayerNorm
      y = kind(epsilon=self.epsilon, name='norm')(y)
    return nn.Dense(x.shape[-1], name='Dense_1')(y)


def mlp_for(config, name: str) -> MlpBlock:
  """The encoder block's MLP as `config` describes it."""
  return MlpBlock(config.mlp_dim, config.mlp_activation, config.mlp_gated, config.mlp_norm,
                  config.layer_norm_epsilon, config.norm == 'rms', name=name)


# --- RoPE -------------------------------------------------------------------------------

def rope_coords(config) -> np.ndarray:
  """[N, 2] float64: each patch's coordinates (row-major patches), in the scheme's units and
  order."""
  h, w = config.grid_shape
  shape = (w, h) if config.rope_xy else (h, w)
  if config.rope == 'centered':
    axes = [(np.arange(s, dtype=np.float64) + 0.5 + config.rope_offset) / s for s in shape]
  else:
    axes = [np.arange(s, dtype=np.float64) + config.rope_offset for s in shape]
    if config.rope_ref_grid is not None and config.rope != 'mixed':
      ref = tuple(config.rope_ref_grid)
      ref = (ref[1], ref[0]) if config.rope_xy else ref
      axes = [a / s * r for a, s, r in zip(axes, shape, ref)]
  grid = np.stack(np.meshgrid(*axes, indexing='xy' if config.rope_xy else 'ij'), -1)
  coords = grid.reshape(-1, 2)
  return 2. * coords - 1. if config.rope == 'centered' else coords


def rope_freqs(config) -> np.ndarray:
  """[2, D/H / 2] float64: the fixed schemes' frequency of each pair for each coordinate."""
  quarter = config.head_dim // 4
  bands = config.rope_temperature ** (-np.arange(quarter, dtype=np.float64) / quarter)
  if config.rope == 'centered':
    bands = 2. * np.pi * bands
  zeros = np.zeros(quarter)
  return np.stack([np.concatenate([bands, zeros]), np.concatenate([zeros, bands])])


def rope_angles(config, freqs=None):
  """The rotation angles of the patch tokens' feature pairs: [N, D/H / 2] (fixed schemes,
  float64 NumPy) or, from learned `freqs` [2, H, D/H / 2] ('mixed'), [N, H, D/H / 2]."""
  coords = rope_coords(config)
  if freqs is None:
    f = rope_freqs(config)
    # Each pair rotates with one coordinate: coords[:, c] * band, no sum of products.
    return coords[:, :1] * f[0] + coords[:, 1:] * f[1]
  c = jnp.asarray(coords, freqs.dtype)
  return c[:, 0, None, None] * freqs[0] + c[:, 1, None, None] * freqs[1]


def apply_rope(x, angles, half: bool, prefix: int):
  """x [..., T, H, D/H] (queries or keys) with the patch tokens x[..., prefix:, :, :] rotated
  by angles [N, D/H / 2] or [N, H, D/H / 2]."""
  angles = jnp.asarray(angles)
  if angles.ndim == 2:
    angles = angles[:, None]
  sin, cos = jnp.sin(angles).astype(x.dtype), jnp.cos(angles).astype(x.dtype)
  head, p = x[..., :prefix, :, :], x[..., prefix:, :, :]
  if half:
    a, b = jnp.split(p, 2, axis=-1)
    rotated = jnp.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)
  else:
    a, b = p[..., 0::2], p[..., 1::2]
    rotated = jnp.stack([a * cos - b * sin, b * cos + a * sin], axis=-1).reshape(p.shape)
  return jnp.concatenate([head, rotated], axis=-3)


def rope_qk(q, k, config, freqs=None, head: Optional[int] = None):
  """RoPE on the patch tokens of queries and keys [..., T, H', D/H] (no-op without
  config.rope); freqs: the learned [2, H, D/H / 2] of 'mixed', of which `head` picks the
  one head q and k hold (H' = 1)."""
  if config.rope is None:
    return q, k
  if config.rope == 'mixed':
    # head may be traced (partial pruning maps over heads): a gather, not a slice.
    f = freqs if head is None else jnp.take(freqs, jnp.reshape(head, (1,)), axis=1)
    angles = rope_angles(config, f)
  else:
    angles = rope_angles(config)
  return (apply_rope(q, angles, config.rope_half, config.num_prefix_tokens),
          apply_rope(k, angles, config.rope_half, config.num_prefix_tokens))


def transform_qk(q, k, config, att_params: dict, head: Optional[int] = None):
  """Queries and keys [..., T, H', D/H] as the projections make them -> as the attention
  of the block with parameters `att_params` sees them: its q/k norms (over each head's
  features; `query_norm`, `key_norm`) when config.qk_norm, then RoPE. The functional twin
  of model.MultiHeadDotProductAttention's own steps."""
  if config.qk_norm:
    ln = norm(config)
    q = ln.apply({'params': att_params['query_norm']}, q)
    k = ln.apply({'params': att_params['key_norm']}, k)
  return rope_qk(q, k, config, att_params.get('rope_freqs'), head)


def check_rope(config) -> Optional[str]:
  """Why `config`'s RoPE fields are inconsistent (None when they are not)."""
  if config.rope is None:
    return None
  if config.rope not in ROPE_SCHEMES:
    return f'rope: expected one of {ROPE_SCHEMES} or None, got {config.rope!r}'
  if config.head_dim % 4:
    return f'rope needs a head width divisible by 4; got {config.head_dim}'
  return None


# --- NaFlex position embedding (SigLIP 2) ----------------------------------------------------

def antialiased_linear_matrix(old: int, new: int) -> np.ndarray:
  """[new, old] float64 weights of one axis of `F.interpolate(mode='bilinear',
  align_corners=False, antialias=True)`, as Siglip2 writes them out: the triangle filter
  widened by the downscaling factor (support max(old / new, 1)), centred at
  (i + 0.5) old / new - 0.5, renormalised over the taps."""
  scale = old / new
  support = max(scale, 1.)
  centre = (np.arange(new, dtype=np.float64) + 0.5) * scale - 0.5
  w = np.clip(1. - np.abs(np.arange(old)[None] - centre[:, None]) / support, 0., None)
  return w / w.sum(1, keepdims=True)


def naflex_posemb_matrix(old_hw, new_hw) -> np.ndarray:
  """[nh * nw, oh * ow] float64: the row-major position-embedding grid oh x ow resized to
  nh x nw (separable antialiased bilinear, rows then columns)."""
  (oh, ow), (nh, nw) = old_hw, new_hw
  return np.kron(antialiased_linear_matrix(oh, nh), antialiased_linear_matrix(ow, nw))
