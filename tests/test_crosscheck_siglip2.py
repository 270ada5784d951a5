"""SigLIP 2 NaFlex image towers against transformers' own Siglip2VisionModel, in float64.

A random-weight Siglip2VisionModel (weights scaled so that attention is far from uniform)
is written with save_pretrained and read by the project's loader. The reference runs ONE
padded batch, as transformers does: images of different aspect ratios, made by
Siglip2ImageProcessor (each resized to its own patch grid, patchified, padded to
max_num_patches, with `pixel_attention_mask` and `spatial_shapes`). The project runs each
image on its own grid, unpadded (the images put back together from the processor's
patches). Compared on the valid tokens: the pooled output, every layer's attention, the
output with one head removed (a hook zeroing that head's context before out_proj), the
ablation scan and the Taylor scores (the reference's autograd).

transformers builds the resized position embedding in float32 (its resize casts to float32
on purpose) and takes the eager attention's softmax in float32; the float64 comparison
patches those two functions with the same arithmetic in float64 (`_resize64`, `_eager64`:
their code with the dtype changed), and `test_unpatched_reference` checks the unpatched
library within float32 noise.
"""

import math

import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

from tests import numerics  # noqa: E402
from vit_jax_analytics import blocks, checkpoints, importance, model as model_lib  # noqa: E402

from transformers.models.siglip2 import modeling_siglip2  # noqa: E402

PATCH, MAX_PATCHES, HEADS, LAYERS = 4, 32, 4, 3
SIZES = [(40, 90), (90, 40), (50, 50), (30, 110)]  # (height, width) pixels of the raw images


def _resize64(positional_embeddings, spatial_shapes, max_length):
  """Siglip2VisionEmbeddings.resize_positional_embeddings with float64 in place of float32."""
  grid_size = positional_embeddings.shape[0]
  sizes = spatial_shapes.double()[:, None]
  positions = torch.arange(max_length, dtype=torch.float64)[None, :, None]
  rows = torch.div(positions, sizes[..., 1:], rounding_mode='floor')
  output_index = torch.cat([rows, positions - rows * sizes[..., 1:]], dim=-1)
  output_index = output_index * (positions < sizes.prod(-1, keepdim=True))
  scale = grid_size / sizes
  support = scale.clamp(min=1)
  center = (output_index + 0.5) * scale - 0.5
  source = torch.arange(grid_size, dtype=torch.float64)
  weights = (1 - (source - center[..., None]).abs_().div_(support[..., None])).clamp_(min=0)
  weights = weights / weights.sum(-1, keepdim=True)
  weights = (weights[..., 0, :, None] * weights[..., 1, None, :]).flatten(-2)
  flat = positional_embeddings.reshape(-1, positional_embeddings.shape[-1])
  return (weights @ flat.double()).to(positional_embeddings.dtype)


def _eager64(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
  """modeling_siglip2.eager_attention_forward with its softmax in the inputs' dtype (the
  library's is float32)."""
  attn_weights = torch.matmul(query, key.transpose(-1, -2)) * scaling
  if attention_mask is not None:
    attn_weights = attn_weights + attention_mask
  attn_weights = torch.nn.functional.softmax(attn_weights, dim=-1)
  attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
  return attn_output, attn_weights


def siglip2_model(tmp_path, seed=0):
  """(float64 reference model, its directory): written by save_pretrained in float32."""
  torch.manual_seed(seed)
  cfg = transformers.Siglip2VisionConfig(
      hidden_size=64, intermediate_size=96, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
      patch_size=PATCH, num_patches=16, attn_implementation='eager')
  m = transformers.Siglip2VisionModel(cfg).eval()
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in m.named_parameters():
      if p.ndim >= 2:  # queries and keys larger: peaked attention
        gain = 4. if 'q_proj' in name or 'k_proj' in name or 'in_proj' in name else 1.7
        p.copy_(torch.randn(p.shape, generator=g) * gain / math.sqrt(p.shape[-1]))
      else:
        p.add_(0.3 * torch.randn(p.shape, generator=g))
  path = tmp_path / 'siglip2'
  m.save_pretrained(path)
  (path / 'preprocessor_config.json').write_text(
      f'{{"max_num_patches": {MAX_PATCHES}, "patch_size": {PATCH}}}')
  return m.double(), path


def processor_batch(seed=1):
  """transformers' padded NaFlex batch of images of SIZES: (pixel_values [B, N, p*p*3],
  mask [B, N], spatial_shapes [B, 2]) in float64."""
  from PIL import Image
  rng = np.random.default_rng(seed)
  images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in SIZES]
  proc = transformers.Siglip2ImageProcessorPil(patch_size=PATCH, max_num_patches=MAX_PATCHES)
  out = proc(images=images, return_tensors='pt')
  return (out['pixel_values'].double(), out['pixel_attention_mask'],
          out['spatial_shapes'])


