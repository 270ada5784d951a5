"""What the whole analysis costs per image, per stage: XLA's FLOPs and measured time.

For each model (random weights, 224 x 224, 10 classes, default analysis options) it compiles
every jitted stage on one batch, reads XLA's cost analysis (FLOPs of the compiled program;
exact and machine-independent) and divides by a plain forward's: forward-equivalents per
image. Then the whole `analyze` per image at N images (stage 1, strength and the pattern
sampling read every image or up to 200; stage 2 reads the subset) against the single-head
ablation scan's limit. With --time, each stage is also timed (steady state and first call,
which includes compilation) on the current device, and time ratios are printed beside the
FLOP ratios. The analytic planner's figure (cost.py) is shown beside XLA's.

  python benchmarks/bench_cost.py [--configs ViT-Ti/16,ViT-B/16] [--time ViT-Ti/16]
"""

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import add_baseline_flag, run_baseline  # noqa: E402
from tests.reference import importance_kernels as reference  # noqa: E402
from vit_jax_analytics import (cost, importance, model as model_lib, patterns,  # noqa: E402
                               strength)
from vit_jax_analytics.importance import forwards, partial, plan as stage2_plan, sums  # noqa: E402


def timed(fn, *args, repeats=2):
  """(first call seconds, best later call seconds)."""
  t0 = time.perf_counter()
  jax.block_until_ready(fn(*args))
  first = time.perf_counter() - t0
  best = float('inf')
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - t0)
  return first, best


def stage_functions(params, config, images, labels, options):
  """{stage: (jitted fn, args)} on this batch, stage 2 planned from this batch's stage 1
  (so its masks and heads are those a real run would use)."""
  chunk = options.chunk or importance.default_chunk()
  grads, _, ablation, _, logits = importance.taylor_ablation_batch(params, config, images,
                                                                   labels, chunk)
  acc = sums.stage1_sums(config, images.shape[0], False)
  from vit_jax_analytics.batches import Batch
  b = images.shape[0]
  batch = Batch(np.asarray(images), np.asarray(labels), np.arange(b, dtype=np.int32),
                np.ones(b, bool))
  sums.add_stage1(acc, batch, grads, ablation, importance.full_metrics(logits, labels),
                        importance.targets_from(logits, labels))
  variants = importance.partial_variants(config, options.partial_radii, options.partial_region)
  plan = stage2_plan.plan_stage2(acc, config, options, variants)
  forward = jax.jit(lambda p, x: model_lib.apply(p, config, x), )
  return plan, len(variants), {
      'forward': (forward, (params, images)),
      'importance stage 1': (importance.taylor_ablation_batch, (params, config, images, labels,
                                                                chunk)),
      'importance stage 2': (importance.curves_partial_batch, (
          params, config, images, labels, jnp.asarray(plan.unique_masks), plan.first_layers,
          jnp.asarray(plan.heads), jnp.asarray(plan.keeps), options.renormalize, plan.layers,
          chunk)),
      'strength': (strength.strength_batch, (params, config, images)),
      'patterns': (patterns.extract_batch, (params, config, images, jnp.asarray(
          patterns.sample_queries(np.arange(b), config, 4, 0)))),
      # Before this change, for comparison: Taylor and the ablation scan apart, stage 2
      # (curves from scratch, partial pruning rerunning whole layers) unshared.
      'old: taylor_batch': (importance.taylor_batch, (params, config, images, labels)),
      'old: ablation_batch': (importance.ablation_batch, (params, config, images, labels,
                                                          chunk)),
      'old: partial (whole layer)': (reference.partial_batch_plain, (
          params, config, images, labels, jnp.asarray(plan.heads), jnp.asarray(plan.keeps),
          options.renormalize, plan.layers, chunk)),
  }


