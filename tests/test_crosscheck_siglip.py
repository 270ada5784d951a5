"""big_vision SigLIP-style image towers against an independent PyTorch implementation.

Random-weight big_vision `.npz` files (MAP-head pooling, `head` as the projection into the
shared space) are read by our loader and, separately, mapped onto Hugging Face's
`SiglipVisionModel` by the name-by-name conversion below. Both sides run in float64 (random
weights make attention sharp, which amplifies float32 rounding): the pooled embedding and
every layer's attention, the MAP head's included, must agree to <= 1e-4 relative (they agree
far better). Cases: unrolled and scanned encoders, bfloat16 storage, a two-tower file with
automatic image-tower selection, 224 x 224 and a rectangular 224 x 336 input.
"""

import numpy as np
import pytest

torch = pytest.importorskip('torch', reason='test extra: pip install -e .[test]')
transformers = pytest.importorskip('transformers')

import jax
import jax.numpy as jnp

from tests.npz_formats import as_bfloat16, random_big_vision_vit_arrays, two_tower_big_vision
from vit_jax_analytics import checkpoints, model as model_lib

RTOL = 1e-4
HEADS = 4


def hf_siglip(p, *, heads, grid):
  """HF SiglipVisionModel (float64) holding big_vision params `p` (keys without `params/`).
  A rectangular grid gets a position table of h * w rows (HF's own is square)."""
  width = p['embedding/kernel'].shape[-1]
  depth = len({k.split('/')[1] for k in p if k.startswith('Transformer/encoderblock_')})
  mlp = p['Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel'].shape[1]
  patch = p['embedding/kernel'].shape[0]
  cfg = transformers.SiglipVisionConfig(
      hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads,
      intermediate_size=mlp, image_size=patch * grid[0], patch_size=patch,
      layer_norm_eps=1e-6, hidden_act='gelu_pytorch_tanh', attn_implementation='eager')
  hf = transformers.SiglipVisionModel(cfg).eval()
  emb = hf.vision_model.embeddings if hasattr(hf, 'vision_model') else hf.embeddings
  if grid[0] != grid[1]:
    emb.position_embedding = torch.nn.Embedding(grid[0] * grid[1], width)
    emb.position_ids = torch.arange(grid[0] * grid[1])[None]
  t = lambda a: torch.tensor(np.asarray(a, np.float64))
  sd = {'embeddings.patch_embedding.weight': t(p['embedding/kernel'].transpose(3, 2, 0, 1)),
        'embeddings.patch_embedding.bias': t(p['embedding/bias']),
        'embeddings.position_embedding.weight': t(p['pos_embedding'][0]),
        'post_layernorm.weight': t(p['Transformer/encoder_norm/scale']),
        'post_layernorm.bias': t(p['Transformer/encoder_norm/bias'])}
  dense = lambda k: t(p[k].reshape(width, -1).T)
  for i in range(depth):
    b, h = f'Transformer/encoderblock_{i}/', f'encoder.layers.{i}.'
    att = b + 'MultiHeadDotProductAttention_0/'
    for ours, theirs in (('query', 'q_proj'), ('key', 'k_proj'), ('value', 'v_proj')):
      sd[h + f'self_attn.{theirs}.weight'] = dense(att + f'{ours}/kernel')
      sd[h + f'self_attn.{theirs}.bias'] = t(p[att + f'{ours}/bias'].reshape(-1))
    sd[h + 'self_attn.out_proj.weight'] = t(p[att + 'out/kernel'].reshape(-1, width).T)
    sd[h + 'self_attn.out_proj.bias'] = t(p[att + 'out/bias'])
    for ours, theirs in (('LayerNorm_0', 'layer_norm1'), ('LayerNorm_1', 'layer_norm2')):
      sd[h + f'{theirs}.weight'] = t(p[b + f'{ours}/scale'])
      sd[h + f'{theirs}.bias'] = t(p[b + f'{ours}/bias'])
    for ours, theirs in (('Dense_0', 'fc1'), ('Dense_1', 'fc2')):
      sd[h + f'mlp.{theirs}.weight'] = t(p[b + f'MlpBlock_0/{ours}/kernel'].T)
      sd[h + f'mlp.{theirs}.bias'] = t(p[b + f'MlpBlock_0/{ours}/bias'])
  m = 'MAPHead_0/'
  sd['head.probe'] = t(p[m + 'probe'])
  att = m + 'MultiHeadDotProductAttention_0/'
  sd['head.attention.in_proj_weight'] = torch.cat(
      [dense(att + f'{n}/kernel') for n in ('query', 'key', 'value')])
  sd['head.attention.in_proj_bias'] = torch.cat(
      [t(p[att + f'{n}/bias'].reshape(-1)) for n in ('query', 'key', 'value')])
  sd['head.attention.out_proj.weight'] = t(p[att + 'out/kernel'].reshape(-1, width).T)
  sd['head.attention.out_proj.bias'] = t(p[att + 'out/bias'])
  sd['head.layernorm.weight'] = t(p[m + 'LayerNorm_0/scale'])
  sd['head.layernorm.bias'] = t(p[m + 'LayerNorm_0/bias'])
  for ours, theirs in (('Dense_0', 'fc1'), ('Dense_1', 'fc2')):
    sd[f'head.mlp.{theirs}.weight'] = t(p[m + f'MlpBlock_0/{ours}/kernel'].T)
    sd[f'head.mlp.{theirs}.bias'] = t(p[m + f'MlpBlock_0/{ours}/bias'])
  model = hf.vision_model if hasattr(hf, 'vision_model') else hf
  model.double()
  missing, unexpected = model.load_state_dict(sd, strict=False)
  assert not [k for k in missing if 'position_ids' not in k] and not unexpected, (
      missing, unexpected)
  return model


