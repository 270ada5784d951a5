"""Our forward against PyTorch (Hugging Face `transformers` ViTModel) on the same weights,
and where the time goes, part by part.

Random-weight ViT-B/16 (vit_jax `.npz` layout), 224 x 224, 4 images, this CPU; each figure
is the best of --repeats calls after a warm-up, JAX and PyTorch interleaved in one run:
  * the whole forward (logits);
  * its parts on the same inputs: patch embedding (a strided conv), one encoder block, the
    attention core (softmax(q k^T) v), the MLP (with tanh-GELU) and the GELU alone.
PyTorch runs HF's eager attention and, when available, SDPA.

  python benchmarks/bench_forward.py [--config ViT-B/16] [--batch-size 4]
"""

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.npz_formats import random_vit_jax_arrays  # noqa: E402
from vit_jax_analytics import checkpoints, model as model_lib  # noqa: E402


def best(fn, repeats):
  fn()
  t = float('inf')
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    t = min(t, time.perf_counter() - t0)
  return t


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument('--config', default='ViT-B/16')
  p.add_argument('--batch-size', type=int, default=4)
  p.add_argument('--repeats', type=int, default=3)
  args = p.parse_args()
  torch.set_num_threads(max(1, len(jax.devices('cpu')) and torch.get_num_threads()))
  c = model_lib.get_config(args.config)
  arrays = random_vit_jax_arrays(0, width=c.hidden_size, depth=c.num_layers, heads=c.num_heads,
                                 mlp=c.mlp_dim, patch=c.patch_size, image=c.image_size,
                                 classes=10)
  import tempfile
  with tempfile.TemporaryDirectory() as d:
    np.savez(Path(d) / 'm.npz', **arrays)
    params, config = checkpoints.load_checkpoint(Path(d) / 'm.npz')
  from tests.test_crosscheck_hf import hf_vit
  b, s, t, dm = args.batch_size, c.image_size, config.num_tokens, c.hidden_size
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (b, s, s, 3)).astype(np.float32)
  x_t = torch.tensor(images.transpose(0, 3, 1, 2))
  head_k, head_b = torch.tensor(arrays['head/kernel']), torch.tensor(arrays['head/bias'])
  hf = {'eager': hf_vit(arrays, heads=c.num_heads, image=s, gelu_exact=False)}
  try:
    sdpa = hf_vit(arrays, heads=c.num_heads, image=s, gelu_exact=False)
    sdpa.config._attn_implementation = 'sdpa'
    hf['sdpa'] = sdpa
  except Exception:  # noqa: BLE001 (older transformers)
    pass

  fwd = jax.jit(lambda p, x: model_lib.apply(p, config, x))
  x_j = jnp.asarray(images)
  rows = []
  ours = best(lambda: fwd(params, x_j).block_until_ready(), args.repeats)
  for name, m in hf.items():
    with torch.no_grad():
      theirs = best(lambda: m(x_t).last_hidden_state[:, 0] @ head_k + head_b, args.repeats)
    rows.append((f'forward (PyTorch HF {name})', ours, theirs))

  # Parts, on the same shapes.
  blk = params['Transformer']['encoderblock_0']
  tokens = rng.normal(size=(b, t, dm)).astype(np.float32)
  tok_j, tok_t = jnp.asarray(tokens), torch.tensor(tokens)
  layer = hf['eager'].layers[0]
  emb = jax.jit(lambda p, x: jax.lax.conv_general_dilated(
      x, p['embedding']['kernel'], (c.patch_size,) * 2, 'VALID',
      dimension_numbers=('NHWC', 'HWIO', 'NHWC')) + p['embedding']['bias'])
  emb_mm = jax.jit(lambda p, x: (x.reshape(b, s // c.patch_size, c.patch_size,
                                           s // c.patch_size, c.patch_size, 3)
                                 .transpose(0, 1, 3, 2, 4, 5)
                                 .reshape(b, -1, c.patch_size ** 2 * 3)
                                 @ p['embedding']['kernel'].reshape(-1, dm))
                   + p['embedding']['bias'])
  block = model_lib.Encoder1DBlock(config)
  blk_j = jax.jit(lambda p, x: block.apply({'params': p}, x)[0])
  hd = dm // c.num_heads
  q = rng.normal(size=(b, t, c.num_heads, hd)).astype(np.float32)
  qj, qt = jnp.asarray(q), torch.tensor(q.transpose(0, 2, 1, 3).copy())
  att_j = jax.jit(lambda q: jnp.einsum('bhqk,bkhd->bqhd', jax.nn.softmax(
      jnp.einsum('bqhd,bkhd->bhqk', q, q), -1), q))
  att_fused = jax.jit(lambda q: jax.nn.dot_product_attention(q, q, q))
  mlp = model_lib.MlpBlock(c.mlp_dim, True)
  mlp_j = jax.jit(lambda p, x: mlp.apply({'params': p}, x))
  h = rng.normal(size=(b, t, c.mlp_dim)).astype(np.float32)
  gelu_j = jax.jit(lambda x: jax.nn.gelu(x, approximate=True))
  with torch.no_grad():
    proj = hf['eager'].embeddings.patch_embeddings.projection
    parts = [
        ('patch embedding (conv)', lambda: emb(params, x_j).block_until_ready(),
         lambda: proj(x_t)),
        ('patch embedding as reshape + matmul', lambda: emb_mm(params, x_j).block_until_ready(),
         lambda: proj(x_t)),
        ('one encoder block', lambda: blk_j(blk, tok_j).block_until_ready(),
         lambda: layer(tok_t, None)),
        ('attention core (einsum, softmax)', lambda: att_j(qj).block_until_ready(),
         lambda: torch.softmax(qt @ qt.transpose(-1, -2), -1) @ qt),
        ('attention core (jax.nn.dot_product_attention / SDPA)',
         lambda: att_fused(qj).block_until_ready(),
         lambda: torch.nn.functional.scaled_dot_product_attention(qt, qt, qt)),
        ('MLP (tanh-GELU)', lambda: mlp_j(blk['MlpBlock_3'], tok_j).block_until_ready(),
         lambda: layer.mlp(tok_t)),
        ('GELU (tanh) alone', lambda: gelu_j(jnp.asarray(h)).block_until_ready(),
         lambda: torch.nn.functional.gelu(torch.tensor(h), approximate='tanh')),
    ]
    for name, fj, ft in parts:
      rows.append((name, best(fj, args.repeats), best(ft, args.repeats)))
  print(f'{args.config}, {b} images, {jax.devices()[0].device_kind}, torch threads '
        f'{torch.get_num_threads()}; best of {args.repeats}')
  print(f'  {"part":<56} {"JAX ms":>9} {"PyTorch ms":>11} {"JAX/PyTorch":>12}')
  for name, a, bt in rows:
    print(f'  {name:<56} {a * 1e3:9.1f} {bt * 1e3:11.1f} {a / bt:12.2f}')


if __name__ == '__main__':
  main()
