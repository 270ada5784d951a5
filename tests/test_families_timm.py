"""timm VisionTransformer state dicts loaded without torch, against timm's forward (float64).

timm is imported without torchvision by `tests/timm_import.py` (a stand-in module)."""

import numpy as np
import pytest

torch = pytest.importorskip('torch')

from tests.timm_import import import_timm  # noqa: E402

try:
  timm = import_timm()
except ImportError:
  pytest.skip('timm is not installed', allow_module_level=True)


import jax  # noqa: E402

from vit_jax_analytics import checkpoints, model as model_lib  # noqa: E402

VARIANTS = {
    'plain': dict(),
    'layer_scale_registers': dict(init_values=0.5, reg_tokens=2),
    'no_embed_class': dict(no_embed_class=True, reg_tokens=1, init_values=0.3),
    'gap_pre_norm': dict(class_token=False, global_pool='avg', fc_norm=False, pre_norm=True),
}


def _timm_model(kw):
  torch.manual_seed(0)
  timm.layers.set_fused_attn(False)
  return timm.create_model('vit_tiny_patch16_224', pretrained=False, img_size=28, patch_size=7,
                           embed_dim=128, depth=2, num_heads=2, num_classes=5, **kw).double().eval()


def _attention(m, x):
  captured = []
  hooks = [b.attn.attn_drop.register_forward_hook(lambda mod, i, o: captured.append(o))
           for b in m.blocks]
  with torch.no_grad():
    out = m(torch.tensor(x)).numpy()
  for h in hooks:
    h.remove()
  return out, [a.numpy() for a in captured]


def _resample_in_float64(posemb, new_size, old_size=None, num_prefix_tokens=1,
                         interpolation='bicubic', antialias=True, **_):
  """timm's resample_abs_pos_embed without its cast to float32 (torch's interpolate in
  float64): the float64 reference of a resized position embedding."""
  hw = old_size or (int(np.sqrt(posemb.shape[1] - num_prefix_tokens)),) * 2
  prefix, grid = posemb[:, :num_prefix_tokens], posemb[:, num_prefix_tokens:]
  grid = grid.double().reshape(1, *hw, -1).permute(0, 3, 1, 2)
  grid = torch.nn.functional.interpolate(grid, size=new_size, mode=interpolation,
                                         antialias=antialias)
  return torch.cat([prefix.double(), grid.permute(0, 2, 3, 1).reshape(1, -1, grid.shape[1])], 1)


@pytest.mark.parametrize('variant', list(VARIANTS))
def test_timm_state_dict_matches_timm(variant, tmp_path, monkeypatch):
  """Loaded in float64 (JAX's 64-bit mode: the LayerScale, register and resize folds are
  computed in float64) the model agrees with timm's float64 forward to float64 rounding;
  loaded in float32, to float32 rounding."""
  from safetensors.numpy import save_file
  monkeypatch.setattr(timm.models.vision_transformer, 'resample_abs_pos_embed',
                      _resample_in_float64)
  m = _timm_model(VARIANTS[variant])
  path = tmp_path / 'model.safetensors'
  save_file({k: v.float().numpy() for k, v in m.state_dict().items()}, str(path))
  params, config, source = checkpoints.load_with_source(path)
  assert source['family'] == 'ViT (timm)' and not source['ignored']
  rel = lambda a, b: np.abs(np.asarray(a) - b).max() / np.abs(b).max()
  for size in (28, 42):
    x = np.random.default_rng(1).normal(size=(2, 3, size, size))
    if size != 28:
      m = timm.create_model('vit_tiny_patch16_224', pretrained=False, img_size=size,
                            patch_size=7, embed_dim=128, depth=2, num_heads=2, num_classes=5,
                            **VARIANTS[variant]).double().eval()
      sd = {k: torch.tensor(v).double() for k, v in
            __import__('safetensors.numpy').numpy.load_file(str(path)).items()}
      sd = timm.models.vision_transformer.checkpoint_filter_fn(sd, m)
      m.load_state_dict(sd)
    ref, ref_att = _attention(m, x)
    for x64, tolerance in ((True, 1e-13), (False, 1e-6)):
      with jax.enable_x64(x64):
        params, config = checkpoints.load_checkpoint(path, image_size=size)
      assert {a.dtype for a in jax.tree.leaves(params)} == {
          np.dtype(np.float64 if x64 else np.float32)}
      p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
      with jax.enable_x64(True):
        out, att = model_lib.apply(p, config, x.transpose(0, 2, 3, 1), return_attention=True)
      assert rel(out, ref) <= tolerance, (size, x64, rel(out, ref))
      for layer, a in enumerate(ref_att):
        assert rel(att[:, layer], a) <= tolerance, (size, x64, layer)
