"""Our forward against PyTorch (timm, and Hugging Face `transformers`) on the same weights,
and where the time goes, part by part and op by op.

A random-weight ViT-B/16 `.npz` (vit_jax layout, 10 classes), read by timm's own vit_jax
loader (`timm.models.vision_transformer._load_weights`, tanh-GELU as vit_jax) and mapped
onto HF's ViTModel; 224 x 224, 4 images, this CPU. Each figure is the best of --repeats
calls after a warm-up, JAX and PyTorch interleaved in one run (so that a shared machine's
load falls on both alike; the 1-minute load average is printed). First the outputs and
head-mask gradients are checked to agree (the same function), then:
  * whole model: the forward (logits; timm with fused SDPA attention and with its plain
    q k^T - softmax - (.) v; HF with SDPA); the Taylor pass, forward + backward to per-image
    head-mask gradients [B, L, H] (ours: `importance.taylor_batch`; timm: a mask scaling
    each head's output before `attn.proj`, by forward pre-hooks, one backward of the loss
    summed over the batch); the single-head ablation scan (ours: prefix reuse,
    `importance.ablation_batch`, timed with --ablation, else estimated from its
    forward-equivalents; timm: a loop of 1 + L H masked forwards, estimated from
    --ablation-samples of them);
  * parts on the same shapes: patch embedding (conv; reshape + matmul), one encoder
    block, the attention core in the [B, T, H, D/H] layout this package used before and the
    [B, H, T, D/H] layout it uses now, SDPA, the MLP, tanh-GELU alone;
  * with --profile, our compiled forward traced with jax.profiler, its ops' time summed by
    category (matmuls by role, the fused attention, GELU, LayerNorm, layout copies...).
Targets (issue 10): our forward no slower than timm's (ratio <= 1.0); the Taylor pass no
slower than timm's forward + backward (<= 1.0); the ablation scan faster than timm's loop.

  python benchmarks/bench_forward.py [--config ViT-B/16] [--batch-size 4] [--profile]
"""

import argparse
import collections
import copy
import gzip
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import add_quiet_flags, load_average, wait_for_quiet  # noqa: E402
from tests.timm_import import import_timm, timm_vit  # noqa: E402
from tests.npz_formats import random_vit_jax_arrays  # noqa: E402
from vit_jax_analytics import checkpoints, cost, importance, model as model_lib  # noqa: E402


def interleaved(pairs, repeats):
  """{name: (best seconds of fn_a, of fn_b)}, one call of each in turn per repeat."""
  for a, b in pairs.values():
    a(), b()  # warm-up (compilation)
  best = {name: [float('inf'), float('inf')] for name in pairs}
  for _ in range(repeats):
    for name, fns in pairs.items():
      for i, fn in enumerate(fns):
        t0 = time.perf_counter()
        fn()
        best[name][i] = min(best[name][i], time.perf_counter() - t0)
  return best


