"""Example: analysing a Flax ViT this project did not write.

`CompactViT` is written as a user would write one — a plain Python loop over blocks (no
`nn.scan`), `nn.MultiHeadDotProductAttention` for attention, its own parameter names. The
analyses run on it through `families.intercept` without any change to the model:

    from vit_jax_analytics import pipeline
    from vit_jax_analytics.families.example_compact_vit import CompactViT

    module = CompactViT(patch=4, width=32, depth=3, heads=4, mlp=64, classes=5)
    params = module.init(jax.random.key(0), images[:1])['params']
    results = pipeline.analyse_module(module, params, images,
                                      token_layout={'cls': [0], 'grid': (4, 4)})
    results['importance'], results['strength'], results['patterns'], results['ablation']

`params_from_native` maps this project's ViT weights onto CompactViT, so that the two can
be compared: tests/test_families_intercept.py checks that logits, attention, the
single-head ablation scan and strength agree between the native path and the intercepted
one.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class Block(nn.Module):
  heads: int
  mlp: int
  approximate_gelu: bool = True

  @nn.compact
  def __call__(self, x):
    y = nn.LayerNorm(epsilon=1e-6, name='ln1')(x)
    x = x + nn.MultiHeadDotProductAttention(num_heads=self.heads, name='attn')(y)
    y = nn.LayerNorm(epsilon=1e-6, name='ln2')(x)
    y = nn.gelu(nn.Dense(self.mlp, name='fc1')(y), approximate=self.approximate_gelu)
    return x + nn.Dense(x.shape[-1], name='fc2')(y)


class CompactViT(nn.Module):
  patch: int
  width: int
  depth: int
  heads: int
  mlp: int
  classes: int
  approximate_gelu: bool = True

  @nn.compact
  def __call__(self, images):
    x = nn.Conv(self.width, (self.patch, self.patch), strides=(self.patch, self.patch),
                name='patchify')(images)
    b, h, w, d = x.shape
    x = x.reshape(b, h * w, d)
    cls = self.param('cls_token', nn.initializers.zeros, (1, 1, d))
    x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, d)), x], axis=1)
    x = x + self.param('pos', nn.initializers.normal(0.02), (1, x.shape[1], d))
    for i in range(self.depth):
      x = Block(self.heads, self.mlp, self.approximate_gelu, name=f'block{i}')(x)
    x = nn.LayerNorm(epsilon=1e-6, name='norm')(x)
    return nn.Dense(self.classes, name='classifier')(x[:, 0])


def compact_for(config) -> CompactViT:
  """The CompactViT with the architecture of a (class-token, no-register) ViTConfig."""
  return CompactViT(config.patch_size, config.hidden_size, config.num_layers,
                    config.num_heads, config.mlp_dim, config.num_classes,
                    config.mlp_activation == 'gelu_tanh')


def params_from_native(params, config) -> dict:
  """This project's ViT params (vit_jax names) -> CompactViT's."""
  t = params['Transformer']
  out = {'patchify': dict(params['embedding']), 'cls_token': params['cls'],
         'pos': t['posembed_input']['pos_embedding'], 'norm': dict(t['encoder_norm']),
         'classifier': dict(params['head'])}
  for i in range(config.num_layers):
    blk = t[f'encoderblock_{i}']
    out[f'block{i}'] = {'ln1': dict(blk['LayerNorm_0']), 'ln2': dict(blk['LayerNorm_2']),
                        'attn': jax.tree.map(lambda a: a, blk['MultiHeadDotProductAttention_1']),
                        'fc1': dict(blk['MlpBlock_3']['Dense_0']),
                        'fc2': dict(blk['MlpBlock_3']['Dense_1'])}
  return out
