"""What patterns have heads learned? Re-centred attention maps summarised by an autoencoder.

1. Samples: for (image, layer, head, query patch) tuples, the query's attention over the
   patch grid, re-centred on the query onto a (2n-1) x (2n-1) canvas (cell (dy + n-1,
   dx + n-1) holds the weight on the key at offset (dy, dx)), with a mask of the cells that
   fall inside the image; and the plain n x n map. A rectangular h x w grid is re-centred
   onto the square canvas of side 2 max(h, w) - 1 (the cells beyond the grid are outside).
2. A small convolutional autoencoder (Flax, trained with Optax) embeds each sample's
   pattern (the canvas scaled to a peak of 1) in a 2-D latent space.
3. The summary: the latent plane decoded on a regular grid (a map of every pattern the
   model can produce), each head's density over that map, and k-means clusters of heads.

One job per module:
  sample       sampling query patches, the attention rows, re-centring
  autoencoder  the model, its inputs and losses, training, encode/decode, AEOptions
  summary      the map, head densities, clustering, naming (summarise)
  options      PatternOptions (the CLI's flags and defaults)
  driver       compute_patterns: samples of a BatchSource, then the summary
"""

from vit_jax_analytics.patterns.autoencoder import (EVAL_CHUNK, AEInputs, AEOptions,
                                                    PatternAutoencoder, _adamw, _decode,
                                                    _encode, _reconstruction_errors, ae_inputs,
                                                    decode, encode, masked_bce, masked_mse,
                                                    pca_2d, reconstruction_errors,
                                                    train_autoencoder)
from vit_jax_analytics.patterns.driver import compute_patterns
from vit_jax_analytics.patterns.options import MAX_GRID, PatternOptions
from vit_jax_analytics.patterns.sample import (extract_batch, extract_samples, recentre,
                                               sample_queries)
from vit_jax_analytics.patterns.summary import (describe_pattern, grid_cells, grid_centres,
                                                head_densities, head_errors, kmeans,
                                                latent_extent, latent_map, masked_variance,
                                                name_clusters, summarise)

__all__ = [
    'AEInputs', 'AEOptions', 'EVAL_CHUNK', 'MAX_GRID', 'PatternAutoencoder', 'PatternOptions',
    'ae_inputs', 'compute_patterns', 'decode', 'describe_pattern', 'encode', 'extract_batch',
    'extract_samples', 'grid_cells', 'grid_centres', 'head_densities', 'head_errors', 'kmeans',
    'latent_extent', 'latent_map', 'masked_bce', 'masked_mse', 'masked_variance',
    'name_clusters', 'pca_2d', 'recentre', 'reconstruction_errors', 'sample_queries',
    'summarise', 'train_autoencoder',
]
