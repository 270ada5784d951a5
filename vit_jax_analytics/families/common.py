"""Fix-ups shared by the family mappers: PyTorch linear layouts -> vit_jax kernels, LayerScale
folding, distillation tokens as registers."""

from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np

from vit_jax_analytics.checkpoints.layout import load_dtype
from vit_jax_analytics.errors import CheckpointError
from vit_jax_analytics.model import ViTConfig

ATTN = 'MultiHeadDotProductAttention_1'


class Mapped(NamedTuple):
  """What a family mapper returns: flat vit_jax-layout params, the config, and a description
  ({'family', 'format', 'posemb_resize', 'ignored': [...], ...}) for `vit-analytics info`."""
  flat: dict
  config: ViTConfig
  source: dict


class TensorReader:
  """Reads a checkpoint's tensors by name below `prefix`, remembering which were read (`used`:
  the others are listed as ignored); a missing one is a CheckpointError naming it and what
  was expected (`expected`, e.g. 'a dinov3_vit checkpoint')."""

  def __init__(self, tensors: dict, prefix: str, path, expected: str):
    self.tensors, self.prefix, self.path, self.expected = tensors, prefix, path, expected
    self.used = set()

  def __call__(self, name: str, optional: bool = False, prefix: Optional[str] = None):
    key = (self.prefix if prefix is None else prefix) + name
    if key in self.tensors:
      self.used.add(key)
      return self.tensors[key]
    if optional:
      return None
    raise CheckpointError(f'{self.path}: missing tensor {key!r}; expected {self.expected}')


def check_float(tensors: dict, names, path) -> None:
  """Refuses a weight stored as integers or booleans: cast to float it would run as
  nonsense (an I32 tensor's values read as ~1e9), where a float dtype was meant."""
  for name in sorted(names):
    dtype = np.asarray(tensors[name]).dtype
    if dtype.kind != 'f' and 'float' not in dtype.name:  # ml_dtypes' bfloat16: kind 'V'
      raise CheckpointError(f'{path}: tensor {name!r} has dtype {dtype}; expected '
                            f'floating-point weights (float32, float16 or bfloat16)')


def f32(a) -> np.ndarray:
  """`a` in the load dtype: float32, or float64 in JAX's 64-bit mode (so that the folds
  below are computed in float64 there; layout.load_dtype)."""
  return np.asarray(a, load_dtype())


def zeros(shape) -> np.ndarray:
  return np.zeros(shape, load_dtype())


def block(i: int) -> str:
  return f'Transformer/encoderblock_{i}'


def put_linear(out: dict, key: str, weight, bias, in_out: bool = False) -> None:
  """A torch Linear (weight [out, in], or [in, out] when in_out) as a Dense kernel/bias."""
  w = f32(weight)
  w = w if in_out else w.T
  out[f'{key}/kernel'] = w
  out[f'{key}/bias'] = f32(bias) if bias is not None else zeros(w.shape[1])


def put_attention(out: dict, i: int, heads: int, q, k, v, o, in_out: bool = False) -> None:
  """q, k, v, o: (weight, bias) pairs of torch Linears (weight [out, in] unless in_out)."""
  base = f'{block(i)}/{ATTN}'
  for name, (w, b) in (('query', q), ('key', k), ('value', v)):
    w = f32(w) if in_out else f32(w).T          # [D_in, D]
    d_in, d = w.shape
    out[f'{base}/{name}/kernel'] = w.reshape(d_in, heads, d // heads)
    b = zeros(d) if b is None else f32(b)
    out[f'{base}/{name}/bias'] = b.reshape(heads, d // heads)
  w, b = o
  w = f32(w) if in_out else f32(w).T            # [D, D_out]
  d, d_out = w.shape
  out[f'{base}/out/kernel'] = w.reshape(heads, d // heads, d_out)
  out[f'{base}/out/bias'] = zeros(d_out) if b is None else f32(b)


def put_norm(out: dict, key: str, weight, bias) -> None:
  """A LayerNorm's weight and bias; an RMSNorm's weight alone (bias None)."""
  out[f'{key}/scale'] = f32(weight)
  if bias is not None:
    out[f'{key}/bias'] = f32(bias)


def fold_layer_scale(out: dict, i: int, ls1=None, ls2=None) -> None:
  """LayerScale (x + ls * f(x)) folded into the last linear of f: `out` of the attention
  (ls1) and `Dense_1` of the MLP (ls2). Exact in real arithmetic; it keeps the sown
  `heads`/`post_attention` intermediates (and so the ablation scan's prefix reuse) exact."""
  if ls1 is not None:
    s = f32(ls1)
    out[f'{block(i)}/{ATTN}/out/kernel'] = out[f'{block(i)}/{ATTN}/out/kernel'] * s
    out[f'{block(i)}/{ATTN}/out/bias'] = out[f'{block(i)}/{ATTN}/out/bias'] * s
  if ls2 is not None:
    s = f32(ls2)
    out[f'{block(i)}/MlpBlock_3/Dense_1/kernel'] = out[f'{block(i)}/MlpBlock_3/Dense_1/kernel'] * s
    out[f'{block(i)}/MlpBlock_3/Dense_1/bias'] = out[f'{block(i)}/MlpBlock_3/Dense_1/bias'] * s


def patch_kernel(weight, bias=None) -> tuple:
  """torch Conv2d weight [D, 3, p, p] -> flax [p, p, 3, D]; a missing bias (CLIP) is zero."""
  w = f32(weight)
  if w.ndim != 4:
    raise ValueError(f'patch embedding weight has shape {w.shape}; expected [D, 3, p, p]')
  k = w.transpose(2, 3, 1, 0)
  return k, (zeros(w.shape[0]) if bias is None else f32(bias))


def activation_of(name: Optional[str]) -> str:
  """A transformers/timm activation name -> model.ACTIVATIONS."""
  name = (name or 'gelu').lower()
  if name in ('gelu', 'gelu_python', 'nn.gelu', 'erf'):
    return 'gelu'
  if name in ('gelu_new', 'gelu_pytorch_tanh', 'gelu_fast', 'gelu_tanh', 'tanh'):
    return 'gelu_tanh'
  if name in ('quick_gelu', 'quickgelu'):
    return 'quick_gelu'
  if name in ('silu', 'swish'):
    return 'silu'
  raise ValueError(f'activation {name!r} is not supported; expected gelu, gelu_pytorch_tanh, '
                   f'quick_gelu or silu')