def hf_forward(model, p, images_nhwc):
  """(embedding [B, E], attention [B, L, H, T, T], MAP attention [B, H, 1, T])."""
  weights = []
  hooks = [layer.self_attn.register_forward_hook(lambda m, i, o: weights.append(o[1]))
           for layer in model.encoder.layers]
  pooled_in = []
  hooks.append(model.head.register_forward_pre_hook(lambda m, i: pooled_in.append(i[0])))
  x = torch.tensor(np.asarray(images_nhwc, np.float64).transpose(0, 3, 1, 2))
  with torch.no_grad():
    pooled = model(x).pooler_output
    h = pooled_in[0]
    probe = model.head.probe.repeat(h.shape[0], 1, 1)
    _, map_attention = model.head.attention(probe, h, h, need_weights=True,
                                            average_attn_weights=False)
    if 'head/kernel' in p:  # the tower's projection into the shared space
      pooled = pooled @ torch.tensor(p['head/kernel'], dtype=torch.float64) + torch.tensor(
          p['head/bias'], dtype=torch.float64)
  for hook in hooks:
    hook.remove()
  return pooled.numpy(), torch.stack(weights, 1).numpy(), map_attention.numpy()


def rel_err(ours, ref):
  return float(np.max(np.abs(np.asarray(ours, np.float64) - ref)) / np.max(np.abs(ref)))


def widened(arrays):
  """The float32 values a bfloat16 file holds (the reference reads them independently)."""
  out = {}
  for k, v in arrays.items():
    v = np.asarray(v)
    out[k] = v.astype(np.float32) if v.dtype.name == 'bfloat16' else v
  return out


CASES = [
    # name, grid (h, w), scanned, bfloat16 storage, two-tower file
    ('unrolled', (14, 14), False, False, False),
    ('scanned', (14, 14), True, False, False),
    ('bf16', (14, 14), False, True, False),
    ('two_tower', (14, 14), True, False, True),
    ('rectangular', (14, 21), False, False, True),
]


