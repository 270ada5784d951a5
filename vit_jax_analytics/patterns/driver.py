"""compute_patterns: the samples of a BatchSource, the autoencoder and the summary."""

from __future__ import annotations

import jax

from vit_jax_analytics import parallel
from vit_jax_analytics.batches import BatchSource
from vit_jax_analytics.model import ViTConfig
from vit_jax_analytics.patterns.options import PatternOptions
from vit_jax_analytics.patterns.sample import extract_samples
from vit_jax_analytics.patterns.summary import summarise
from vit_jax_analytics.streaming import analysis_mesh


def compute_patterns(params, config: ViTConfig, source: BatchSource,
                     options: PatternOptions = PatternOptions(), mesh=None) -> tuple:
  """Samples of the first options.max_images images of `source`, the autoencoder and the
  summary -> (PatternResult, autoencoder params).

  mesh: default every device of every process. With several processes each samples only
  its shard of the images; the samples are gathered and process 0 alone trains the
  autoencoder and returns the result (the others return (None, None)): the autoencoder is
  trained once, by the process that writes.
  """
  mesh = mesh or analysis_mesh()
  samples = extract_samples(params, config, source, options.per_head, options.max_images,
                            options.batch_size, options.seed, mesh, options.progress,
                            options.dtype)
  if parallel.is_multiprocess(mesh) and jax.process_index() != 0:
    return None, None
  return summarise(samples, config, options)
