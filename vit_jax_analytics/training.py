"""Analysis inside a training loop: `analyse_step` every N steps writes that step's results.

    from vit_jax_analytics import training
    probe = training.Probe(images[:64], labels[:64])       # a fixed batch, kept for the run
    for step in range(steps):
      params, opt_state = train_step(params, opt_state, next(batches))
      if step % 500 == 0:
        training.analyse_step(params, config, probe, 'logs', 'my-run', step)

The params are used as they are: any `jax.Array` sharding (replicated, FSDP, ...), on one
process or spread over several (global arrays: call it from every process; the probe batch
then goes to the params' devices as one replicated global array and the small results come
back to every process through an all-gather), no copy of the tree to the host; only the
per-head statistics (a few KiB) come back. By default it
is cheap: the strength statistics (one forward) and Taylor importance (one forward +
backward) of the probe batch. The single-head ablation scan (`ablation=True`), the pruning
curves and partial pruning (`curves=True`) and the attention patterns (`patterns=True`) are
opt-in. The cost is printed once per (model, probe shape, options) in forward-equivalents
(XLA's FLOP count of the analysis over that of one plain forward of the probe batch).

Results are written with `logdir.writer` at `step`, so the plugin shows them by step and
over training; re-analysing a step replaces that step only. Imports the logdir package:
this is an end-to-end entry point like `pipeline`, not an analysis.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
from typing import NamedTuple, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np

import vit_jax_analytics
from vit_jax_analytics import (importance, model as model_lib, parallel, patterns, pipeline,
                               precision, streaming, strength)
from vit_jax_analytics.batches import UNLABELLED, ArraySource
from vit_jax_analytics.logdir import schema, writer
from vit_jax_analytics.model import ViTConfig
from vit_jax_analytics.options import check, option
from vit_jax_analytics.results import ImportanceResult

DTYPES = precision.DTYPES
cast = precision.cast


class Probe(NamedTuple):
  """The fixed probe batch: images [N, S, S, 3] normalised as the model expects, labels [N]
  (None or UNLABELLED entries: the model's own prediction is the target)."""
  images: np.ndarray
  labels: Optional[np.ndarray] = None


@dataclasses.dataclass(frozen=True)
class TrainingAnalysisOptions:
  ablation: bool = option(False, 'also the single-head ablation scan (L*H suffix forwards)')
  curves: bool = option(False, 'also pruning curves and partial pruning (the whole importance '
                               'analysis; implies ablation)')
  patterns: bool = option(False, 'also attention patterns (samples + an autoencoder)')
  batch_size: int = option(64, 'probe images per jitted call')
  dtype: str = option('float32', precision.HELP, parse=precision.parse)
  print_cost: bool = option(True, 'print the cost once, in forward-equivalents')

  def __post_init__(self):
    check(self, 'batch_size', self.batch_size, low=1)
    precision.check(self, 'dtype', self.dtype)


def _probe_batches(probe: Probe, batch_size: int, dtype: str, place: streaming.ProbePlacement):
  n = len(probe.images)
  labels = (np.full(n, UNLABELLED, np.int32) if probe.labels is None
            else np.asarray(probe.labels, np.int32))
  for batch in ArraySource(np.asarray(probe.images, np.float32), labels).batches(
      min(batch_size, n), progress=False):
    yield batch, place.put(cast(batch.images, dtype)), place.put(batch.labels)


def probe_strength(params, config: ViTConfig, probe: Probe, options=None):
  """StrengthResult of the probe batch (no stored maps)."""
  options = options or TrainingAnalysisOptions()
  params, place = cast(params, options.dtype), streaming.ProbePlacement(params)
  sums, count = {}, 0
  for batch, images, _ in _probe_batches(probe, options.batch_size, options.dtype, place):
    stats = place.fetch(strength.strength_batch(params, config, images))
    sums = strength.accumulate(sums, stats, batch.valid, config)
    count += int(batch.valid.sum())
  return strength.finish(sums, count, config)


def probe_importance(params, config: ViTConfig, probe: Probe, options=None) -> ImportanceResult:
  """Taylor importance (and with `ablation`, the single-head ablation scan) of the probe
  batch. Not computed: the ablation metrics are NaN, the curves and partial pruning
  empty."""
  options = options or TrainingAnalysisOptions()
  params, place = cast(params, options.dtype), streaming.ProbePlacement(params)
  return importance.stage1_scores(
      params, config, _probe_batches(probe, options.batch_size, options.dtype, place),
      ablation=options.ablation, fetch=place.fetch)


# --- cost, in forward-equivalents --------------------------------------------------------

_PRINTED = set()


def _flops(lowered) -> float:
  cost = lowered.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float((cost or {}).get('flops', 0.))


def cost_forward_equivalents(params, config: ViTConfig, probe: Probe, options=None) -> dict:
  """{part: FLOPs of that part over the probe batch / FLOPs of one plain forward of it},
  from XLA's cost analysis of the lowered computations (nothing is run)."""
  options = options or TrainingAnalysisOptions()
  b = min(options.batch_size, len(probe.images))
  images = jax.ShapeDtypeStruct((b,) + tuple(probe.images.shape[1:]), DTYPES[options.dtype])
  labels = jax.ShapeDtypeStruct((b,), jnp.int32)
  forward = _flops(jax.jit(model_lib.apply, static_argnums=1).lower(params, config, images))
  parts = {'strength': _flops(strength.strength_batch.lower(params, config, images)),
           'taylor': _flops(importance.taylor_pool_batch.lower(params, config, images, labels))}
  if options.ablation or options.curves:
    # Every mask vmapped at once (no loop): XLA counts a loop body once, not per iteration.
    parts['ablation'] = _flops(importance.ablation_pool_batch.lower(
        params, config, images, labels, 1_000_000))
  return {k: v / max(forward, 1.) for k, v in parts.items()}


def _print_cost_once(params, config, probe, options):
  key = (config, tuple(np.shape(probe.images)), options)
  if key in _PRINTED or not options.print_cost:
    return
  _PRINTED.add(key)
  try:
    parts = cost_forward_equivalents(params, config, probe, options)
  except Exception as e:  # a backend without cost analysis: say so, do not fail training
    print(f'in-training analysis: cost unknown ({type(e).__name__})', file=sys.stderr)
    return
  extra = ' + curves and partial pruning' if options.curves else ''
  extra += ' + patterns (samples, autoencoder)' if options.patterns else ''
  print(f'in-training analysis of {len(probe.images)} probe images: '
        f'{sum(parts.values()):.1f} forward-equivalents of the probe batch per call ('
        + ', '.join(f'{k} {v:.1f}' for k, v in parts.items()) + f'){extra}',
        file=sys.stderr, flush=True)


# --- the entry point -----------------------------------------------------------------------

def _meta(config: ViTConfig, probe: Probe, step: int, options, checkpoint=None) -> dict:
  n = len(probe.images)
  labels = (np.full(n, UNLABELLED) if probe.labels is None else np.asarray(probe.labels))
  return {'checkpoint': checkpoint, 'config': config.to_dict(), 'image_folder': None,
          'image_names': [f'probe/{i}' for i in range(n)],
          'labels': [int(x) for x in labels], 'class_names': None, 'mean': None, 'std': None,
          'step': int(step), 'options': dataclasses.asdict(options),
          'versions': {'vit_jax_analytics': vit_jax_analytics.__version__,
                       'jax': jax.__version__, 'flax': flax.__version__}}


def analyse_step(params, config: ViTConfig, probe, logdir, run: str, step: int,
                 options: Optional[TrainingAnalysisOptions] = None) -> dict:
  """Analyses `params` (as they are) on the probe batch and writes the results to
  <logdir>/<run> at `step`. probe: a `Probe` or (images, labels). Returns {analysis: the
  event file written}. With params spread over several processes (global jax.Arrays),
  call it from every process with the same probe: each computes the same small result
  and process 0 alone writes (and returns the files; the others return {})."""
  options = options or TrainingAnalysisOptions()
  probe = probe if isinstance(probe, Probe) else Probe(*probe)
  if len(probe.images) == 0:
    raise ValueError('the probe batch is empty')
  writer.check_run_name(run)
  if streaming.global_devices(params) is not None:
    _check_same_probe(probe)
  params = cast(params, options.dtype)
  _print_cost_once(params, config, probe, options)
  meta = _meta(config, probe, step, options)
  written = {}
  for analysis, result in _computed(params, config, probe, options):  # every process takes part
    if jax.process_index() == 0:
      written[analysis] = writer.write_analysis(logdir, run, analysis,
                                                _VALUES[analysis](result, meta), step=step)
  return written


_VALUES = {'strength': schema.strength_values, 'importance': schema.importance_values,
           'patterns': schema.patterns_values}


def _computed(params, config: ViTConfig, probe: Probe, options: TrainingAnalysisOptions):
  """(analysis, result) in writing order: the probe's cheap statistics here, the whole
  importance analysis (curves) and patterns through the one orchestrator."""
  yield 'strength', probe_strength(params, config, probe, options)
  if not options.curves:
    yield 'importance', probe_importance(params, config, probe, options)
  full = {}
  if options.curves:
    full['importance'] = importance.ImportanceOptions(
        batch_size=options.batch_size, progress=False, dtype=options.dtype)
  if options.patterns:
    full['patterns'] = patterns.PatternOptions(
        max_images=len(probe.images), progress=False, batch_size=options.batch_size,
        dtype=options.dtype)
  source = ArraySource(np.asarray(probe.images, np.float32), probe.labels)
  # With several processes, process 0 alone trains the autoencoder.
  for computed in pipeline.analyse(params, config, source, tuple(full), full):
    yield computed.name, computed.result


def _check_same_probe(probe: Probe) -> None:
  """With global params every process must pass the same probe batch (it is replicated
  over the params' devices): a one-line error otherwise."""
  h = hashlib.sha256(np.ascontiguousarray(np.asarray(probe.images, np.float32)).tobytes())
  if probe.labels is not None:
    h.update(np.asarray(probe.labels, np.int64).tobytes())
  digest = int.from_bytes(h.digest()[:4], 'little') & 0x7fffffff
  if not parallel.agree(digest, streaming.analysis_mesh()):
    raise ValueError('analyse_step: the params are global arrays over several processes, '
                     'but the probe batch differs between processes; pass the same probe '
                     'on every process')
