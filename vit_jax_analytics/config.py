"""The model's architecture as plain data: `ViTConfig` (JSON-serialisable, hashable: a
static argument of jitted functions), its presets (`CONFIGS`, `get_config`).

Every field's default is the original ViT's (google-research/vision_transformer), so a
config written before a field existed describes the same model. The fields of the recent
blocks (RoPE, q/k norms, gated MLPs, sub-LayerNorm, fc_norm) are described in `blocks.py`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from vit_jax_analytics.blocks import ACTIVATIONS, NORMS, check_rope

POOLINGS = ('token', 'gap', 'map', 'none', 'token_gap', 'token_dist')


# Fields added with the recent blocks (blocks.py); to_dict leaves them out at their defaults.
RECENT_FIELDS = ('class_token', 'position_embedding', 'rope', 'rope_temperature', 'rope_half',
                 'rope_xy', 'rope_ref_grid', 'rope_offset', 'qk_norm', 'mlp_gated', 'mlp_norm',
                 'encoder_norm', 'fc_norm', 'map_activation', 'norm', 'naflex_max_patches',
                 'posemb_grid')


@dataclasses.dataclass(frozen=True)
class ViTConfig:
  """Architecture of a ViT, as plain data (JSON-serialisable with `dataclasses.asdict`)."""
  image_size: Any = 224                # S (square) or (height, width) in pixels
  patch_size: int = 16
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  num_classes: int = 1000              # 0: no head; the model outputs its pooled embedding
  # The pooling: 'token' (class token), 'gap' (mean over patches), 'map' (big_vision's
  # multi-head attention pooling: a learned probe attends to all tokens), 'none' (all tokens),
  # 'token_gap' (class token and mean patch token concatenated: HF Dinov2ForImageClassification),
  # 'token_dist' (class and distillation token concatenated: DeiT with its teacher head, whose
  # two heads' average is one head on the concatenation).
  classifier: str = 'token'
  representation_size: Optional[int] = None  # a tanh `pre_logits` layer when set
  gelu_approximate: bool = True        # vit_jax and big_vision use tanh-GELU; timm/HF exact
  activation: Optional[str] = None     # one of ACTIVATIONS; None: from gelu_approximate
  layer_norm_epsilon: float = 1e-6
  num_registers: int = 0               # extra learned tokens (no position embedding)
  # What the output is: 'logits' over classes, or an 'embedding' (the image tower of a
  # two-tower model such as SigLIP, whose `head` projects into the shared space; or no head).
  output: str = 'logits'
  # A LayerNorm on the tokens before the first block (CLIP's `pre_layrnorm`).
  pre_norm: bool = False
  # The first register is DeiT's distillation token (its position embedding folded into it).
  distillation_token: bool = False
  # A class token: None for "as the pooling needs" ('token', 'token_gap', 'token_dist');
  # True with another pooling (timm's and DINOv3's average pooling beside a class token).
  class_token: Optional[bool] = None
  # The recent blocks (blocks.py). A learned absolute position embedding (DINOv3 and
  # ROPE-ViT have none), RoPE on queries and keys (None, 'axial', 'centered', 'mixed').
  position_embedding: bool = True
  rope: Optional[str] = None
  rope_temperature: float = 10000.
  rope_half: bool = False              # pairs (f, f + D/H/2), else (2f, 2f + 1)
  rope_xy: bool = False                # coordinates (x, y), else (row, column)
  rope_ref_grid: Optional[Any] = None  # (h, w): 'axial' coordinates rescaled onto it (EVA)
  rope_offset: float = 0.
  qk_norm: bool = False                # LayerNorm over each head's queries and keys
  mlp_gated: bool = False              # Dense_1(act(Dense_gate(x)) * Dense_0(x)): SwiGLU
  mlp_norm: bool = False               # sub-LayerNorm before the MLP's Dense_1 (EVA-02)
  encoder_norm: bool = True            # the LayerNorm after the last block
  fc_norm: bool = False                # a LayerNorm after the pooling (timm's fc_norm)
  map_activation: Optional[str] = None  # the MAP head MLP's (None: as the blocks'; jimm's SigLIP)
  norm: str = 'layer'                  # every norm a LayerNorm, or 'rms': RMSNorm (blocks.NORMS)
  # NaFlex (SigLIP 2): each image keeps its aspect ratio, resized so that its own h x w patch
  # grid has at most naflex_max_patches patches; the learned position embedding is stored at
  # posemb_grid and resized in the forward to the grid of the images it is given (Siglip2's
  # antialiased bilinear). image_size is then the canvas: the bounding grid of the images
  # analysed together (`for_images` gives the config of one batch's grid).
  naflex_max_patches: Optional[int] = None
  posemb_grid: Optional[Any] = None    # (h, w) of the stored position embedding (NaFlex)

  def __post_init__(self):
    size = self.image_size
    if isinstance(size, (list, tuple)):
      if len(size) != 2:
        raise ValueError(f'ViTConfig.image_size: expected S or (height, width), got {size!r}')
      size = (int(size[0]), int(size[1]))
      size = size[0] if size[0] == size[1] else size
      object.__setattr__(self, 'image_size', size)
    if self.classifier not in POOLINGS:
      raise ValueError(f'ViTConfig.classifier: expected one of {POOLINGS}, got '
                       f'{self.classifier!r}')
    if self.hidden_size % self.num_heads:
      raise ValueError(f'ViTConfig: hidden_size {self.hidden_size} is not divisible by '
                       f'num_heads {self.num_heads}')
    if any(s % self.patch_size for s in self.image_hw):
      raise ValueError(f'ViTConfig: image_size {self.image_size} is not a multiple of '
                       f'patch_size {self.patch_size}')
    if self.output not in ('logits', 'embedding'):
      raise ValueError(f"ViTConfig.output: expected 'logits' or 'embedding', got {self.output!r}")
    if self.num_registers < 0:
      raise ValueError(f'ViTConfig.num_registers: expected >= 0, got {self.num_registers}')
    if self.activation is not None and self.activation not in ACTIVATIONS:
      raise ValueError(f'ViTConfig.activation: expected one of {ACTIVATIONS} or None, got '
                       f'{self.activation!r}')
    if self.norm not in NORMS:
      raise ValueError(f'ViTConfig.norm: expected one of {NORMS}, got {self.norm!r}')
    if self.map_activation is not None and self.map_activation not in ACTIVATIONS:
      raise ValueError(f'ViTConfig.map_activation: expected one of {ACTIVATIONS} or None, got '
                       f'{self.map_activation!r}')
    if (self.distillation_token or self.classifier == 'token_dist') and not self.num_registers:
      raise ValueError('ViTConfig: a distillation token is the first register; expected '
                       'num_registers >= 1')
    if self.class_token is False and self.classifier in ('token', 'token_gap', 'token_dist'):
      raise ValueError(f'ViTConfig: classifier {self.classifier!r} needs the class token; '
                       f'got class_token=False')
    if self.rope_ref_grid is not None:
      object.__setattr__(self, 'rope_ref_grid', tuple(int(g) for g in self.rope_ref_grid))
    if self.posemb_grid is not None:
      object.__setattr__(self, 'posemb_grid', tuple(int(g) for g in self.posemb_grid))
    if (self.naflex_max_patches is not None) != (self.posemb_grid is not None) or (
        self.naflex and (self.has_cls_token or self.num_registers or not self.position_embedding
                         or self.naflex_max_patches < 1)):
      raise ValueError('ViTConfig: NaFlex needs naflex_max_patches >= 1 and posemb_grid '
                       'together, a position embedding, and no class token or registers')
    problem = check_rope(self)
    if problem:
      raise ValueError(f'ViTConfig.{problem}')

  @property
  def naflex(self) -> bool:
    """Images keep their aspect ratio, each batch on its own patch grid (SigLIP 2 NaFlex)."""
    return self.naflex_max_patches is not None

  def for_images(self, hw) -> 'ViTConfig':
    """The config of images of (height, width) pixels: a NaFlex model's at that grid (the
    canvas config's image_size replaced); any other model's is itself."""
    hw = tuple(int(v) for v in hw)
    return self.replace(image_size=hw) if self.naflex and hw != self.image_hw else self

  @property
  def mlp_activation(self) -> str:
    """The MLP's nonlinearity (one of ACTIVATIONS)."""
    if self.activation is not None:
      return self.activation
    return 'gelu_tanh' if self.gelu_approximate else 'gelu'
  @property
  def image_hw(self) -> tuple:
    """(height, width) in pixels."""
    s = self.image_size
    return tuple(s) if isinstance(s, tuple) else (s, s)

  @property
  def grid_shape(self) -> tuple:
    """(h, w): patch rows and columns."""
    return tuple(s // self.patch_size for s in self.image_hw)

  @property
  def num_patches(self) -> int:
    h, w = self.grid_shape
    return h * w

  @property
  def grid_size(self) -> int:
    """Patches per side (n of an n x n patch grid); for square grids only."""
    h, w = self.grid_shape
    if h != w:
      raise ValueError(f'this needs a square patch grid; the model has {h} x {w} patches')
    return h

  @property
  def has_cls_token(self) -> bool:
    if self.class_token is not None:
      return self.class_token
    return self.classifier in ('token', 'token_gap', 'token_dist')

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def position_scheme(self) -> str:
    """How the model knows where a patch is, in words (for `vit-analytics info`)."""
    parts = ['learned absolute position embedding'] if self.position_embedding else []
    if self.rope is not None:
      parts.append(f"2-D RoPE ({self.rope}, {'rotate-half' if self.rope_half else 'interleaved'}"
                   f' pairs, temperature {self.rope_temperature:g})')
    if self.naflex:
      gh, gw = self.posemb_grid
      parts = [f'learned absolute position embedding ({gh} x {gw}), resized to each '
               f"image's own grid (NaFlex: antialiased bilinear)"]
    return ' + '.join(parts) or 'none'

  @property
  def num_prefix_tokens(self) -> int:
    """Tokens before the patches: the class token (if any) and the registers."""
    return int(self.has_cls_token) + self.num_registers

  @property
  def num_tokens(self) -> int:
    """T: patches plus the class token and registers."""
    return self.num_patches + self.num_prefix_tokens

  @property
  def pooling(self) -> str:
    """big_vision's name of the pooling: 'tok', 'gap', 'map' or 'none'."""
    return {'token': 'tok'}.get(self.classifier, self.classifier)

  @property
  def has_pool_attention(self) -> bool:
    """The pooling is an attention with its own heads (a MAP head)."""
    return self.classifier == 'map'

  @property
  def has_classifier(self) -> bool:
    """The output is logits over classes (else an embedding)."""
    return bool(self.num_classes) and self.output == 'logits' and self.classifier != 'none'

  @property
  def embedding_size(self) -> int:
    """Width of the model's output per image (logits or the pooled embedding)."""
    return self.num_classes or self.representation_size or self.pooled_size

  @property
  def pooled_size(self) -> int:
    """Width of the pooled representation (two tokens concatenated for 'token_gap' and
    'token_dist')."""
    return self.hidden_size * (2 if self.classifier in ('token_gap', 'token_dist') else 1)

  def token_layout(self) -> dict:
    """Which tokens are what: {'cls': [..], 'registers': [..], 'patches': [start, stop],
    'grid': [h, w]}."""
    cls = int(self.has_cls_token)
    dist = int(self.distillation_token or self.classifier == 'token_dist')
    layout = {'cls': list(range(cls)),
              'registers': list(range(cls + dist, cls + self.num_registers)),
              'patches': [self.num_prefix_tokens, self.num_tokens],
              'grid': list(self.grid_shape)}
    if dist:
      layout['distillation'] = [cls]
    if self.naflex:
      layout['naflex'] = {'max_patches': self.naflex_max_patches,
                          'grid': 'per image: aspect ratio kept, h * w <= max_patches; '
                                  "'grid' above is the canvas (the largest h and w)"}
    return layout

  def replace(self, **changes) -> 'ViTConfig':
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict:
    """The fields as JSON; the recent blocks' fields only where they differ from their
    defaults, so a plain ViT's config (and the logdir meta holding it) reads as before they
    existed."""
    d = dataclasses.asdict(self)
    for key in ('image_size', 'rope_ref_grid', 'posemb_grid'):
      if isinstance(d[key], tuple):
        d[key] = list(d[key])
    for f in dataclasses.fields(ViTConfig):
      if f.name in RECENT_FIELDS and d.get(f.name) == f.default:
        del d[f.name]
    return d

  @classmethod
  def from_dict(cls, d: dict) -> 'ViTConfig':
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise ValueError(f'ViTConfig: unknown field(s) {unknown}; expected some of {sorted(known)}')
    return cls(**d)


def _preset(width, depth, mlp, heads, patch):
  return ViTConfig(patch_size=patch, hidden_size=width, num_layers=depth, mlp_dim=mlp,
                   num_heads=heads)

# Table 1 of Dosovitskiy et al. 2021 and Table 2 of Steiner et al. 2021 (Ti, S).
CONFIGS = {
    'ViT-Ti/16': _preset(192, 12, 768, 3, 16),
    'ViT-S/16': _preset(384, 12, 1536, 6, 16),
    'ViT-B/16': _preset(768, 12, 3072, 12, 16),
    'ViT-B/32': _preset(768, 12, 3072, 12, 32),
    'ViT-L/16': _preset(1024, 24, 4096, 16, 16),
    # The bundled demo: MNIST digits at 28 x 28 in 4 x 4 patches (a 7 x 7 patch grid), small
    # enough to train, analyse and test in minutes on a 2-core CPU.
    'demo': ViTConfig(image_size=28, patch_size=4, hidden_size=64, num_layers=6, num_heads=4,
                      mlp_dim=128, num_classes=10, classifier='token'),
}


def get_config(name: str, **overrides) -> ViTConfig:
  if name not in CONFIGS:
    raise ValueError(f'unknown model config {name!r}; expected one of {sorted(CONFIGS)}')
  return CONFIGS[name].replace(**overrides)
