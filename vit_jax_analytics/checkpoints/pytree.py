"""Checkpoints as JAX training pipelines write them: an orbax PyTree checkpoint (orbax's
`StandardCheckpointer` / `PyTreeCheckpointer`, or one step of a `CheckpointManager`) or a Flax
msgpack file (`flax.training.checkpoints`, `flax.serialization.to_bytes`), whose params tree
is in the vit_jax or big_vision layout, or an NNX model's state (families/nnx_state.py),
anywhere in the saved tree: at the top, under 'params', or inside a train state
({'params': ..., 'opt_state': ..., 'step': ...}). The config is inferred from the shapes, as
for `.npz`; only the params subtree is read (of an NNX state, only the arrays mapped).

Where the params are is found by their patch embedding (`.../embedding/kernel`, an NNX
state's `.../encoder/patch_embeddings/kernel[/value]`); copies of
the params tree inside an optimizer's state (optax's `mu`, `nu`, ...) are not candidates.
Several candidates left (e.g. 'params' and 'ema_params') are refused, naming them: pick one
with `PATH:SUBTREE`, as for one tower of an `.npz`.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Mapping, NamedTuple, Optional

import numpy as np

from vit_jax_analytics.checkpoints.infer import params_from_flat
from vit_jax_analytics.checkpoints.layout import detect_layout
from vit_jax_analytics.checkpoints.npz import (_check_budget, _params_from_file_layout,
                                               _shape_only, to_float32)
from vit_jax_analytics.errors import CheckpointError
from vit_jax_analytics.families import nnx_state
from vit_jax_analytics.model import ViTConfig

# Files an orbax PyTree checkpoint directory holds (one is enough to tell it).
ORBAX_MARKS = ('_METADATA', 'manifest.ocdbt', '_sharding')
# Path components under which a copy of the params tree is optimizer state, not params.
OPTIMIZER_MARKS = frozenset({'opt_state', 'optimizer', 'opt', 'mu', 'nu', 'trace',
                             'momentum', 'exp_avg', 'exp_avg_sq', 'grads', 'grad'})
_PATCH = 'embedding/kernel'


class _Leaf(NamedTuple):
  """A saved array as its metadata declares it (for the memory budget)."""
  shape: tuple
  dtype: np.dtype

  @property
  def nbytes(self) -> int:
    return math.prod(self.shape) * np.dtype(self.dtype).itemsize


def is_orbax_pytree(path: Path) -> bool:
  return path.is_dir() and any((path / m).exists() for m in ORBAX_MARKS)


def is_msgpack(path: Path) -> bool:
  """A Flax msgpack file: '.msgpack', or a file starting with a msgpack map (flax's
  `checkpoint_<step>` files have no suffix)."""
  if not path.is_file():
    return False
  if path.suffix.lower() == '.msgpack':
    return True
  with open(path, 'rb') as f:
    head = f.read(1)
  return bool(head) and (0x80 <= head[0] <= 0x8f or head[0] in (0xde, 0xdf))


def items(path: Path) -> dict:
  """{item name: directory} of the orbax PyTree checkpoints at `path`: the directory itself
  (name ''), or each item of a CheckpointManager step (`default`, or named items)."""
  if is_orbax_pytree(path):
    return {'': path}
  found = {p.name: p for p in sorted(path.iterdir()) if is_orbax_pytree(p)}
  if not found:
    raise CheckpointError(
        f'{path} is not a checkpoint: expected an orbax directory (with _METADATA, as '
        f"orbax's StandardCheckpointer / PyTreeCheckpointer / CheckpointManager write; or "
        f"'params' and 'config' items, as save_checkpoint writes)")
  return found


def _flatten(tree, prefix: str = '') -> dict:
  """{'a/0/b': leaf} of nested mappings and sequences (orbax keeps tuples as lists); None
  leaves (optax's EmptyState) dropped."""
  out = {}
  if isinstance(tree, Mapping):
    pairs = tree.items()
  elif isinstance(tree, (list, tuple)):
    pairs = enumerate(tree)
  else:
    return {prefix[:-1]: tree} if tree is not None else {}
  for k, v in pairs:
    out.update(_flatten(v, f'{prefix}{k}/'))
  return out


def params_prefix(keys, path, subtree: Optional[str] = None) -> str:
  """The prefix ('' or 'a/b/') of the params tree among the flat `keys` of a checkpoint,
  looked for under `subtree` when given."""
  outer = '' if subtree is None else subtree.strip('/') + '/'
  inner = [k[len(outer):] for k in keys if k.startswith(outer)]
  tops = sorted({k.split('/')[0] for k in keys})
  if not inner:
    raise CheckpointError(f'{path}: no arrays under {outer!r}; expected a subtree of the '
                          f'checkpoint (top-level entries: {tops[:12]})')
  candidates = sorted({k[:-len(_PATCH)] for k in inner
                       if k == _PATCH or k.endswith('/' + _PATCH)} |
                      {p for k in inner if (p := nnx_state.prefix_of(k)) is not None}, key=len)
  params = [c for c in candidates if not OPTIMIZER_MARKS & set(c.split('/'))]
  if len(params) == 1:
    return outer + params[0]
  if not params:
    raise CheckpointError(f'{path}: found no ViT params (no .../{_PATCH} or '
                          f'.../{nnx_state.MARK} outside optimizer state); expected a vit_jax '
                          f'or big_vision params tree or an NNX model state (top-level '
                          f'entries: {tops[:12]})')
  names = [outer + c.rstrip('/') for c in params]
  raise CheckpointError(f'{path}: several params trees {names}; choose one as '
                        f'{path}:SUBTREE (e.g. {path}:{names[0]})')


def _config_overrides(prefix: str, config, pooling) -> dict:
  if config is not None:
    return {}
  tower = prefix.rstrip('/').split('/')[-1] == 'img'
  return {'output': 'embedding' if tower else None,
          'classifier': {'none': 'none', None: None}.get(pooling)}


def _describe(fmt: str, prefix: str, flat_keys, path, extra=()) -> dict:
  inner = {k[len(prefix):]: None for k in flat_keys if k.startswith(prefix)}
  layout = detect_layout(inner) if inner else 'vit_jax'
  tops = sorted({k.split('/')[0] for k in flat_keys if not k.startswith(prefix)})
  position = ('learned (bilinear resize)' if any(k.endswith('pos_embedding') for k in inner)
              else 'sincos2d (fixed)')
  return {'family': f'ViT ({layout})', 'format': fmt, 'params_at': prefix.rstrip('/') or '/',
          'layout': layout, 'position': position, 'posemb_resize': 'bilinear',
          'ignored': tops, **dict(extra)}


def _from_flat(flat_shapes: dict, read, prefix, path, config, image_size, gelu_approximate,
               pooling):
  """Dry run on the shapes, then the params read by `read()` ({key: array} under prefix)."""
  overrides = _config_overrides(prefix, config, pooling)
  chosen = {k: v for k, v in flat_shapes.items() if k.startswith(prefix)}
  _check_budget(path, list(chosen.values()))
  _params_from_file_layout({k[len(prefix):]: _shape_only(v.shape) for k, v in chosen.items()},
                           path, config, image_size, gelu_approximate, **overrides)
  flat = {k[len(prefix):]: to_float32(k, v, path) for k, v in read().items()}
  return _params_from_file_layout(flat, path, config, image_size, gelu_approximate,
                                  **overrides)


def is_nnx(flat_keys, prefix: str) -> bool:
  """Whether the params at `prefix` are an NNX model's state (families/nnx_state.py)."""
  return any(nnx_state.prefix_of(k) == '' for k in (k[len(prefix):] for k in flat_keys
                                                     if k.startswith(prefix)))


def _from_nnx(flat_shapes: dict, read, prefix, path, config, image_size, gelu_approximate):
  """(params, config, source) of an NNX state at `prefix`: the mapping dry-run on the
  shapes, then only the arrays it uses read (not the RNG state)."""
  names = {nnx_state.logical(k[len(prefix):]): k for k in flat_shapes if k.startswith(prefix)}
  _check_budget(path, [flat_shapes[k] for k in names.values()])
  dry = nnx_state.nnx_to_vit_jax({n: _shape_only(flat_shapes[k].shape)
                                  for n, k in names.items()}, path, image_size)
  wanted = {k for n, k in names.items() if n not in dry.source['ignored']}
  arrays = read(wanted)
  mapped = nnx_state.nnx_to_vit_jax({n: to_float32(n, arrays[k], path)
                                     for n, k in names.items() if k in wanted}, path, image_size)
  cfg = config or mapped.config
  if gelu_approximate is not None and config is None:
    cfg = cfg.replace(gelu_approximate=gelu_approximate, activation=None)
  params, cfg = params_from_flat(mapped.flat, path, cfg,
                                 image_size if cfg.position_embedding else None)
  return params, cfg, {**mapped.source, 'params_at': prefix.rstrip('/') or '/',
                       'ignored': dry.source['ignored']}


def _orbax_error(path, e) -> CheckpointError:
  first = str(e).splitlines()[0] if str(e) else ''
  return CheckpointError(f'{path}: cannot read orbax checkpoint ({type(e).__name__}: '
                         f'{first[:200]})')


def load_orbax_pytree(path, config: Optional[ViTConfig] = None, image_size=None,
                      gelu_approximate: Optional[bool] = None, subtree: Optional[str] = None,
                      pooling: Optional[str] = None):
  """(params, config, source) of an orbax PyTree checkpoint or CheckpointManager step."""
  import orbax.checkpoint as ocp

  path = Path(path).absolute()
  found = items(path)
  metadata = {}
  absl_logger = logging.getLogger('absl')
  level = absl_logger.level
  # A CheckpointManager's item has no step metadata of its own: orbax warns of each.
  absl_logger.setLevel(logging.ERROR)
  try:
    with ocp.PyTreeCheckpointer() as ckptr:
      for name, directory in found.items():
        tree = ckptr.metadata(directory).item_metadata.tree
        metadata.update(_flatten(tree, f'{name}/' if name else ''))
  except Exception as e:  # orbax raises many types; the user needs the path and the gist
    raise _orbax_error(path, e) from None
  finally:
    absl_logger.setLevel(level)
  shapes = {k: _Leaf(tuple(m.shape), np.dtype(m.dtype)) for k, m in metadata.items()
            if getattr(m, 'shape', None) is not None}
  prefix = params_prefix(list(shapes), path, subtree)
  item = next((n for n in found if n and prefix.startswith(n + '/')), '')
  inner = prefix[len(item) + 1:] if item else prefix

  def read(keys=None):
    # Only the params subtree: a train state's optimizer state is never read.
    want = {k[len(prefix):]: v for k, v in shapes.items() if k.startswith(prefix)
            and (keys is None or k in keys)}
    nested = {}
    for key in want:
      node = nested
      *parents, leaf = (inner + key).split('/')
      for p in parents:
        node = node.setdefault(p, {})
      node[leaf] = ocp.RestoreArgs(restore_type=np.ndarray)
    try:
      with ocp.PyTreeCheckpointer() as ckptr:
        restored = ckptr.restore(found[item], args=ocp.args.PyTreeRestore(
            item=nested, restore_args=nested, partial_restore=True))
    except Exception as e:
      raise _orbax_error(path, e) from None
    flat = _flatten(restored, item + '/' if item else '')
    return {k: np.asarray(v) for k, v in flat.items() if k.startswith(prefix)}

  fmt = ('orbax PyTree (StandardCheckpointer / PyTreeCheckpointer)' if '' in found
         else 'orbax CheckpointManager step')
  extra = {'items': [n for n in found if n]} if '' not in found else {}
  if is_nnx(shapes, prefix):
    params, cfg, source = _from_nnx(shapes, read, prefix, path, config, image_size,
                                    gelu_approximate)
    return params, cfg, {**source, 'format': f"{source['format']}, {fmt}", **extra}
  params, cfg = _from_flat(shapes, read, prefix, path, config, image_size, gelu_approximate,
                           pooling)
  return params, cfg, _describe(fmt, prefix, list(shapes), path, extra)


def load_msgpack(path, config: Optional[ViTConfig] = None, image_size=None,
                 gelu_approximate: Optional[bool] = None, subtree: Optional[str] = None,
                 pooling: Optional[str] = None):
  """(params, config, source) of a Flax msgpack checkpoint (flax.serialization)."""
  from flax import serialization

  path = Path(path)
  try:
    tree = serialization.msgpack_restore(path.read_bytes())
  except Exception as e:  # msgpack's errors are many; one line naming the file
    raise CheckpointError(f'{path}: cannot read Flax msgpack checkpoint '
                          f'({type(e).__name__}: {str(e)[:200]})') from None
  flat = {k: v for k, v in _flatten(tree).items() if isinstance(v, np.ndarray)}
  shapes = {k: _Leaf(v.shape, v.dtype) for k, v in flat.items()}
  prefix = params_prefix(list(flat), path, subtree)
  read = lambda keys=None: {k: v for k, v in flat.items() if k.startswith(prefix)
                            and (keys is None or k in keys)}
  if is_nnx(flat, prefix):
    params, cfg, source = _from_nnx(shapes, read, prefix, path, config, image_size,
                                    gelu_approximate)
    return params, cfg, {**source, 'format': f"{source['format']}, Flax msgpack"}
  params, cfg = _from_flat(shapes, read,
                           prefix, path, config, image_size, gelu_approximate, pooling)
  return params, cfg, _describe('Flax msgpack (flax.serialization)', prefix, list(flat), path)


# A step of a training run's checkpoint directory: orbax CheckpointManager's `<step>` (or
# `<prefix>_<step>` with a step_prefix), flax.training.checkpoints' `checkpoint_<step>`.
# Orbax's half-written steps (`<step>.orbax-checkpoint-tmp-<n>`) do not match.
_STEP = re.compile(r'^(?:[A-Za-z][A-Za-z0-9]*_)?([0-9]+)$')
COMMIT_MARK = 'commit_success.txt'  # orbax writes it last into a finished step


def training_steps(path) -> dict:
  """{step: its checkpoint path} of a directory of a training run's checkpoints (orbax
  CheckpointManager or flax.training.checkpoints), finished steps only; {} for anything
  else (a file, a checkpoint directory itself). Where any step holds orbax's
  commit_success.txt, the steps without it are unfinished and left out."""
  remote = not isinstance(path, Path)  # a storage.RemotePath: files told by their names
  path = path if remote else Path(path)
  if not path.is_dir() or is_orbax_pytree(path) or (path / 'params').is_dir():
    return {}
  steps = {}
  for p in path.iterdir():
    m = _STEP.fullmatch(p.name)
    if m and (p.is_dir() or (p.is_file() if remote else is_msgpack(p))):
      steps.setdefault(int(m.group(1)), p)
  if any((p / COMMIT_MARK).exists() for p in steps.values() if p.is_dir()):
    steps = {s: p for s, p in steps.items() if not p.is_dir() or (p / COMMIT_MARK).exists()}
  return dict(sorted(steps.items()))
