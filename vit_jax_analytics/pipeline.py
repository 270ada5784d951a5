"""Runs an analysis end to end: checkpoint and images in, results in a logdir.

The glue between the I/O modules (checkpoints, data, summary) and the pure analyses; the
CLI calls these, and so can a notebook.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Optional

import numpy as np

from vit_jax_analytics import checkpoints, data, summary


@dataclasses.dataclass
class Inputs:
  """What every analysis reads: a checkpoint, an image folder and how to feed it."""
  checkpoint: Path
  images: Path
  labels: Optional[Path] = None
  max_images: Optional[int] = None
  image_size: Optional[int] = None
  gelu_approximate: Optional[bool] = None
  mean: tuple = data.VIT_JAX_MEAN_STD[0]
  std: tuple = data.VIT_JAX_MEAN_STD[1]

  def load(self):
    """(params, config, image_set)."""
    params, config = checkpoints.load_checkpoint(self.checkpoint, image_size=self.image_size,
                                                 gelu_approximate=self.gelu_approximate)
    image_set = data.image_folder(self.images, self.labels).take(self.max_images)
    return params, config, image_set

  def identity(self) -> list:
    """What a resumed run must share with the interrupted one."""
    ckpt = Path(self.checkpoint)
    stamp = os.stat(ckpt).st_mtime_ns if ckpt.exists() else 0
    return [str(ckpt.absolute()), stamp, str(Path(self.images).absolute()), self.labels,
            self.max_images, self.image_size, self.gelu_approximate, self.mean, self.std]


def default_run_name(checkpoint) -> str:
  """The checkpoint's file or directory name, made safe for a run directory."""
  import re
  stem = Path(checkpoint).name
  stem = stem[:-4] if stem.endswith('.npz') else stem
  return re.sub(r'[^A-Za-z0-9._-]', '_', stem).lstrip('.') or 'run'


def common_meta(inputs: Inputs, config, image_set) -> dict:
  import flax
  import jax

  import vit_jax_analytics
  return {
      'checkpoint': str(inputs.checkpoint), 'config': config.to_dict(),
      'image_folder': str(inputs.images), 'image_names': image_set.relative_names(),
      'labels': [int(x) for x in image_set.labels],
      'class_names': list(image_set.class_names) if image_set.class_names else None,
      'mean': list(inputs.mean), 'std': list(inputs.std),
      'versions': {'vit_jax_analytics': vit_jax_analytics.__version__,
                   'jax': jax.__version__, 'flax': flax.__version__},
  }


def run_importance(inputs: Inputs, logdir, run: Optional[str] = None, options=None) -> Path:
  """Computes head importance and writes it to <logdir>/<run>; resumes an interrupted run
  with the same inputs and options. Returns the event file written."""
  from vit_jax_analytics import importance

  options = options or importance.ImportanceOptions()
  run = summary.check_run_name(run or default_run_name(inputs.checkpoint))
  params, config, image_set = inputs.load()
  resume = (logdir, run, 'importance', options.key(*inputs.identity()))
  result = importance.compute_importance(params, config, image_set, options, inputs.mean,
                                         inputs.std, resume=resume)
  meta = common_meta(inputs, config, image_set)
  meta['options'] = dataclasses.asdict(options)
  path = summary.write_importance(logdir, run, result, meta)
  summary.clear_progress(*resume)
  return path


def model_view_images(inputs: Inputs, image_set, indices, image_size) -> np.ndarray:
  """[M, S, S, 3] uint8: the images at `indices` as the model saw them (resized)."""
  out = []
  for i in indices:
    x = data.load_image(image_set.paths[i], image_size, inputs.mean, inputs.std)
    x = x * np.asarray(inputs.std, np.float32) + np.asarray(inputs.mean, np.float32)
    out.append(np.clip(np.round(x * 255.), 0, 255).astype(np.uint8))
  return np.stack(out) if out else np.zeros((0, image_size, image_size, 3), np.uint8)


def run_strength(inputs: Inputs, logdir, run: Optional[str] = None, options=None) -> Path:
  """Computes the attention-strength statistics and writes them to <logdir>/<run>."""
  from vit_jax_analytics import strength

  options = options or strength.StrengthOptions()
  run = summary.check_run_name(run or default_run_name(inputs.checkpoint))
  params, config, image_set = inputs.load()
  result = strength.compute_strength(params, config, image_set, options, inputs.mean,
                                     inputs.std)
  meta = common_meta(inputs, config, image_set)
  meta['options'] = dataclasses.asdict(options)
  images = model_view_images(inputs, image_set, result.get('map_image_index', []),
                             config.image_size)
  return summary.write_strength(logdir, run, result, meta, images)


def run_patterns(inputs: Inputs, logdir, run: Optional[str] = None, options=None) -> Path:
  """Samples attention patterns, trains the autoencoder (saved with orbax beside the
  event file, in <logdir>/<run>/pattern_autoencoder) and writes the summary."""
  from vit_jax_analytics import patterns

  options = options or patterns.PatternOptions()
  run = summary.check_run_name(run or default_run_name(inputs.checkpoint))
  params, config, image_set = inputs.load()
  samples = patterns.extract_samples(params, config, image_set, options.per_head,
                                     options.max_images, options.batch_size, options.seed,
                                     inputs.mean, inputs.std, progress=options.progress)
  result, ae_params = patterns.summarise(samples, config, options)
  meta = common_meta(inputs, config, image_set)
  meta['options'] = dataclasses.asdict(options)
  checkpoints.save_orbax(summary.run_directory(logdir, run) / 'pattern_autoencoder', ae_params,
                         {'canvas': 2 * config.grid_size - 1, **dataclasses.asdict(options.ae)})
  return summary.write_patterns(logdir, run, result, samples, meta)


def run_analysis(inputs: Inputs, logdir, run: Optional[str] = None, importance_options=None,
                 strength_options=None, pattern_options=None, skip=()) -> list:
  """importance, strength and patterns in turn (any of them in `skip` is left out); each
  writes its own event file as soon as it is done. Returns the files written."""
  import sys
  steps = [(name, fn, opts) for name, fn, opts in (
      ('importance', run_importance, importance_options),
      ('strength', run_strength, strength_options),
      ('patterns', run_patterns, pattern_options)) if name not in skip]
  written = []
  for k, (name, fn, opts) in enumerate(steps, start=1):
    print(f'[{k}/{len(steps)}] {name}', file=sys.stderr, flush=True)
    written.append(fn(inputs, logdir, run, opts))
  return written
