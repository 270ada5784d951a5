"""A tiny random ViT and images, shared by the analysis tests."""

import jax
import numpy as np

from vit_jax_analytics import model as model_lib
from vit_jax_analytics.model import ViTConfig

TINY = ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_layers=3, num_heads=4,
                 mlp_dim=64, num_classes=5)


def tiny_params(config=TINY, seed=0, attention_scale=1.5):
  """Random weights with a non-zero classifier and peaked (non-uniform) attention."""
  params = model_lib.init_params(config, jax.random.key(seed))
  params = jax.tree.map(np.asarray, params)
  rng = np.random.default_rng(seed)
  params['head']['kernel'] = rng.normal(0, 1, params['head']['kernel'].shape).astype(np.float32)
  for i in range(config.num_layers):
    att = params['Transformer'][f'encoderblock_{i}']['MultiHeadDotProductAttention_1']
    for name in ('query', 'key'):
      att[name]['kernel'] = att[name]['kernel'] * attention_scale
  return params


def tiny_images(n, config=TINY, seed=1):
  return np.random.default_rng(seed).uniform(
      -1, 1, (n, config.image_size, config.image_size, 3)).astype(np.float32)
