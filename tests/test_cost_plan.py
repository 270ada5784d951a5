"""The plan's parts that are not forwards: the autoencoder's FLOPs, compiling (JAX's own
events), and the plan-vs-actual columns of the cost table."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.tiny import TINY
from vit_jax_analytics import cost, patterns, strength
from vit_jax_analytics.patterns import autoencoder


def test_autoencoder_step_flops_match_xla():
  """The analytic count of a (dense) training step's matmul FLOPs against XLA's cost
  analysis of the real loss gradient (XLA adds the elementwise work: within 25%)."""
  kind = 'dense'
  ae = patterns.AEOptions(kind=kind, batch_size=64)
  canvas = 13
  model = autoencoder.PatternAutoencoder(canvas, ae.latent_dim, ae.width, kind)
  x = jnp.zeros((ae.batch_size, canvas, canvas, 2))
  params = jax.jit(model.init)(jax.random.key(0), x[:1])['params']
  grad = jax.jit(jax.grad(lambda p, x: jnp.mean(autoencoder.masked_bce(
      model.apply({'params': p}, x), x))))
  want = cost.xla_flops(grad, params, x)
  assert cost.autoencoder_step_flops(canvas, ae) == pytest.approx(want, rel=0.25)


def test_plan_counts_the_autoencoder_and_stored_maps():
  options = {'strength': strength.StrengthOptions(map_images=3),
             'patterns': patterns.PatternOptions(per_head=2)}
  stages = {s.name: s for s in cost.plan(TINY, 10, ('strength', 'patterns'), options, 0)}
  assert stages['strength'].extra_forward_eq == pytest.approx(
      3 * cost.STORED_MAP_FLOPS_PER_BYTE * strength.map_bytes(TINY) / cost.flops(TINY).forward)
  samples = 10 * TINY.num_layers * TINY.num_heads * 2
  steps = cost.autoencoder_steps(samples, options['patterns'].ae)
  assert steps == autoencoder.training_steps(samples, options['patterns'].ae) * min(
      options['patterns'].ae.epochs, cost.EXPECTED_AE_EPOCHS)
  assert stages['patterns'].extra_forward_eq == pytest.approx(
      steps * cost.autoencoder_step_flops(2 * TINY.grid_size - 1, options['patterns'].ae)
      / cost.flops(TINY).forward)


def test_compile_clock_sees_compiling_and_estimate_scales_it():
  f = jax.jit(lambda x: jnp.sin(x) @ x.T + 1.2345)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(17, 5)), jnp.float32)
  with cost.CompileClock() as first:
    f(x).block_until_ready()
  with cost.CompileClock() as again:  # jit's in-memory cache: nothing made
    f(x).block_until_ready()
  assert first.seconds > 0 and again.seconds == 0
  stages = [cost.StageCost('strength', 4, 1.), cost.StageCost('patterns', 4, 1., '', None,
                                                              None, 2.)]
  cost.estimate(stages, 0.5, first)
  ratios = [cost.COMPILE_RATIOS[s.name][int(first.cached)] for s in stages]
  assert [s.planned_compile for s in stages] == pytest.approx(
      [r * first.seconds for r in ratios])
  assert stages[1].planned_seconds == pytest.approx((4 + 2.) * 0.5 + stages[1].planned_compile)
  for s, seconds in zip(stages, (10., 20.)):
    s.seconds, s.compile_seconds = seconds, 1.
  table = cost.format_table(stages, TINY, 4, title='done')
  err = (stages[0].planned_seconds - 10.) / 10.
  assert f'planned ~{stages[0].planned_seconds:.1f} s ({err:+.0%})' in table
  total = sum(s.planned_seconds for s in stages)
  assert f'planned ~{total:.1f} s ({(total - 30.) / 30.:+.0%})' in table.splitlines()[-1]


def test_planned_curve_masks_are_their_expectation_under_random_orders():
  """cost.expected_curve_suffixes against the masks stage 2 builds from random orders
  (importance.pruning_masks, first_masked_layers), averaged over 3,000 orders: within 4
  standard errors."""
  from vit_jax_analytics import importance
  f = cost.flops(TINY)
  n = TINY.num_layers * TINY.num_heads
  counts = [0, 2, 5, 9, n]
  rng = np.random.default_rng(0)
  draws = []
  for _ in range(3000):
    masks = importance.pruning_masks(rng.permutation(n), counts, TINY)
    firsts = [l for l in importance.first_masked_layers(masks[1:-1]) if l is not None]
    draws.append(sum(f.suffix_from(l) for l in firsts))
  draws = np.asarray(draws)
  want = cost.expected_curve_suffixes(TINY, counts, orders=1) - f.suffix_from(0)
  assert abs(draws.mean() - want) < 4 * draws.std() / np.sqrt(len(draws))
  # the all-removed mask once whatever the number of orders; 3 orders cost 3x the inner ones
  three = cost.expected_curve_suffixes(TINY, counts, orders=3)
  assert three == pytest.approx(3 * want + f.suffix_from(0))


def test_planned_stage2_counts_what_stage2_runs():
  """The plan's stage 2: its orders (no top-1 order under the embedding objective), every
  partially pruned head's variants and the whole head (plan_stage2's extra keep)."""
  from vit_jax_analytics import importance
  o = importance.ImportanceOptions(partial_heads=2, random_orders=1)
  assert o.curve_orders(TINY) == len(importance.curves.ORDER_METRICS) + 1 - (
      not TINY.has_classifier)
  variants = len(importance.partial_variants(TINY, o.partial_radii, o.partial_region))
  f = cost.flops(TINY)
  mid = (TINY.num_layers - 1) / 2
  rest = f.suffix_after_attention(0) - mid * f.layer  # the rest of layer mid on
  partial = 2 * (f.one_head_attention + (variants + 1) * rest)
  curves = cost.expected_curve_suffixes(TINY, o.curve_counts(TINY), o.curve_orders(TINY))
  assert cost.stage2_expected(TINY, o, variants) == pytest.approx(
      (f.forward + partial + curves) / f.forward)
  stages = {s.name: s for s in cost.plan(TINY, 10, ('importance',), {'importance': o},
                                         variants)}
  assert stages['importance stage 2'].per_image == pytest.approx(
      cost.stage2_expected(TINY, o, variants))


def test_the_plans_forward_is_kept_so_a_second_run_plans_warm():
  """time_forward's program goes to the persistent cache however fast it compiles (the
  cache keeps programs that took 0.5 s or more), so the next run finds it and its plan
  uses the warm compile ratios."""
  from tests.tiny import tiny_params
  params = tiny_params()
  threshold = jax.config.jax_persistent_cache_min_compile_time_secs
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 1e3)  # keeps nothing else
  try:
    jax.clear_caches()
    cost.time_forward(params, TINY, 5)
    jax.clear_caches()  # what a new process has: only the persistent cache
    with cost.CompileClock() as clock:
      cost.time_forward(params, TINY, 5)
    assert clock.cached, (clock.hits, clock.misses)
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 1e3  # restored
  finally:
    jax.config.update('jax_persistent_cache_min_compile_time_secs', threshold)
