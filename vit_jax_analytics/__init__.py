"""vit-jax-analytics: how the attention heads of a Vision Transformer work.

Pure functions over arrays and pytrees; I/O lives in `checkpoints`, `data` and `summary`.
"""

__version__ = '0.1.0'
