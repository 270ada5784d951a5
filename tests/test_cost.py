"""Stage 2 on a subset and with prefix reuse equals the plain computation; the cost model;
the dry run."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import numerics
from tests.reference import importance_kernels as reference
from tests.tiny import TINY, folder_source, tiny_images, tiny_params, write_images
from tests.test_importance import np_metrics
from vit_jax_analytics import checkpoints, cli, cost, importance, model as model_lib
from vit_jax_analytics.batches import ArraySource, SubsetSource

L, H = TINY.num_layers, TINY.num_heads


@pytest.fixture(scope='module')
def setup():
  params, images = tiny_params(), tiny_images(6)
  labels = np.array([0, 1, 2, -1, 4, -1], np.int32)
  full = np.asarray(model_lib.apply(params, TINY, images))
  targets = np.where(labels >= 0, labels, full.argmax(-1))
  return params, images, labels, full, targets


@numerics.in_float64  # the same sums in another order: compared in float64
def test_taylor_ablation_batch_is_taylor_and_ablation(setup):
  params, images, labels, *_ = setup
  params, images = numerics.as64((params, images))
  x, y = jnp.asarray(images), jnp.asarray(labels)
  grads, pool_grads, ablation, pool_ablation, logits = importance.taylor_ablation_batch(
      params, TINY, x, y, 2)
  assert pool_grads is None and pool_ablation is None  # no MAP head
  ref_grads, ref_logits = importance.taylor_batch(params, TINY, x, y)
  ref_ablation, _ = importance.ablation_batch(params, TINY, x, y, 2)
  numerics.assert_close64(grads, ref_grads, rounded=np.float32)  # gradients of float32 masks
  numerics.assert_close64(logits, ref_logits)
  for m in importance.ABLATION_METRICS:
    numerics.assert_metric64(ablation[m], ref_ablation[m], m)


@numerics.in_float64  # both sides in float64: a tolerance no CPU's rounding reaches
def test_prefix_reused_curves_equal_plain_forwards(setup):
  params, images, labels, _, targets = setup
  params, images = numerics.as64((params, images))
  full = np.asarray(model_lib.apply(params, TINY, images))
  rng = np.random.default_rng(0)
  masks = []
  for first in (0, 1, 2, 2):  # masks whose first removed head is in layer `first`
    m = np.ones((L, H), np.float32)
    m[first, rng.integers(H)] = 0.
    for l in range(first + 1, L):
      m[l, rng.integers(H)] = 0.
    masks.append(m)
  masks.append(np.zeros((L, H), np.float32))
  masks = np.stack(masks)
  first_layers = importance.first_masked_layers(masks)
  assert first_layers == (0, 1, 2, 2, 0)
  got = importance.curves_batch(params, TINY, jnp.asarray(images), jnp.asarray(labels),
                                jnp.asarray(masks), first_layers, 2)
  for i, mask in enumerate(masks):
    ref = np_metrics(model_lib.apply(params, TINY, images, head_mask=mask), targets, full)
    for m in importance.ABLATION_METRICS:
      numerics.assert_metric64(got[m][i], ref[m], m)


@numerics.in_float64  # the same sums in another order: compared in float64
def test_prefix_reused_partial_pruning_equals_rerunning_the_layer(setup):
  params, images, labels, *_ = setup
  params, images = numerics.as64((params, images))
  variants = importance.partial_variants(TINY, radii=(1,))
  keeps = jnp.asarray(np.stack([v.keep for v in variants]))
  heads = np.array([0, 5, 7, 11])
  layers = tuple(int(h) // H for h in heads)
  for renorm in (False, True):
    args = (params, TINY, jnp.asarray(images), jnp.asarray(labels), jnp.asarray(heads), keeps,
            renorm, layers, 3)
    got, ref = importance.partial_batch(*args), reference.partial_batch_plain(*args)
    for m in importance.ABLATION_METRICS:
      numerics.assert_metric64(got[m], ref[m], m)


def test_stratified_subset_is_proportional_and_seeded():
  strata = np.array([0] * 40 + [1] * 20 + [2] * 10 + [-1] * 5)
  s = importance.stratified_subset(strata, 14, seed=0)
  assert len(s) == 14 and np.all(np.diff(s) > 0) and np.all(strata[s] >= 0)
  assert [int(np.sum(strata[s] == c)) for c in (0, 1, 2)] == [8, 4, 2]
  np.testing.assert_array_equal(s, importance.stratified_subset(strata, 14, seed=0))
  assert not np.array_equal(s, importance.stratified_subset(strata, 14, seed=1))
  assert len(importance.stratified_subset(strata, 100, seed=0)) == 70


def test_subset_source_generic_path_equals_select():
  images = tiny_images(11)
  labels = np.arange(11) % 3
  source = ArraySource(images, labels)
  idx = np.array([1, 4, 5, 9, 10])

  class NoSelect:  # only the BatchSource protocol
    def __len__(self):
      return len(source)

    def batches(self, *a, **k):
      return source.batches(*a, **k)

  for first in (0, 1):
    a = list(SubsetSource(source, idx).batches(2, first))
    b = list(SubsetSource(NoSelect(), idx).batches(2, first))
    assert len(a) == len(b) == 3 - first
    for x, y in zip(a, b):
      for f in ('images', 'labels', 'index', 'valid'):
        np.testing.assert_array_equal(getattr(x, f), getattr(y, f), err_msg=f)


@numerics.in_float64  # the driver and the plain loops in float64 (params cast)
def test_subset_curves_and_partial_equal_the_full_computation_on_that_subset(tmp_path):
  source = folder_source(tmp_path / 'images', n=12)
  opts = importance.ImportanceOptions(progress=False, curve_points=5, random_orders=1,
                                      subset_images=5, partial_heads=3, partial_radii=(1,),
                                      batch_size=4)
  params = numerics.as64(tiny_params())
  r = importance.compute_importance(params, TINY, source, opts)
  assert r.images == 12 and r.subset_images == 5 and len(r.subset_index) == 5
  # Class-stratified: 12 images in 10 classes, 5 drawn from 5 different classes.
  labels = np.asarray(source.image_set.labels)
  assert len(set(labels[r.subset_index])) == 5
  # The plain computation on the subset's images, with the orders of the full stage 1.
  images = np.stack([b.images[b.valid] for b in source.select(r.subset_index).batches(5)])[0]
  sub_labels = labels[r.subset_index]
  full = np.asarray(model_lib.apply(params, TINY, images), np.float64)
  targets = np.where(sub_labels >= 0, sub_labels, full.argmax(-1))
  scores = {k: getattr(r, k) for k in importance.ORDER_METRICS}
  orders = importance.head_orders(scores, TINY, opts.random_orders, opts.seed)
  assert tuple(orders) == r.curves.orders
  for o, order in enumerate(orders.values()):
    masks = importance.pruning_masks(order, list(r.curves.counts), TINY)
    for p, mask in enumerate(masks):
      ref = np_metrics(model_lib.apply(params, TINY, images, head_mask=mask), targets, full)
      for m in ('loss', 'top1', 'kl'):
        numerics.assert_close64(r.curves.metrics[m].mean[o, p], ref[m].mean(), f'{o} {p} {m}')
        se = ref[m].std(ddof=1) / np.sqrt(len(ref[m]))
        numerics.assert_close64(r.curves.metrics[m].se[o, p], se, f'{o} {p} {m} se')
  base = np_metrics(full, targets, full)
  for e, flat in enumerate(r.partial.heads):
    l, h = divmod(int(flat), H)
    for v, keep in enumerate(importance.partial_variants(TINY, radii=(1,))):
      def edit(w, layer, keep=keep.keep):
        return w if layer != l else w.at[:, h].set(w[:, h] * keep)
      ref = np_metrics(model_lib.apply(params, TINY, images, attention_edit=edit), targets, full)
      change = ref['loss'] - base['loss']
      numerics.assert_close64(r.partial.change['loss'].mean[e, v], change.mean(), 'partial_loss')
      numerics.assert_close64(r.partial.change['loss'].se[e, v],
                              change.std(ddof=1) / np.sqrt(len(change)), 'partial_loss_se')


def test_ablation_limits_of_the_issue():
  assert round(cost.ablation_limit(model_lib.get_config('ViT-Ti/16')), 0) == 19
  assert 73 <= cost.ablation_limit(model_lib.get_config('ViT-B/16')) <= 75


def test_analytic_cost_against_xla(setup):
  params, images, labels, *_ = setup
  x, y = jnp.asarray(images), jnp.asarray(labels)
  fwd = cost.xla_flops(jax.jit(lambda p, x: model_lib.apply(p, TINY, x)), params, x)
  # The planner counts matmuls; XLA counts elementwise work too (most of this tiny model's).
  assert cost.flops(TINY).forward * len(images) <= fwd <= 3 * cost.flops(TINY).forward * len(
      images)
  # Sharing the forward and prefix reuse keep stage 1 within the planned figure.
  stage1 = cost.xla_flops(importance.taylor_ablation_batch, params, TINY, x, y, 2) / fwd
  assert stage1 <= 1.2 * cost.stage1(TINY)


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, capsys):
  write_images(tmp_path / 'images')
  ckpt = checkpoints.save_checkpoint(tmp_path / 'ckpt', tiny_params(), TINY)
  code = cli.main(['analyze', '--checkpoint', str(ckpt), '--images', str(tmp_path / 'images'),
                   '--logdir', str(tmp_path / 'logs'), '--no-progress', '--dry-run',
                   '--compile-cache', str(tmp_path / 'cache')])
  err = capsys.readouterr().err
  assert code == 0 and 'cost (planned) on 12 images' in err
  for stage in ('importance stage 1', 'importance stage 2', 'strength', 'patterns'):
    assert stage in err
  assert not (tmp_path / 'logs').exists()
