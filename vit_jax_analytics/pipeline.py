"""Runs the analyses end to end: checkpoint and images in, results in a logdir.

The one place where I/O meets the pure analyses (data flows CLI -> load -> analyse ->
write): `Inputs.load` reads the checkpoint and the image folder, each analysis computes a
typed result from a batch source, `logdir.writer` writes it. The CLI calls these, and so
can a notebook.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import time
from pathlib import Path
import logging
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Optional, Sequence

import flax
import jax
import numpy as np

import vit_jax_analytics
from vit_jax_analytics import (checkpoints, cost, data, importance, naflex, patterns, storage,
                               strength)
from vit_jax_analytics.batches import ArraySource
from vit_jax_analytics.families import intercept, intercept_nnx
from vit_jax_analytics.errors import NonFiniteError, OutputError, VitAnalyticsError
from vit_jax_analytics.logdir import progress_store, schema, writer
from vit_jax_analytics.model import ViTConfig
from vit_jax_analytics.options import option
from vit_jax_analytics.streaming import StageTiming
# Inputs, Loaded and computation_key live in inputs.py; imported from here as before.
from vit_jax_analytics.inputs import Inputs, Loaded, computation_key  # noqa: F401


@dataclasses.dataclass(frozen=True)
class RunOptions:
  """How a run is carried out (not what it computes)."""
  compile_cache: Optional[Path] = option(
      None, "directory of JAX's persistent compilation cache, so that a second analysis of "
            'the same model shape skips compiling (default: $XDG_CACHE_HOME or ~/.cache, '
            '/vit_jax_analytics/jax)', parse=Path)
  use_compile_cache: bool = option(True, 'no persistent compilation cache',
                                   flag='--no-compile-cache')
  dry_run: bool = option(False, 'print the planned cost of each stage (forward passes per '
                                'image and estimated time on this device) and stop')
  time_forward: bool = option(True, cli=False)  # time one forward for the estimate


def default_run_name(checkpoint) -> str:
  """The checkpoint's file or directory name, made safe for a run directory."""
  stem = Path(checkpoint).name
  stem = stem[:-4] if stem.endswith('.npz') else stem
  return re.sub(r'[^A-Za-z0-9._-]', '_', stem).lstrip('.') or 'run'


def common_meta(inputs: Inputs, loaded: Loaded, options) -> dict:
  image_set = loaded.image_set
  return {
      'checkpoint': str(inputs.checkpoint), 'config': loaded.config.to_dict(),
      'image_folder': str(inputs.images), 'image_names': image_set.relative_names(),
      'labels': [int(x) for x in image_set.labels],
      'class_names': list(image_set.class_names) if image_set.class_names else None,
      'mean': list(inputs.mean), 'std': list(inputs.std),
      'versions': {'vit_jax_analytics': vit_jax_analytics.__version__,
                   'jax': jax.__version__, 'flax': flax.__version__},
      'options': dataclasses.asdict(options),
  }


THUMBNAIL_PX = 40
THUMBNAIL_BYTES = THUMBNAIL_PX * THUMBNAIL_PX * 3


def thumbnails(inputs: Inputs, loaded: Loaded) -> tuple:
  """(index [M], images [M, THUMBNAIL_PX, THUMBNAIL_PX, 3] uint8): thumbnails of as many
  images as fit in inputs.thumbnail_budget_mib, spread evenly over the set (all of a small
  run: 2 MiB hold 436)."""
  index = thumbnail_index(len(loaded.image_set.paths), inputs.thumbnail_budget_mib)
  return index, model_view_images(inputs, loaded, index, THUMBNAIL_PX)