def xla_pieces(params, config, images, labels, plan, renormalize):
  """Forward-eqs per image of stages 1 and 2 from XLA's cost analysis.

  XLA's cost analysis counts a loop body once, whatever its trip count, and the stages run
  their suffixes inside loops (a scan over layers that skips those below the start). So each
  distinct piece a stage runs is compiled on its own (the Taylor pass with intermediates; the
  model from layer l, after or before its attention, with the metrics; one head's attention
  recomputed) and its FLOPs are multiplied by how often the stage runs it."""
  L, H = config.num_layers, config.num_heads
  b = images.shape[0]
  cf = lambda f, *a: cost.xla_flops(jax.jit(f), *a)
  fwd = cf(lambda p, x: model_lib.apply(p, config, x), params, images)

  def taylor(p, x, y):  # stage 1 without the ablation suffixes
    g, _ = jax.grad(lambda m: (lambda out: (-jnp.sum(jax.nn.log_softmax(out[0])[:, 0]), out))(
        model_lib.VisionTransformer(config).apply({'params': p}, x, head_mask=m,
                                                  mutable=['intermediates'])), has_aux=True)(
        jnp.ones((b, L, H)))
    return g

  tokens = jnp.zeros((b, config.num_tokens, config.hidden_size), jnp.float32)
  logp = jnp.zeros((b, config.num_classes), jnp.float32)
  tgt = jnp.zeros((b,), jnp.int32)

  def after_attention(l):
    return cf(lambda p, x: importance.image_metrics(model_lib.apply(
        p, config, x, first_layer=l, skip_first_attention=True), tgt, logp), params, tokens)

  def from_layer(l):
    return cf(lambda p, x, m: importance.image_metrics(model_lib.apply(
        p, config, x, first_layer=l, head_mask=m), tgt, logp), params, tokens,
        jnp.ones((L, H)))

  share = cf(lambda h, k: jnp.einsum('bte,ed->btd', h, k),
             jnp.zeros((b, config.num_tokens, config.hidden_size // H)),
             jnp.zeros((config.hidden_size // H, config.hidden_size)))
  unmasked = cf(lambda p, x: forwards.unmasked_forward(
      p, config, x, labels, importance.default_objective(config)), params, images)
  suffix_after = {l: after_attention(l) for l in range(L)}
  stage1 = cf(taylor, params, images, labels) + sum(
      H * (suffix_after[l] + share) for l in range(L))
  stage2 = unmasked + sum(from_layer(l) for l in plan.first_layers)
  keep = jnp.asarray(plan.keeps[0])
  for flat, l in zip(plan.heads, plan.layers):
    p_l = params['Transformer'][f'encoderblock_{l}']
    head = cf(lambda p, x: model_lib.one_head_attention(p, config, x, int(flat) % H),
              p_l, tokens)
    edit = cf(lambda w, v, k: jnp.einsum('bqk,bke->bqe', w - partial.edit_attention(
        w, k, renormalize), v), jnp.zeros((b, config.num_tokens, config.num_tokens)),
        jnp.zeros((b, config.num_tokens, config.hidden_size // H)), keep)
    # each variant's keep and the whole head's (plan.keeps' last row)
    stage2 += head + len(plan.keeps) * (edit + share + suffix_after[l])
  return stage1 / fwd, stage2 / fwd, fwd


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument('--configs', default='ViT-Ti/16,ViT-B/16')
  p.add_argument('--time', default='ViT-Ti/16', help='configs to time as well ("" for none)')
  p.add_argument('--batch-size', type=int, default=8)
  p.add_argument('--images', default='64,1024')
  add_baseline_flag(p)
  args = p.parse_args()
  if args.baseline:
    run_baseline(args.baseline, 'bench_cost.py', sys.argv[1:])
  options = importance.ImportanceOptions()
  counts = [int(n) for n in args.images.split(',')]
  print(f'device: {jax.devices()[0].device_kind} x {jax.device_count()}; default options: '
        f'subset {options.subset_images}, curve points {options.curve_points}, random orders '
        f'{options.random_orders}, partial heads {options.partial_heads}, radii '
        f'{options.partial_radii}')
  for name in args.configs.split(','):
    config = model_lib.get_config(name, num_classes=10)
    params = model_lib.init_params(config, jax.random.key(0))
    # Random weights give near-uniform attention; scale q/k so heads differ as trained ones do.
    rng = np.random.default_rng(0)
    b, s = args.batch_size, config.image_size
    images = jnp.asarray(rng.uniform(-1, 1, (b, s, s, 3)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 10, b), jnp.int32)
    plan, variants, fns = stage_functions(params, config, images, labels, options)
    fwd_flops = cost.xla_flops(*fns['forward'][:1], *fns['forward'][1])
    limit = cost.ablation_limit(config)
    analytic = {'importance stage 1': cost.stage1(config),
                'importance stage 2': cost.stage2(config, plan.first_layers, plan.layers,
                                                  variants),
                'strength': 1., 'patterns': 1., 'forward': 1.}
    print(f'\n{name}: batch {b}, {config.num_layers * config.num_heads} heads, ablation limit '
          f'{limit:.2f} forward-eq/image; stage 2 plan: {len(plan.unique_masks)} distinct '
          f'curve masks (first masked layers {sorted(set(plan.first_layers))}), '
          f'{len(plan.heads)} heads (layers {list(plan.layers)}) x {variants} variants')
    do_time = name in args.time.split(',')
    per_image, seconds = {}, {}
    print(f'  {"stage":<28} {"XLA fwd-eq/img":>14} {"analytic":>9}' +
          (f' {"time fwd-eq":>11} {"steady s":>9} {"first s":>8}' if do_time else ''))
    t_fwd = None
    s1, s2, _ = xla_pieces(params, config, images, labels, plan, options.renormalize)
    for stage, (fn, fargs) in fns.items():
      # A wrapper over several jitted calls (the old per-batch kernels) has no one program.
      flops = cost.xla_flops(fn, *fargs) if hasattr(fn, 'lower') else float('nan')
      # Stages with loops: XLA counts each loop body once; use the pieces' counts.
      per_image[stage] = {'importance stage 1': s1, 'importance stage 2': s2}.get(
          stage, flops / fwd_flops)
      shown = ('n/a (loops)' if stage.startswith(('old: ablation', 'old: partial')) else
               'n/a (wrapper)' if not hasattr(fn, 'lower') else f'{per_image[stage]:.2f}')
      line = f'  {stage:<28} {shown:>14} {analytic.get(stage, float("nan")):9.2f}'
      if do_time:
        first, best = timed(fn, *fargs)
        t_fwd = best if stage == 'forward' else t_fwd
        seconds[stage] = best
        line += f' {best / t_fwd:11.2f} {best:9.2f} {first:8.1f}'
      print(line, flush=True)
    pattern_cap = patterns.PatternOptions().max_images
    for n in counts:
      s2 = options.subset_size(n)
      reads = {'importance stage 1': n, 'importance stage 2': s2, 'strength': n,
               'patterns': min(n, pattern_cap)}
      total = sum(per_image[k] * reads[k] for k in reads) / n
      line = (f'  analyze on {n:5d} images: {total:6.2f} forward-eq/image (XLA) = '
              f'{total / limit:.2f}x the ablation limit; stage 1 alone {per_image["importance stage 1"] / limit:.2f}x')
      if do_time:
        t = sum(seconds[k] * reads[k] for k in reads) / n / seconds['forward']
        line += f'; by time {t:6.2f} forward-eq/image = {t / limit:.2f}x'
      print(line, flush=True)


if __name__ == '__main__':
  main()
