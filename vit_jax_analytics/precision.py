"""Forward precision: float32 (the default) or bfloat16.

With bfloat16 the params and the images are cast before the forwards, so every matmul and
the attention run in bfloat16; what the analyses make of a forward stays in float32 (the
attention weights are reduced to statistics in float32, the model's outputs become losses,
KL and distortions in float32) and the sums over images in float64, as always. The error
this introduces against float32 is measured by benchmarks/bench_bf16.py (docs/scaling.md).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax_analytics.errors import OptionError

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}

# The --dtype help, shared by every analysis (one flag): the figures are from
# benchmarks/bench_bf16.py on the trained demo ViT (docs/scaling.md).
HELP = ('forward precision, float32 or bfloat16 (params and images cast; statistics and '
        'metrics still reduced in float32, sums in float64). On the trained demo ViT '
        'bfloat16 moves strength statistics by <= 0.3%% and Taylor and ablation scores by '
        '<= 2%% of their largest value and keeps the head order (Spearman >= 0.996); on a '
        'deeper random B/16-shaped model up to ~12%%: use it for trends, float32 for final '
        'numbers (docs/scaling.md)')


def check(owner, name: str, value) -> None:
  """Raises OptionError (naming field `name` of `owner`) unless value is a known dtype."""
  if value not in DTYPES:
    raise OptionError(name, f'expected one of {", ".join(DTYPES)}, got {value!r}', type(owner))


def parse(text: str) -> str:
  """The argparse type of --dtype (a bad value is one line naming the flag)."""
  import argparse
  if text not in DTYPES:
    raise argparse.ArgumentTypeError(f'expected one of {", ".join(DTYPES)}, got {text!r}')
  return text


def cast(tree, dtype: str):
  """The floating leaves of `tree` in `dtype`: jax.Arrays on their devices (keeping their
  sharding: no copy to the host), NumPy arrays on the host. float32 returns `tree`."""
  if dtype == 'float32':
    return tree
  target = DTYPES[dtype]
  return jax.tree.map(lambda x: x.astype(target) if jnp.issubdtype(x.dtype, jnp.floating)
                      else x, tree)


def float_dtype(params):
  """The dtype of the first floating leaf of `params` (float32 when there is none)."""
  for leaf in jax.tree.leaves(params):
    if jnp.issubdtype(leaf.dtype, jnp.floating):
      return leaf.dtype
  return np.dtype(np.float32)


def like_params(images, params):
  """Host images [B, ...] in the floating dtype of `params` (cast before they are sent to
  the devices, so bfloat16 halves the transfer)."""
  dtype = float_dtype(params)
  return images if images.dtype == dtype else np.asarray(images).astype(dtype)


def widen(x):
  """x in float32 when it is a narrower float (bfloat16, float16), else as it is (float64
  stays float64): what a forward's outputs are reduced in."""
  return x.astype(jnp.float32) if jnp.finfo(x.dtype).bits < 32 else x
