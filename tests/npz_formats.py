"""Random-weight checkpoints written in the public `.npz` layouts, key by key.

These writers spell out each format's key names by hand (not through the package's loader
or model), so a test that loads them checks the loader against the format itself.
"""

import numpy as np


def random_vit_jax_arrays(seed=0, *, width=64, depth=2, heads=4, mlp=128, patch=16, image=224,
                          classes=7, classifier='token', representation=None):
  """{key: array} in google-research/vision_transformer's npz layout (pre-linen names)."""
  rng = np.random.default_rng(seed)
  n = lambda *shape, s=0.2: rng.normal(0., s, shape).astype(np.float32)
  ln = lambda: (1. + n(width, s=0.1), n(width, s=0.1))
  dh = width // heads
  a = {'embedding/kernel': n(patch, patch, 3, width, s=0.05), 'embedding/bias': n(width)}
  tokens = (image // patch) ** 2
  if classifier == 'token':
    a['cls'] = n(1, 1, width, s=0.5)
    tokens += 1
  a['Transformer/posembed_input/pos_embedding'] = n(1, tokens, width, s=0.5)
  for i in range(depth):
    b = f'Transformer/encoderblock_{i}/'
    a[b + 'LayerNorm_0/scale'], a[b + 'LayerNorm_0/bias'] = ln()
    for name in ('query', 'key', 'value'):
      # Large q/k weights make attention far from uniform, so the check has teeth.
      a[b + f'MultiHeadDotProductAttention_1/{name}/kernel'] = n(width, heads, dh, s=0.4)
      a[b + f'MultiHeadDotProductAttention_1/{name}/bias'] = n(heads, dh)
    a[b + 'MultiHeadDotProductAttention_1/out/kernel'] = n(heads, dh, width, s=0.1)
    a[b + 'MultiHeadDotProductAttention_1/out/bias'] = n(width)
    a[b + 'LayerNorm_2/scale'], a[b + 'LayerNorm_2/bias'] = ln()
    a[b + 'MlpBlock_3/Dense_0/kernel'] = n(width, mlp, s=0.1)
    a[b + 'MlpBlock_3/Dense_0/bias'] = n(mlp)
    a[b + 'MlpBlock_3/Dense_1/kernel'] = n(mlp, width, s=0.1)
    a[b + 'MlpBlock_3/Dense_1/bias'] = n(width)
  a['Transformer/encoder_norm/scale'], a['Transformer/encoder_norm/bias'] = ln()
  head_in = width
  if representation:
    a['pre_logits/kernel'], a['pre_logits/bias'] = n(width, representation), n(representation)
    head_in = representation
  a['head/kernel'], a['head/bias'] = n(head_in, classes), n(classes)
  return a


def vit_jax_to_big_vision(arrays, scan=False):
  """The same function in big_vision's layout: `params/` prefix, linen block numbering,
  top-level pos_embedding over the patches only (class token added after posemb), and
  optionally the scanned encoder ([depth, ...] arrays under Transformer/encoderblock/)."""
  rename = {'LayerNorm_0': 'LayerNorm_0', 'MultiHeadDotProductAttention_1':
            'MultiHeadDotProductAttention_0', 'LayerNorm_2': 'LayerNorm_1',
            'MlpBlock_3': 'MlpBlock_0'}
  out, blocks = {}, {}
  for key, v in arrays.items():
    if key == 'Transformer/posembed_input/pos_embedding':
      if 'cls' in arrays:  # vit_jax adds posemb[0] to the class token; bake it into cls.
        out['params/cls'] = arrays['cls'] + v[:, :1]
        v = v[:, 1:]
      out['params/pos_embedding'] = v
      continue
    if key == 'cls':
      continue
    if key.startswith('Transformer/encoderblock_'):
      _, blk, mod, rest = key.split('/', 3)
      i = int(blk.rsplit('_', 1)[1])
      new = f'{rename[mod]}/{rest}'
      if scan:
        blocks.setdefault(new, {})[i] = v
        continue
      key = f'Transformer/{blk}/{new}'
    out['params/' + key] = v
  for new, per_layer in blocks.items():
    out[f'params/Transformer/encoderblock/{new}'] = np.stack(
        [per_layer[i] for i in sorted(per_layer)])
  # Optimizer state that big_vision keeps beside the params; a loader must ignore it.
  out['opt/0/mu/head/kernel'] = np.zeros_like(arrays['head/kernel'])
  return out
