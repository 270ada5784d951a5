"""A training run's checkpoints analysed step by step: an orbax `CheckpointManager` directory
(`100/`, `200/`, ...) or a flax.training.checkpoints directory (`checkpoint_100`, ...).

Each chosen step is loaded and analysed alone (`pipeline.run_analysis`, the same as
analysing that step's checkpoint by itself) and written at its step in <logdir>/<run>, so
the plugin shows the run by step and over training as if it had called
`training.analyse_step`. Resumable: a step whose analyses are all written is skipped, and an
interrupted step resumes as any analysis does (importance's saved progress).
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, Mapping, Optional, Sequence

from vit_jax_analytics import pipeline, storage
from vit_jax_analytics.checkpoints import pytree
from vit_jax_analytics.errors import OptionError
from vit_jax_analytics.logdir import writer


def training_steps(path) -> dict:
  """{step: checkpoint path} of a directory of a run's checkpoints ({} for anything else)."""
  if storage.is_url(path):  # each step is read through a local copy when it is analysed
    return {s: str(p) for s, p in pytree.training_steps(storage.location(path)).items()}
  return pytree.training_steps(path)


def parse_steps(text: str) -> str:
  """The argparse type of --steps: 'all', 'last', or comma-separated steps and A:B ranges
  (inclusive), checked for form here and against the directory's steps later."""
  import argparse
  try:
    _selector(text)
  except ValueError as e:
    raise argparse.ArgumentTypeError(str(e)) from None
  return text


def _selector(text: str):
  text = text.strip()
  if text in ('all', 'last'):
    return text
  chosen = []
  for part in text.split(','):
    lo, sep, hi = part.strip().partition(':')
    try:
      a = int(lo) if lo else 0
      b = int(hi) if sep and hi else (a if not sep else None)
    except ValueError:
      a = b = -1
    if a < 0 or (b is not None and b < a):
      raise ValueError(f"expected 'all', 'last' or steps and A:B ranges such as "
                       f"'100,300:500', got {text!r}")
    chosen.append((a, b))
  return chosen


def select_steps(available: Sequence[int], text: str = 'all') -> list:
  """The steps of `available` that `text` (see parse_steps) chooses; OptionError (the CLI
  names --steps) when a step asked for by number is not there."""
  available = sorted(available)
  selector = _selector(text)
  if selector == 'all':
    return available
  if selector == 'last':
    return available[-1:]
  out = set()
  for a, b in selector:
    if b == a and a not in available:
      raise OptionError('steps', f'no checkpoint at step {a}; steps there: '
                                 f'{available[:20]}{" ..." if len(available) > 20 else ""}')
    out.update(s for s in available if s >= a and (b is None or s <= b))
  return sorted(out)


def is_written(logdir, run: str, step: int, analyses: Sequence[str]) -> bool:
  """Whether every analysis of `analyses` has results at `step` in <logdir>/<run>."""
  directory = writer.run_directory(logdir, run)
  return all(writer.existing_analysis_files(directory, a, step) for a in analyses)


def run_steps(inputs: pipeline.Inputs, logdir, run: Optional[str] = None,
              options: Optional[Mapping[str, Any]] = None,
              analyses: Sequence[str] = pipeline.ANALYSES,
              run_options: Optional[pipeline.RunOptions] = None, steps: str = 'all') -> dict:
  """Analyses the steps chosen by `steps` of the run directory `inputs.checkpoint`, each
  written at its step in <logdir>/<run> (default run name: the directory's). A step already
  written (all of `analyses`) is skipped. Returns {step: files written} (skipped steps: [])."""
  found = training_steps(inputs.checkpoint)
  if not found:
    raise OptionError('checkpoint', f'{inputs.checkpoint}: no training steps there; expected '
                                    f'a directory of checkpoints named by step (orbax '
                                    f"CheckpointManager '100/', flax 'checkpoint_100')")
  chosen = select_steps(list(found), steps)
  run = writer.check_run_name(pipeline.default_run_name(inputs.checkpoint) if run is None
                              else run)
  written = {}
  for k, step in enumerate(chosen, start=1):
    if is_written(logdir, run, step, analyses):
      print(f'step {step} ({k}/{len(chosen)}): already written, skipped', file=sys.stderr,
            flush=True)
      written[step] = []
      continue
    print(f'step {step} ({k}/{len(chosen)}): {found[step]}', file=sys.stderr, flush=True)
    written[step] = pipeline.run_analysis(
        dataclasses.replace(inputs, checkpoint=found[step]), logdir, run, options, analyses,
        run_options, step=step)
  return written