def thumbnail_index(n: int, budget_mib: float) -> np.ndarray:
  """[M] the images (of n) whose thumbnails fit in budget_mib, spread evenly, ascending."""
  count = min(n, int(budget_mib * 2 ** 20 // THUMBNAIL_BYTES))
  if not count:
    return np.zeros(0, np.int64)
  return np.unique(np.round(np.linspace(0, n - 1, count)).astype(np.int64))


def model_view_images(inputs: Inputs, loaded: Loaded, indices, size=None) -> np.ndarray:
  """[M, S, S, 3] uint8: the images at `indices` as the model saw them (resized; to `size`
  if given)."""
  size = size or loaded.config.image_size
  out = []
  for i in indices:
    x = data.load_image(loaded.image_set.paths[i], size, inputs.mean, inputs.std)
    x = x * np.asarray(inputs.std, np.float32) + np.asarray(inputs.mean, np.float32)
    out.append(np.clip(np.round(x * 255.), 0, 255).astype(np.uint8))
  return np.stack(out) if out else np.zeros((0, *data.image_hw(size), 3), np.uint8)


# --- the one orchestrator: every caller's analyses run here ---------------------------------

ANALYSES = ('importance', 'strength', 'patterns')
OPTIONS_TYPES = {'importance': importance.ImportanceOptions,
                 'strength': strength.StrengthOptions, 'patterns': patterns.PatternOptions}


class Computed(NamedTuple):
  """One analysis's result: ImportanceResult, StrengthResult or PatternResult; for patterns
  also the trained autoencoder's params (None on processes other than 0)."""
  name: str
  result: Any
  autoencoder: Any = None


def analyse(params, config: ViTConfig, source, analyses: Sequence[str] = ANALYSES,
            options: Optional[Mapping[str, Any]] = None, store=None, objective=None,
            timings: Optional[dict] = None) -> Iterator[Computed]:
  """Runs `analyses` in turn on one model and one batch source, yielding each result as
  soon as it is computed (so that a caller can write it before the next one starts). The
  CLI's runs, the photo demo, in-training analysis with curves or patterns and foreign
  models all run their analyses here.

  options: {analysis: its options} (defaults for the others); store: importance's
  ProgressStore (resume); objective: importance's (default from the config); timings:
  a dict that receives each stage's streaming.StageTiming by stage name."""
  options = resolve_options(options, analyses)
  for name in analyses:
    start = time.perf_counter()
    with cost.CompileClock() as compiling:  # JAX's own compile events, whichever analysis
      if name == 'importance':
        computed = Computed(name, importance.compute_importance(
            params, config, source, options[name], store=store, timings=timings,
            objective=objective))
      elif name == 'strength':
        computed = Computed(name, strength.compute_strength(params, config, source,
                                                            options[name]))
      else:  # with several processes, each samples its shard; process 0 trains
        computed = Computed(name, *patterns.compute_patterns(params, config, source,
                                                             options[name]))
    if name != 'importance' and timings is not None:  # importance times its two stages
      timings[name] = StageTiming(seconds=time.perf_counter() - start,
                                  compile_seconds=compiling.seconds)
    yield computed


def resolve_options(options: Optional[Mapping[str, Any]], analyses: Sequence[str]) -> dict:
  """{analysis: its options} for each of `analyses` (the defaults where none is given)."""
  unknown = sorted(set(analyses) - set(ANALYSES))
  if unknown:
    raise ValueError(f'unknown analyses {unknown}; expected some of {ANALYSES}')
  return {name: (options or {}).get(name) or OPTIONS_TYPES[name]() for name in analyses}


def analyse_arrays(params, config: ViTConfig, images, labels=None,
                   analyses: Sequence[str] = ANALYSES, options: Optional[Mapping] = None,
                   batch_size: int = 32) -> dict:
  """{analysis: result} of in-memory images [N, h, w, 3] (normalised as the model expects)
  and labels [N] (default unlabelled); the options default to batches of `batch_size`, no
  progress bars and (patterns) every image."""
  defaults = {'importance': importance.ImportanceOptions(batch_size=batch_size, progress=False),
              'strength': strength.StrengthOptions(batch_size=batch_size, progress=False),
              'patterns': patterns.PatternOptions(batch_size=batch_size, max_images=None,
                                                  progress=False)}
  options = {name: (options or {}).get(name) or defaults[name] for name in analyses}
  source = ArraySource(np.asarray(images), None if labels is None else np.asarray(labels))
  return {c.name: c.result for c in analyse(params, config, source, analyses, options)}


def analyse_module(module, params, images, token_layout, labels=None,
                   analyses: Sequence[str] = ANALYSES, attention_class=None,
                   output: str = 'logits', method=None, output_fn=None,
                   options: Optional[Mapping] = None, batch_size: int = 32) -> dict:
  """The analyses of a Flax linen model the project did not write (families/intercept.py).

  images [N, h, w, 3] as the model expects them; token_layout: {'cls': [0] or [],
  'registers': [...], 'grid': (h, w)} (or a ViTConfig); labels [N] (default unlabelled).
  -> {'config', 'ablation' (how the scan ran), and one result per analysis}."""
  config = intercept.intercepted_config(module, params, images, token_layout,
                                        attention_class, output, method, output_fn)
  return {'config': config, 'ablation': importance.ablation_strategy(config),
          **analyse_arrays(params, config, images, labels, analyses, options, batch_size)}


def analyse_nnx(model, images, token_layout, labels=None, analyses: Sequence[str] = ANALYSES,
                output: str = 'logits', attention_filter=None, method=None, output_fn=None,
                options: Optional[Mapping] = None, batch_size: int = 32,
                attention=None) -> dict:
  """The analyses of a Flax NNX model (families/intercept_nnx.py); arguments as
  analyse_module's, the parameters taken from the model itself; `attention` a
  DeclaredAttention where it is not nnx.MultiHeadAttention (families/nnx_declared.py).
  -> {'config', 'params' (its state as a pure dict), 'ablation', and one result per analysis}."""
  params, config = intercept_nnx.nnx_config(model, images, token_layout, output,
                                            attention_filter, method, output_fn, attention)
  return {'config': config, 'params': params, 'ablation': importance.ablation_strategy(config),
          **analyse_arrays(params, config, images, labels, analyses, options, batch_size)}


# --- a run on disk: each result's tags, then the event file ---------------------------------

def _importance_store(inputs: Inputs, loaded: Loaded, logdir, run: str, options):
  key = computation_key(inputs, loaded, options)
  if jax.process_count() > 1:  # each process saves (and resumes) its own sums
    key += f'-p{jax.process_index()}of{jax.process_count()}'
  return progress_store.LogdirProgressStore(
      logdir, run, 'importance', key, required=importance.progress_state_shapes(loaded.config))


def _values(computed: Computed, inputs: Inputs, loaded: Loaded, logdir, run: str,
            options) -> Callable[[dict], dict]:
  """meta -> the tags of one computed analysis (with what it stores beside its result:
  the image overview's thumbnails, the strength maps' images, the pattern autoencoder)."""
  result = computed.result
  if computed.name == 'importance':
    thumbs = thumbnails(inputs, loaded)
    return lambda meta: schema.importance_values(result, meta, thumbs,
                                                 inputs.thumbnail_budget_mib)
  if computed.name == 'strength':
    images = model_view_images(inputs, loaded, result.map_image_index)
    return lambda meta: schema.strength_values(result, meta, images)
  if computed.autoencoder is not None:  # the autoencoder itself, beside the event file
    save_autoencoder(writer.run_directory(logdir, run) / AUTOENCODER, computed.autoencoder,
                     {'canvas': 2 * max(loaded.config.grid_shape) - 1,
                      **dataclasses.asdict(options.ae)})
  return lambda meta: schema.patterns_values(result, meta)


AUTOENCODER = 'pattern_autoencoder'


def save_autoencoder(path: Path, params, config: dict) -> None:
  """The pattern autoencoder as an orbax directory (atomically); OutputError (one line,
  naming the path) where it cannot be written, e.g. a full disk. Orbax logs each failed
  write thread's traceback at ERROR on the absl logger: quiet while it saves, since the
  error says it."""
  absl_logger = logging.getLogger('absl')
  level = absl_logger.level
  absl_logger.setLevel(logging.CRITICAL)
  try:
    checkpoints.save_orbax(path, params, config)
  except (OSError, ValueError, RuntimeError) as e:  # tensorstore's write errors: ValueError
    first = str(e).splitlines()[0][:200] if str(e) else ''
    raise OutputError(f'{path}: cannot save the pattern autoencoder ({type(e).__name__}: '
                      f'{first})') from None
  finally:
    absl_logger.setLevel(level)


def _remove_orphan_autoencoder(logdir, run: str) -> None:
  """The autoencoder saved by a patterns run whose event file could not be written: it
  would sit beside no patterns results (or beside older ones it does not belong to)."""
  directory = writer.run_directory(logdir, run)
  if not any(writer.file_analysis_step(p)[0] == 'patterns'
             for p in directory.glob('events.out.tfevents.*')):
    storage.remove_tree(directory / AUTOENCODER)


def options_types() -> dict:
  """{analysis: its options dataclass}."""
  return dict(OPTIONS_TYPES)


def _variants(config, options) -> int:
  if 'importance' not in options:
    return 0
  o = options['importance']
  return len(importance.partial_variants(config, o.partial_radii, o.partial_region))


def run_analysis(inputs: Inputs, logdir, run: Optional[str] = None,
                 options: Optional[Mapping[str, Any]] = None,
                 analyses: Sequence[str] = ANALYSES,
                 run_options: Optional[RunOptions] = None, step: int = 0) -> list:
  """Runs `analyses` in turn on one load of the checkpoint and images; each writes its own
  event file to <logdir>/<run> as soon as it is done. options: {analysis: its options}
  (defaults for the others). Prints the planned cost of each stage first and what each
  cost at the end (stderr). run_options: the compilation cache and dry run (default: no
  persistent cache, as for a library call). step: the training step the results are
  written at (checkpoint_steps.py: one run's checkpoints, step by step). Returns the files
  written."""
  options = resolve_options(options, analyses)
  run_options = run_options or RunOptions(use_compile_cache=False)
  if run_options.use_compile_cache:  # before anything compiles
    cost.enable_compile_cache(run_options.compile_cache or cost.default_cache_dir())
  run = writer.check_run_name(default_run_name(inputs.checkpoint) if run is None else run)
  created = []  # the directories made here, deepest last: removed again if left empty
  if not run_options.dry_run:
    directory = writer.run_directory(logdir, run)
    created = [d for d in (directory, *directory.parents) if not d.exists()][::-1]
    writer.check_writable(logdir, run)  # before any work, not after it
  try:
    loaded = inputs.load()
    try:
      return _run_loaded(inputs, loaded, logdir, run, options, analyses, run_options, step)
    except NonFiniteError as e:
      raise name_images(e, loaded.image_set) from None
  except BaseException:  # a refused or interrupted run leaves no empty run directory
    for d in reversed(created):
      try:
        d.rmdir()  # only if empty: progress to resume from, or results, are kept
      except OSError:
        break
    raise


def name_images(e: NonFiniteError, image_set) -> VitAnalyticsError:
  """The error with the first offending image's file named."""
  names = image_set.relative_names()
  first = names[e.indices[0]] if e.indices and e.indices[0] < len(names) else '?'
  return VitAnalyticsError(f'{image_set.root / first}: {e.what} is not finite (NaN or Inf) '
                           f'for this image and {len(e.indices) - 1} other(s) of the batch; '
                           f'check the checkpoint and the normalisation (--mean/--std)')


def importance_target(loaded: Loaded) -> str:
  """What importance measures the heads against, in words: the labels, the model's own
  prediction (label-free), or the embedding."""
  labels = np.asarray(loaded.image_set.labels)[:len(loaded.source)]
  if not loaded.config.has_classifier:
    return (f'the model outputs an embedding ({loaded.config.output!r}), not class logits: '
            f'importance is measured on the embedding, label-free')
  unlabelled = int((labels < 0).sum())
  if unlabelled == len(labels):
    return (f'none of the {len(labels)} images is labelled: importance runs label-free (the '
            f"model's own prediction is the target)")
  if unlabelled:
    return (f'{unlabelled} of the {len(labels)} images are unlabelled: importance takes '
            f"the model's own prediction as their target (label-free), the label elsewhere")
  return f'importance is measured against the labels of the {len(labels)} images'


def _run_loaded(inputs, loaded, logdir, run, options, analyses, run_options, step=0) -> list:
  # NaFlex: the costs of the grid with the most tokens (not the canvas, which bounds them)
  sized = naflex.largest_config(loaded.config, loaded.source)
  cost.check_forward_memory(sized)  # a size no forward fits: refused before any work
  heads = loaded.config.num_layers * loaded.config.num_heads
  if 'patterns' in options and options['patterns'].clusters > heads:
    # k-means makes at most one cluster a head: say so, and store what is used
    print(f'warning: --clusters {options["patterns"].clusters} is more than the model\'s '
          f'{heads} heads; using {heads}', file=sys.stderr)
    options['patterns'] = dataclasses.replace(options['patterns'], clusters=heads)
  for opts in options.values():  # options that depend on the model, before any work
    if hasattr(opts, 'check_model'):
      opts.check_model(loaded.config)
  n_images = len(loaded.source)
  if 'importance' in analyses and not options['importance'].classes_npz:
    print(f'note: {importance_target(loaded)}', file=sys.stderr, flush=True)
  stages = cost.plan(sized, n_images, analyses, options, _variants(loaded.config, options))
  per_forward = None
  if run_options.time_forward:
    batch = min(max(o.batch_size for o in options.values()), max(n_images, 1))
    with cost.CompileClock() as forward_compile:  # cold or warm, it tells the plan which
      per_forward, _ = cost.time_forward(loaded.params, sized, batch)
    cost.estimate(stages, per_forward, forward_compile)
  print(cost.format_table(stages, sized, n_images, per_forward), file=sys.stderr, flush=True)
  if run_options.dry_run:
    return []
  written, timings = [], {}
  store, objective = None, None
  if 'importance' in analyses:
    store = _importance_store(inputs, loaded, logdir, run, options['importance'])
    if options['importance'].classes_npz:
      objective = importance.classes_objective(
          loaded.config, **checkpoints.load_class_matrix(options['importance'].classes_npz))
  print(f'[1/{len(analyses)}] {analyses[0]}', file=sys.stderr, flush=True)
  for k, computed in enumerate(analyse(loaded.params, loaded.config, loaded.source, analyses,
                                       options, store, objective, timings), start=1):
    name = computed.name
    values = _values(computed, inputs, loaded, logdir, run, options[name])
    meta = {**common_meta(inputs, loaded, options[name]), 'step': int(step)}
    if _writes():  # every process holds the reduced result; process 0 alone writes it
      try:
        written.append(writer.write_analysis(logdir, run, name, values(meta), step=step))
      except BaseException:
        if name == 'patterns':
          _remove_orphan_autoencoder(logdir, run)
        raise
    if name == 'importance':
      store.clear()  # progress is dropped only once the results are safely written
    if k < len(analyses):
      print(f'[{k + 1}/{len(analyses)}] {analyses[k]}', file=sys.stderr, flush=True)
  for s in stages:  # what each stage actually did and took
    t = timings.get(s.name, StageTiming())
    s.seconds = t.seconds
    s.compile_seconds = t.compile_seconds
    s.per_image = s.per_image if t.forward_eq is None else t.forward_eq
    s.images = s.images if t.images is None else t.images
    s.note = ''
  print(cost.format_table(stages, sized, n_images, title='done'), file=sys.stderr,
        flush=True)
  return written


def _writes() -> bool:
  return jax.process_index() == 0


def run_importance(inputs: Inputs, logdir, run: Optional[str] = None, options=None) -> Path:
  """Head importance to <logdir>/<run>; resumes an interrupted run of the same
  computation. Returns the event file written."""
  return run_analysis(inputs, logdir, run, {'importance': options}, ('importance',))[0]


def run_strength(inputs: Inputs, logdir, run: Optional[str] = None, options=None) -> Path:
  """Attention-strength statistics (and stored maps) to <logdir>/<run>."""
  return run_analysis(inputs, logdir, run, {'strength': options}, ('strength',))[0]


def run_patterns(inputs: Inputs, logdir, run: Optional[str] = None, options=None) -> Path:
  """Pattern samples, the autoencoder (saved with orbax in <logdir>/<run>/
  pattern_autoencoder) and the pattern summary to <logdir>/<run>."""
  return run_analysis(inputs, logdir, run, {'patterns': options}, ('patterns',))[0]
