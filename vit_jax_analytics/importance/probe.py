"""Stage 1 alone on batches already on the device (in-training analysis): Taylor importance
and, optionally, the single-head ablation scan; no pruning curves, no partial pruning."""

from __future__ import annotations

from typing import Callable, Iterable

import jax
import numpy as np

from vit_jax_analytics.importance.ablation import ablation_batch
from vit_jax_analytics.importance.objective import ABLATION_METRICS, full_metrics
from vit_jax_analytics.importance.options import default_chunk
from vit_jax_analytics.importance.sums import add_stage1, head_scores, stage1_sums
from vit_jax_analytics.importance.taylor import taylor_batch
from vit_jax_analytics.model import ViTConfig
from vit_jax_analytics.results import ImportanceResult, PartialPruning, PruningCurves


def _to_numpy(tree):
  return jax.tree.map(np.asarray, tree)


def stage1_scores(params, config: ViTConfig, batches: Iterable, ablation: bool,
                  fetch: Callable = _to_numpy) -> ImportanceResult:
  """Taylor importance (and with `ablation`, the ablation scan) over `batches`, each a
  (Batch, images [B, S, S, 3], labels [B]) with images and labels where `params` are.
  fetch: a tree of device arrays -> NumPy (default np.asarray on each leaf). The ablation
  metrics not computed are NaN; the curves and partial pruning are empty."""
  L, H = config.num_layers, config.num_heads
  acc = stage1_sums(config, 0, False)
  for batch, images, labels in batches:
    grads, logits = fetch(taylor_batch(params, config, images, labels))
    logits = np.asarray(logits, np.float32)
    if ablation:
      scan, _ = fetch(ablation_batch(params, config, images, labels, default_chunk()))
    else:
      scan = {m: np.zeros((L, H, len(batch.valid))) for m in ABLATION_METRICS}
    add_stage1(acc, batch, grads, scan, full_metrics(logits, batch.labels))
  scores, baseline = head_scores(acc)
  if not ablation:  # not computed: NaN (shown blank), so every view still draws
    for name in ('ablation_loss', 'ablation_top1', 'ablation_top5', 'ablation_kl'):
      scores[name] = np.full((L, H), np.nan)
  count = int(acc['count'])
  return ImportanceResult(**scores, baseline=baseline, curves=PruningCurves.empty(),
                          partial=PartialPruning.empty(), images=count,
                          labelled_images=int(acc['labelled']),
                          label_free=int(acc['labelled']) < count)