def torch_head_masks(projections, mask):
  """Forward pre-hooks scaling head h of layer l of image b by mask [B, L, H] on the input
  of each layer's output projection (`projections[l]`: the heads concatenated, as this
  package's head_mask does); returns the hook handles."""
  def hook(layer):
    def scale(module, args):
      x = args[0]
      b, t, d = x.shape
      heads = mask.shape[-1]
      return (x.view(b, t, heads, d // heads) * mask[:, layer, None, :, None]).view(b, t, d),
    return scale
  return [proj.register_forward_pre_hook(hook(i)) for i, proj in enumerate(projections)]


def torch_taylor(tm, x, labels, shape):
  """|dL_i / d mask_i| [B, L, H] of timm model `tm` by one forward + backward (the loss
  summed over images)."""
  mask = torch.ones(shape, requires_grad=True)
  handles = torch_head_masks([b.attn.proj for b in tm.blocks], mask)
  try:
    logits = tm(x)
    loss = -torch.log_softmax(logits, -1).gather(1, labels[:, None]).sum()
    loss.backward()
  finally:
    for h in handles:
      h.remove()
  return mask.grad.abs()


def torch_masked_forward(tm, x, mask):
  handles = torch_head_masks([b.attn.proj for b in tm.blocks], mask)
  try:
    with torch.no_grad():
      return tm(x)
  finally:
    for h in handles:
      h.remove()


def op_categories(hlo_text: str) -> dict:
  """{instruction name of the entry computation: category} from the compiled HLO text."""
  hlo = re.sub(r', metadata=\{[^}]*\}', '', hlo_text)
  bodies = {m.group(1): m.group(2) for m in re.finditer(
      r'^(?:ENTRY )?%?([\w.\-]+) [^\n]*\{\n(.*?)\n\}', hlo, re.M | re.S)}
  out = {}
  for line in hlo[hlo.index('ENTRY'):].split('\n'):
    m = re.match(r'\s*%([\w.\-]+) = (\S+) (\w+)\(', line)
    if not m:
      continue
    name, shape, op = m.groups()
    callee = re.search(r'calls=%([\w.\-]+)', line)
    body = bodies.get(callee.group(1), '') if callee else line
    ops = set(re.findall(r'= \S+ (\w+)\(', body)) | {op}
    if 'convolution' in ops:
      kind = 'patch embedding (conv)'
    elif 'dot' in ops:
      if 'exponential' in ops or len(re.findall(r' dot\(', body)) >= 2:
        kind = 'attention core (q k^T, softmax, (.) v; fused)'
      elif re.search(r'f32\[\d+,3072\]', shape) or re.search(r',3072\]', shape):
        kind = 'matmul: MLP Dense_0'
      elif 'f32[3072' in body or ',3072]' in body:
        kind = 'matmul: MLP Dense_1'
      else:
        kind = 'matmul: q, k, v, out projections'
    elif 'reduce' in ops:
      kind = 'LayerNorm statistics (reductions)'
    elif 'tanh' in ops or 'erf' in ops:
      kind = 'GELU (+ bias)'
    elif 'transpose' in ops or 'copy' in ops:
      kind = 'layout copies / transposes'
    else:
      kind = 'other elementwise (residual adds, LayerNorm scale, concat)'
    out[name] = kind
  return out


def profile_ops(fn, args, runs=3):
  """[(category, ms per call, share)] of a jitted fn's compiled ops on `args`, from a
  jax.profiler trace ([] when the backend writes none)."""
  categories = op_categories(fn.lower(*args).compile().as_text())
  jax.block_until_ready(fn(*args))
  with tempfile.TemporaryDirectory() as d:
    jax.profiler.start_trace(d)
    for _ in range(runs):
      jax.block_until_ready(fn(*args))
    jax.profiler.stop_trace()
    trace = sorted(Path(d).rglob('*.trace.json.gz'))
    if not trace:
      return []
    events = json.load(gzip.open(trace[-1]))['traceEvents']
  total = collections.Counter()
  for e in events:
    if e.get('ph') == 'X' and e.get('name') in categories:
      total[categories[e['name']]] += e['dur'] / 1e3 / runs
  whole = sum(total.values()) or 1.
  return [(k, v, v / whole) for k, v in total.most_common()]


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument('--config', default='ViT-B/16')
  p.add_argument('--batch-size', type=int, default=4)
  p.add_argument('--repeats', type=int, default=5)
  p.add_argument('--profile', action='store_true', help='trace our forward, time by op category')
  p.add_argument('--ablation', action='store_true',
                 help='time our ablation scan (minutes for ViT-B/16) instead of estimating it')
  p.add_argument('--ablation-samples', type=int, default=3,
                 help='masked PyTorch forwards timed for the loop estimate')
  add_quiet_flags(p)
  args = p.parse_args()
  c = model_lib.get_config(args.config)
  L, H = c.num_layers, c.num_heads
  arrays = random_vit_jax_arrays(0, width=c.hidden_size, depth=L, heads=H, mlp=c.mlp_dim,
                                 patch=c.patch_size, image=c.image_size, classes=10)
  with tempfile.TemporaryDirectory() as d:
    np.savez(Path(d) / 'm.npz', **arrays)
    params, config = checkpoints.load_checkpoint(Path(d) / 'm.npz')
    tm = {'fused': timm_vit(Path(d) / 'm.npz', config, fused=True),
          'plain': timm_vit(Path(d) / 'm.npz', config, fused=False)}
  from tests.hf_reference import hf_vit, rel_err
  b, s, t, dm = args.batch_size, c.image_size, config.num_tokens, c.hidden_size
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (b, s, s, 3)).astype(np.float32)
  labels = rng.integers(0, 10, b).astype(np.int32)
  x_t = torch.tensor(images.transpose(0, 3, 1, 2))
  y_t = torch.tensor(labels.astype(np.int64))
  head_k, head_b = torch.tensor(arrays['head/kernel']), torch.tensor(arrays['head/bias'])
  hf = hf_vit(arrays, heads=H, image=s, gelu_exact=False)
  hf.config._attn_implementation = 'sdpa'
  x_j, y_j = jnp.asarray(images), jnp.asarray(labels)

  fwd = jax.jit(lambda p, x: model_lib.apply(p, config, x))
  taylor = jax.jit(lambda p, x, y: importance.taylor_batch(p, config, x, y)[0])
  # The same function, checked in float64: a deep random-weight ViT amplifies rounding
  # (two float32 implementations' logits differ by 10-40% here), while in float64 ours and
  # timm's agree to ~1e-10 (ViT-Ti/16) and ~3e-7 (ViT-B/16).
  tm64 = copy.deepcopy(tm['plain']).double()
  with torch.no_grad():
    ref64 = tm64(x_t.double()).numpy()
  g_ref64 = torch_taylor(tm64, x_t.double(), y_t, (b, L, H)).numpy()
  with jax.enable_x64(True):
    p64 = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    x64 = images.astype(np.float64)
    ours64 = model_lib.apply(p64, config, x64)
    g_ours64 = importance.taylor_batch(p64, config, x64, labels)[0]
  with torch.no_grad():
    f32 = {k: m(x_t).numpy() for k, m in tm.items()}
    f32['HF'] = (hf(x_t).last_hidden_state[:, 0] @ head_k + head_b).numpy()
  print(f'{args.config}, {b} images, {jax.devices()[0].device_kind}, torch '
        f'{torch.__version__} ({torch.get_num_threads()} threads), timm '
        f'{import_timm().__version__}, jax {jax.__version__}')
  print(f'  same function (float64, ours vs timm): logits rel. error '
        f'{rel_err(ours64, ref64):.1e}, Taylor |grad| {rel_err(g_ours64, g_ref64):.1e}; '
        f'float32 logits vs timm float64: ours {rel_err(fwd(params, x_j), ref64):.1e}, '
        + ', '.join(f'{k} {rel_err(v, ref64):.1e}' for k, v in f32.items()))
  del tm64

  load = wait_for_quiet(args.max_load, args.max_wait)
  forward = 'forward vs timm (fused SDPA attention)'
  taylor_name = 'Taylor pass (forward + backward to [B, L, H]) vs timm'
  with torch.no_grad():
    whole = {
        forward: (lambda: fwd(params, x_j).block_until_ready(), lambda: tm['fused'](x_t)),
        'forward vs timm (plain attention)': (lambda: fwd(params, x_j).block_until_ready(),
                                              lambda: tm['plain'](x_t)),
        'forward vs HF transformers (SDPA)': (
            lambda: fwd(params, x_j).block_until_ready(),
            lambda: hf(x_t).last_hidden_state[:, 0] @ head_k + head_b),
    }
    best = interleaved(whole, args.repeats)
  best.update(interleaved({taylor_name: (
      lambda: taylor(params, x_j, y_j).block_until_ready(),
      lambda: torch_taylor(tm['fused'], x_t, y_t, (b, L, H)))}, max(2, args.repeats // 2)))

  # Parts, on the same shapes.
  blk = params['Transformer']['encoderblock_0']
  tokens = rng.normal(size=(b, t, dm)).astype(np.float32)
  tok_j, tok_t = jnp.asarray(tokens), torch.tensor(tokens)
  layer = tm['fused'].blocks[0]
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
  hd = dm // H
  q = rng.normal(size=(b, t, H, hd)).astype(np.float32)
  qj, qt = jnp.asarray(q), torch.tensor(q.transpose(0, 2, 1, 3).copy())
  scale = 1 / np.sqrt(hd)
  att_before = jax.jit(lambda q: jnp.einsum('bhqk,bkhd->bqhd', jax.nn.softmax(
      jnp.einsum('bqhd,bkhd->bhqk', q * scale, q), -1), q))

  def att_now(q):
    qh = jnp.swapaxes(q, 1, 2)
    w = jax.nn.softmax(jnp.einsum('bhqd,bhkd->bhqk', qh * scale, qh), -1)
    return jnp.swapaxes(jnp.einsum('bhqk,bhkd->bhqd', w, qh), 1, 2)
  att_now = jax.jit(att_now)
  att_fused = jax.jit(lambda q: jax.nn.dot_product_attention(q, q, q))
  mlp = model_lib.MlpBlock(c.mlp_dim, True)
  mlp_j = jax.jit(lambda p, x: mlp.apply({'params': p}, x))
  h = rng.normal(size=(b, t, c.mlp_dim)).astype(np.float32)
  h_j, h_t = jnp.asarray(h), torch.tensor(h)
  gelu_j = jax.jit(lambda x: jax.nn.gelu(x, approximate=True))
  torch_att = lambda: torch.softmax(qt @ qt.transpose(-1, -2) * scale, -1) @ qt
  with torch.no_grad():
    proj = tm['fused'].patch_embed.proj
    parts = {
        'patch embedding (conv)': (lambda: emb(params, x_j).block_until_ready(),
                                   lambda: proj(x_t)),
        'patch embedding as reshape + matmul': (
            lambda: emb_mm(params, x_j).block_until_ready(), lambda: proj(x_t)),
        'one encoder block (timm, SDPA)': (lambda: blk_j(blk, tok_j).block_until_ready(),
                                           lambda: layer(tok_t)),
        'attention core, [B,T,H,D] einsums (before) vs plain': (
            lambda: att_before(qj).block_until_ready(), torch_att),
        'attention core, [B,H,T,D] (model.py now) vs plain': (
            lambda: att_now(qj).block_until_ready(), torch_att),
        'attention core, jax.nn.dot_product_attention vs SDPA': (
            lambda: att_fused(qj).block_until_ready(),
            lambda: torch.nn.functional.scaled_dot_product_attention(qt, qt, qt)),
        'MLP (tanh-GELU)': (lambda: mlp_j(blk['MlpBlock_3'], tok_j).block_until_ready(),
                            lambda: layer.mlp(tok_t)),
        'GELU (tanh) alone': (lambda: gelu_j(h_j).block_until_ready(),
                              lambda: torch.nn.functional.gelu(h_t, approximate='tanh')),
    }
    part_best = interleaved(parts, args.repeats)
  end_load = load_average()

  # The ablation scan: 1 + L H masked forwards in a timm loop; ours with prefix reuse.
  eye = torch.ones(b, L, H)
  eye[:, 0, 0] = 0.
  t_masked = float('inf')
  for _ in range(args.ablation_samples):
    t0 = time.perf_counter()
    torch_masked_forward(tm['fused'], x_t, eye)
    t_masked = min(t_masked, time.perf_counter() - t0)
  torch_scan = (1 + L * H) * t_masked
  if args.ablation:
    abl = jax.jit(lambda p, x, y: importance.ablation_batch(p, config, x, y, 1)[0])
    jax.block_until_ready(abl(params, x_j, y_j))
    t0 = time.perf_counter()
    jax.block_until_ready(abl(params, x_j, y_j))
    ours_scan, how = time.perf_counter() - t0, 'timed'
  else:
    ours_scan = cost.ablation_limit(config) * best[forward][0]
    how = f'estimated: {cost.ablation_limit(config):.1f} forward-eq x our forward'

  targets = {forward: 1.0, taylor_name: 1.0}
  verdict = lambda r, target: (f'target <= {target:.2f}: ' + ('meets' if r <= target
                                                              else 'MISSES'))
  print(f'  best of {args.repeats}; load {load:.2f} at start, {end_load:.2f} at end')
  print(f'  {"whole model":<58} {"JAX ms":>9} {"PyTorch ms":>11} {"JAX/PyTorch":>12}')
  for name, (a, bt) in best.items():
    target = f'   ({verdict(a / bt, targets[name])})' if name in targets else ''
    print(f'  {name:<58} {a * 1e3:9.1f} {bt * 1e3:11.1f} {a / bt:12.2f}{target}')
  name = f'ablation scan vs timm loop of {1 + L * H} masked forwards'
  print(f'  {name:<58} {ours_scan * 1e3:9.0f} {torch_scan * 1e3:11.0f} '
        f'{ours_scan / torch_scan:12.2f}   ({verdict(ours_scan / torch_scan, 1.0)}; ours {how}; '
        f'timm {1 + L * H} x {t_masked * 1e3:.0f} ms)')
  print(f'  Taylor pass / forward: JAX {best[taylor_name][0] / best[forward][0]:.2f}, '
        f'timm {best[taylor_name][1] / best[forward][1]:.2f}')
  print(f'  {"parts (same shapes)":<58} {"JAX ms":>9} {"PyTorch ms":>11} {"JAX/PyTorch":>12}')
  for name, (a, bt) in part_best.items():
    print(f'  {name:<58} {a * 1e3:9.1f} {bt * 1e3:11.1f} {a / bt:12.2f}')
  if args.profile:
    rows = profile_ops(fwd, (params, x_j))
    print(f'  our compiled forward by op category (jax.profiler trace, ms per forward; load '
          f'{load_average():.2f}):')
    for kind, ms, share in rows:
      print(f'    {kind:<60} {ms:8.1f} {100 * share:5.1f}%')


if __name__ == '__main__':
  main()
