"""What an analysis costs, in forward-equivalents per image, before and after computing it.

The unit is one plain forward pass of the model on one image ("forward-eq"). The planner
counts the matrix-multiply FLOPs each stage runs (an analytic model of the ViT, exact for
the matmuls, which are all but a few percent of the work) and divides by a forward's; XLA's
own cost analysis confirms it (`xla_flops`, used by benchmarks/bench_cost.py: XLA counts a
loop body once whatever its trip count, so the stages' loop bodies are compiled and counted
one by one and multiplied by their trip counts there). A quick timed forward turns
forward-eqs into seconds on the current device.

Stage costs per image (L layers, H heads; "layer" = attention + MLP):
  importance stage 1   one forward with intermediates + the mask-gradient backward (Taylor)
                       + for every head (l, h) the rest of its layer after attention and the
                       later layers (the single-head ablation scan with prefix reuse)
  importance stage 2   on the subset only: one forward + every distinct curve mask from its
                       first masked layer on + for every partially pruned head and variant
                       its rest of layer and later layers (prefix reuse), plus one head's
                       attention recomputed per head
  strength             one forward (statistics reduced inside it)
  patterns             one forward per sampled image (and the autoencoder's training, which
                       is not a forward and is timed, not counted)
The ablation limit is 1 + sum over heads of the part of a forward the scan must rerun.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Optional, Sequence


from vit_jax_analytics.errors import OptionError
from vit_jax_analytics.model import ViTConfig
from vit_jax_analytics.strength import map_bytes


@dataclasses.dataclass(frozen=True)
class Flops:
  """Matmul FLOPs (multiply-adds x 2) of the parts of one image's forward."""
  embed: float
  attention: float       # one layer's attention, projections included
  mlp: float             # one layer's MLP
  head: float            # final norm, pooling and classifier
  one_head_attention: float  # one head's q, k, v, weights and its `out` share
  num_layers: int
  num_heads: int

  @property
  def layer(self) -> float:
    return self.attention + self.mlp

  @property
  def forward(self) -> float:
    return self.embed + self.num_layers * self.layer + self.head

  def suffix_after_attention(self, layer: int) -> float:
    """Rest of `layer` after its attention, the later layers and the head."""
    return self.mlp + (self.num_layers - layer - 1) * self.layer + self.head

  def suffix_from(self, layer: int) -> float:
    """Layers `layer`.. and the head."""
    return (self.num_layers - layer) * self.layer + self.head


def flops(config: ViTConfig) -> Flops:
  t, d, m = config.num_tokens, config.hidden_size, config.mlp_dim
  dh = d // config.num_heads
  patches = config.num_patches
  attention = 2 * t * d * 3 * d + 2 * 2 * t * t * d + 2 * t * d * d
  one_head = 2 * t * d * 3 * dh + 2 * 2 * t * t * dh + 2 * 2 * t * t * dh + 2 * t * dh * d
  head = 2 * d * (config.representation_size or 0)
  head += 2 * (config.representation_size or d) * config.num_classes
  return Flops(embed=2. * patches * config.patch_size ** 2 * 3 * d, attention=float(attention),
               mlp=4. * t * d * m, head=float(head), one_head_attention=float(one_head),
               num_layers=config.num_layers, num_heads=config.num_heads)


def ablation_limit(config: ViTConfig) -> float:
  """1 + sum over heads of the part of a forward the exact ablation scan must rerun."""
  f = flops(config)
  rerun = sum(f.num_heads * f.suffix_after_attention(l) for l in range(f.num_layers))
  return 1. + rerun / f.forward


def taylor_backward(config: ViTConfig) -> float:
  """The mask-gradient backward pass in forward-eqs: every matmul once more for the
  activation gradient (no weight gradients are needed), the two activation-activation
  products of attention twice; nothing below the first mask (the embedding)."""
  f = flops(config)
  t, d = config.num_tokens, config.hidden_size
  return (f.num_layers * (f.layer + 2 * 2 * t * t * d) + f.head) / f.forward


def stage1(config: ViTConfig, probes: int = 1) -> float:
  """Importance stage 1 (Taylor + ablation scan sharing one forward), per image; under the
  embedding objective the Taylor pass runs each image once per probe (`probes`). A MAP
  head's pooling row (H reruns of the pooling alone) is not counted."""
  return ablation_limit(config) + probes - 1 + probes * taylor_backward(config)


