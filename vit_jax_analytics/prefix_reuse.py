"""Prefix reuse: rerun the model from layer l on a forward's recorded intermediates.

Removing a head of layer l (or part of it) leaves layers < l as they were, so an analysis
records one unmasked forward's intermediates (the 'intermediates' collection model.py sows:
each block's input, its residual stream after attention, each head's output) and runs only
the layers from l on again, through one compiled graph for every l (`run_from_layer`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vit_jax_analytics import model as model_lib
from vit_jax_analytics.model import ViTConfig


def stacked_layers(params, config):
  """Every encoder block's parameters stacked on a leading layer axis [L, ...]."""
  blocks = [params['Transformer'][f'encoderblock_{i}'] for i in range(config.num_layers)]
  return jax.tree.map(lambda *a: jnp.stack(a), *blocks)


def stacked_intermediates(blocks, config, *path):
  """A sown intermediate of every layer, stacked: [L, ...]."""
  def get(i):
    x = blocks[f'encoderblock_{i}']
    for key in path:
      x = x[key]
    return x[0]
  return jnp.stack([get(i) for i in range(config.num_layers)])


def run_from_layer(params, config: ViTConfig, stacked, x, start, head_mask=None,
                   skip_first_attention=False):
  """The model from layer `start` (a traced scalar) to the logits, in one compiled graph
  for every start: a scan over all layers whose body is the identity below `start`, the
  block after its attention at `start` when skip_first_attention (x is then the residual
  stream after that attention), and the whole block above. Equals
  model.apply(params, config, x, first_layer=start, head_mask=head_mask,
  skip_first_attention=skip_first_attention). `start` must not be batched (vmapped): the
  branch is then a real branch, and layers below it cost nothing.
  """
  block = model_lib.Encoder1DBlock(config)

  def body(x, layer):
    i, p = layer
    row = None if head_mask is None else head_mask[i]
    run = lambda x: block.apply({'params': p}, x, row)[0]
    if skip_first_attention:
      after = lambda x: jax.lax.cond(
          i == start, lambda x: block.apply({'params': p}, x, row, skip_attention=True)[0],
          run, x)
    else:
      after = run
    return jax.lax.cond(i < start, lambda x: x, after, x), None

  x, _ = jax.lax.scan(body, x, (jnp.arange(config.num_layers), stacked))
  return model_lib.apply(params, config, x, first_layer=config.num_layers)
