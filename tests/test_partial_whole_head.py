"""Partial pruning's "whole head" is measured on the same subset as its parts (issue 21,
item 6): stage 2 removes all of the head's attention as one more variant. Checked against a
plain computation from stage 1: the head-mask ablation of each image (per_image_ablation_*,
a different code path: a head mask, not an attention edit), averaged over the subset."""

import numpy as np

from vit_jax_analytics.logdir import reader


def test_whole_head_on_the_subset_equals_the_mean_of_its_per_image_ablation(analysis_logdir):
  r = reader.read_importance(analysis_logdir / 'tiny')
  H = r.taylor.shape[1]
  subset = np.asarray(r.subset_index)
  assert len(r.partial.heads) and len(subset) >= 2
  for m in ('loss', 'kl'):
    whole, se = r.partial.whole_head[m].mean, r.partial.whole_head[m].se
    assert whole.shape == se.shape == (len(r.partial.heads),)
    per_image = getattr(r, f'per_image_ablation_{m}')              # [N, L, H]
    for k, flat in enumerate(r.partial.heads):
      rows = per_image[subset, flat // H, flat % H].astype(np.float64)
      np.testing.assert_allclose(whole[k], rows.mean(), rtol=2e-4, atol=2e-6)
      np.testing.assert_allclose(se[k], rows.std(ddof=1) / np.sqrt(len(rows)),
                                 rtol=2e-3, atol=2e-6)
  # The variants are still one per definition (the whole head is split off, not a variant).
  assert r.partial.change['loss'].mean.shape == (len(r.partial.heads), len(r.partial.variants))
  if len(subset) == r.images:   # on every image, the whole head is the single-head ablation
    for k, flat in enumerate(r.partial.heads):
      np.testing.assert_allclose(r.partial.whole_head['loss'].mean[k], r.ablation_loss.ravel()[flat],
                                 rtol=2e-4, atol=2e-6)
