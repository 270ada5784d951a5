"""How the suite compares floating-point results: the tolerance rule, written once.

Float32 rounding differs from one CPU to the next (SIMD width, XLA's fusion and blocking
choices, thread count), so a tolerance fixed by what one machine happened to give passes
there and fails elsewhere. Two ways out, in order of preference:

(a) Compare in float64. Run both sides under `with float64():` on `as64(...)` params and
    images; every float32 rounding of the forward is then ~1e-16 relative, and a
    tolerance of `F64_RTOL` (1e-9 relative, `F64_ATOL` absolute for values near 0) is
    machine independent and still ~1e5 times tighter than a real bug (a wrong mask, a
    missing term, an off-by-one token). `assert_close64` checks that both sides really
    are float64 (a float32 result would otherwise pass or fail by luck).
    Where the code hard-codes float32 at the very end only (e.g. Taylor gradients taken
    with respect to float32 masks: a float64 gradient rounded once to float32, then
    averaged over a few Taylor probes in float32), pass `rounded=np.float32`: the two
    sides then agree within `ROUNDED_ULPS` (4) units in the last place of float32 (each
    is the float32 rounding of float64 values that agree to ~1e-14, plus a float32 mean of
    at most a few such values).

(b) Where float64 is impossible (the code casts to float32 inside), derive the tolerance
    from noise the test measures: `float32_noise(ours32, exact64)` is the largest
    |float32 result - float64 result of the same computation| on this machine, and
    `assert_within_noise` allows `NOISE_FACTOR` times that (never less than
    `NOISE_FACTOR` float32 ulps of the array's largest magnitude, so a measured noise of 0
    on this machine is not a tolerance of 0). Another machine's float32 rounding differs
    in its bits, not in its order of magnitude: the factor covers the spread. Measured on
    test_checkpoints' forward (2026-12): float32 noise 8.7e-7 with AVX, 6.3e-7 with
    XLA_FLAGS=--xla_cpu_max_isa=SSE4_2, unchanged by 1 thread or 8 forced devices (a
    spread of 1.4x); the float64 comparisons of (a) stay below 1e-13 relative on both.
"""

from __future__ import annotations

import contextlib
import functools

import jax
import numpy as np

F64_RTOL = 1e-9
F64_ATOL = 1e-12
ROUNDED_ULPS = 4
NOISE_FACTOR = 8.
F32_EPS = float(np.finfo(np.float32).eps)


@contextlib.contextmanager
def float64():
  """JAX in 64-bit mode for the block: jnp arrays made inside keep float64."""
  with jax.enable_x64(True):
    yield


def in_float64(test):
  """A test function run entirely under float64() (pytest still sees its fixtures)."""
  @functools.wraps(test)
  def run(*args, **kwargs):
    with float64():
      return test(*args, **kwargs)
  return run


def as64(tree):
  """The floating leaves of `tree` (NumPy or JAX) as float64 NumPy arrays; others as they
  are. Call inside `float64()` if the result feeds jnp code."""
  def cast(x):
    x = np.asarray(x) if isinstance(x, (jax.Array, np.ndarray, np.generic)) else x
    if isinstance(x, np.ndarray) and jax.numpy.issubdtype(x.dtype, jax.numpy.floating):
      return x.astype(np.float64)
    return x
  return jax.tree.map(cast, tree)


def assert_close64(got, want, err_msg='', rtol=F64_RTOL, atol=F64_ATOL, rounded=None,
                    ulps=ROUNDED_ULPS):
  """got == want up to float64 rounding (see (a)). Both must be float64 arrays unless
  `rounded` names the float type the code rounds its float64 result to at the end."""
  got, want = np.asarray(got), np.asarray(want)
  allowed = {np.dtype(np.float64)} | ({np.dtype(rounded)} if rounded is not None else set())
  for name, x in (('got', got), ('want', want)):
    if x.dtype not in allowed:
      raise AssertionError(f'{err_msg}: {name} is {x.dtype}, expected one of '
                           f'{sorted(map(str, allowed))} (run both sides under '
                           'numerics.float64() on as64 inputs)')
  if rounded is not None:
    rtol = max(rtol, ulps * float(np.finfo(rounded).eps))
    atol = max(atol, ulps * float(np.finfo(rounded).tiny))
  np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=err_msg)


def float32_noise(ours32, exact64) -> float:
  """max |float32 result - float64 result of the same computation| (see (b))."""
  a, b = np.asarray(ours32, np.float64), np.asarray(exact64, np.float64)
  return float(np.nanmax(np.abs(a - b), initial=0.))


def noise_tolerance(noise, scale) -> float:
  """NOISE_FACTOR x the measured noise, at least NOISE_FACTOR float32 ulps of `scale`."""
  return NOISE_FACTOR * max(float(noise), F32_EPS * float(scale))


def assert_within_noise(got, want, noise, err_msg=''):
  """|got - want| <= noise_tolerance(noise, max |want|) everywhere (see (b))."""
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  atol = noise_tolerance(noise, np.nanmax(np.abs(want), initial=0.))
  np.testing.assert_allclose(got, want, rtol=0, atol=atol,
                             err_msg=f'{err_msg} (measured float32 noise {noise:.3g})')


COUNT_METRICS = ('top1', 'top5')


def assert_metric64(got, want, metric):
  """An importance metric in float64 (see (a)); top1/top5 (0/1 per image, or counts)
  exactly."""
  if metric in COUNT_METRICS:
    np.testing.assert_array_equal(got, want, err_msg=metric)
  else:
    assert_close64(got, want, metric)


def importance_array(result, name: str):
  """An ImportanceResult's array by its tag name: 'taylor', 'curve_top1', 'partial_loss_se',
  'partial_whole_kl', ... (curves and partial pruning are nested in the result)."""
  import re
  match = re.fullmatch(r'(curve|partial_whole|partial)_(loss|top1|top5|kl)(_se)?', name)
  if not match:
    return getattr(result, name)
  kind, metric, se = match.groups()
  group = {'curve': result.curves.metrics, 'partial': result.partial.change,
           'partial_whole': result.partial.whole_head}[kind]
  return group[metric].se if se else group[metric].mean
