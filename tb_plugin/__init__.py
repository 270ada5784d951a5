"""TensorBoard plugin for vit-jax-analytics. `metadata` owns the on-disk format."""