def unpatchify(pixels, grid) -> np.ndarray:
  """The processor's patches of one image [h*w (+ padding), p*p*3] -> [h*p, w*p, 3]."""
  h, w = (int(v) for v in grid)
  x = np.asarray(pixels)[:h * w].reshape(h, w, PATCH, PATCH, 3)
  return x.transpose(0, 2, 1, 3, 4).reshape(h * PATCH, w * PATCH, 3)


class Reference:
  """The library's padded forward with a per-image head mask on out_proj's input."""

  def __init__(self, m):
    self.m, self.mask = m, None
    for i, layer in enumerate(m.encoder.layers):
      layer.self_attn.out_proj.register_forward_pre_hook(
          lambda mod, args, i=i: self._masked(args, i))

  def _masked(self, args, layer):
    if self.mask is None:
      return None
    x = args[0]
    b, t, d = x.shape
    return ((x.reshape(b, t, HEADS, d // HEADS) * self.mask[:, layer, None, :, None])
            .reshape(b, t, d),)

  def __call__(self, batch, mask=None):
    self.mask = mask
    pixels, pmask, shapes = batch
    o = self.m(pixel_values=pixels, pixel_attention_mask=pmask, spatial_shapes=shapes,
               output_attentions=True)
    self.mask = None
    return o.pooler_output, o.attentions


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.abs(a - b).max() / np.abs(b).max())


def test_matches_transformers_padded_batch_float64(tmp_path, monkeypatch):
  m, path = siglip2_model(tmp_path)
  monkeypatch.setattr(modeling_siglip2.Siglip2VisionEmbeddings, 'resize_positional_embeddings',
                      staticmethod(_resize64))
  monkeypatch.setattr(modeling_siglip2, 'eager_attention_forward', _eager64)
  ref = Reference(m)
  batch = processor_batch()
  grids = [tuple(int(v) for v in s) for s in batch[2]]
  assert len(set(grids)) == len(SIZES) and len({g[0] * g[1] for g in grids}) > 1
  assert not batch[1].all()  # padding exists in the reference's batch
  b = len(SIZES)
  with numerics.float64():
    params, config, source = checkpoints.load_with_source(path)
    params = numerics.as64(params)
  assert config.naflex and config.naflex_max_patches == MAX_PATCHES
  assert source['family'].startswith('SigLIP 2') and not source['ignored']
  classes = np.random.default_rng(2).normal(size=(5, config.embedding_size)).astype(np.float32)
  labels = np.array([1, 3, 0, 4])
  with torch.no_grad():
    want, want_att = ref(batch)
    hm = torch.ones(b, LAYERS, HEADS, dtype=torch.float64)
    hm[:, 1, 2] = 0.
    want_removed, _ = ref(batch, hm)
  figures = {'output': 0., 'attention': 0., 'removed': 0., 'ablation': 0., 'taylor': 0.}
  w = torch.tensor(classes, dtype=torch.float64)

  def losses(mask):
    out, _ = ref(batch, mask)
    return -torch.log_softmax(out @ w.T, -1)[torch.arange(b), torch.tensor(labels)]

  with torch.no_grad():
    base = np.zeros((LAYERS, HEADS, b))
    for l in range(LAYERS):
      for h in range(HEADS):
        mk = torch.ones(b, LAYERS, HEADS, dtype=torch.float64)
        mk[:, l, h] = 0.
        base[l, h] = losses(mk).numpy()
  mk = torch.ones(b, LAYERS, HEADS, dtype=torch.float64, requires_grad=True)
  losses(mk).sum().backward()
  want_grads = mk.grad.abs().numpy()                            # [B, L, H]
  for i, grid in enumerate(grids):
    n = grid[0] * grid[1]
    image = unpatchify(batch[0][i].numpy(), grid)[None]
    cfg = config.for_images(image.shape[1:3])
    assert cfg.grid_shape == grid and cfg.num_tokens == n
    with numerics.float64():
      out, att = model_lib.apply(params, cfg, image, return_attention=True)
      mask = np.ones((LAYERS, HEADS))
      mask[1, 2] = 0.
      removed = model_lib.apply(params, cfg, image, head_mask=mask)
      objective = importance.classes_objective(cfg, classes)
      abl, _ = importance.ablation_batch(params, cfg, image, labels[i:i + 1], objective=objective)
      grads, _ = importance.taylor_batch(params, cfg, image, labels[i:i + 1], objective)
    assert np.asarray(out).dtype == np.float64
    figures['output'] = max(figures['output'], _rel(out[0], want[i].numpy()))
    figures['removed'] = max(figures['removed'], _rel(removed[0], want_removed[i].numpy()))
    for l in range(LAYERS):  # the valid tokens' attention: queries and keys of the image
      a = want_att[l][i, :, :n, :n].numpy()
      figures['attention'] = max(figures['attention'], _rel(att[0, l], a))
      assert a.max() > 5. / n  # far from uniform
      # The padded keys got nothing: the valid rows are the image's whole attention.
      np.testing.assert_allclose(a.sum(-1), 1., atol=1e-12)
    figures['ablation'] = max(figures['ablation'], _rel(np.asarray(abl['loss'])[..., 0],
                                                        base[..., i]))
    figures['taylor'] = max(figures['taylor'], _rel(np.asarray(grads), want_grads[i]))
    assert _rel(removed, out) > 1e-3  # the head mattered
  print('siglip2 naflex', {k: f'{v:.1e}' for k, v in figures.items()})
  taylor = figures.pop('taylor')
  assert max(figures.values()) <= numerics.F64_RTOL, figures
  # Taylor scores are float32 (gradients of float32 masks): float32 rounding of each side.
  assert taylor <= numerics.ROUNDED_ULPS * numerics.F32_EPS, taylor


def test_unpatched_reference_within_float32_noise(tmp_path):
  """transformers as it is (its resized position embedding built in float32)."""
  m, path = siglip2_model(tmp_path, seed=3)
  batch = processor_batch(seed=4)
  with torch.no_grad():
    want = m(pixel_values=batch[0], pixel_attention_mask=batch[1],
             spatial_shapes=batch[2]).pooler_output.numpy()
  with numerics.float64():
    params, config = checkpoints.load_checkpoint(path)
    params = numerics.as64(params)
    for i, grid in enumerate(batch[2]):
      image = unpatchify(batch[0][i].numpy(), grid)[None]
      out = model_lib.apply(params, config.for_images(image.shape[1:3]), image)
      assert _rel(out[0], want[i]) <= 1e-5


@pytest.mark.parametrize('old,new', [(4, 7), (16, 5), (4, 4), (3, 11), (16, 1)])
def test_resize_matrix_is_torch_antialiased_bilinear(old, new):
  """blocks.naflex_posemb_matrix against F.interpolate(bilinear, antialias=True,
  align_corners=False) in float64."""
  grid = np.random.default_rng(0).normal(size=(old, old + 1, 3))
  got = (blocks.naflex_posemb_matrix((old, old + 1), (new, new + 2)) @ grid.reshape(-1, 3))
  ref = torch.nn.functional.interpolate(
      torch.tensor(grid).permute(2, 0, 1)[None], size=(new, new + 2), mode='bilinear',
      align_corners=False, antialias=True)[0].permute(1, 2, 0).reshape(-1, 3).numpy()
  numerics.assert_close64(got, ref)


def test_image_classification_model_matches_transformers_float64(tmp_path, monkeypatch):
  """Siglip2ForImageClassification (a `siglip2` checkpoint: the mean of the valid patch
  tokens into a classifier; its vision model's MAP head unused) on a padded batch."""
  monkeypatch.setattr(modeling_siglip2.Siglip2VisionEmbeddings, 'resize_positional_embeddings',
                      staticmethod(_resize64))
  monkeypatch.setattr(modeling_siglip2, 'eager_attention_forward', _eager64)
  torch.manual_seed(0)
  cfg = transformers.Siglip2Config(
      vision_config=dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=HEADS, patch_size=PATCH, num_patches=16),
      text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                       num_attention_heads=2, vocab_size=50), num_labels=5)
  cfg._attn_implementation = 'eager'
  m = transformers.Siglip2ForImageClassification(cfg).eval()
  g = torch.Generator().manual_seed(1)
  with torch.no_grad():
    for name, p in m.named_parameters():
      if p.ndim >= 2:
        gain = 4. if 'q_proj' in name or 'k_proj' in name else 1.7
        p.copy_(torch.randn(p.shape, generator=g) * gain / math.sqrt(p.shape[-1]))
  m.save_pretrained(tmp_path / 'cls')
  m = m.double()
  batch = processor_batch()
  with torch.no_grad():
    want = m(pixel_values=batch[0], pixel_attention_mask=batch[1],
             spatial_shapes=batch[2]).logits.numpy()
  with numerics.float64():
    params, config, source = checkpoints.load_with_source(tmp_path / 'cls')
    params = numerics.as64(params)
    assert config.classifier == 'gap' and config.num_classes == 5 and config.naflex
    assert any(k.endswith('head.probe') for k in source['ignored'])
    for i, grid in enumerate(batch[2]):
      image = unpatchify(batch[0][i].numpy(), grid)[None]
      out = model_lib.apply(params, config.for_images(image.shape[1:3]), image)
      numerics.assert_close64(np.asarray(out)[0], want[i])
