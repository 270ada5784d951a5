"""vit-jax-analytics: how the attention heads of a Vision Transformer work.

Data flows one way: `cli` -> `pipeline` (load: `checkpoints`, `data`) -> the analyses
(`importance`, `strength`, `patterns`: pure, jitted functions over a `batches.BatchSource`,
returning the typed `results`) -> `logdir` (the only writer and reader of the format) ->
the TensorBoard plugin (`tb_plugin`). The analyses import no I/O module.

Axis names, used in every docstring and in the logdir's `axes`:
  B batch, N images, L layers, H heads, T tokens (= Q queries = K keys), D hidden size,
  P patches (n x n grid, n the grid side), S samples; (dy, dx) offsets key - query.
  Attention weights are [B, L, H, Q, K]; per-head results [L, H] ([layer, head]).
"""

__version__ = '0.1.0'
