"""Weights trained outside JAX, mapped onto `model.py`'s vit_jax layout.

Each family module holds small pure functions returning `(flat vit_jax-layout params,
ViTConfig)`: `hf` (Hugging Face `transformers` safetensors + config.json), `timm` (timm
state dicts), `onnx_graph` (ONNX exports of those models) and `intercept` (any Flax linen
model, by method interception). `posemb` resamples position embeddings the way each
source does. `common` holds the shared fix-ups (LayerScale folding, linear layouts).
"""
