"""Random-weight checkpoints written in the public `.npz` layouts, key by key.

These writers spell out each format's key names by hand (not through the package's loader
or model), so a test that loads them checks the loader against the format itself.
"""

import io
import struct
import zlib

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


def two_tower_big_vision(arrays):
  """A SigLIP-style two-tower file: the big_vision ViT `arrays` as the image tower under
  params/img/, a stand-in text tower under params/txt/, and the scalar temperature and bias."""
  out = {('params/img/' + k[len('params/'):] if k.startswith('params/') else k): v
         for k, v in arrays.items()}
  width = arrays['params/embedding/kernel'].shape[-1]
  out['params/txt/Embed_0/embedding'] = np.zeros((11, width), np.float32)
  out['params/txt/head/kernel'] = np.zeros((width, width), np.float32)
  out['params/t'] = np.float32(2.3)
  out['params/b'] = np.float32(-10.)
  return out


def npy_bytes(shape, descr='<f4', data=b''):
  """An .npy file's bytes: a version 1.0 header declaring `shape`, then `data` as is."""
  buf = io.BytesIO()
  np.lib.format.write_array_header_1_0(
      buf, {'descr': descr, 'fortran_order': False, 'shape': tuple(shape)})
  return buf.getvalue() + data


def zeros_bomb_npz(path, key, nbytes, chunk=1 << 24):
  """A valid .npz (what np.savez_compressed writes for np.zeros(nbytes // 4, np.float32))
  of a few MB, built in about a second: one deflated chunk of zeros is repeated as is."""
  assert nbytes % chunk == 0 and nbytes < 1 << 32  # no zip64
  header = npy_bytes((nbytes // 4,))
  zeros = bytes(chunk)
  c = zlib.compressobj(1, zlib.DEFLATED, -15)  # raw deflate, as zip stores it
  first = c.compress(header + zeros) + c.flush(zlib.Z_FULL_FLUSH)
  # After a full flush the compressor starts afresh: every further chunk is the same bytes.
  repeat = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
  data = first + repeat * (nbytes // chunk - 1) + c.flush()
  crc = zlib.crc32(header)
  for _ in range(nbytes // chunk):
    crc = zlib.crc32(zeros, crc)
  name, size = f'{key}.npy'.encode(), len(header) + nbytes
  fields = (20, 0, 8, 0, 0x21, crc, len(data), size, len(name))  # deflate, 1980-01-01
  local = struct.pack('<IHHHHHIIIHH', 0x04034b50, *fields, 0) + name
  central = struct.pack('<IHHHHHHIIIHHHHHII', 0x02014b50, 20, *fields, 0, 0, 0, 0, 0,
                        0) + name
  end = struct.pack('<IHHHHIIH', 0x06054b50, 0, 0, 1, 1, len(central),
                    len(local) + len(data), 0)
  with open(path, 'wb') as f:
    f.write(local + data + central + end)
  return path


def random_big_vision_vit_arrays(seed=0, *, width=64, depth=2, heads=4, mlp=128, patch=16,
                                 grid=(14, 14), pool='map', classes=0, scan=False,
                                 scale=0.2):
  """{key: array} of a big_vision `vit.py` ViT as its `.npz` stores it (`params/` prefix,
  linen names): learned `pos_embedding` over the h x w patches, `pool_type` 'map'
  (`MAPHead_0`: probe, attention, LayerNorm, MLP with the encoder's mlp_dim), 'gap' or
  'tok', an optional `head` (for a SigLIP image tower: the projection into the shared
  space), optionally the scanned encoder."""
  rng = np.random.default_rng(seed)
  n = lambda *shape, s=scale: rng.normal(0., s, shape).astype(np.float32)
  ln = lambda: (1. + n(width, s=0.1), n(width, s=0.1))
  dh = width // heads
  p = {'embedding/kernel': n(patch, patch, 3, width, s=0.05), 'embedding/bias': n(width),
       'pos_embedding': n(1, grid[0] * grid[1], width, s=0.5)}
  if pool == 'tok':
    p['cls'] = n(1, 1, width, s=0.5)

  def attention(prefix):
    for name in ('query', 'key', 'value'):
      p[f'{prefix}/{name}/kernel'] = n(width, heads, dh, s=2 * scale)
      p[f'{prefix}/{name}/bias'] = n(heads, dh)
    p[f'{prefix}/out/kernel'] = n(heads, dh, width, s=scale / 2)
    p[f'{prefix}/out/bias'] = n(width)

  def mlp_block(prefix):
    p[f'{prefix}/Dense_0/kernel'], p[f'{prefix}/Dense_0/bias'] = n(width, mlp, s=0.1), n(mlp)
    p[f'{prefix}/Dense_1/kernel'], p[f'{prefix}/Dense_1/bias'] = n(mlp, width, s=0.1), n(width)

  for i in range(depth):
    b = f'Transformer/encoderblock_{i}'
    p[f'{b}/LayerNorm_0/scale'], p[f'{b}/LayerNorm_0/bias'] = ln()
    attention(f'{b}/MultiHeadDotProductAttention_0')
    p[f'{b}/LayerNorm_1/scale'], p[f'{b}/LayerNorm_1/bias'] = ln()
    mlp_block(f'{b}/MlpBlock_0')
  p['Transformer/encoder_norm/scale'], p['Transformer/encoder_norm/bias'] = ln()
  if pool == 'map':
    p['MAPHead_0/probe'] = n(1, 1, width, s=1.)
    attention('MAPHead_0/MultiHeadDotProductAttention_0')
    p['MAPHead_0/LayerNorm_0/scale'], p['MAPHead_0/LayerNorm_0/bias'] = ln()
    mlp_block('MAPHead_0/MlpBlock_0')
  if classes:
    p['head/kernel'], p['head/bias'] = n(width, classes, s=0.1), n(classes)
  if scan:
    stacked = {}
    for key in [k for k in p if k.startswith('Transformer/encoderblock_')]:
      _, blk, rest = key.split('/', 2)
      stacked.setdefault(rest, {})[int(blk.rsplit('_', 1)[1])] = p.pop(key)
    for rest, per_layer in stacked.items():
      p[f'Transformer/encoderblock/{rest}'] = np.stack([per_layer[i] for i in range(depth)])
  return {f'params/{k}': v for k, v in p.items()}


def as_bfloat16(arrays):
  """The arrays stored as big_vision does under bf16 training: ml_dtypes bfloat16 (numpy
  writes them as the raw 2-byte void dtype 'V2')."""
  import ml_dtypes
  return {k: v.astype(ml_dtypes.bfloat16) if v.ndim else v for k, v in arrays.items()}
