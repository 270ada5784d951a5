"""Accuracy and loss of a checkpoint over an image stream."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax_analytics import model as model_lib
from vit_jax_analytics.errors import NonFiniteError
from vit_jax_analytics.model import ViTConfig


@functools.partial(jax.jit, static_argnums=1)
def _batch_stats(params, config: ViTConfig, images, labels, valid):
  """Sums over the valid entries of one batch: correct, cross-entropy, count."""
  logits = model_lib.apply(params, config, images)
  labelled = valid & (labels >= 0)
  logp = jax.nn.log_softmax(logits)
  nll = -jnp.take_along_axis(logp, jnp.maximum(labels, 0)[:, None], axis=-1)[:, 0]
  correct = (jnp.argmax(logits, -1) == labels) & labelled
  return (jnp.sum(correct), jnp.sum(jnp.where(labelled, nll, 0.)), jnp.sum(labelled),
          jnp.argmax(logits, -1), jnp.all(jnp.isfinite(logits), -1))


def evaluate(params, config: ViTConfig, batches) -> dict:
  """Top-1 accuracy and mean cross-entropy over the labelled valid images of `batches`
  (an iterable of data.Batch); also every image's predicted class."""
  correct = loss = count = 0
  predictions = {}
  for batch in batches:
    c, l, n, pred, finite = _batch_stats(params, config, batch.images, batch.labels,
                                         batch.valid)
    bad = batch.valid & ~np.asarray(finite)
    if bad.any():  # NaN logits would otherwise all "predict" class 0
      raise NonFiniteError("the model's output", batch.index[bad])
    correct, loss, count = correct + int(c), loss + float(l), count + int(n)
    for i, p, v in zip(batch.index, np.asarray(pred), batch.valid):
      if v:
        predictions[int(i)] = int(p)
  return {'accuracy': correct / max(count, 1), 'loss': loss / max(count, 1),
          'labelled_images': count, 'predictions': predictions}
