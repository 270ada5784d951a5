"""The project's own checkpoint format: params and a JSON config in an orbax directory,
written atomically."""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path
from typing import Mapping, Optional

import numpy as np

from vit_jax_analytics import atomic
from vit_jax_analytics.checkpoints.infer import params_from_flat
from vit_jax_analytics.checkpoints.layout import flatten, unflatten
from vit_jax_analytics.checkpoints.npz import to_float32
from vit_jax_analytics.errors import CheckpointError
from vit_jax_analytics.model import ViTConfig


def save_checkpoint(path, params, config: ViTConfig) -> Path:
  """Writes a ViT's params + config as an orbax checkpoint directory, atomically."""
  return save_orbax(path, params, config.to_dict())


def save_orbax(path, params, config: dict) -> Path:
  """Writes a params pytree + a JSON config as an orbax directory, atomically.

  Orbax writes into a temporary directory first; the finished directory is renamed over
  `path`, so a reader never sees a half-written checkpoint. With several processes
  (jax.distributed), the calling process writes alone, waiting for no other. On an object
  store (`path` an fsspec URL) the directory is written locally and then uploaded, file by
  file: not atomic there (storage.py).
  """
  import jax
  import orbax.checkpoint as ocp  # heavy import, only where needed

  from vit_jax_analytics import storage
  if storage.is_url(path):
    local = Path(tempfile.mkdtemp(prefix='vit-analytics-upload-'))
    try:
      save_orbax(local / 'ckpt', params, config)
      storage.upload_directory(local / 'ckpt', storage.location(path))
    finally:
      shutil.rmtree(local, ignore_errors=True)
    return path

  path = Path(path).absolute()
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=f'.{path.name}.', dir=path.parent))
  try:
    staged = tmp / 'ckpt'
    params = {k: np.asarray(v) for k, v in flatten(params).items()}
    handler, alone = ocp.CompositeCheckpointHandler(), {}
    if jax.process_count() > 1:  # NumPy leaves: this process writes them, no barrier
      me = jax.process_index()
      alone['multiprocessing_options'] = ocp.options.MultiprocessingOptions(
          primary_host=me, active_processes={me})
      handler = ocp.CompositeCheckpointHandler(
          composite_options=ocp.CompositeOptions(**alone),
          params=ocp.StandardCheckpointHandler(**alone),
          config=ocp.JsonCheckpointHandler(**alone))
    with ocp.Checkpointer(handler, **alone) as ckptr:
      ckptr.save(staged, args=ocp.args.Composite(
          params=ocp.args.StandardSave(unflatten(params)),
          config=ocp.args.JsonSave(config)))
    atomic.replace_directory(staged, path)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return path


# How each ViTConfig field's annotation (a string: model.py postpones annotations) is checked.
_FIELD_TYPES = {'int': ((int,), 'an integer'), 'float': ((int, float), 'a number'),
                'bool': ((bool,), 'true or false'), 'str': ((str,), 'a string'),
                'Optional[int]': ((int, type(None)), 'an integer or null'),
                'Optional[str]': ((str, type(None)), 'a string or null'),
                'Any': ((int, list), 'an integer or [height, width]')}


def _config_from_dict(d, path) -> ViTConfig:
  """The ViTConfig of an orbax checkpoint's JSON `config`, naming the first bad field."""
  where = f'{path}/config'
  if not isinstance(d, Mapping):
    raise CheckpointError(f'{where}: expected a JSON object of ViTConfig fields, found '
                          f'{type(d).__name__}')
  fields = {f.name: f.type for f in dataclasses.fields(ViTConfig)}
  unknown = sorted(set(d) - set(fields))
  if unknown:
    raise CheckpointError(f'{where}: unknown field(s) {unknown}; expected some of '
                          f'{sorted(fields)}')
  for name, value in d.items():
    types, wanted = _FIELD_TYPES.get(fields[name], ((object,), ''))
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
      raise CheckpointError(f'{where}: field {name!r} is {value!r} ({type(value).__name__}); '
                            f'expected {wanted}')
  try:
    return ViTConfig(**d)
  except (ValueError, TypeError, ZeroDivisionError) as e:
    raise CheckpointError(f'{where}: {e}') from None


def load_orbax(path, config: Optional[ViTConfig] = None, image_size=None,
               gelu_approximate: Optional[bool] = None):
  import orbax.checkpoint as ocp

  path = Path(path).absolute()
  if not (path / 'params').is_dir() or not (path / 'config').exists():
    raise CheckpointError(f'{path} is not a checkpoint: expected an orbax directory with '
                          f"'params' and 'config' items (as written by save_checkpoint)")
  try:
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
      restored = ckptr.restore(path, args=ocp.args.Composite(
          params=ocp.args.StandardRestore(), config=ocp.args.JsonRestore()))
  except Exception as e:  # orbax raises many types; the user needs the path and the gist
    raise CheckpointError(f'{path}: cannot read orbax checkpoint ({type(e).__name__}: '
                          f'{str(e).splitlines()[0] if str(e) else ""})') from None
  saved = _config_from_dict(restored['config'], path)
  if gelu_approximate is not None:
    saved = saved.replace(gelu_approximate=gelu_approximate, activation=None)
  flat = {k: to_float32(k, v, path) for k, v in flatten(restored['params']).items()}
  return params_from_flat(flat, path, config or saved, image_size)