def taylor_probes(config: ViTConfig, options) -> int:
  """Runs of each image in the Taylor pass: the probes of the embedding objective (a model
  without a classifier and no class matrix), else 1."""
  return options.taylor_probes if options.embedding_objective(config) else 1


def stage2(config: ViTConfig, first_layers: Sequence[int], partial_layers: Sequence[float],
           variants: int) -> float:
  """Importance stage 2 per subset image: one forward, curve masks from their first masked
  layers, partial pruning of heads in `partial_layers` (may be fractional: an expectation)
  with `variants` each and the whole head once more (measured on the same images)."""
  f = flops(config)
  total = f.forward + sum(f.suffix_from(l) for l in first_layers)
  for l in partial_layers:
    rest = f.mlp + (f.num_layers - l - 1) * f.layer + f.head
    total += f.one_head_attention + (variants + 1) * rest
  return total / f.forward


def expected_curve_suffixes(config: ViTConfig, counts: Sequence[int], orders: int) -> float:
  """FLOPs per image of the curve masks of `orders` orders at each of `counts` heads
  removed, each run from its first masked layer, expected under uniformly random orders:
  k of the n = L*H heads removed leave layers 0..l-1 whole with probability
  C((L-l)H, k) / C(n, k). The all-removed mask runs once (the orders share it)."""
  f = flops(config)
  big_l, h, n = f.num_layers, f.num_heads, f.num_layers * f.num_heads
  total = 0.
  for k in counts:
    if 0 < k < n:
      whole_before = [math.comb((big_l - l) * h, k) / math.comb(n, k) for l in range(big_l + 1)]
      total += orders * sum((whole_before[l] - whole_before[l + 1]) * f.suffix_from(l)
                            for l in range(big_l))
  return total + (f.suffix_from(0) if n in counts else 0.)


def stage2_expected(config: ViTConfig, options, variants: int) -> float:
  """Importance stage 2 per subset image before stage 1 has ranked the heads: the curve
  masks' first layers as under random orders, the partially pruned heads in the middle
  layer (where the most important heads sit depends on the model: the first layer of a
  random-weight ViT, the last ones of DINOv2)."""
  f = flops(config)
  counts = options.curve_counts(config)
  curves = expected_curve_suffixes(config, counts, options.curve_orders(config))
  heads = min(options.partial_heads or f.num_layers * f.num_heads, f.num_layers * f.num_heads)
  return stage2(config, [], [(f.num_layers - 1) / 2] * heads, variants) + curves / f.forward


@dataclasses.dataclass
class StageCost:
  name: str
  images: int                 # images the stage reads
  per_image: float            # forward-eqs per image it reads
  note: str = ''
  seconds: Optional[float] = None          # measured
  compile_seconds: Optional[float] = None  # measured (first batch's excess, or JAX's own)
  extra_forward_eq: float = 0.  # work that is not a forward, in forward-eqs (the autoencoder)
  planned_seconds: Optional[float] = None  # estimated, compiling included
  planned_compile: Optional[float] = None  # estimated compiling (0 when the cache holds it)

  @property
  def total(self) -> float:
    return self.images * self.per_image


def plan(config: ViTConfig, n_images: int, analyses: Sequence[str], options: dict,
         variants: int) -> list:
  """The planned stages of `analyses` on n_images. Stage 2's masks and heads depend on
  stage 1's scores: planned as their expectation (`stage2_expected`)."""
  stages = []
  if 'importance' in analyses:
    o = options['importance']
    stages.append(StageCost('importance stage 1', n_images,
                            stage1(config, taylor_probes(config, o)),
                            'Taylor + ablation scan, one shared forward'))
    s = o.subset_size(n_images)
    heads = min(o.partial_heads or config.num_layers * config.num_heads,
                config.num_layers * config.num_heads)
    stages.append(StageCost(
        'importance stage 2', s, stage2_expected(config, o, variants),
        f'{s} images: {o.curve_masks(config)} curve masks, {heads} heads x {variants} '
        f'partial variants + the whole head'))
  if 'strength' in analyses:
    o = options['strength']
    maps = o.stored_maps(config, n_images) if hasattr(o, 'stored_maps') else 0
    stages.append(StageCost('strength', n_images, 1.,
                            f'statistics inside one forward + {maps} stored maps',
                            extra_forward_eq=maps * stored_map_forward_eq(config)))
  if 'patterns' in analyses:
    o = options['patterns']
    n = min(n_images, o.max_images or n_images)
    samples = n * config.num_layers * config.num_heads * min(o.per_head, config.num_patches)
    steps = autoencoder_steps(samples, o.ae)
    canvas = 2 * max(config.grid_shape) - 1
    ae = steps * autoencoder_step_flops(canvas, o.ae) / flops(config).forward
    stages.append(StageCost('patterns', n, 1., f'sampling forward + autoencoder: {samples} '
                                               f'samples, ~{steps} steps',
                            extra_forward_eq=ae))
  return stages


