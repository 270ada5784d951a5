"""A tiny random ViT and images, shared by the analysis tests."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
from PIL import Image

from vit_jax_analytics import data, model as model_lib
from vit_jax_analytics.model import ViTConfig

TINY = ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_layers=3, num_heads=4,
                 mlp_dim=64, num_classes=5)


def tiny_params(config=TINY, seed=0, attention_scale=1.5):
  """Random weights with a non-zero classifier and peaked (non-uniform) attention."""
  params = model_lib.init_params(config, jax.random.key(seed))
  params = jax.tree.map(np.asarray, params)
  rng = np.random.default_rng(seed)
  params['head']['kernel'] = rng.normal(0, 1, params['head']['kernel'].shape).astype(np.float32)
  for i in range(config.num_layers):
    att = params['Transformer'][f'encoderblock_{i}']['MultiHeadDotProductAttention_1']
    for name in ('query', 'key'):
      att[name]['kernel'] = att[name]['kernel'] * attention_scale
  return params


def tiny_images(n, config=TINY, seed=1):
  return np.random.default_rng(seed).uniform(
      -1, 1, (n, config.image_size, config.image_size, 3)).astype(np.float32)


def write_images(folder, n=12, seed=0):
  rng = np.random.default_rng(seed)
  for i in range(n):
    label = i % TINY.num_classes
    (folder / str(label)).mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(
        folder / str(label) / f'{i:03d}.png')
  return data.image_folder(folder)


OFFSETS = {'left': (0, -1), 'right': (0, 1), 'up': (-1, 0), 'down': (1, 0), 'self': (0, 0)}


def offset_heads_model(grid=4, patterns=('left', 'uniform'), layers=2, scale=3.,
                       registers=0, classifier='token'):
  """A hand-built ViT whose heads attend to fixed offsets, in every layer.

  patterns[h] is a name of OFFSETS (the query patch attends exactly to the key patch at
  that offset, or to token 0 (the class token, else the first register) when that key is
  outside the image) or 'uniform'. grid: n or (h, w). Tokens carry a one-hot code of their
  index (zero patch embedding; one-hot position embedding and registers) that the blocks
  never change (zero value/out and MLP weights); head h's key projection maps each token's
  code to the codes of the queries that should attend to it.
  """
  gh, gw = (grid, grid) if isinstance(grid, int) else grid
  cls = int(classifier == 'token')
  pre = cls + registers
  t = gh * gw + pre
  dh = -(-t // 4) * 4
  heads = len(patterns)
  d = heads * dh
  config = ViTConfig(image_size=(4 * gh, 4 * gw), patch_size=4, hidden_size=d,
                     num_layers=layers, num_heads=heads, mlp_dim=8, num_classes=3,
                     classifier=classifier, num_registers=registers)
  params = jax.tree.map(lambda x: np.zeros(x.shape, np.float32), model_lib.param_shapes(config))
  codes = np.eye(t, d, dtype=np.float32)
  pe = params['Transformer']['posembed_input']['pos_embedding'][0]   # [cls + patches, D]
  pe[:cls] = codes[:cls]
  pe[cls:] = codes[pre:]
  if registers:
    params['registers'][0] = codes[cls:pre]
  params['Transformer']['encoder_norm']['scale'][:] = 1.
  for l in range(layers):
    blk = params['Transformer'][f'encoderblock_{l}']
    blk['LayerNorm_0']['scale'][:] = 1.
    blk['LayerNorm_2']['scale'][:] = 1.
    att = blk['MultiHeadDotProductAttention_1']
    for h, name in enumerate(patterns):
      if name == 'uniform':
        continue  # zero queries: equal logits for every key
      oy, ox = OFFSETS[name]
      wanted_by = np.zeros((d, dh), np.float32)
      for p in range(gh * gw):
        r, c = divmod(p, gw)
        if 0 <= r + oy < gh and 0 <= c + ox < gw:
          wanted_by[pre + (r + oy) * gw + c + ox, pre + p] = 1.
        else:
          wanted_by[0, pre + p] = 1.
      att['query']['kernel'][:, h, :] = scale * np.eye(d, dh)
      att['key']['kernel'][:, h, :] = scale * wanted_by
  if classifier == 'map':
    params['MAPHead_0']['LayerNorm_0']['scale'][:] = 1.
  return params, config


def run_on_eight_cpu_devices(script: str, *args) -> str:
  """Runs `script` in a fresh Python with 8 host CPU devices (the XLA flag must be set
  before JAX starts); argv[1] is the repository root. Returns its stdout."""
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
             JAX_PLATFORMS='cpu')
  root = Path(__file__).resolve().parents[1]
  out = subprocess.run([sys.executable, '-c', script, str(root), *map(str, args)], env=env,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  return out.stdout


def folder_source(folder, n=12, seed=0, config=TINY):
  """write_images as the BatchSource the analyses read."""
  return data.ImageFolderSource(write_images(folder, n, seed), config.image_size)


def arrays_of(result) -> dict:
  """A typed result's numeric fields by name (distributions as <name>_hist and
  <name>_quantiles), for tests that compare every array."""
  import dataclasses

  out = {}
  for f in dataclasses.fields(result):
    value = getattr(result, f.name)
    if f.name == 'distributions':
      for name, d in value.items():
        out[f'{name}_hist'], out[f'{name}_quantiles'] = d.hist, d.quantiles
    elif isinstance(value, np.ndarray):
      out[f.name] = value
    elif dataclasses.is_dataclass(value):  # an ImportanceResult's curves and partial pruning
      out.update({f'{f.name}.{k}': v for k, v in arrays_of(value).items()})
    elif isinstance(value, dict):          # their metric -> Estimate(mean, se) maps
      for metric, estimate in value.items():
        if dataclasses.is_dataclass(estimate):
          out.update({f'{f.name}.{metric}.{k}': v for k, v in arrays_of(estimate).items()})
  return out
