"""Checkpoint I/O: vit_jax and big_vision `.npz` files, the project's own orbax format, and
(through `families/`) transformers / timm safetensors and ONNX exports.

Every loader returns `(params, config)`: `params` a nested dict named as in `model.py`
(the vit_jax layout), `config` a `ViTConfig` inferred from the array shapes unless given.

One job per module:
  dispatch  which loader reads a path (`load_checkpoint`, `load_with_source`), `info`'s family
  npz       reading `.npz` files safely (headers first, a memory budget, float weights only)
  layout    the vit_jax key layout, big_vision -> vit_jax renaming, layout detection
  infer     the config from the shapes, parameter checks, validated params
  orbax     the project's own format (atomic writes)
  posemb    position embeddings: sin-cos, and every resampler (bilinear, bicubic, antialiased)
"""

from vit_jax_analytics.checkpoints.dispatch import (describe_family, load_checkpoint,
                                                    load_with_source, source_format,
                                                    split_subtree)
from vit_jax_analytics.checkpoints.infer import (check_params, infer_config, params_from_flat,
                                                 posemb_grid)
from vit_jax_analytics.checkpoints.layout import (POSEMB_KEY, big_vision_to_vit_jax,
                                                  detect_layout, flatten, unflatten)
from vit_jax_analytics.checkpoints.npz import load_class_matrix, load_npz, read_npz
from vit_jax_analytics.checkpoints.orbax import load_orbax, save_checkpoint, save_orbax
from vit_jax_analytics.checkpoints.posemb import posemb_sincos_2d, resize_position_embedding

__all__ = [
    'POSEMB_KEY', 'big_vision_to_vit_jax', 'check_params', 'describe_family', 'detect_layout',
    'flatten', 'infer_config', 'load_checkpoint', 'load_class_matrix', 'load_npz',
    'load_orbax', 'load_with_source', 'params_from_flat', 'posemb_grid', 'posemb_sincos_2d',
    'read_npz', 'resize_position_embedding', 'save_checkpoint', 'save_orbax', 'source_format',
    'split_subtree', 'unflatten',
]
