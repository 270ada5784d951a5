"""Models without a classifier and with a MAP pooling head: the objectives and the pooling
row of importance, against plain loops and a hand-built model with known answers."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import numerics
from tests.reference import importance_kernels as reference
from tests.tiny import tiny_images
from vit_jax_analytics import batches, importance, model as model_lib
from vit_jax_analytics.model import ViTConfig

# A SigLIP-like tower in miniature: MAP pooling, two registers, a projection head, a
# rectangular 3 x 5 grid.
MAPCFG = ViTConfig(image_size=(12, 20), patch_size=4, hidden_size=32, num_layers=2,
                   num_heads=4, mlp_dim=64, num_classes=24, classifier='map', num_registers=2,
                   output='embedding')


def map_params(config=MAPCFG, seed=0, attention_scale=1.5):
  params = jax.tree.map(np.asarray, model_lib.init_params(config, jax.random.key(seed)))
  rng = np.random.default_rng(seed)
  params['head']['kernel'] = rng.normal(0, 0.3, params['head']['kernel'].shape).astype(np.float32)
  params['MAPHead_0']['probe'] = rng.normal(0, 1, params['MAPHead_0']['probe'].shape).astype(
      np.float32)
  for i in range(config.num_layers):
    att = params['Transformer'][f'encoderblock_{i}']['MultiHeadDotProductAttention_1']
    for name in ('query', 'key'):
      att[name]['kernel'] = att[name]['kernel'] * attention_scale
  return params


def distortion(e, ref):
  e, ref = np.asarray(e, np.float64), np.asarray(ref, np.float64)
  cos = (e * ref).sum(-1) / np.linalg.norm(e, axis=-1) / np.linalg.norm(ref, axis=-1)
  return {'loss': 1 - cos, 'kl': np.linalg.norm(e - ref, axis=-1) / np.linalg.norm(ref, axis=-1)}


@pytest.fixture(scope='module')
def setup():
  params = map_params()
  images = tiny_images(3, config=ViTConfig(image_size=12, patch_size=4))
  images = np.random.default_rng(1).uniform(-1, 1, (3, 12, 20, 3)).astype(np.float32)
  return params, images, np.asarray(model_lib.apply(params, MAPCFG, images))


def test_default_objective_follows_the_output():
  assert importance.default_objective(MAPCFG).kind == 'embedding'
  assert importance.default_objective(MAPCFG.replace(output='logits')).kind == 'classification'
  assert importance.default_objective(MAPCFG.replace(num_classes=0, output='logits')).kind == (
      'embedding')


def test_embedding_ablation_and_pool_row_match_plain_loops(setup):
  params, images, _ = setup
  L, H = MAPCFG.num_layers, MAPCFG.num_heads
  with numerics.float64():  # both sides in float64: a tolerance no CPU's rounding reaches
    params, images = numerics.as64((params, images))
    full = np.asarray(model_lib.apply(params, MAPCFG, images))
    labels = jnp.full(3, -1)
    blocks, pool, out = importance.ablation_pool_batch(params, MAPCFG, jnp.asarray(images),
                                                       labels, 2)
    numerics.assert_close64(out, full)
    for l in range(L):
      for h in range(H):
        mask = np.ones((L, H))
        mask[l, h] = 0.
        ref = distortion(model_lib.apply(params, MAPCFG, images, head_mask=mask), full)
        for m in ('loss', 'kl'):
          numerics.assert_close64(blocks[m][l, h], ref[m], m)
        np.testing.assert_array_equal(blocks['top1'][l, h], 1.)
    for h in range(H):
      mask = np.ones(H)
      mask[h] = 0.
      ref = distortion(model_lib.apply(params, MAPCFG, images, pool_mask=mask), full)
      for m in ('loss', 'kl'):
        numerics.assert_close64(pool[m][h], ref[m], m)
  assert np.asarray(pool['kl']).min() > 1e-3 and np.asarray(blocks['kl']).min() > 1e-4


def test_embedding_taylor_estimates_the_jacobian_norm(setup):
  """sqrt(pi/2) mean_k |d(u_k . e / |e|)/d xi| -> |de/d xi| / |e| as probes grow."""
  params, images, full = setup
  L, H = MAPCFG.num_layers, MAPCFG.num_heads
  obj = importance.Objective('embedding', taylor_probes=1024)
  grads, pool_grads, out = importance.taylor_pool_batch(
      params, MAPCFG, jnp.asarray(images[:1]), jnp.full(1, -1), obj, jnp.arange(1))

  def embedding(masks):
    mask, pool_mask = masks
    return model_lib.apply(params, MAPCFG, images[:1], head_mask=mask[None],
                           pool_mask=pool_mask[None])[0]

  jac, pool_jac = jax.jacfwd(embedding)((jnp.ones((L, H)), jnp.ones(H)))  # [E, L, H], [E, H]
  norm = np.linalg.norm(full[0])
  np.testing.assert_allclose(grads[0], np.linalg.norm(jac, axis=0) / norm, rtol=0.1)
  np.testing.assert_allclose(pool_grads[0], np.linalg.norm(pool_jac, axis=0) / norm, rtol=0.1)
  # Seeded by the image index: the same image gives the same score in any batch.
  with numerics.float64():  # exact but for rounding: compared in float64
    params, images = numerics.as64((params, images))
    g1, _ = importance.taylor_batch(params, MAPCFG, jnp.asarray(images[1:2]), jnp.full(1, -1),
                                    importance.Objective('embedding'), jnp.array([1]))
    g2, _ = importance.taylor_batch(params, MAPCFG, jnp.asarray(images), jnp.full(3, -1),
                                    importance.Objective('embedding'), jnp.arange(3))
  numerics.assert_close64(g1[0], g2[1], rounded=np.float32)  # grads of float32 masks


def test_class_matrix_is_a_classifier_on_the_embedding(setup):
  """A linear probe given as --classes-npz gives the metrics of the same model with that
  probe as its head."""
  params, images, full = setup
  rng = np.random.default_rng(5)
  classes = rng.normal(0, 1, (6, MAPCFG.embedding_size)).astype(np.float32)
  bias = rng.normal(0, 1, 6).astype(np.float32)
  obj = importance.classes_objective(MAPCFG, classes, bias)
  probe_cfg = MAPCFG.replace(num_classes=6, output='logits')
  # In float64 (the objective keeps classes in float32: exact in float64 too), where the
  # two models differ only by the rounding of the folded head.
  with numerics.float64():
    params, images, classes, bias = numerics.as64((params, images, classes, bias))
    probe_params = dict(params, head={'kernel': params['head']['kernel'] @ classes.T,
                                      'bias': params['head']['bias'] @ classes.T + bias})
    labels = jnp.array([1, -1, 4])
    x = jnp.asarray(images)
    a, pa, _ = importance.ablation_pool_batch(params, MAPCFG, x, labels, 2, obj)
    b, pb, _ = importance.ablation_pool_batch(probe_params, probe_cfg, x, labels, 2)
    for m in importance.ABLATION_METRICS:
      numerics.assert_metric64(a[m], b[m], m)
      numerics.assert_metric64(pa[m], pb[m], m)
    ga, gpa, _ = importance.taylor_pool_batch(params, MAPCFG, x, labels, obj)
    gb, gpb, _ = importance.taylor_pool_batch(probe_params, probe_cfg, x, labels)
  numerics.assert_close64(ga, gb, rounded=np.float32)  # gradients of float32 masks
  numerics.assert_close64(gpa, gpb, rounded=np.float32)
  with pytest.raises(Exception, match='classes_npz'):
    importance.classes_objective(MAPCFG, classes[:, :5])



@pytest.mark.parametrize('kind', ['embedding', 'classes'])
def test_taylor_ablation_batch_shares_the_taylor_forward_with_a_map_head(setup, kind):
  """Stage 1 in one forward + backward (the ablation scan starting from the Taylor pass's
  intermediates) gives what taylor_pool_batch and ablation_pool_batch give, the pooling row
  included, under both objectives."""
  params, images, _ = setup
  classes = np.random.default_rng(5).normal(0, 1, (6, MAPCFG.embedding_size))
  obj = (importance.Objective('embedding', taylor_probes=2) if kind == 'embedding' else
         importance.classes_objective(MAPCFG, classes))
  with numerics.float64():  # the same sums in another order: compared in float64
    params, images = numerics.as64((params, images))
    x, labels, index = jnp.asarray(images), jnp.array([1, -1, 4]), jnp.arange(3)
    grads, pool_grads, blocks, pool, out = importance.taylor_ablation_batch(params, MAPCFG, x, labels,
                                                                   2, obj, index)
    ref_grads, ref_pool_grads, ref_out = importance.taylor_pool_batch(params, MAPCFG, x,
                                                                      labels, obj, index)
    ref_blocks, ref_pool, _ = importance.ablation_pool_batch(params, MAPCFG, x, labels, 2, obj)
  numerics.assert_close64(out, ref_out)
  numerics.assert_close64(grads, ref_grads, rounded=np.float32)  # gradients of float32 masks
  numerics.assert_close64(pool_grads, ref_pool_grads, rounded=np.float32)
  for m in importance.ABLATION_METRICS:
    numerics.assert_metric64(blocks[m], ref_blocks[m], m)
    numerics.assert_metric64(pool[m], ref_pool[m], m)


def test_stage2_prefix_reuse_with_registers_and_a_map_head(setup):
  """Curve masks and partial pruning through the suffix graph equal plain forwards under
  the embedding objective, on the rectangular grid with registers."""
  params, images, _ = setup
  obj = importance.default_objective(MAPCFG)
  masks = np.ones((2, MAPCFG.num_layers, MAPCFG.num_heads), np.float32)
  masks[0, 0, 1] = masks[0, 1, 3] = 0.
  masks[1, 1, :2] = 0.
  with numerics.float64():  # both sides in float64: a tolerance no CPU's rounding reaches
    params, images = numerics.as64((params, images))
    full = np.asarray(model_lib.apply(params, MAPCFG, images))
    x, labels = jnp.asarray(images), jnp.full(3, -1)
    curves = importance.curves_batch(params, MAPCFG, x, labels, jnp.asarray(masks),
                                     importance.first_masked_layers(masks), 2, obj)
    keeps = jnp.asarray(np.stack([v.keep for v in importance.partial_variants(MAPCFG, (1,))]))
    heads, layers = jnp.array([1, 6]), (0, 1)
    args = (params, MAPCFG, x, labels, heads, keeps, False)
    got = importance.partial_batch(*args, jnp.asarray(layers), 2, obj)
    ref = reference.partial_batch_plain(*args, layers, 2, obj)
    for m in ('loss', 'kl'):
      numerics.assert_close64(got[m], ref[m], m)
      for i, mask in enumerate(masks):
        want = distortion(model_lib.apply(params, MAPCFG, images, head_mask=mask), full)[m]
        numerics.assert_close64(curves[m][i], want, m)
  assert np.asarray(got['kl']).max() > 1e-4

def planted_map_model():
  """A hand-built MAP-pooled model with 2 registers and 2 encoder layers of 2 heads, whose
  answers are known: every encoder head has a zero `out` projection (removing it changes
  nothing), the MAP head's head 0 attends only to patch 5 and carries the whole output
  (value = the token, out = identity on its slice); head 1 attends uniformly and has a zero
  out projection (removing it changes nothing)."""
  grid, heads = (3, 4), 2
  p = grid[0] * grid[1]
  d = 16 + 2 * heads  # 16 position-code dims, room for two heads of width 10
  d = 20
  config = ViTConfig(image_size=(12, 16), patch_size=4, hidden_size=d, num_layers=2,
                     num_heads=heads, mlp_dim=8, num_classes=0, classifier='map',
                     num_registers=2)
  params = jax.tree.map(lambda x: np.zeros(x.shape, np.float32), model_lib.param_shapes(config))
  params['Transformer']['posembed_input']['pos_embedding'][0, :, :p] = np.eye(p)
  params['Transformer']['encoder_norm']['scale'][:] = 1.
  for l in range(2):
    blk = params['Transformer'][f'encoderblock_{l}']
    blk['LayerNorm_0']['scale'][:] = 1.
    blk['LayerNorm_2']['scale'][:] = 1.
  m = params['MAPHead_0']
  m['probe'][0, 0, :] = 1.
  att = m['MultiHeadDotProductAttention_0']
  # head 0: query = probe (all ones), key of token = 40 * its code at patch 5.
  att['query']['kernel'][:, 0, :] = np.eye(d, d // heads) * 1.
  att['key']['kernel'][5, 0, 5] = 40.
  att['value']['kernel'][:, 0, :] = np.eye(d, d // heads)
  att['out']['kernel'][0] = np.eye(d // heads, d)
  m['LayerNorm_0']['scale'][:] = 1.
  return params, config


def test_planted_map_model_known_answers():
  params, config = planted_map_model()
  images = np.zeros((2, 12, 16, 3), np.float32)
  _, state = model_lib.VisionTransformer(config).apply({'params': params}, jnp.asarray(images),
                                                       mutable=['intermediates'])
  pool_attention = np.asarray(state['intermediates']['MAPHead_0']['pool_attention'][0])
  t0 = config.num_prefix_tokens
  assert config.num_tokens == 12 + 2 and t0 == 2
  assert pool_attention[0, 0, 0, t0 + 5] > 0.999                   # head 0 -> patch 5
  np.testing.assert_allclose(pool_attention[0, 1, 0], 1 / 14, rtol=1e-5)  # head 1: uniform
  source = batches.ArraySource(images)
  opts = importance.ImportanceOptions(batch_size=2, progress=False, random_orders=1,
                                      partial_radii=(1,))
  r = importance.compute_importance(params, config, source, opts)
  assert r.objective['kind'] == 'embedding'
  np.testing.assert_allclose(r.ablation_kl, 0., atol=1e-6)      # zero out projections
  np.testing.assert_allclose(r.taylor, 0., atol=1e-6)
  assert r.pool_ablation_kl[0] > 0.5 and abs(r.pool_ablation_kl[1]) < 1e-6
  assert r.pool_taylor[0] > 0.1 and abs(r.pool_taylor[1]) < 1e-6
  assert r.baseline.loss == pytest.approx(0., abs=1e-6)


def test_pooling_none_tower_loads_and_compares_every_token(tmp_path):
  """A PaliGemma-style image tower: pool_type 'none' (weights look like 'gap'), `head` on
  every token; `pooling='none'` loads it and the embedding objective compares all tokens."""
  from tests.npz_formats import random_big_vision_vit_arrays, two_tower_big_vision
  from vit_jax_analytics import checkpoints

  arrays = random_big_vision_vit_arrays(0, width=16, heads=2, mlp=32, patch=4, depth=1,
                                        grid=(2, 2), pool='gap', classes=8)
  path = tmp_path / 'pali.npz'
  np.savez(path, **two_tower_big_vision(arrays))
  params, config = checkpoints.load_checkpoint(path, pooling='none')
  assert config.classifier == 'none' and config.output == 'embedding'
  images = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 8, 8, 3)), jnp.float32)
  out = model_lib.apply(params, config, images)
  assert out.shape == (2, 4, 8)
  obj = importance.default_objective(config)
  mask = np.ones((1, 2), np.float32)
  mask[0, 1] = 0.
  masked = model_lib.apply(params, config, images, head_mask=mask)
  ref = distortion(np.asarray(masked).reshape(2, -1), np.asarray(out).reshape(2, -1))
  with numerics.float64():  # the metrics of the same outputs, in float64 (1 - cos cancels)
    masked, out = numerics.as64((masked, out))
    got = importance.image_metrics(jnp.asarray(masked), jnp.zeros(2, jnp.int32),
                                   obj.reference(jnp.asarray(out)), obj)
  numerics.assert_close64(got['kl'], ref['kl'])
  numerics.assert_close64(got['loss'], ref['loss'])
