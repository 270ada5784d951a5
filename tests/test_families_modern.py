"""The recent ViT blocks (RoPE, q/k norms, RMSNorm, SwiGLU, sub-LayerNorm, fc_norm) against their own
libraries, in float64: timm's hub layout (EVA-02, ROPE-ViT axial and mixed, DINOv3, ViTs with
q/k norms / fc_norm / SwiGLU) and transformers' DINOv3, written by the library into a tmp
dir and loaded without torch.

Each model: random weights scaled so that attention is far from uniform; the reference runs
the float32-rounded weights the file holds, in float64. Compared: the output, every layer's
attention, the output with one head removed (a hook zeroing that head's context before the
output projection), the ablation scan (prefix reuse) and the Taylor scores (autograd of the
reference). timm and transformers build their RoPE tables in float32; the reference's tables
are rebuilt in float64 by the libraries' own functions (bands / periods given in float64),
except timm's learned ('mixed') RoPE, which computes its angles in float32 inside the forward,
and transformers' DINOv3, which computes 2 pi * coordinates in float32 (their tolerances say
so). The checkpoints are loaded in JAX's 64-bit mode, so the folds done at load (LayerScale)
are float64 too.
"""

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

from tests import numerics  # noqa: E402
from tests.timm_import import import_timm  # noqa: E402

try:
  timm = import_timm()
except ImportError:
  pytest.skip('timm is not installed', allow_module_level=True)

import jax  # noqa: E402

from vit_jax_analytics import checkpoints, importance, model as model_lib  # noqa: E402

SMALL = dict(embed_dim=64, depth=2, num_heads=2)
TIMM = {
    # architecture, overrides
    'eva02_packed_swiglu': ('eva02_tiny_patch14_224', dict(img_size=28, patch_size=7,
                                                           num_classes=5)),
    'eva02_sub_ln': ('eva02_base_patch14_224', dict(img_size=28, patch_size=7, num_classes=5)),
    'vit_qk_norm_fc_norm': ('vit_tiny_patch16_224', dict(img_size=28, patch_size=7, num_classes=5,
                                                         qk_norm=True, fc_norm=True,
                                                         global_pool='avg')),
    'vit_swiglu_dinov2': ('vit_giant_patch14_dinov2', dict(img_size=28, patch_size=7,
                                                          num_classes=5, mlp_ratio=4)),
    'vit_rms_qk_norm': ('vit_tiny_patch16_224', dict(img_size=28, patch_size=7, num_classes=5,
                                                     qk_norm=True, norm_layer='rmsnorm',
                                                     reg_tokens=1, init_values=0.5)),
    'rope_axial': ('vit_small_patch16_rope_224', dict(img_size=32, patch_size=8, num_classes=5)),
    'rope_mixed': ('vit_small_patch16_rope_mixed_224', dict(img_size=32, patch_size=8,
                                                            num_classes=5)),
    'dinov3_timm': ('vit_small_patch16_dinov3', dict(img_size=32, patch_size=8, num_classes=5)),
    'dinov3_timm_swiglu': ('vit_small_plus_patch16_dinov3', dict(img_size=32, patch_size=8,
                                                                 num_classes=5)),
}
FAMILY = {'eva02_packed_swiglu': 'EVA-02 (timm)', 'eva02_sub_ln': 'EVA-02 (timm)',
          'vit_qk_norm_fc_norm': 'ViT (timm)', 'vit_swiglu_dinov2': 'ViT (timm)',
          'vit_rms_qk_norm': 'ViT (timm)',
          'rope_axial': 'ROPE-ViT axial (timm)', 'rope_mixed': 'ROPE-ViT mixed (timm)',
          'dinov3_timm': 'DINOv3 (timm)', 'dinov3_timm_swiglu': 'DINOv3 (timm)'}
HF = {'dinov3_hf': dict(),
      'dinov3_hf_gated_registers': dict(use_gated_mlp=True, hidden_act='silu',
                                        num_register_tokens=2)}