# One stored image's attention maps, rollout and query/key embedding are mostly host work
# on float16 [L, H, T, T] arrays: its wall time in forward FLOPs per byte of the maps
# (strength.map_bytes). Fitted on ViT-Ti/16 (3.7 MB an image: 8.6 forward-eqs measured) and
# the photo demo's ViT-S/14 (11.1 MB: 3.3) on a quiet 2-core CPU, cold and warm (docs/cost.md).
STORED_MAP_FLOPS_PER_BYTE = 4500.


def stored_map_forward_eq(config: ViTConfig) -> float:
  """Wall time of storing one image's maps, in forward-eqs."""
  return STORED_MAP_FLOPS_PER_BYTE * map_bytes(config) / flops(config).forward


# Epochs the autoencoder is expected to train before its early stopping (at most its
# `epochs`): the demos stop after 17-32 (docs/cost.md).
EXPECTED_AE_EPOCHS = 25


def autoencoder_steps(samples: int, ae_options) -> int:
  """Training steps the pattern autoencoder is expected to take on `samples` samples
  (patterns.autoencoder.train_autoencoder: batches of each epoch, expected epochs)."""
  n_val = max(1, int(round(samples * ae_options.validation_fraction)))
  per_epoch = max(1, (samples - n_val) // ae_options.batch_size)
  return per_epoch * min(ae_options.epochs, EXPECTED_AE_EPOCHS)


def autoencoder_step_flops(canvas: int, ae_options) -> float:
  """Matmul FLOPs of one training step of the pattern autoencoder (forward and backward:
  3x the forward), as patterns.autoencoder.PatternAutoencoder builds it (tests/
  test_cost_plan.py checks it against XLA's count); the 'conv' kind is counted as dense
  convolutions, an upper bound (XLA counts about half: no input gradient, dilated taps)."""
  w, b, c2, z = ae_options.width, ae_options.batch_size, canvas * canvas, ae_options.latent_dim
  if ae_options.kind == 'conv':
    g = -(-canvas // 4) * 4 // 4
    enc = (2 * g) ** 2 * w * 9 * 2 + g * g * 2 * w * 9 * w + g * g * 2 * w * 64
    dec = 64 * g * g * 2 * w + (2 * g) ** 2 * w * 9 * 2 * w + (4 * g) ** 2 * 9 * w
  else:
    h = 16 * w
    enc = c2 * 2 * h + h * 64
    dec = 64 * h + h * c2
  per_sample = enc + 64 * z + z * 64 + dec
  return 3. * 2. * per_sample * b


def forward_bytes(config: ViTConfig, batch_size: int = 1) -> int:
  """A lower bound on the memory one forward of `batch_size` images needs beyond the
  weights: one layer's attention logits and weights (2 H T² floats) and its widest
  activations (4 T max(mlp, 3 D) floats), per image."""
  t = config.num_tokens
  per_image = 4 * (2 * config.num_heads * t * t + 4 * t * max(config.mlp_dim, 3 * config.hidden_size))
  return batch_size * per_image


def available_memory_bytes() -> Optional[int]:
  """What the default device can still allocate: an accelerator's free memory, or on the
  CPU the system's available memory, bounded by this process's address-space limit
  (`ulimit -v`); None if unknown."""
  import jax
  device = jax.devices()[0]
  if device.platform != 'cpu':
    stats = device.memory_stats() or {}
    limit = stats.get('bytes_limit')
    return None if not limit else int(limit - stats.get('bytes_in_use', 0))
  found = []
  try:
    with open('/proc/meminfo') as f:
      for line in f:
        if line.startswith('MemAvailable:'):
          found.append(int(line.split()[1]) * 1024)
  except OSError:
    pass
  try:
    import resource
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
      with open('/proc/self/status') as f:
        size = next(int(line.split()[1]) * 1024 for line in f if line.startswith('VmSize:'))
      found.append(max(soft - size, 0))
  except (ImportError, OSError, StopIteration, ValueError):
    pass
  return min(found) if found else None


def check_forward_memory(config: ViTConfig, batch_size: int = 1) -> None:
  """OptionError (naming --image-size) when one image's forward cannot fit the memory the
  device has left (a lower bound: the analyses need more), before anything runs at that
  size."""
  need, have = forward_bytes(config, batch_size), available_memory_bytes()
  if have is not None and need > have:
    h, w = config.image_hw
    raise OptionError('image_size', f'{h}x{w} px is {config.num_tokens} tokens an image; one '
                                    f'forward needs at least {need / 2 ** 30:.1f} GiB '
                                    f'({config.num_heads} heads x {config.num_tokens}² '
                                    f'attention weights), more than the '
                                    f'{have / 2 ** 30:.1f} GiB this device has free: choose '
                                    f'a smaller size')


def time_forward(params, config: ViTConfig, batch_size: int, repeats: int = 2) -> tuple:
  """(seconds per image of one plain forward, seconds to compile it) on the default
  device, timed on zero images."""
  import jax
  import jax.numpy as jnp

  from vit_jax_analytics import model as model_lib
  images = jnp.zeros((batch_size, *config.image_hw, 3), jnp.float32)
  fn = jax.jit(lambda p, x: model_lib.apply(p, config, x))
  # Kept in the persistent cache however fast it compiles: a second run of the model finds
  # it there, and its plan knows that run is warm (estimate).
  threshold = jax.config.jax_persistent_cache_min_compile_time_secs
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
  try:
    t0 = time.perf_counter()
    compiled = fn.lower(params, images).compile()
    compile_s = time.perf_counter() - t0
  finally:
    jax.config.update('jax_persistent_cache_min_compile_time_secs', threshold)
  compiled(params, images).block_until_ready()
  best = float('inf')
  for _ in range(repeats):
    t0 = time.perf_counter()
    compiled(params, images).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return best / batch_size, compile_s


def xla_flops(jitted, *args, **kwargs) -> float:
  """FLOPs of a jitted function's compiled computation, from XLA's cost analysis."""
  analysis = jitted.lower(*args, **kwargs).compile().cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0]
  return float(analysis['flops'])


# What JAX reports while it makes a program: tracing, lowering to MLIR, and the backend's
# compilation or its load from the persistent cache (jax/_src/dispatch.py's event names).
COMPILE_EVENTS = ('/jax/core/compile/jaxpr_trace_duration',
                  '/jax/core/compile/jaxpr_to_mlir_module_duration',
                  '/jax/core/compile/backend_compile_duration')
_CACHE_HIT, _CACHE_MISS = '/jax/compilation_cache/cache_hits', '/jax/compilation_cache/cache_misses'


class CompileClock:
  """Seconds JAX spends making programs (tracing, lowering, compiling or loading them from
  the persistent cache) while the clock is open, and the persistent cache's hits and
  misses: `with CompileClock() as clock: ...; clock.seconds`. From JAX's monitoring
  events, so it sees every analysis's programs without their help."""

  def __init__(self):
    self.seconds, self.hits, self.misses = 0., 0, 0

  def _duration(self, event, seconds, **_):
    if event in COMPILE_EVENTS:
      self.seconds += seconds

  def _event(self, event, **_):
    if event == _CACHE_HIT:
      self.hits += 1
    elif event == _CACHE_MISS:
      self.misses += 1

  def __enter__(self) -> 'CompileClock':
    import jax.monitoring
    jax.monitoring.register_event_duration_secs_listener(self._duration)
    jax.monitoring.register_event_listener(self._event)
    return self

  def __exit__(self, *exc) -> None:
    import jax.monitoring
    jax.monitoring.unregister_event_duration_listener(self._duration)
    jax.monitoring.unregister_event_listener(self._event)

  @property
  def cached(self) -> bool:
    """Whether the programs made came from the persistent cache (all of them)."""
    return self.hits > 0 and not self.misses


# A stage's compiling in units of the plan's forward program's (measured by time_forward):
# cold (compiled) and warm (traced, lowered and loaded from the persistent cache). Fitted
# on ViT-Ti/16 (16 images) and the photo demo's ViT-S/14 on a quiet 2-core CPU, cold and
# warm (docs/cost.md); under load they vary about 2x either way.
COMPILE_RATIOS = {'importance stage 1': (3.4, 2.5), 'importance stage 2': (2., 1.2),
                  'strength': (3.5, 2.2), 'patterns': (5.5, 4.2)}


def estimate(stages: Sequence[StageCost], seconds_per_forward: float,
             forward_compile: CompileClock) -> None:
  """Fills each stage's planned_seconds (its forward-eqs at seconds_per_forward, plus its
  compiling) and planned_compile: COMPILE_RATIOS x what making the forward program took,
  cold or warm as it was (`forward_compile`: a CompileClock around time_forward)."""
  warm = forward_compile.cached
  for s in stages:
    ratio = COMPILE_RATIOS.get(s.name, (1., 1.))[1 if warm else 0]
    s.planned_compile = ratio * forward_compile.seconds
    s.planned_seconds = ((s.total + s.extra_forward_eq) * seconds_per_forward
                         + s.planned_compile)


def format_table(stages: Sequence[StageCost], config: ViTConfig, n_images: int,
                 seconds_per_forward: Optional[float] = None, title: str = 'planned') -> str:
  """The per-stage table: forward-eqs per image of the run (the stage's total over all
  images), and estimated or measured seconds."""
  limit = ablation_limit(config)
  rows = [f'cost ({title}) on {n_images} images, in forward-equivalents per image '
          f'(ablation limit {limit:.1f}):']
  width = max(len(s.name) for s in stages) if stages else 10
  total = 0.
  for s in stages:
    per_run_image = s.total / max(n_images, 1)
    total += per_run_image
    line = f'  {s.name:<{width}}  {per_run_image:7.2f}'
    if s.images != n_images:
      line += f'  ({s.per_image:.1f} on each of {s.images} images)'
    if s.seconds is not None:
      line += f'  {s.seconds:7.1f} s'
      if s.compile_seconds is not None:
        planned = ('' if s.planned_compile is None
                   else f', planned {s.planned_compile:.1f} s')
        line += f' (of which compiling {s.compile_seconds:.1f} s{planned})'
      if s.planned_seconds:
        line += (f'  planned ~{s.planned_seconds:.1f} s '
                 f'({(s.planned_seconds - s.seconds) / max(s.seconds, 1e-9):+.0%})')
    elif s.planned_seconds is not None:
      line += f'  ~{s.planned_seconds:6.1f} s'
      line += f' (compiling ~{s.planned_compile:.1f} s)' if s.planned_compile else ''
    elif seconds_per_forward is not None:
      line += f'  ~{s.total * seconds_per_forward:6.1f} s'
    if s.note:
      line += f'  {s.note}'
    rows.append(line)
  line = f'  {"total":<{width}}  {total:7.2f} = {total / limit:.2f}x the ablation limit'
  measured = [s.seconds for s in stages if s.seconds is not None]
  planned = [s.planned_seconds for s in stages if s.planned_seconds is not None]
  if measured:
    line += f'  {sum(measured):7.1f} s'
    if planned and len(planned) == len(stages):
      line += (f'  planned ~{sum(planned):.1f} s '
               f'({(sum(planned) - sum(measured)) / max(sum(measured), 1e-9):+.0%})')
  elif planned and len(planned) == len(stages):
    line += f'  ~{sum(planned):6.1f} s'
  elif seconds_per_forward is not None:
    line += f'  ~{total * n_images * seconds_per_forward:6.1f} s'
  rows.append(line)
  return '\n'.join(rows)


def default_cache_dir():
  """Where compiled programs are kept: $XDG_CACHE_HOME (or ~/.cache)/vit_jax_analytics/jax."""
  import os
  from pathlib import Path
  base = os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache'
  return Path(base) / 'vit_jax_analytics' / 'jax'


def enable_compile_cache(directory) -> None:
  """JAX's persistent compilation cache in `directory`: a second analysis of the same
  model shape loads its compiled programs instead of compiling them again."""
  import jax
  from pathlib import Path
  Path(directory).mkdir(parents=True, exist_ok=True)
  jax.config.update('jax_compilation_cache_dir', str(directory))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