@pytest.mark.parametrize('name,grid,scan,bf16,two_tower', CASES, ids=[c[0] for c in CASES])
def test_siglip_tower_matches_huggingface(tmp_path, name, grid, scan, bf16, two_tower):
  stored = random_big_vision_vit_arrays(3, grid=grid, heads=HEADS, classes=48, scan=scan,
                                        depth=2)
  if bf16:
    stored = as_bfloat16(stored)
  reference = random_big_vision_vit_arrays(3, grid=grid, heads=HEADS, classes=48, scan=False,
                                           depth=2)
  if bf16:
    reference = widened(as_bfloat16(reference))
  to_save = two_tower_big_vision(stored) if two_tower else stored
  path = tmp_path / f'{name}.npz'
  np.savez(path, **to_save)
  size = (16 * grid[0], 16 * grid[1])

  params, config = checkpoints.load_checkpoint(path, image_size=size if grid[0] != grid[1]
                                               else None)
  assert config.classifier == 'map' and config.pooling == 'map'
  assert config.grid_shape == grid and config.num_tokens == grid[0] * grid[1]
  assert config.output == ('embedding' if two_tower else 'logits')
  assert config.num_classes == 48 and config.num_layers == 2 and config.num_heads == HEADS

  p = {k[len('params/'):]: v for k, v in reference.items()}
  hf = hf_siglip(p, heads=HEADS, grid=grid)
  images = np.random.default_rng(4).uniform(-1, 1, (2, *size, 3))
  ref_embedding, ref_attention, ref_map = hf_forward(hf, p, images)

  with jax.enable_x64(True):
    params64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
    (embedding, attention), state = model_lib.VisionTransformer(config).apply(
        {'params': params64}, jnp.asarray(images, jnp.float64), return_attention=True,
        mutable=['intermediates'])
    map_attention = state['intermediates']['MAPHead_0']['pool_attention'][0]
    assert embedding.dtype == jnp.float64
    embedding, attention, map_attention = map(np.asarray, (embedding, attention, map_attention))

  assert attention.shape == ref_attention.shape  # [B, L, H, T, T]
  assert map_attention.shape == ref_map.shape == (2, HEADS, 1, grid[0] * grid[1])
  errors = {'embedding': rel_err(embedding, ref_embedding),
            'attention': rel_err(attention, ref_attention),
            'map_attention': rel_err(map_attention, ref_map)}
  print(name, errors)
  assert max(errors.values()) <= RTOL, errors
  # Attention is far from uniform, so agreement above is not trivial.
  assert ref_attention.max() > 5. / ref_attention.shape[-1]
  assert ref_map.max() > 5. / ref_map.shape[-1]


def test_sincos2d_matches_big_vision_on_a_rectangle():
  """big_vision's posemb_sincos_2d(h, w, width), written out here independently."""
  h, w, width = 3, 5, 8
  pe = checkpoints.posemb_sincos_2d((h, w), width)[0]
  omega = 1. / 10_000 ** (np.arange(2) / 1.)
  for r in range(h):
    for c in range(w):
      expected = np.concatenate([np.sin(c * omega), np.cos(c * omega),
                                 np.sin(r * omega), np.cos(r * omega)])
      np.testing.assert_allclose(pe[r * w + c], expected, rtol=1e-6, atol=1e-7)


def test_posemb_resize_per_axis_matches_torch():
  rng = np.random.default_rng(0)
  pe = rng.normal(size=(1, 1 + 4 * 6, 8)).astype(np.float32)
  got = checkpoints.resize_position_embedding(pe, (7, 3), True, old_grid=(4, 6))
  grid = torch.tensor(pe[:, 1:]).reshape(1, 4, 6, 8).permute(0, 3, 1, 2)
  ref = torch.nn.functional.interpolate(grid, size=(7, 3), mode='bilinear', align_corners=True)
  ref = ref.permute(0, 2, 3, 1).reshape(1, 21, 8).numpy()
  np.testing.assert_allclose(got[:, 1:], ref, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(got[:, :1], pe[:, :1])