# timm's learned RoPE computes its angles in float32 in every forward; transformers' DINOv3
# its 2 pi * coordinates (measured 4e-8 on the cos table with float64 frequencies).
TOL = {'rope_mixed': 1e-6, 'dinov3_hf': 1e-6, 'dinov3_hf_gated_registers': 1e-6}
LAYER_SCALE_TOL = numerics.F64_RTOL


def _scale_weights(m, seed=0):
  """Peaked attention: matrices redrawn at 1.7 / sqrt(fan-in) (default inits give nearly
  uniform attention), norms and biases perturbed; then rounded to float32, as the file will
  hold them."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in m.named_parameters():
      if p.ndim >= 2 and 'freqs' not in name:
        fan_in = int(np.prod(p.shape[1:])) if p.ndim == 4 else p.shape[-1]
        p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 1.7 / math.sqrt(fan_in))
      elif 'freqs' not in name:
        p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
      p.copy_(p.float())


def _rope64(m):
  """The reference's RoPE tables in float64, through the library's own builders."""
  rope = getattr(m, 'rope', None)
  if rope is None:
    return
  if hasattr(rope, 'periods'):  # timm DINOv3: periods = temperature ** (2 j / (D/H / 2))
    n = rope.dim // 4
    rope.periods = rope.temperature ** (2. * torch.arange(n, dtype=torch.float64) / (rope.dim // 2))
  elif hasattr(rope, 'bands') and getattr(rope, 'pos_embed', None) is not None:  # 'cat'
    n = rope.dim // 4
    bands = 1. / rope.temperature ** (torch.arange(n, dtype=torch.float64) / n)
    rope.bands = bands
    rope.pos_embed = rope._build_embed_cat(rope.feat_shape, bands, dtype=torch.float64)


def timm_model(name, tmp_path):
  from timm.models._hub import save_for_hf
  arch, kw = TIMM[name]
  torch.manual_seed(0)
  timm.layers.set_fused_attn(False)
  m = timm.create_model(arch, pretrained=False, **SMALL, **kw).eval()
  _scale_weights(m)
  save_for_hf(m, tmp_path / name, safe_serialization=True)
  m = m.double()
  _rope64(m)
  return m, tmp_path / name


def hf_model(name, tmp_path):
  torch.manual_seed(0)
  cfg = transformers.DINOv3ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=96, image_size=32, patch_size=8,
                                     layerscale_value=0.7, attn_implementation='eager',
                                     **HF[name])
  m = transformers.DINOv3ViTModel(cfg).eval()
  _scale_weights(m)
  m.save_pretrained(tmp_path / name)
  m = m.double()
  head_dim = 32
  m.rope_embeddings.inv_freq = 1. / cfg.rope_theta ** torch.arange(0, 1, 4 / head_dim,
                                                                    dtype=torch.float64)
  return m, tmp_path / name


class Reference:
  """The library's model with hooks: attention weights, head masks (per image, with
  gradients) on the context before the output projection."""

  def __init__(self, m, hf):
    self.m, self.hf = m, hf
    layers = m.model.layer if hf else m.blocks
    self.attn = [l.attention for l in layers] if hf else [b.attn for b in layers]
    self.proj = [a.o_proj for a in self.attn] if hf else [a.proj for a in self.attn]
    self.heads = m.config.num_attention_heads if hf else self.attn[0].num_heads
    self.mask = None
    for i, p in enumerate(self.proj):
      p.register_forward_pre_hook(lambda mod, args, i=i: self._masked(args, i))

  def _masked(self, args, layer):
    if self.mask is None:
      return None
    x = args[0]
    b, t, d = x.shape
    x = x.reshape(b, t, self.heads, d // self.heads) * self.mask[:, layer, None, :, None]
    return (x.reshape(b, t, d),)

  def __call__(self, x, mask=None):
    """-> (output [B, E], attention [L][B, H, T, T])"""
    self.mask = mask
    x = torch.as_tensor(x)
    if self.hf:
      o = self.m(pixel_values=x, output_attentions=True)
      self.mask = None
      return o.pooler_output, list(o.attentions)
    captured = []
    hooks = [a.attn_drop.register_forward_hook(lambda mod, i, o: captured.append(o))
             for a in self.attn]
    out = self.m(x)
    for h in hooks:
      h.remove()
    self.mask = None
    return out, captured


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.abs(a - b).max() / np.abs(b).max())


def _load(path):
  params, config, source = checkpoints.load_with_source(path)
  return numerics.as64(params), config, source


@pytest.mark.parametrize('name', list(TIMM) + list(HF))
def test_matches_its_library_float64(name, tmp_path):
  hf = name in HF
  m, path = (hf_model if hf else timm_model)(name, tmp_path)
  ref = Reference(m, hf)
  with numerics.float64():  # weights and the folds done at load (LayerScale) in float64
    params, config, source = _load(path)
  assert not source['ignored'] or source['ignored'] == ['embeddings.mask_token']
  assert source['family'] == ('DINOv3 (Hugging Face)' if hf else FAMILY[name])
  tol = TOL.get(name, numerics.F64_RTOL)
  from safetensors import safe_open
  with safe_open(str(path / 'model.safetensors'), 'numpy') as f:
    if any('gamma' in k or 'lambda1' in k for k in f.keys()):
      # LayerScale, folded into the projections at load: in float64 in 64-bit mode.
      tol = max(tol, LAYER_SCALE_TOL)
  s = config.image_hw[0]
  x = np.random.default_rng(1).normal(size=(2, 3, s, s))
  images = x.transpose(0, 2, 3, 1)
  layers, heads = config.num_layers, config.num_heads
  with torch.no_grad():
    want, want_att = ref(x)
    mask = torch.ones(2, layers, heads, dtype=torch.float64)
    mask[:, -1, 1] = 0.
    want_removed, _ = ref(x, mask)
  with numerics.float64():
    out, att = model_lib.apply(params, config, images, return_attention=True)
    hm = np.ones((layers, heads))
    hm[-1, 1] = 0.
    removed = model_lib.apply(params, config, images, head_mask=hm)
    assert np.asarray(out).dtype == np.float64
    figures = {'output': _rel(out, want.numpy()), 'removed': _rel(removed, want_removed.numpy()),
               'attention': max(_rel(att[:, l], a.numpy()) for l, a in enumerate(want_att))}
    assert max(figures.values()) <= tol, figures
    # Far from uniform attention: the comparison above can see a layout mistake.
    assert min(float(a.max()) for a in want_att) > 5. / att.shape[-1]
    assert _rel(removed, out) > 1e-3  # the head mattered

    # The ablation scan (prefix reuse) and Taylor scores against the library's autograd.
    labels = np.array([1, 3])
    objective = None
    if hf:  # an embedding model: classification through a class matrix on the embedding
      classes = np.random.default_rng(2).normal(size=(5, config.embedding_size))
      classes = classes.astype(np.float32)
      objective = importance.classes_objective(config, classes)
    abl, _ = importance.ablation_batch(params, config, images, labels, objective=objective)
    grads, _ = importance.taylor_batch(params, config, images, labels, objective)
  w = None if objective is None else torch.tensor(classes, dtype=torch.float64)

  def losses(mask):
    out, _ = ref(x, mask)
    logits = out if w is None else out @ w.T
    return -torch.log_softmax(logits, -1)[torch.arange(2), torch.tensor(labels)]

  with torch.no_grad():
    base = np.zeros((layers, heads, 2))
    for l in range(layers):
      for h in range(heads):
        mk = torch.ones(2, layers, heads, dtype=torch.float64)
        mk[:, l, h] = 0.
        base[l, h] = losses(mk).numpy()
  mk = torch.ones(2, layers, heads, dtype=torch.float64, requires_grad=True)
  losses(mk).sum().backward()
  want_grads = mk.grad.abs().numpy()
  figures['ablation'] = _rel(abl['loss'], base)
  figures['taylor'] = _rel(grads, want_grads)
  assert figures['ablation'] <= tol, figures
  # Taylor scores are float32 (gradients of float32 masks): float32 rounding of each side.
  assert figures['taylor'] <= max(tol, numerics.ROUNDED_ULPS * numerics.F32_EPS), figures
  print(name, {k: f'{v:.1e}' for k, v in figures.items()})


@pytest.mark.parametrize('name', ['eva02_sub_ln', 'dinov3_timm', 'dinov3_hf_gated_registers'])
def test_info_and_analyze_run_on_the_library_files(name, tmp_path, capsys):
  from vit_jax_analytics import cli
  from tests.tiny import write_images
  _, path = (hf_model if name in HF else timm_model)(name, tmp_path)
  assert cli.main(['info', '--checkpoint', str(path)]) == 0
  info = json.loads(capsys.readouterr().out)
  assert 'RoPE' in info['position']
  assert info['family'].startswith(('EVA-02', 'DINOv3'))
  if 'dinov3' in name:
    assert info['token_layout']['cls'] == [0] and len(info['token_layout']['registers']) in (2, 4)
  write_images(tmp_path / 'images', n=5)
  assert cli.main(['analyze', '--checkpoint', str(path), '--images', str(tmp_path / 'images'),
                   '--logdir', str(tmp_path / 'logs'), '--run', 'r', '--batch-size', '5',
                   '--skip-patterns', '--curve-points', '2', '--random-orders', '1',
                   '--partial-heads', '1', '--no-compile-cache', '--no-progress']) == 0


def test_rope_tables_follow_the_sources_formulas():
  """The fixed schemes' coordinates and frequencies, checked on values by hand."""
  from vit_jax_analytics import blocks
  from vit_jax_analytics.model import ViTConfig
  c = ViTConfig(image_size=(16, 32), patch_size=8, hidden_size=16, num_heads=2, num_layers=1,
                mlp_dim=8, rope='centered', rope_temperature=100.)
  coords = blocks.rope_coords(c)  # 2 x 4 patches: rows at -0.5, 0.5; columns -0.75 ...
  np.testing.assert_array_equal(coords[:4, 0], [-0.5] * 4)
  np.testing.assert_array_equal(coords[:4, 1], [-0.75, -0.25, 0.25, 0.75])
  f = blocks.rope_freqs(c)
  np.testing.assert_allclose(f[0, :2], 2 * math.pi * np.array([1., 100. ** -0.5]))
  xy = blocks.rope_coords(c.replace(rope='axial', rope_xy=True))
  np.testing.assert_array_equal(xy[:5], [[0, 0], [1, 0], [2, 0], [3, 0], [0, 1]])
  ref = blocks.rope_coords(c.replace(rope='axial', rope_ref_grid=(4, 4)))
  np.testing.assert_array_equal(ref[5], [2., 1.])  # patch (1, 1) on a 2 x 4 grid -> (2, 1)


