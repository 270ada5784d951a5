"""A vit_jax `.npz` mapped name by name onto Hugging Face's PyTorch `ViTModel`: the
independent reference of tests/test_crosscheck_hf.py and benchmarks/bench_forward.py."""

import numpy as np
import torch
import transformers


def hf_vit(arrays, *, heads, image, gelu_exact):
  """HF ViTModel holding the npz's weights (vit_jax -> PyTorch naming and layouts)."""
  width = arrays['embedding/kernel'].shape[-1]
  depth = len({k.split('/')[1] for k in arrays if k.startswith('Transformer/encoderblock_')})
  mlp = arrays['Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel'].shape[1]
  patch = arrays['embedding/kernel'].shape[0]
  cfg = transformers.ViTConfig(
      hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads,
      intermediate_size=mlp, image_size=image, patch_size=patch, layer_norm_eps=1e-6,
      hidden_act='gelu' if gelu_exact else 'gelu_pytorch_tanh', qkv_bias=True,
      attn_implementation='eager')
  hf = transformers.ViTModel(cfg, add_pooling_layer=False).eval()
  t = lambda a: torch.tensor(np.asarray(a, np.float32))
  sd = {'embeddings.patch_embeddings.projection.weight':
            t(arrays['embedding/kernel'].transpose(3, 2, 0, 1)),
        'embeddings.patch_embeddings.projection.bias': t(arrays['embedding/bias']),
        'layernorm.weight': t(arrays['Transformer/encoder_norm/scale']),
        'layernorm.bias': t(arrays['Transformer/encoder_norm/bias'])}
  pe = arrays['Transformer/posembed_input/pos_embedding']
  if 'cls' in arrays:
    sd['embeddings.cls_token'] = t(arrays['cls'])
    sd['embeddings.position_embeddings'] = t(pe)
  else:  # HF always has a class token; the gap forward below does not use it.
    sd['embeddings.cls_token'] = torch.zeros(1, 1, width)
    sd['embeddings.position_embeddings'] = torch.cat([torch.zeros(1, 1, width), t(pe)], 1)
  for i in range(depth):
    b, h = f'Transformer/encoderblock_{i}/', f'layers.{i}.'
    att = b + 'MultiHeadDotProductAttention_1/'
    for ours, theirs in (('query', 'q_proj'), ('key', 'k_proj'), ('value', 'v_proj')):
      sd[h + f'attention.{theirs}.weight'] = t(arrays[att + f'{ours}/kernel'].reshape(width, -1).T)
      sd[h + f'attention.{theirs}.bias'] = t(arrays[att + f'{ours}/bias'].reshape(-1))
    sd[h + 'attention.o_proj.weight'] = t(arrays[att + 'out/kernel'].reshape(-1, width).T)
    sd[h + 'attention.o_proj.bias'] = t(arrays[att + 'out/bias'])
    for ours, theirs in (('LayerNorm_0', 'layernorm_before'), ('LayerNorm_2', 'layernorm_after')):
      sd[h + f'{theirs}.weight'] = t(arrays[b + f'{ours}/scale'])
      sd[h + f'{theirs}.bias'] = t(arrays[b + f'{ours}/bias'])
    for ours, theirs in (('Dense_0', 'fc1'), ('Dense_1', 'fc2')):
      sd[h + f'mlp.{theirs}.weight'] = t(arrays[b + f'MlpBlock_3/{ours}/kernel'].T)
      sd[h + f'mlp.{theirs}.bias'] = t(arrays[b + f'MlpBlock_3/{ours}/bias'])
  missing, unexpected = hf.load_state_dict(sd, strict=False)
  assert not missing and not unexpected, (missing, unexpected)
  return hf


def hf_forward(hf, arrays, images_nhwc):
  """Logits [B, C] and attention [B, L, H, Q, K] from the HF model."""
  weights = []
  hooks = [layer.attention.register_forward_hook(lambda m, i, o: weights.append(o[1]))
           for layer in hf.layers]
  x = torch.tensor(np.asarray(images_nhwc).transpose(0, 3, 1, 2))
  with torch.no_grad():
    if 'cls' in arrays:
      pooled = hf(x).last_hidden_state[:, 0]
    else:  # global average pooling over patches: HF's own blocks, without the class token
      tokens = hf.embeddings.patch_embeddings(x) + hf.embeddings.position_embeddings[:, 1:]
      for layer in hf.layers:
        tokens = layer(tokens, None)
      pooled = hf.layernorm(tokens).mean(1)
    if 'pre_logits/kernel' in arrays:
      pooled = torch.tanh(pooled @ torch.tensor(arrays['pre_logits/kernel'])
                          + torch.tensor(arrays['pre_logits/bias']))
    logits = pooled @ torch.tensor(arrays['head/kernel']) + torch.tensor(arrays['head/bias'])
  for hook in hooks:
    hook.remove()
  return logits.numpy(), torch.stack(weights, 1).numpy()


def rel_err(ours, ref):
  return float(np.max(np.abs(np.asarray(ours) - ref)) / np.max(np.abs(ref)))
