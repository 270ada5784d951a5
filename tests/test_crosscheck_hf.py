"""The loader + model against an independent PyTorch ViT (Hugging Face transformers).

A random-weight vit_jax `.npz` is read by our loader and, separately, mapped onto HF's
`ViTModel` by the name-by-name conversion below; logits and every layer's attention
weights must agree to <= 1e-4 relative. timm's own npz loader would be the other natural
reference, but timm cannot be imported here (it needs torchvision, which has no CPU build).
"""

import numpy as np
import pytest

torch = pytest.importorskip('torch', reason='test extra: pip install -e .[test]')
transformers = pytest.importorskip('transformers')

import jax.numpy as jnp

from tests.hf_reference import hf_forward, hf_vit, rel_err
from tests.npz_formats import random_vit_jax_arrays, vit_jax_to_big_vision
from vit_jax_analytics import checkpoints, model as model_lib

RTOL = 1e-4


CASES = [
    # classifier, checkpoint resolution, run resolution, exact GELU, pre_logits
    ('token', 224, 224, False, None),
    ('gap', 224, 224, True, None),
    ('token', 224, 288, False, 32),
    ('gap', 224, 160, False, None),
]


@pytest.mark.parametrize('classifier,ckpt_size,run_size,gelu_exact,rep', CASES)
@pytest.mark.parametrize('layout', ['vit_jax', 'big_vision'])
def test_matches_huggingface(tmp_path, classifier, ckpt_size, run_size, gelu_exact, rep, layout):
  arrays = random_vit_jax_arrays(1, image=ckpt_size, classifier=classifier, representation=rep)
  path = tmp_path / 'ckpt.npz'
  np.savez(path, **(arrays if layout == 'vit_jax' else vit_jax_to_big_vision(arrays)))

  params, config = checkpoints.load_checkpoint(path, image_size=run_size,
                                               gelu_approximate=not gelu_exact)
  assert config.classifier == classifier and config.image_size == run_size
  assert config.num_heads == 4 and config.num_layers == 2 and config.representation_size == rep

  # The reference resizes the posemb with PyTorch's own bilinear (corners aligned).
  ref_arrays = dict(arrays)
  if run_size != ckpt_size:
    pe = torch.tensor(arrays['Transformer/posembed_input/pos_embedding'])
    cls, grid = (pe[:, :1], pe[:, 1:]) if classifier == 'token' else (pe[:, :0], pe)
    g_old, g_new = ckpt_size // 16, run_size // 16
    grid = grid.reshape(1, g_old, g_old, -1).permute(0, 3, 1, 2)
    grid = torch.nn.functional.interpolate(grid, size=(g_new, g_new), mode='bilinear',
                                           align_corners=True)
    ref_arrays['Transformer/posembed_input/pos_embedding'] = torch.cat(
        [cls, grid.permute(0, 2, 3, 1).reshape(1, g_new * g_new, -1)], 1).numpy()
  hf = hf_vit(ref_arrays, heads=4, image=run_size, gelu_exact=gelu_exact)

  images = np.random.default_rng(2).uniform(-1, 1, (2, run_size, run_size, 3)).astype(np.float32)
  ref_logits, ref_attention = hf_forward(hf, ref_arrays, images)
  logits, attention = model_lib.apply(params, config, jnp.asarray(images), return_attention=True)

  assert attention.shape == ref_attention.shape  # [B, L, H, Q, K]
  assert rel_err(logits, ref_logits) <= RTOL
  assert rel_err(attention, ref_attention) <= RTOL
  # Attention is far from uniform, so agreement above is not trivial.
  assert ref_attention.max() > 5. / ref_attention.shape[-1]
