"""Which loader reads a checkpoint path: `.npz` (vit_jax or big_vision, one tower of a
two-tower file), the project's orbax directories, orbax PyTree checkpoints and Flax msgpack
files of JAX pipelines (a directory of a run's steps: its latest step), and the families'
formats (transformers / timm safetensors, ONNX); `describe_family` for `vit-analytics info`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from vit_jax_analytics.checkpoints.infer import params_from_flat
from vit_jax_analytics.checkpoints.layout import detect_layout
from vit_jax_analytics.checkpoints.npz import (load_npz, member_headers, open_npz,
                                               select_params, to_float32)
from vit_jax_analytics.checkpoints.orbax import load_orbax
from vit_jax_analytics.checkpoints import pytree
from vit_jax_analytics.errors import CheckpointError
from vit_jax_analytics.model import ViTConfig


def describe_family(path, config: ViTConfig) -> str:
  """One line naming the model family of a checkpoint, for `vit-analytics info`."""
  path, subtree = split_subtree(path)
  fmt = source_format(path)
  if fmt in ('orbax_pytree', 'msgpack', 'steps'):
    source = load_with_source(path if subtree is None else f'{path}:{subtree}', config)[2]
    where = '' if source['params_at'] == '/' else f" at '{source['params_at']}'"
    steps = (f", latest of {len(source['steps'])} training steps" if 'steps' in source
             else '')
    return f"{source['family']}: {source['format']}, params{where}{steps}"
  if path.is_dir():
    return 'vit-jax-analytics orbax checkpoint (ViT)'
  with open_npz(path) as zf:
    keys = [i.filename[:-len('.npy')] for i in zf.infolist()]
  _, tower = select_params(keys, path, subtree)
  layout = detect_layout({k: None for k in keys})
  if tower:
    kind = ('SigLIP-style two-tower model (big_vision), image tower '
            f"'{tower}': embedding output" +
            (' (MAP-head pooling)' if config.classifier == 'map' else ''))
  elif layout == 'big_vision':
    kind = f'big_vision ViT ({config.pooling} pooling)'
  else:
    kind = 'google-research/vision_transformer ViT'
  scanned = any(k.split('/', 2)[-1].startswith('Transformer/encoderblock/') or
                '/Transformer/encoderblock/' in k for k in keys)
  return kind + (', scanned encoder' if scanned else '')


def load_checkpoint(path, config: Optional[ViTConfig] = None, image_size=None,
                    gelu_approximate: Optional[bool] = None, pooling: Optional[str] = None):
  """(params, config) from an `.npz` (vit_jax or big_vision), an orbax directory, a Hugging
  Face `transformers` checkpoint (`.safetensors` file with config.json beside it, or its
  directory), a timm state dict (`.safetensors` without config.json) or an ONNX export
  (`.onnx`); see `load_with_source`.

  image_size: S or (height, width): resize the position embedding to this resolution
    (bilinear per axis, class token kept); also what tells a rectangular grid's shape.
  gelu_approximate: GELU variant; vit_jax and big_vision train with the tanh form (default).
  A path 'file.npz:img' loads the subtree 'img' of the file's params (one tower of a
  two-tower model such as SigLIP; found by itself when the params have an img/ subtree).
  """
  params, config, _ = load_with_source(path, config, image_size, gelu_approximate, pooling)
  return params, config


def source_format(path) -> str:
  """'npz', 'orbax' (this project's), 'orbax_pytree', 'steps' (a directory of a training
  run's checkpoints), 'msgpack', 'safetensors' or 'onnx', from the path alone."""
  path = Path(path)
  if path.is_dir():
    if (path / 'config.json').exists() or any(path.glob('*.safetensors')):
      return 'safetensors'
    if any(path.glob('*.onnx')) and not (path / 'params').exists():
      return 'onnx'
    if (path / 'params').is_dir() and (path / 'config').exists():
      return 'orbax'
    if pytree.training_steps(path):
      return 'steps'
    if pytree.is_orbax_pytree(path) or any(pytree.is_orbax_pytree(p) for p in path.iterdir()):
      return 'orbax_pytree'
    return 'orbax'
  suffix = path.suffix.lower()
  if suffix not in ('.safetensors', '.onnx', '.npz') and pytree.is_msgpack(path):
    return 'msgpack'
  return {'.safetensors': 'safetensors', '.onnx': 'onnx'}.get(suffix, 'npz')


def load_with_source(path, config: Optional[ViTConfig] = None, image_size=None,
                     gelu_approximate: Optional[bool] = None, pooling: Optional[str] = None):
  """(params, config, source): `source` says which family and format the weights came
  from, how the position embedding is resampled, and what of the file was not used.
  An object-store URL (gs://, s3://, ... through fsspec) is read through a local copy."""
  from vit_jax_analytics import storage
  if storage.is_url(path):
    return _load_remote(str(path), config, image_size, gelu_approximate, pooling)
  path, subtree = split_subtree(path)
  if not path.exists():
    raise CheckpointError(f'{path}: no such checkpoint file or directory')
  fmt = source_format(path)
  if fmt in ('safetensors', 'onnx'):
    if fmt == 'safetensors':
      from vit_jax_analytics.families import hf
      mapped = hf.load(path, image_size)
    else:
      from vit_jax_analytics.families import onnx_graph
      mapped = onnx_graph.load(path if path.is_file() else sorted(path.glob('*.onnx'))[0],
                               image_size)
    mapped_config = mapped.config
    if gelu_approximate is not None:
      mapped_config = mapped_config.replace(gelu_approximate=gelu_approximate, activation=None)
    flat = {k: to_float32(k, v, path) for k, v in mapped.flat.items()}
    params, cfg = params_from_flat(flat, path, config or mapped_config)
    return params, cfg, dict(mapped.source)
  if fmt == 'steps':  # a training run's directory: its latest step
    steps = pytree.training_steps(path)
    latest = max(steps)
    params, cfg, source = load_with_source(
        steps[latest] if subtree is None else f'{steps[latest]}:{subtree}', config,
        image_size, gelu_approximate, pooling)
    return params, cfg, {**source, 'step': latest, 'steps': list(steps)}
  if fmt == 'orbax_pytree':
    return pytree.load_orbax_pytree(path, config, image_size, gelu_approximate, subtree,
                                    pooling)
  if fmt == 'msgpack':
    return pytree.load_msgpack(path, config, image_size, gelu_approximate, subtree, pooling)
  if path.is_dir():
    params, cfg = load_orbax(path, config, image_size, gelu_approximate)
    return params, cfg, {'family': 'ViT (this project)', 'format': 'orbax',
                         'posemb_resize': 'bilinear'}
  params, cfg = load_npz(path, config, image_size, gelu_approximate, subtree, pooling)
  with open_npz(path) as zf:
    layout = detect_layout({k: None for k in member_headers(zf, path)})
  return params, cfg, {'family': f'ViT ({layout})', 'format': 'npz',
                       'posemb_resize': 'bilinear'}


def _load_remote(url, config, image_size, gelu_approximate, pooling):
  from vit_jax_analytics import storage
  url, subtree = storage.split_url_subtree(url)
  try:
    remote = storage.location(url)
  except ValueError as e:
    raise CheckpointError(str(e)) from None
  steps = pytree.training_steps(remote)
  latest = {}
  if steps:  # a run's checkpoints: copy the latest step only
    latest = {'step': max(steps), 'steps': list(steps)}
    remote = steps[max(steps)]
  with storage.local_copy(str(remote)) as local:
    params, cfg, source = load_with_source(local if subtree is None else f'{local}:{subtree}',
                                           config, image_size, gelu_approximate, pooling)
  return params, cfg, {**source, **latest, 'remote': url}


def split_subtree(path):
  """'file.npz:img' -> (file.npz, 'img'): big_vision's syntax for one tower of a model.
  Split only when the part before the last ':' exists ('dir:params' picks the params
  subtree of an orbax checkpoint)."""
  whole = Path(path)
  head, sep, tail = str(path).rpartition(':')
  if not whole.exists() and sep and tail and Path(head).exists():
    return Path(head), tail
  return whole, None
