"""The command line's flags: generated from the options dataclasses (each default and range
is written once, in the dataclass), plus the model and image-folder flags, and back to
options and `pipeline.Inputs`."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from vit_jax_analytics import patterns, pipeline, storage
from vit_jax_analytics.batches import DEFAULT_BATCH_SIZE
from vit_jax_analytics.demo import TrainDemoOptions
from vit_jax_analytics.options import flag_of, parse_floats

DEMO_CHECKPOINT = Path('checkpoints/demo_vit')
DEMO_IMAGES = Path('checkpoints/demo_images')


def _cli_fields(cls):
  return [f for f in dataclasses.fields(cls) if f.metadata.get('cli', False)]


def add_options(p, cls, seen: set) -> None:
  """Adds a flag for every CLI field of the options dataclass `cls` (once per flag name:
  --batch-size and --no-progress are shared by the analyses)."""
  group = p.add_argument_group(cls.__name__)
  for f in _cli_fields(cls):
    flag = flag_of(f)
    if flag in seen:
      continue
    seen.add(flag)
    kw = {'dest': flag.lstrip('-').replace('-', '_'), 'help': f.metadata['help']}
    if flag.startswith('--no-'):
      group.add_argument(flag, action='store_true', **kw)
    elif isinstance(f.default, bool):
      group.add_argument(flag, action='store_true', **kw)
    else:
      parse = f.metadata.get('parse') or type(f.default)
      shown = ','.join(map(str, f.default)) if isinstance(f.default, tuple) else f.default
      kw['help'] += '' if f.default is None else f' (default: {shown})'
      group.add_argument(flag, type=parse, default=f.default, **kw)


def options_from(cls, args, **overrides):
  """An instance of `cls` from the parsed flags (fields without a flag keep defaults)."""
  values = {}
  for f in _cli_fields(cls):
    flag = flag_of(f)
    value = getattr(args, flag.lstrip('-').replace('-', '_'))
    values[f.name] = not value if flag.startswith('--no-') else value
  return cls(**{**values, **overrides})


def flag_for(field: str, owner=None) -> str:
  """The CLI flag of field `field` of the options dataclass `owner` (for error messages)."""
  classes = list(pipeline.OPTIONS_TYPES.values()) + [patterns.AEOptions, pipeline.Inputs,
                                                     pipeline.RunOptions, TrainDemoOptions]
  for cls in ([owner] if owner in classes else classes):
    for f in dataclasses.fields(cls):
      # a field off the CLI but set from a flag (AEOptions.seed) names that flag
      if f.name == field and (f.metadata.get('cli', True) or f.metadata.get('flag')):
        return flag_of(f)
  return '--' + field.replace('_', '-')


def parse_image_size(text: str):
  """'224' -> 224, '224x336' -> (224, 336) (height x width)."""
  parts = text.lower().split('x')
  try:
    values = tuple(int(v) for v in parts)
  except ValueError:
    values = ()
  if len(values) not in (1, 2):  # sizes below 1 are refused by Inputs, naming the flag
    raise argparse.ArgumentTypeError(f'expected S or HxW in pixels (e.g. 224 or 224x336), '
                                     f'got {text!r}')
  return values[0] if len(values) == 1 or values[0] == values[1] else values


def add_model_args(p):
  p.add_argument('--checkpoint', type=storage.cli_location('--checkpoint'),
                 default=DEMO_CHECKPOINT,
                 help='vit_jax or big_vision .npz file (file.npz:img for one tower of a '
                      'two-tower model such as SigLIP; found by itself), an orbax '
                      'checkpoint directory, a Hugging Face transformers checkpoint '
                      '(.safetensors with config.json beside it, or its directory: ViT, DeiT, '
                      'DINOv2, DINOv2 with registers, CLIP vision), a timm .safetensors state '
                      'dict, an .onnx export of one of these, an orbax PyTree checkpoint or '
                      'Flax msgpack file of a JAX training run (params found in the train '
                      "state; DIR:SUBTREE picks one), or a run's directory of checkpoints by "
                      'step (see --steps); local or an object-store URL (gs://, s3://: '
                      'fsspec) (default: %(default)s)')
  p.add_argument('--image-size', type=parse_image_size, default=None,
                 help="resolution to run at, S or HxW (e.g. 224x336); resizes the position "
                      "embedding per axis (default: the checkpoint's own; a rectangular "
                      "checkpoint needs its own HxW here)")
  p.add_argument('--pooling', choices=('none',), default=None,
                 help="'none' for a big_vision pool_type='none' model, whose weights look "
                      "like 'gap' (the output is then every token)")
  p.add_argument('--gelu', choices=('tanh', 'exact'), default=None,
                 help='GELU variant (default: tanh as in vit_jax, or what an orbax '
                      'checkpoint recorded)')


def add_data_args(p, seen: set):
  defaults = {f.name: f.default for f in dataclasses.fields(pipeline.Inputs)}
  p.add_argument('--images', type=Path, default=DEMO_IMAGES,
                 help='folder of images: one sub-folder per class, or flat (default: '
                      '%(default)s)')
  p.add_argument('--labels', type=Path, default=None,
                 help='labels file for a flat folder: CSV "filename,label" or JSON '
                      '{"filename": label}')
  p.add_argument('--label-free', action='store_true',
                 help='ignore class sub-folders: every image at any depth below --images, '
                      "unlabelled (the model's own prediction is the target), e.g. for a "
                      "folder whose classes are not the model's")
  p.add_argument('--max-images', type=int, default=None, help='use only the first N images')
  p.add_argument('--mean', type=parse_floats(3), default=defaults['mean'],
                 help='per-channel mean for normalisation (default: 0.5,0.5,0.5 -> [-1, 1] '
                      'as in vit_jax)')
  p.add_argument('--std', type=parse_floats(3), default=defaults['std'],
                 help='per-channel std (default: 0.5,0.5,0.5)')
  p.add_argument('--thumbnail-budget-mib', type=float, default=defaults['thumbnail_budget_mib'],
                 help='the image overview stores thumbnails of as many images as fit in this '
                      'many MiB (40 x 40 px, 4.7 KiB each; default: %(default)s MiB, 436 images)')
  if '--batch-size' not in seen:
    seen.update({'--batch-size', '--no-progress'})
    p.add_argument('--batch-size', type=int, default=DEFAULT_BATCH_SIZE,
                   help=f'images per batch (default: {DEFAULT_BATCH_SIZE})')
    p.add_argument('--no-progress', action='store_true', help='no progress bars')


def inputs_from(args) -> pipeline.Inputs:
  """The Inputs of the parsed model and data flags."""
  data_args = {k: getattr(args, k) for k in ('images', 'labels', 'max_images', 'mean', 'std',
                                             'label_free', 'thumbnail_budget_mib')
               if hasattr(args, k)}  # `info` reads no images
  return pipeline.Inputs(checkpoint=args.checkpoint, image_size=args.image_size,
                gelu_approximate=None if args.gelu is None else args.gelu == 'tanh',
                pooling=getattr(args, 'pooling', None),
                **{'images': None, **data_args})


def analysis_options(args, names) -> dict:
  """{analysis: its options} from the parsed flags."""
  types = pipeline.OPTIONS_TYPES
  out = {name: options_from(types[name], args) for name in names if name != 'patterns'}
  if 'patterns' in names:
    ae = options_from(patterns.AEOptions, args, seed=args.pattern_seed,
                      progress=not args.no_progress)
    out['patterns'] = options_from(types['patterns'], args, ae=ae)
  return out
