"""Weights trained outside JAX, mapped onto `model.py`'s vit_jax layout.

Each family module holds small pure functions returning `(flat vit_jax-layout params,
ViTConfig)`: `hf` (Hugging Face `transformers` safetensors + config.json; `hf_dinov3` its
DINOv3), `timm` (timm state dicts; `timm_hub` timm's config.json + safetensors layout),
`onnx_graph` (ONNX exports of those models), `intercept` (any Flax linen model, by method
interception) and `intercept_nnx` (any Flax NNX model, likewise; `nnx_declared` the
attention of jax-image-models' blocks, declared), `nnx_state` (an NNX model's saved state). `posemb` resamples position embeddings the way each
source does. `common` holds the shared fix-ups (LayerScale folding, linear layouts).
"""
