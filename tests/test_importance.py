import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import numerics
from tests.reference import importance_kernels as reference
from tests.tiny import TINY, tiny_images, tiny_params
from vit_jax_analytics import importance, model as model_lib

L, H = TINY.num_layers, TINY.num_heads


def np_metrics(logits, targets, logits_full):
  """Plain-NumPy per-image loss, top-1, top-5 and KL(p_full || p)."""
  def logsoftmax(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))
  logp, logq = logsoftmax(logits), logsoftmax(logits_full)
  b = np.arange(len(targets))
  order = np.argsort(-np.asarray(logits), axis=-1)
  rank = np.array([list(order[i]).index(targets[i]) for i in b])
  return {'loss': -logp[b, targets], 'top1': (rank < 1) * 1., 'top5': (rank < 5) * 1.,
          'kl': (np.exp(logq) * (logq - logp)).sum(-1)}


@pytest.fixture(scope='module')
def setup():
  params, images = tiny_params(), tiny_images(6)
  labels = np.array([0, 1, 2, -1, 4, -1], np.int32)  # two unlabelled images
  full = np.asarray(model_lib.apply(params, TINY, images))
  targets = np.where(labels >= 0, labels, full.argmax(-1))
  return params, images, labels, full, targets


def test_ablation_matches_plain_loop(setup):
  params, images, labels, _, targets = setup
  with numerics.float64():  # both sides in float64: a tolerance no CPU's rounding reaches
    params, images = numerics.as64((params, images))
    full = np.asarray(model_lib.apply(params, TINY, images))
    reuse, _ = importance.ablation_batch(params, TINY, jnp.asarray(images), jnp.asarray(labels),
                                         3)
    no_reuse, _ = reference.ablation_batch_no_reuse(params, TINY, jnp.asarray(images),
                                                     jnp.asarray(labels), 5)
    for l in range(L):
      for h in range(H):
        mask = np.ones((L, H))
        mask[l, h] = 0.
        ref = np_metrics(model_lib.apply(params, TINY, images, head_mask=mask), targets, full)
        for m in importance.ABLATION_METRICS:
          numerics.assert_metric64(reuse[m][l, h], ref[m], m)
          numerics.assert_metric64(no_reuse[m][l, h], ref[m], m)
  # The check is not vacuous: ablations do change the loss.
  assert np.abs(np.asarray(reuse['loss']) - np_metrics(full, targets, full)['loss']).max() > 1e-3


def test_taylor_matches_central_finite_differences(setup):
  params, images, labels, full, targets = setup
  grads, _ = importance.taylor_batch(params, TINY, jnp.asarray(images), jnp.asarray(labels))
  eps = 1e-2

  def loss_i(mask, i):
    logits = model_lib.apply(params, TINY, images[i:i + 1], head_mask=mask)
    return float(np_metrics(logits, targets[i:i + 1], logits)['loss'][0])

  for i in (0, 3):
    for l, h in ((0, 1), (2, 3), (1, 0)):
      plus, minus = np.ones((L, H), np.float32), np.ones((L, H), np.float32)
      plus[l, h], minus[l, h] = 1 + eps, 1 - eps
      fd = (loss_i(plus, i) - loss_i(minus, i)) / (2 * eps)
      np.testing.assert_allclose(grads[i, l, h], abs(fd), rtol=2e-2, atol=1e-4)


@numerics.in_float64
def test_taylor_mask_follows_float64_params(setup):
  """With float64 params the Taylor mask is float64 (a float32 mask rounds the gradients
  to float32): the scores equal autograd of each image's loss in float64."""
  params, images, labels, _, targets = setup
  params, images = numerics.as64((params, images))
  grads, _ = importance.taylor_batch(params, TINY, jnp.asarray(images), jnp.asarray(labels))
  assert grads.dtype == jnp.float64

  def loss(mask, i):
    logits = model_lib.apply(params, TINY, images[i:i + 1], head_mask=mask)
    return -jax.nn.log_softmax(logits[0])[targets[i]]

  for i in (0, 3):
    want = np.abs(np.asarray(jax.grad(loss)(jnp.ones((L, H), jnp.float64), i)))
    numerics.assert_close64(np.asarray(grads[i]), want)


