"""Importing timm without torchvision (for the timm cross-checks and benchmarks).

timm imports torchvision at import time (for data transforms only); torchvision is not
installed here (no CPU build on our index), so a stand-in module answers those imports:
every attribute is an empty class, `InterpolationMode` an enum. timm itself is installed
with `pip install --no-deps timm` (the Makefile's test install line)."""

import enum
import importlib.abc
import importlib.machinery
import sys
import types


class _StandIn(types.ModuleType):
  def __getattr__(self, name):
    if name.startswith('__'):
      raise AttributeError(name)
    if name == 'InterpolationMode':
      return enum.Enum('InterpolationMode',
                       'NEAREST BILINEAR BICUBIC BOX HAMMING LANCZOS NEAREST_EXACT')
    return type(name, (), {'__init__': lambda self, *a, **k: None})


class _TorchvisionStandIn(importlib.abc.MetaPathFinder, importlib.abc.Loader):
  def find_spec(self, name, path, target=None):
    if name == 'torchvision' or name.startswith('torchvision.'):
      return importlib.machinery.ModuleSpec(name, self, is_package=True)
    return None

  def create_module(self, spec):
    m = _StandIn(spec.name)
    m.__path__, m.__version__ = [], '0.0'
    return m

  def exec_module(self, module):
    pass


def import_timm():
  """timm, with the torchvision stand-in installed first if torchvision is missing
  (ImportError if timm or torch is)."""
  try:
    import torchvision  # noqa: F401
  except ImportError:
    if not any(isinstance(f, _TorchvisionStandIn) for f in sys.meta_path):
      sys.meta_path.insert(0, _TorchvisionStandIn())
  import timm
  return timm


def timm_vit(npz_path, config, fused: bool):
  """timm's VisionTransformer holding the npz's weights, read by timm's own vit_jax loader
  (tanh-GELU, as vit_jax; `fused`: F.scaled_dot_product_attention, else timm's plain
  q k^T - softmax - (.) v)."""
  timm = import_timm()
  tm = timm.models.vision_transformer.VisionTransformer(
      img_size=config.image_size, patch_size=config.patch_size, embed_dim=config.hidden_size,
      depth=config.num_layers, num_heads=config.num_heads,
      mlp_ratio=config.mlp_dim / config.hidden_size, num_classes=config.num_classes,
      act_layer='gelu_tanh')
  timm.models.vision_transformer._load_weights(tm, str(npz_path))
  for blk in tm.blocks:
    blk.attn.fused_attn = fused
  return tm.eval()
