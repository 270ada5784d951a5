"""Which heads matter? Pruning-based importance of every layer x head.

Per-batch kernels are pure and jitted; `compute_importance` streams them over a
`BatchSource` in two stages: (1) Taylor and the single-head ablation scan, which give the
head orders; (2) pruning curves along those orders and partial pruning.

Metrics (each [layer, head], means over images):
  taylor       mean |dL/d xi[l,h]| at xi = 1 (Michel et al. 2019), L the cross-entropy; also
               `taylor_normalized`, L2-normalised within each layer as in that paper.
  ablation_*   exactly one head masked out: change in loss, in top-1 and top-5 accuracy
               (drops are positive when the head helps), and KL(p_full || p_masked).
What "the model's output got worse" means is the `Objective` (objective.py).

One job per module:
  objective   the Objective and the per-image metrics it defines
  taylor      Taylor importance (one forward + backward)
  forwards    the unmasked forward recording intermediates; full forwards over head masks
  ablation    the single-head ablation scan (prefix reuse; heads split over a mesh)
  curves      pruning curves (head counts, masks, prefix reuse from each mask's first layer)
  partial     partial pruning (the variants, the attention edit, prefix reuse)
  stages      the two jitted per-batch kernels the driver streams
  options     ImportanceOptions (the CLI's flags and defaults)
  plan        stage 2's plan from the stage-1 scores (orders, masks, heads, image subset)
  sums        the float64 accumulators, their reduction over processes, `finalise`
  driver      compute_importance: the stages streamed over a BatchSource, resumable
  probe       stage 1 alone on in-memory batches (in-training analysis)
Rerunning the model from layer l on recorded intermediates is `prefix_reuse.py`.
"""

from vit_jax_analytics.importance.ablation import (ablation_batch, ablation_pool_batch,
                                                   ablation_strategy)
from vit_jax_analytics.importance.curves import (ORDER_METRICS, curve_counts, curves_batch,
                                                 first_masked_layers, pruning_masks)
from vit_jax_analytics.importance.driver import compute_importance, progress_state_shapes
from vit_jax_analytics.importance.forwards import single_head_masks
from vit_jax_analytics.importance.objective import (ABLATION_METRICS, POOLED_EMBEDDING,
                                                    Objective, classes_objective,
                                                    default_objective, full_metrics,
                                                    image_metrics, objective_definitions,
                                                    targets_from)
from vit_jax_analytics.importance.options import (DEFAULT_CURVE_POINTS, DEFAULT_PARTIAL_HEADS,
                                                  DEFAULT_RANDOM_ORDERS, DEFAULT_SUBSET_IMAGES,
                                                  ImportanceOptions, default_chunk)
from vit_jax_analytics.importance.partial import PartialVariant, partial_batch, partial_variants
from vit_jax_analytics.importance.plan import (Stage2Plan, head_orders, select_partial_heads,
                                               stratified_subset)
from vit_jax_analytics.importance.probe import stage1_scores
from vit_jax_analytics.importance.stages import curves_partial_batch, taylor_ablation_batch
from vit_jax_analytics.importance.taylor import taylor_batch, taylor_pool_batch

__all__ = [
    'ABLATION_METRICS', 'DEFAULT_CURVE_POINTS', 'DEFAULT_PARTIAL_HEADS',
    'DEFAULT_RANDOM_ORDERS', 'DEFAULT_SUBSET_IMAGES', 'ImportanceOptions', 'ORDER_METRICS',
    'Objective', 'POOLED_EMBEDDING', 'PartialVariant', 'Stage2Plan', 'ablation_batch',
    'ablation_pool_batch', 'ablation_strategy', 'classes_objective', 'compute_importance',
    'curve_counts', 'curves_batch', 'curves_partial_batch', 'default_chunk',
    'default_objective', 'first_masked_layers', 'full_metrics', 'head_orders', 'image_metrics',
    'objective_definitions', 'partial_batch', 'partial_variants', 'progress_state_shapes',
    'pruning_masks',
    'select_partial_heads', 'single_head_masks', 'stage1_scores', 'stratified_subset',
    'taylor_ablation_batch', 'taylor_batch', 'taylor_pool_batch', 'targets_from',
]