def test_pruning_masks_remove_least_important_first():
  order = np.array([5, 0, 11, 3] + list(range(12, 3 * 4)))[:12]
  masks = importance.pruning_masks(np.array([5, 0, 11, 3, 1, 2, 4, 6, 7, 8, 9, 10]), [0, 2, 12], TINY)
  assert masks.shape == (3, L, H)
  assert masks[0].sum() == 12 and masks[2].sum() == 0
  assert masks[1].ravel()[5] == 0 and masks[1].ravel()[0] == 0 and masks[1].sum() == 10


@numerics.in_float64  # both sides in float64: a tolerance no CPU's rounding reaches
def test_partial_pruning_matches_plain_forward_and_full_removal_equals_ablation(setup):
  params, images, labels, full, targets = setup
  variants = importance.partial_variants(TINY, radii=(1,))
  names = [v.name for v in variants]
  assert names == ['local_r1', 'global_r1', 'to_cls', 'from_cls', 'region_in', 'region_out']
  keeps = np.stack([v.keep for v in variants] + [np.zeros_like(variants[0].keep)])
  heads = np.array([1, 6, 11])  # (0, 1), (1, 2), (2, 3)
  params, images = numerics.as64((params, images))
  full = np.asarray(model_lib.apply(params, TINY, images))
  for renorm in (False, True):
    got = importance.partial_batch(params, TINY, jnp.asarray(images), jnp.asarray(labels),
                                   jnp.asarray(heads), jnp.asarray(keeps), renorm,
                                   tuple(int(h) // H for h in heads), 4)
    for p, flat in enumerate(heads):
      l, h = divmod(int(flat), H)
      for v in (0, 1, 2, 4):
        def edit(w, layer, keep=keeps[v]):
          if layer != l:
            return w
          hw = w[:, h] * keep
          if renorm:
            s = hw.sum(-1, keepdims=True)
            hw = jnp.where(s > 0, hw / jnp.where(s > 0, s, 1), 0.)
          return w.at[:, h].set(hw)
        ref = np_metrics(model_lib.apply(params, TINY, images, attention_edit=edit), targets, full)
        numerics.assert_close64(got['loss'][p, v], ref['loss'], 'loss')
        numerics.assert_close64(got['kl'][p, v], ref['kl'], 'kl')
  # Removing all of a head's attention (without renormalising) is ablating the head.
  got = importance.partial_batch(params, TINY, jnp.asarray(images), jnp.asarray(labels),
                                 jnp.asarray(heads), jnp.asarray(keeps), False,
                                 tuple(int(h) // H for h in heads), 4)
  ablation, _ = importance.ablation_batch(params, TINY, jnp.asarray(images), jnp.asarray(labels))
  for p, flat in enumerate(heads):
    l, h = divmod(int(flat), H)
    numerics.assert_close64(got['loss'][p, -1], ablation['loss'][l, h], 'loss')


def test_partial_variant_masks_by_brute_force():
  variants = {v.name: v.keep for v in importance.partial_variants(TINY, radii=(1, 2),
                                                                   region=(0, 0, 2, 4))}
  n = TINY.grid_size
  for q in range(1, TINY.num_tokens):
    for k in range(1, TINY.num_tokens):
      (qr, qc), (kr, kc) = divmod(q - 1, n), divmod(k - 1, n)
      d = max(abs(qr - kr), abs(qc - kc))
      assert variants['local_r1'][q, k] == (0. if d <= 1 else 1.)
      assert variants['global_r2'][q, k] == (0. if d > 2 else 1.)
      assert variants['region_in'][q, k] == (0. if qr < 2 else 1.)
      assert variants['region_out'][q, k] == (1. if qr < 2 else 0.)
  assert variants['to_cls'][:, 0].sum() == 0 and variants['to_cls'][:, 1:].min() == 1
  assert variants['from_cls'][0].sum() == 0 and variants['from_cls'][1:].min() == 1
  for name in ('local_r1', 'global_r2'):  # class-token pairs are not spatial: untouched
    assert variants[name][0].min() == 1 and variants[name][:, 0].min() == 1
  assert variants['region_in'][0].min() == 1  # the class token is in no region


def test_head_mask_of_wrong_shape_is_a_clear_error(setup):
  params, images, *_ = setup
  with pytest.raises(ValueError, match=r'head_mask: expected shape \[layers, heads\] = \(3, 4\)'):
    model_lib.apply(params, TINY, images, head_mask=jnp.ones((4, 3)))
