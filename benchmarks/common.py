"""Shared helpers for the benchmarks: timing jitted calls after compilation."""

import time

import jax


def best_time(fn, *args, repeats=3):
  """Seconds of the fastest of `repeats` calls, after one warm-up call (compilation)."""
  jax.block_until_ready(fn(*args))
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - start)
  return best