def _modern(rope):
  """A random model using every new block, far from uniform attention, in float64 (RMSNorms
  with the 'mixed' RoPE)."""
  from vit_jax_analytics.model import ViTConfig
  config = ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_layers=3, num_heads=2,
                     mlp_dim=48, num_classes=5, classifier='gap', class_token=True,
                     num_registers=2, position_embedding=rope == 'centered', rope=rope,
                     rope_half=rope == 'centered', rope_temperature=100., qk_norm=True,
                     mlp_gated=True, mlp_norm=True, activation='silu', fc_norm=True,
                     encoder_norm=False, rope_ref_grid=(8, 8) if rope == 'axial' else None,
                     norm='rms' if rope == 'mixed' else 'layer')
  params = model_lib.init_params(config, jax.random.key(0))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda a: np.asarray(a) + rng.normal(0, 0.3, a.shape), params)
  params['head']['kernel'] = rng.normal(0, 1, params['head']['kernel'].shape)
  return numerics.as64(params), config


@pytest.mark.parametrize('rope', ['axial', 'centered', 'mixed'])
def test_prefix_reuse_partial_pruning_and_qk_embedding_on_the_new_blocks(rope):
  """On RoPE + q/k norms + SwiGLU + sub-LN + fc_norm: the ablation scan with prefix reuse
  equals full forwards, partial pruning (one head's attention recomputed from its block
  input) equals full forwards with the edit, and the Q/K embedding's queries and keys give
  the model's own attention."""
  from tests.reference import importance_kernels as reference
  from vit_jax_analytics import strength
  params, config = _modern(rope)
  images = np.random.default_rng(1).normal(size=(3, 16, 16, 3))
  labels = np.array([0, 2, 4])
  with numerics.float64():
    reuse, _ = importance.ablation_batch(params, config, images, labels, 2)
    plain, _ = reference.ablation_batch_no_reuse(params, config, images, labels, 2)
    for m in ('loss', 'kl'):
      numerics.assert_close64(reuse[m], plain[m], m)
    variants = importance.partial_variants(config, radii=(1,))
    keeps = np.stack([v.keep for v in variants[:3]])
    heads = np.array([1, 4])   # (0, 1), (2, 0)
    layers = tuple(int(h) // config.num_heads for h in heads)
    got = importance.partial_batch(params, config, images, labels, heads, keeps, True, layers, 2)
    want = reference.partial_batch_plain(params, config, images, labels, heads, keeps, True,
                                         layers, 2)
    numerics.assert_close64(got['loss'], want['loss'], 'partial')
    assert np.abs(np.asarray(got['loss'])[:, 0] - np.asarray(got['loss'])[:, 1]).max() > 1e-6
    q, k = strength.queries_keys(params, config, images)        # [B, L, H, T, D/H]
    _, att = model_lib.apply(params, config, images, return_attention=True)
    logits = np.einsum('blhqd,blhkd->blhqk', q, k) / np.sqrt(q.shape[-1])
    w = np.exp(logits - logits.max(-1, keepdims=True))
    numerics.assert_close64(w / w.sum(-1, keepdims=True), np.asarray(att), 'q/k embedding')
    assert float(np.asarray(att).max()) > 5. / config.num_tokens


@pytest.mark.parametrize('name,size', [('eva02_sub_ln', 42), ('rope_mixed', 48),
                                       ('dinov3_timm', 48)])
def test_another_resolution_as_the_library_runs_it(name, size, tmp_path):
  """At a larger size than the stored grid: timm resamples the absolute position embedding
  (bicubic, antialiased) and rebuilds its RoPE for the new grid (EVA's coordinates rescaled
  onto its reference grid, DINOv3's normalised per axis); loading at that size agrees."""
  m, path = timm_model(name, tmp_path)
  if name != 'dinov3_timm':   # DINOv3 runs at any size as it is (dynamic_img_size)
    m.set_input_size(img_size=(size, size))
    _rope64(m)
  params, config = checkpoints.load_checkpoint(path, image_size=size)
  assert config.image_hw == (size, size)
  x = np.random.default_rng(4).normal(size=(2, 3, size, size))
  with torch.no_grad():
    want, want_att = Reference(m, False)(x)
  with numerics.float64():
    out, att = model_lib.apply(numerics.as64(params), config, x.transpose(0, 2, 3, 1),
                               return_attention=True)
  assert _rel(out, want.numpy()) <= 1e-6, _rel(out, want.numpy())
  assert _rel(att[:, -1], want_att[-1].numpy()) <= 1e-6


@pytest.mark.parametrize('name', list(TIMM) + list(HF))
def test_info_names_family_position_and_token_layout(name, tmp_path, capsys):
  from vit_jax_analytics import cli
  _, path = (hf_model if name in HF else timm_model)(name, tmp_path)
  assert cli.main(['info', '--checkpoint', str(path)]) == 0
  info = json.loads(capsys.readouterr().out)
  assert info['family'] == ('DINOv3 (Hugging Face)' if name in HF else FAMILY[name])
  rope = name.startswith(('eva02', 'rope', 'dinov3'))
  assert ('RoPE' in info['position']) == rope, info['position']
  registers = {'dinov3_timm': 4, 'dinov3_timm_swiglu': 4, 'dinov3_hf_gated_registers': 2,
               'vit_rms_qk_norm': 1}
  assert len(info['token_layout']['registers']) == registers.get(name, 0)
  assert info['token_layout']['cls'] == [0]
