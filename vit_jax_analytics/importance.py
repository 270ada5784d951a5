"""Which heads matter? Pruning-based importance of every layer x head.

Per-batch functions are pure and jitted; `compute_importance` streams them over a
`BatchSource` in two stages: (1) Taylor and the single-head ablation scan, which give the
head orders; (2) pruning curves along those orders and partial pruning.

Metrics (each [layer, head], means over images):
  taylor       mean |dL/d xi[l,h]| at xi = 1 (Michel et al. 2019), L the cross-entropy; also
               `taylor_normalized`, L2-normalised within each layer as in that paper.
  ablation_*   exactly one head masked out: change in loss, in top-1 and top-5 accuracy
               (drops are positive when the head helps), and KL(p_full || p_masked).
Targets are the labels, or the unmasked model's own prediction for unlabelled images.

What "the model's output got worse" means is the `Objective`:
  classification  the model's logits (a classifier), or logits made from its embedding by a
                  user-supplied class matrix (`--classes-npz`: SigLIP text embeddings for
                  zero-shot, or a linear probe). Metrics: cross-entropy, top-1/5, KL.
  embedding       models without a classifier (SigLIP image towers, self-supervised
                  backbones): ablation is embedding distortion against the unmasked model's
                  pooled embedding e of the same image, per image:
                    loss slot: 1 - cos(e_masked, e)          ('cosine distortion')
                    kl slot:   |e_masked - e| / |e|          ('relative L2 distortion')
                    top1/top5: undefined (always 1, so their drops are 0)
                  Taylor: a first-order estimate of the relative L2 distortion. At xi = 1
                  every distortion is at its minimum, so its own gradient is 0 and says
                  nothing; instead we take the scalar s = u . e(xi) / |e| for K random
                  Gaussian probes u per image (seeded by the image index) and report
                  sqrt(pi/2) * mean_k |ds/dxi|, whose expectation is |de/dxi| / |e|: the
                  first-order change of the embedding when the head is removed, relative to
                  its norm (E|u.v| = sqrt(2/pi)|v| for Gaussian u).
The metric slots keep their names (loss, top1, top5, kl) under both objectives, so pruning
curves and partial pruning run unchanged; `Objective.definitions` says what each slot is.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax_analytics import model as model_lib, parallel, precision
from vit_jax_analytics.batches import (DEFAULT_BATCH_SIZE, BatchSource, ProgressStore,
                                       process_shard, subset_source)
from vit_jax_analytics.errors import NonFiniteError, OptionError
from vit_jax_analytics.model import ViTConfig
from vit_jax_analytics.options import MAX_SEED, check, option, parse_ints
from vit_jax_analytics.results import Baseline, ImportanceResult

ABLATION_METRICS = ('loss', 'top1', 'top5', 'kl')
ORDER_METRICS = ('taylor', 'ablation_loss', 'ablation_kl', 'ablation_top1')


# --- objectives: what "the output got worse" means ------------------------------------------

@dataclasses.dataclass(frozen=True, eq=False)
class Objective:
  """How model outputs become per-image metrics (see the module docstring).

  kind: 'classification' or 'embedding'. classes [C, E], bias [C], scale, normalize: the
  class matrix turning an embedding e into logits scale * e' @ W'.T + bias (e', W' L2-
  normalised rows when `normalize`, as SigLIP's zero-shot classifier does). Hashable (by
  value), so that jitted functions can take it as a static argument."""
  kind: str = 'classification'
  classes: Optional[np.ndarray] = None
  bias: Optional[np.ndarray] = None
  scale: float = 1.
  normalize: bool = False
  taylor_probes: int = 4
  seed: int = 0
  source: str = 'the model head'

  def __post_init__(self):
    if self.kind not in ('classification', 'embedding'):
      raise ValueError(f"Objective.kind: expected 'classification' or 'embedding', got "
                       f'{self.kind!r}')

  def _key(self):
    arrays = tuple(None if a is None else (a.shape, np.ascontiguousarray(a).tobytes())
                   for a in (self.classes, self.bias))
    return (self.kind, arrays, float(self.scale), self.normalize, self.taylor_probes,
            self.seed)

  def __hash__(self):
    return hash(self._key())

  def __eq__(self, other):
    return isinstance(other, Objective) and self._key() == other._key()

  @property
  def label_metrics(self) -> bool:
    return self.kind == 'classification'

  def logits(self, out):
    """Model output [..., E] -> logits [..., C] (the output itself for a classifier), in
    float32 whatever the forward's precision."""
    out = precision.widen(out)
    if self.classes is None:
      return out
    w = jnp.asarray(self.classes, out.dtype)
    if self.normalize:
      out = out / jnp.maximum(jnp.linalg.norm(out, axis=-1, keepdims=True), 1e-12)
      w = w / jnp.maximum(jnp.linalg.norm(w, axis=-1, keepdims=True), 1e-12)
    logits = self.scale * out @ w.T
    return logits if self.bias is None else logits + jnp.asarray(self.bias, out.dtype)

  def reference(self, out_full):
    """What masked outputs are compared with: log p of the unmasked model, or its
    embedding (flattened over tokens for pooling 'none')."""
    if self.kind == 'classification':
      return jax.nn.log_softmax(self.logits(out_full))
    return precision.widen(_flat_embedding(out_full))

  def describe(self) -> dict:
    """For the logdir's meta: the objective and what each metric slot means under it."""
    d = {'kind': self.kind, 'source': self.source}
    if self.classes is not None:
      d.update(classes=int(self.classes.shape[0]), normalize=self.normalize,
               scale=float(self.scale), bias=self.bias is not None)
    if self.kind == 'embedding':
      d['taylor_probes'] = self.taylor_probes
    d['definitions'] = objective_definitions(self)
    return d


def _flat_embedding(out):
  """[B, E] or [B, T, E] (pooling 'none') -> [B, E']."""
  return out.reshape(out.shape[0], -1) if out.ndim > 2 else out


def objective_definitions(objective: Objective) -> dict:
  if objective.kind == 'classification':
    where = ('the logits of the model' if objective.classes is None else
             f'logits from the embedding and the class matrix of {objective.source}')
    return {'taylor': f'mean over images of |dL/d xi[l,h]| at xi = 1 (Michel et al. 2019); L is '
                      f'the cross-entropy with the target, on {where}',
            'loss': 'cross-entropy with the target', 'top1': 'top-1 accuracy',
            'top5': 'top-5 accuracy', 'kl': 'KL(p_unmasked || p_masked)'}
  return {'taylor': 'first-order estimate of the relative L2 distortion |e_masked - e| / |e| '
                    'of the pooled embedding: sqrt(pi/2) * mean over random Gaussian probes '
                    'u of |d(u . e / |e|)/d xi[l,h]| at xi = 1, mean over images',
          'loss': 'cosine distortion 1 - cos(e_masked, e) of the pooled embedding against '
                  'the unmasked one, same image',
          'kl': 'relative L2 distortion |e_masked - e| / |e| of the pooled embedding',
          'top1': 'undefined without a classifier (always 1; drops are 0)',
          'top5': 'undefined without a classifier (always 1; drops are 0)'}


def default_objective(config: ViTConfig) -> Objective:
  """Classification for a classifier, embedding distortion for everything else."""
  if config.has_classifier:
    return Objective('classification')
  return Objective('embedding', source=POOLED_EMBEDDING[config.classifier])


# What the pooled embedding of a model without a classifier is, by its pooling (the view and
# the stored definitions say it).
POOLED_EMBEDDING = {
    'token': 'the class-token embedding (the encoder output at the class token, after the '
             'final LayerNorm)',
    'gap': 'the mean of the encoder outputs at the patch tokens',
    'token_gap': 'the class-token embedding with the mean patch embedding beside it',
    'token_dist': 'the class- and distillation-token embeddings side by side',
    'map': "the MAP head's output (attention pooling over the encoder outputs)",
    'none': "the encoder's output tokens, all of them",
}


def classes_objective(config: ViTConfig, classes, bias=None, scale=1., normalize=False,
                      source='a class matrix') -> Objective:
  """Classification through a class matrix [C, E] on the model's embedding."""
  classes = np.asarray(classes, np.float32)
  if classes.ndim != 2 or classes.shape[1] != config.embedding_size or config.classifier == 'none':
    raise OptionError('classes_npz', f'{source}: the class matrix has shape '
                      f'{tuple(classes.shape)}; expected [classes, {config.embedding_size}] '
                      f'for this model (pooling {config.pooling!r}, output {config.output!r})')
  if bias is not None:
    bias = np.asarray(bias, np.float32).reshape(-1)
    if bias.shape != (classes.shape[0],):
      raise OptionError('classes_npz', f'{source}: bias has shape {bias.shape}; expected '
                        f'[{classes.shape[0]}]')
  return Objective('classification', classes, bias, float(scale), bool(normalize),
                   source=str(source))


def _objective(config, objective):
  return default_objective(config) if objective is None else objective


# --- per-image metrics -------------------------------------------------------------------

def targets_from(logits_full, labels, objective: Optional[Objective] = None):
  """labels [B] (-1 unknown) -> targets [B]: the label, else the unmasked prediction.
  (Ignored by the embedding objective: its target is the unmasked embedding.)"""
  if objective is not None and objective.kind == 'embedding':
    return labels
  if objective is not None:
    logits_full = objective.logits(logits_full)
  return jnp.where(labels >= 0, labels, jnp.argmax(logits_full, -1))


def image_metrics(logits, targets, logp_full, objective: Optional[Objective] = None):
  """Model outputs [..., B, C] -> {'loss', 'top1', 'top5', 'kl'} each [..., B], in float32
  (bfloat16 outputs too). logp_full: objective.reference(unmasked output) (log p, or the
  embedding)."""
  logits = precision.widen(logits)
  if objective is not None and objective.kind == 'embedding':
    e, ref = logits, logp_full
    if e.shape[-1] != ref.shape[-1]:  # pooling 'none': [..., B, T, E] -> [..., B, T * E]
      e = e.reshape(*e.shape[:-2], -1)
    norm_ref = jnp.linalg.norm(ref, axis=-1)
    diff = jnp.linalg.norm(e - ref, axis=-1)
    cos = jnp.sum(e * ref, -1) / jnp.maximum(jnp.linalg.norm(e, axis=-1) * norm_ref, 1e-30)
    ones = jnp.ones_like(cos)
    return {'loss': 1. - cos, 'top1': ones, 'top5': ones,
            'kl': diff / jnp.maximum(norm_ref, 1e-30)}
  if objective is not None:
    logits = objective.logits(logits)
  logp = jax.nn.log_softmax(logits)
  loss = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)
  rank = jnp.sum(logits > target_logit, axis=-1)  # classes strictly above the target
  kl = jnp.sum(jnp.exp(logp_full) * (logp_full - logp), axis=-1)
  return {'loss': loss, 'top1': (rank < 1).astype(jnp.float32),
          'top5': (rank < 5).astype(jnp.float32), 'kl': kl}


# --- Taylor importance -------------------------------------------------------------------

def _taylor(params, config, images, labels, obj: Objective, index, record=False):
  """One forward + backward: (|dL_i/d xi| [B, L, H], |dL_i/d xi_pool| [B, H] or None (no
  MAP head), full outputs [B, ...], the forward's intermediates of the B images when
  `record`, else None).

  Each image gets its own copy of the mask, so the gradient of the summed loss with respect
  to the [B, L, H] mask is every image's own gradient, in one backward pass. Under the
  embedding objective each image is run once per random probe (see the module docstring);
  index [B] seeds an image's probes, so they do not depend on batching.
  """
  b = images.shape[0]
  k = obj.taylor_probes if obj.kind == 'embedding' else 1
  x = jnp.tile(images, (k, 1, 1, 1)) if k > 1 else images
  index = jnp.arange(b) if index is None else index
  pool = config.has_pool_attention

  def forward(mask, pool_mask):
    masks = dict(head_mask=mask, pool_mask=pool_mask if pool else None)
    if not record:
      return model_lib.apply(params, config, x, **masks), None
    out, state = model_lib.VisionTransformer(config).apply(
        {'params': params}, x, mutable=['intermediates'], **masks)
    return out, state['intermediates']

  def total(masks):
    out, state = forward(*masks)
    if obj.kind == 'classification':
      targets = targets_from(jax.lax.stop_gradient(out), labels, obj)
      logp = jax.nn.log_softmax(obj.logits(out))
      return -jnp.sum(jnp.take_along_axis(logp, targets[:, None], axis=-1)), (out, state)
    e = precision.widen(_flat_embedding(out))                         # [K * B, E]
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(obj.seed), i))(index)
    u = jax.vmap(lambda key: jax.random.normal(key, (k, e.shape[-1]), e.dtype))(keys)
    u = jnp.swapaxes(u, 0, 1).reshape(k * b, -1)                      # [K * B, E]
    norm = jax.lax.stop_gradient(jnp.linalg.norm(e, axis=-1, keepdims=True))
    return jnp.sum(u * e / jnp.maximum(norm, 1e-30)), (out, state)

  ones = (jnp.ones((k * b, config.num_layers, config.num_heads), jnp.float32),
          jnp.ones((k * b, config.num_heads), jnp.float32))
  (grads, pool_grads), (out, state) = jax.grad(total, has_aux=True)(ones)
  factor = np.sqrt(np.pi / 2) if obj.kind == 'embedding' else 1.
  grads = factor * jnp.mean(jnp.abs(grads).reshape(k, b, *grads.shape[1:]), 0)
  pool_grads = (factor * jnp.mean(jnp.abs(pool_grads).reshape(k, b, -1), 0) if pool else None)
  return grads, pool_grads, out[:b], jax.tree.map(lambda a: a[:b], state)


@functools.partial(jax.jit, static_argnums=(1, 4))
def taylor_pool_batch(params, config: ViTConfig, images, labels,
                      objective: Optional[Objective] = None, index=None):
  """One forward + backward: (|dL_i/d xi| [B, L, H], |dL_i/d xi_pool| [B, H] or None (no
  MAP head), full outputs [B, ...]); see _taylor."""
  grads, pool_grads, out, _ = _taylor(params, config, images, labels,
                                      _objective(config, objective), index)
  return grads, pool_grads, out


def taylor_batch(params, config: ViTConfig, images, labels,
                 objective: Optional[Objective] = None, index=None):
  """(|dL_i/d xi| [B, L, H], full outputs [B, C]); see taylor_pool_batch."""
  grads, _, out = taylor_pool_batch(params, config, images, labels, objective, index)
  return grads, out


# --- single-head ablation ----------------------------------------------------------------

def single_head_masks(config: ViTConfig) -> jnp.ndarray:
  """[L*H, L, H]: mask m removes head (m // H, m % H)."""
  n = config.num_layers * config.num_heads
  return 1. - jnp.eye(n, dtype=jnp.float32).reshape(n, config.num_layers, config.num_heads)


def _metrics_for_masks(params, config, images, targets, logp_full, masks, chunk,
                       objective=None):
  """Full forwards, vmapped over masks [M, L, H] in chunks -> metrics [M, B]."""
  def one(mask):
    return image_metrics(model_lib.apply(params, config, images, head_mask=mask), targets,
                         logp_full, objective)
  return jax.lax.map(one, masks, batch_size=chunk)


@functools.partial(jax.jit, static_argnums=(1, 4, 5))
def ablation_batch_no_reuse(params, config: ViTConfig, images, labels, chunk: int = 8,
                            objective: Optional[Objective] = None):
  """Every single-head ablation as a full forward, vmapped over the L*H masks.
  -> ({metric: [L, H, B]}, full logits [B, C])."""
  obj = _objective(config, objective)
  logits = model_lib.apply(params, config, images)
  targets, logp_full = targets_from(logits, labels, obj), obj.reference(logits)
  m = _metrics_for_masks(params, config, images, targets, logp_full,
                         single_head_masks(config), chunk, obj)
  shape = (config.num_layers, config.num_heads, images.shape[0])
  return {k: v.reshape(shape) for k, v in m.items()}, logits


def _unmasked_state(params, config, images, labels, objective=None):
  """One unmasked forward recording the intermediates (the 'intermediates' collection sown
  by model.py) -> (targets [B], reference (log p_full [B, C] or the embedding),
  intermediates, outputs)."""
  obj = _objective(config, objective)
  if not model_lib.supports_prefix_reuse(config):
    # A foreign (intercepted) model: no intermediates to resume from; each layer's "input"
    # is the images, from which it runs whole (edits and masks name their layer).
    logits = model_lib.apply(params, config, images)
    state = {'intermediates': {'Transformer': {
        f'encoderblock_{l}': {'block_input': (images,)} for l in range(config.num_layers)}}}
    return targets_from(logits, labels, obj), obj.reference(logits), state['intermediates'], \
        logits
  logits, state = model_lib.VisionTransformer(config).apply(
      {'params': params}, images, mutable=['intermediates'])
  return (targets_from(logits, labels, obj), obj.reference(logits), state['intermediates'],
          logits)


def _unmasked(params, config, images, labels, objective=None):
  """As _unmasked_state, with the blocks' intermediates only (the 'Transformer' subtree)."""
  targets, reference, state, logits = _unmasked_state(params, config, images, labels,
                                                      objective)
  return targets, reference, state['Transformer'], logits


def _stacked_layers(params, config):
  """Every encoder block's parameters stacked on a leading layer axis [L, ...]."""
  blocks = [params['Transformer'][f'encoderblock_{i}'] for i in range(config.num_layers)]
  return jax.tree.map(lambda *a: jnp.stack(a), *blocks)


def _stacked(blocks, config, *path):
  """A sown intermediate of every layer, stacked: [L, ...]."""
  def get(i):
    x = blocks[f'encoderblock_{i}']
    for key in path:
      x = x[key]
    return x[0]
  return jnp.stack([get(i) for i in range(config.num_layers)])


def suffix(params, config: ViTConfig, stacked, x, start, head_mask=None,
           skip_first_attention=False):
  """The model from layer `start` (a traced scalar) to the logits, in one compiled graph
  for every start: a scan over all layers whose body is the identity below `start`, the
  block after its attention at `start` when skip_first_attention (x is then the residual
  stream after that attention), and the whole block above. Equals
  model.apply(params, config, x, first_layer=start, head_mask=head_mask,
  skip_first_attention=skip_first_attention). `start` must not be batched (vmapped): the
  branch is then a real branch, and layers below it cost nothing.
  """
  block = model_lib.Encoder1DBlock(config)

  def body(x, layer):
    i, p = layer
    row = None if head_mask is None else head_mask[i]
    run = lambda x: block.apply({'params': p}, x, row)[0]
    if skip_first_attention:
      after = lambda x: jax.lax.cond(
          i == start, lambda x: block.apply({'params': p}, x, row, skip_attention=True)[0],
          run, x)
    else:
      after = run
    return jax.lax.cond(i < start, lambda x: x, after, x), None

  x, _ = jax.lax.scan(body, x, (jnp.arange(config.num_layers), stacked))
  return model_lib.apply(params, config, x, first_layer=config.num_layers)


def _ablation_from(params, config, blocks, targets, logp_full, chunk, objective=None,
                   mesh=None):
  """The single-head ablation scan from one unmasked forward's intermediates `blocks`
  (see ablation_batch) -> {metric: [L, H, B]}. One compiled suffix graph serves every
  layer: a scan over layers, the heads of each mapped in chunks. mesh: a ('batch', 'masks')
  mesh whose 'masks' axis splits each layer's heads (every device runs every layer for its
  H / K heads; the layer is not batched, so the suffix graph still skips the layers below
  it), or None."""
  stacked = _stacked_layers(params, config)
  out_all = stacked['MultiHeadDotProductAttention_1']['out']['kernel']  # [L, H, D/H, D]

  def scan(heads, post_all, heads_all, targets, logp_full):
    """Heads `heads` [m] of every layer removed -> {metric: [L, m, B]}."""
    def per_layer(layer):
      post, layer_heads, out_kernel = post_all[layer], heads_all[layer], out_all[layer]

      def without_head(h):
        share = jnp.einsum('bte,ed->btd', layer_heads[:, :, h], out_kernel[h])
        logits_h = suffix(params, config, stacked, post - share, layer,
                          skip_first_attention=True)
        return image_metrics(logits_h, targets, logp_full, objective)

      return jax.lax.map(without_head, heads, batch_size=chunk)
    return jax.lax.map(per_layer, jnp.arange(config.num_layers))

  args = (_stacked(blocks, config, 'post_attention'),                      # [L, B, T, D]
          _stacked(blocks, config, 'MultiHeadDotProductAttention_1', 'heads'),
          targets, logp_full)
  if mesh is None or parallel.mask_shards(mesh) <= 1:
    return scan(jnp.arange(config.num_heads), *args)
  return _over_mask_shards(mesh, config.num_heads, scan, args, (1, 1, 0, 0), lead=1)


def _pool_ablation(params, config, state, targets, reference, objective, chunk):
  """Every single MAP-head (pooling) head masked out, rerunning only the pooling on its
  sown input -> {metric: [H, B]}."""
  tokens = state['pool_input'][0]

  def without_head(h):
    mask = 1. - jax.nn.one_hot(h, config.num_heads)
    out = model_lib.apply_pooling(params, config, tokens, pool_mask=mask)
    return image_metrics(out, targets, reference, objective)

  return jax.lax.map(without_head, jnp.arange(config.num_heads), batch_size=chunk)


def _over_mask_shards(mesh, n, fn, args, batch_axes, lead: int):
  """fn(indices [m], *args) -> {metric: [<lead axes>, m, B]}, run with the n indices split
  over the 'masks' axis of `mesh` (padded to a multiple of its size by repeating the last
  index; the padding is dropped) and each of `args` over its 'batch' axis along its axis
  batch_axes[i] -> {metric: [<lead axes>, n, B]}."""
  from jax.sharding import PartitionSpec as P
  per = -(-n // parallel.mask_shards(mesh))

  def local(*local_args):
    start = jax.lax.axis_index('masks') * per
    return fn(jnp.minimum(start + jnp.arange(per), n - 1), *local_args)

  in_specs = tuple(P(*(None,) * axis, 'batch') for axis in batch_axes)
  out = jax.shard_map(local, mesh=mesh, in_specs=in_specs,
                      out_specs=P(*(None,) * lead, 'masks', 'batch'))(*args)
  return jax.tree.map(lambda v: v[(slice(None),) * lead + (slice(0, n),)], out)


def _masks_sharded(params, config, images, targets, logp_full, chunk, objective, mesh):
  """The L*H single-head masks as full forwards (no prefix reuse), split over the mesh's
  'masks' axis -> {metric: [L*H, B]}."""
  masks = single_head_masks(config)

  def run(index, images, targets, logp_full):
    return _metrics_for_masks(params, config, images, targets, logp_full, masks[index],
                              chunk, objective)

  return _over_mask_shards(mesh, config.num_layers * config.num_heads, run,
                           (images, targets, logp_full), (0, 0, 0), lead=0)


def _ablation_all(params, config, state, targets, reference, chunk, objective, mesh=None):
  """The single-head ablation scan and, with a MAP head, its pooling row, from one unmasked
  forward's intermediates `state` -> ({metric: [L, H, B]}, {metric: [H, B]} or None).
  mesh: a ('batch', 'masks') mesh to split the scan's heads over, or None."""
  blocks = _ablation_from(params, config, state['Transformer'], targets, reference, chunk,
                          objective, mesh)
  pool = (_pool_ablation(params, config, state, targets, reference, objective, chunk)
          if config.has_pool_attention else None)
  return blocks, pool


@functools.partial(jax.jit, static_argnums=(1, 4, 5))
def ablation_pool_batch(params, config: ViTConfig, images, labels, chunk: int = 8,
                        objective: Optional[Objective] = None):
  """Every single-head ablation, reusing what the ablation cannot change, plus the pooling
  heads of a MAP head.

  Masking head h of layer l leaves layers < l and the other heads of layer l as they were:
  one unmasked forward records, per layer, the residual stream after attention and each
  head's output; removing head h is subtracting its share of the `out` projection from that
  stream, and only the rest of layer l (its MLP) and the layers after it are run again,
  vmapped over the heads. A pooling head is removed by rerunning only the MAP head on its
  recorded input. -> ({metric: [L, H, B]}, {metric: [H, B]} or None, full outputs).
  """
  obj = _objective(config, objective)
  if not model_lib.supports_prefix_reuse(config):
    blocks, out = ablation_batch_no_reuse(params, config, images, labels, chunk, objective)
    return blocks, None, out
  targets, reference, state, out = _unmasked_state(params, config, images, labels, obj)
  return (*_ablation_all(params, config, state, targets, reference, chunk, obj), out)


def ablation_batch(params, config: ViTConfig, images, labels, chunk: int = 8,
                   objective: Optional[Objective] = None):
  """ablation_pool_batch without the pooling row -> ({metric: [L, H, B]}, full outputs)."""
  blocks, _, out = ablation_pool_batch(params, config, images, labels, chunk, objective)
  return blocks, out


@functools.partial(jax.jit, static_argnums=(1, 4, 5), static_argnames=('mesh',))
def stage1_batch(params, config: ViTConfig, images, labels, chunk: int = 8,
                 objective: Optional[Objective] = None, index=None, mesh=None):
  """Taylor importance and the single-head ablation scan (and a MAP head's pooling row)
  sharing one forward.

  The forward of the Taylor pass (all-ones per-image masks, whose multiplications by 1
  leave every value as the unmasked forward computes it) also records the intermediates
  the ablation scan starts from, so the scan's "1 +" unmasked forward is not paid again.
  -> (|dL_i/d xi| [B, L, H], |dL_i/d xi_pool| [B, H] or None, {metric: [L, H, B]},
  {metric: [H, B]} or None, full outputs [B, ...]).

  mesh (static): a 2-D ('batch', 'masks') mesh (`parallel.batch_mesh(mask_shards=K)`)
  splits the scan's heads over its 'masks' axis (shard_map; the images are split over
  'batch'); None or a 1-D mesh: the heads are not split.
  """
  obj = _objective(config, objective)
  reuse = model_lib.supports_prefix_reuse(config)
  split = mesh is not None and parallel.mask_shards(mesh) > 1
  grads, pool_grads, out, state = _taylor(params, config, images, labels, obj, index,
                                          record=reuse)
  targets, reference = targets_from(out, labels, obj), obj.reference(out)
  if not reuse:  # an intercepted model records nothing to resume from: full forwards
    ablation = (_masks_sharded(params, config, images, targets, reference, chunk, obj, mesh)
                if split else _metrics_for_masks(params, config, images, targets, reference,
                                                 single_head_masks(config), chunk, obj))
    shape = (config.num_layers, config.num_heads, images.shape[0])
    return grads, None, {k: v.reshape(shape) for k, v in ablation.items()}, None, out
  ablation, pool_ablation = _ablation_all(params, config, state, targets, reference, chunk,
                                          obj, mesh if split else None)
  return grads, pool_grads, ablation, pool_ablation, out


def ablation_strategy(config: ViTConfig) -> str:
  """How the single-head ablation scan runs, for cost tables and reports."""
  n = config.num_layers * config.num_heads
  if model_lib.supports_prefix_reuse(config):
    return (f'prefix reuse: one unmasked forward, then per head only the rest of its layer '
            f'and the layers after it ({n} partial forwards, about L/2 layers each)')
  return (f'full forwards vmapped over the {n} single-head masks (no prefix reuse: the model '
          f'is intercepted, not resumable mid-way; about L/2 times the cost of prefix reuse)')


def full_metrics(logits, labels, objective: Optional[Objective] = None):
  """Per-image metrics of the unmasked model, {metric: [B]}."""
  if objective is None:
    objective = Objective('classification') if logits.ndim == 2 else Objective('embedding')
  targets = targets_from(logits, labels, objective)
  return image_metrics(logits, targets, objective.reference(logits), objective)


# --- pruning curves ----------------------------------------------------------------------

def pruning_masks(order: np.ndarray, counts: Sequence[int], config: ViTConfig) -> np.ndarray:
  """order [L*H] flat head indices, least important first -> masks [len(counts), L, H]
  with the first counts[i] heads of the order removed."""
  n = config.num_layers * config.num_heads
  masks = np.ones((len(counts), n), np.float32)
  for i, k in enumerate(counts):
    masks[i, order[:k]] = 0.
  return masks.reshape(len(counts), config.num_layers, config.num_heads)


# --- partial pruning: remove part of one head's attention --------------------------------

@dataclasses.dataclass(frozen=True)
class PartialVariant:
  name: str
  description: str
  keep: np.ndarray  # [T, T] multiplier on the attention weights (query, key)


def partial_variants(config: ViTConfig, radii=(1, 2, 3), region=None) -> list:
  """The ways of removing part of a head's attention.

  region: (row0, col0, row1, col1) in patch units, half-open; default the central half.
  Grids may be rectangular (h x w); tokens before the patches (class token, registers) are
  untouched by the spatial variants.
  """
  (gh, gw), cls, pre = config.grid_shape, int(config.has_cls_token), config.num_prefix_tokens
  t = config.num_tokens
  rows, cols = np.divmod(np.arange(gh * gw), gw)
  cheb = np.maximum(abs(rows[:, None] - rows[None]), abs(cols[:, None] - cols[None]))
  variants = []

  def patch_pairs(remove):  # remove [P, P] over patch pairs; class-token pairs untouched
    keep = np.ones((t, t), np.float32)
    keep[pre:, pre:] = 1. - remove
    return keep

  for r in radii:
    if r >= max(gh, gw):
      raise OptionError('partial_radii', f'radius {r} must be below the patch grid size '
                        f'{max(gh, gw)}')
    variants.append(PartialVariant(f'local_r{r}', f'attention to keys within Chebyshev '
                                   f'distance {r} of the query patch removed',
                                   patch_pairs((cheb <= r).astype(np.float32))))
    variants.append(PartialVariant(f'global_r{r}', f'attention to keys farther than {r} '
                                   f'patches from the query patch removed',
                                   patch_pairs((cheb > r).astype(np.float32))))
  if cls:
    keep = np.ones((t, t), np.float32)
    keep[:, 0] = 0.
    variants.append(PartialVariant('to_cls', 'attention to the class token removed', keep))
    keep = np.ones((t, t), np.float32)
    keep[0, :] = 0.
    variants.append(PartialVariant('from_cls', "the class token's own attention removed", keep))
  if region is None:
    region = (gh // 4, gw // 4, gh - gh // 4, gw - gw // 4)
  r0, c0, r1, c1 = region
  if not (0 <= r0 < r1 <= gh and 0 <= c0 < c1 <= gw):
    raise OptionError('partial_region', f'{tuple(region)}: expected row0 < row1 and '
                      f'col0 < col1 within the {gh} x {gw} patch grid')
  inside = (rows >= r0) & (rows < r1) & (cols >= c0) & (cols < c1)
  for name, queries in (('region_in', inside), ('region_out', ~inside)):
    keep = np.ones((t, t), np.float32)
    keep[pre:][queries] = 0.
    variants.append(PartialVariant(
        name, f"attention of query patches {'inside' if name == 'region_in' else 'outside'} "
              f'rows {r0}-{r1 - 1}, columns {c0}-{c1 - 1} removed', keep))
  return variants


def _partial_metrics(params, config, blocks, targets, logp_full, head_index, keeps,
                     renormalize, layers, chunk, objective=None):
  """Metrics with part of one head's attention removed, for every (head, variant) pair.

  head_index [P] flat head indices sorted ascending, `layers` (static) their layers;
  keeps [V, T, T] multipliers on that head's attention weights. Each head's run starts
  at its own layer's input from `blocks` (see _unmasked). -> {metric: [P, V, B]}.
  """
  h_count, v_count = config.num_heads, keeps.shape[0]

  def run(flat_head, keep, layer):
    one_hot = jax.nn.one_hot(flat_head % h_count, h_count)[:, None, None]
    edit_mask = 1. - one_hot * (1. - keep)[None]                     # [H, T, T]

    def edit(weights, l):
      if l != layer:
        return weights
      w = weights * edit_mask.astype(weights.dtype)
      if renormalize:
        total = jnp.sum(w, -1, keepdims=True)
        w = jnp.where(total > 0, w / jnp.where(total > 0, total, 1.), 0.)
      return w

    block_input = blocks[f'encoderblock_{layer}']['block_input'][0]
    out = model_lib.apply(params, config, block_input, first_layer=layer, attention_edit=edit)
    return image_metrics(out, targets, logp_full, objective)

  results = []
  for layer in sorted(set(layers)):  # one suffix graph per layer, vmapped over its pairs
    idx = np.flatnonzero(np.asarray(layers) == layer)
    pair_heads = jnp.repeat(head_index[idx], v_count)
    pair_keeps = jnp.tile(keeps, (len(idx), 1, 1))
    m = jax.lax.map(lambda hk, layer=layer: run(hk[0], hk[1], layer), (pair_heads, pair_keeps),
                    batch_size=chunk)
    results.append({k: v.reshape(len(idx), v_count, -1) for k, v in m.items()})
  return {k: jnp.concatenate([r[k] for r in results]) for k in ABLATION_METRICS}


def _partial_whole(params, config, images, targets, logp_full, head_index, keeps,
                   renormalize, chunk, objective=None):
  """Partial pruning by rerunning the whole model with the edit in each head's layer (for
  intercepted models, which cannot resume mid-way; the layer may be traced)
  -> {metric: [P, V, B]}."""
  h_count, p_count, v_count = config.num_heads, head_index.shape[0], keeps.shape[0]

  def run(pair):
    flat_head, keep = pair
    layer = flat_head // h_count
    edit_mask = 1. - jax.nn.one_hot(flat_head % h_count, h_count)[:, None, None] * (
        1. - keep)[None]                                                # [H, T, T]

    def edit(weights, l):
      w = weights * edit_mask.astype(weights.dtype)
      if renormalize:
        total = jnp.sum(w, -1, keepdims=True)
        w = jnp.where(total > 0, w / jnp.where(total > 0, total, 1.), 0.)
      return jnp.where(l == layer, w, weights)

    out = model_lib.apply(params, config, images, attention_edit=edit)
    return image_metrics(out, targets, logp_full, objective)

  pairs = (jnp.repeat(head_index, v_count), jnp.tile(keeps, (p_count, 1, 1)))
  m = jax.lax.map(run, pairs, batch_size=chunk)
  return {k: v.reshape(p_count, v_count, -1) for k, v in m.items()}


@functools.partial(jax.jit, static_argnums=(1, 6, 7, 8, 9))
def partial_batch_plain(params, config: ViTConfig, images, labels, head_index, keeps,
                        renormalize: bool, layers: tuple, chunk: int = 8, objective=None):
  """Partial pruning of one batch by rerunning each head's whole layer from its input
  (the reference for partial_batch) -> {metric: [P, V, B]}."""
  objective = _objective(config, objective)
  targets, logp_full, blocks, _ = _unmasked(params, config, images, labels, objective)
  return _partial_metrics(params, config, blocks, targets, logp_full, head_index, keeps,
                          renormalize, layers, chunk, objective)


def _one_head_attention(p, config, block_input, h):
  """Head h's attention weights [B, Q, K] and values [B, K, D/H] in the block with
  parameters `p`, recomputed from its recorded input as model.py computes them."""
  import flax.linen as nn
  att = p['MultiHeadDotProductAttention_1']
  y = nn.LayerNorm(epsilon=config.layer_norm_epsilon).apply(
      {'params': p['LayerNorm_0']}, block_input)
  head_dim = config.hidden_size // config.num_heads

  def proj(name):
    kernel, bias = att[name]['kernel'][:, h], att[name]['bias'][h]   # [D, D/H], [D/H]
    return jnp.einsum('btd,de->bte', y, kernel) + bias

  q, k, v = proj('query'), proj('key'), proj('value')
  logits = jnp.einsum('bqe,bke->bqk', q / jnp.sqrt(head_dim).astype(q.dtype), k)
  return jax.nn.softmax(logits, axis=-1), v


def _edit_weights(w, keep, renormalize):
  w_kept = w * keep.astype(w.dtype)
  if renormalize:
    total = jnp.sum(w_kept, -1, keepdims=True)
    w_kept = jnp.where(total > 0, w_kept / jnp.where(total > 0, total, 1.), 0.)
  return w_kept


def _partial_reuse(params, config, blocks, targets, logp_full, head_index, keeps,
                   renormalize, layers, chunk, objective=None):
  """Partial pruning with prefix reuse -> {metric: [P, V, B]} (as _partial_metrics).

  Removing part of head h's attention in layer l changes only head h's output, by
  (w - w_edited) @ v_h; its share of the `out` projection is subtracted from the recorded
  residual stream after layer l's attention, and only the rest of layer l (its MLP) and the
  later layers run again (one compiled suffix graph for every layer, see `suffix`), as in
  the ablation scan. Head h's weights and values are recomputed from the recorded block
  input (one head's projections, not the layer's). `layers` may be traced.
  """
  stacked = _stacked_layers(params, config)
  inputs_all = _stacked(blocks, config, 'block_input')               # [L, B, T, D]
  post_all = _stacked(blocks, config, 'post_attention')

  def per_head(head_layer):
    flat_head, layer = head_layer
    h = flat_head % config.num_heads
    p = jax.tree.map(lambda a: a[layer], stacked)
    w, v = _one_head_attention(p, config, inputs_all[layer], h)
    out_kernel = p['MultiHeadDotProductAttention_1']['out']['kernel'][h]   # [D/H, D]
    post = post_all[layer]

    def per_variant(keep):
      removed = jnp.einsum('bqk,bke->bqe', w - _edit_weights(w, keep, renormalize), v)
      share = jnp.einsum('bte,ed->btd', removed, out_kernel)
      out = suffix(params, config, stacked, post - share, layer, skip_first_attention=True)
      return image_metrics(out, targets, logp_full, objective)

    return jax.lax.map(per_variant, keeps, batch_size=chunk)

  return jax.lax.map(per_head, (jnp.asarray(head_index), jnp.asarray(layers, jnp.int32)))


@functools.partial(jax.jit, static_argnums=(1, 6, 8, 9))
def partial_batch(params, config: ViTConfig, images, labels, head_index, keeps,
                  renormalize: bool, layers, chunk: int = 8, objective=None):
  """Partial pruning of one batch with prefix reuse -> {metric: [P, V, B]}
  (see _partial_reuse; head_index sorted ascending, `layers` their layers)."""
  objective = _objective(config, objective)
  targets, logp_full, blocks, _ = _unmasked(params, config, images, labels, objective)
  return _partial_reuse(params, config, blocks, targets, logp_full, head_index, keeps,
                        renormalize, layers, chunk, objective)


def first_masked_layers(masks: np.ndarray) -> tuple:
  """masks [M, L, H] -> for each mask the first layer with a head removed (None: none)."""
  removed = np.asarray(masks).min(axis=2) < 1.                     # [M, L]
  return tuple(int(np.argmax(r)) if r.any() else None for r in removed)


def _curves_reuse(params, config, blocks, targets, logp_full, masks, first_layers, chunk,
                  objective=None):
  """Metrics of head masks [M, L, H], each run from the recorded input of its first layer
  with a head removed (`first_layers` [M], may be traced; none may be None), through one
  compiled suffix graph -> {metric: [M, B]}.

  Masks go in groups of `chunk` (vmapped), sorted by first layer; a group starts at its
  first mask's layer (the smallest), which is exact for the others too: their rows of that
  group's earlier layers keep every head, as the recorded stream did.
  """
  stacked = _stacked_layers(params, config)
  inputs_all = _stacked(blocks, config, 'block_input')               # [L, B, T, D]
  m = masks.shape[0]
  first_layers = jnp.asarray(first_layers, jnp.int32)
  order = jnp.argsort(first_layers)
  groups = -(-m // chunk)
  padded = jnp.concatenate([order, jnp.repeat(order[-1:], groups * chunk - m)])
  group_masks = masks[padded].reshape(groups, chunk, *masks.shape[1:])
  group_start = first_layers[padded].reshape(groups, chunk)[:, 0]

  def per_group(group):
    g_masks, start = group

    def one(mask):
      out = suffix(params, config, stacked, inputs_all[start], start, head_mask=mask)
      return image_metrics(out, targets, logp_full, objective)

    return jax.vmap(one)(g_masks) if chunk > 1 else jax.tree.map(
        lambda a: a[None], one(g_masks[0]))

  result = jax.lax.map(per_group, (group_masks, group_start))       # {k: [G, chunk, B]}
  inverse = jnp.argsort(order)
  return {k: v.reshape(groups * chunk, -1)[:m][inverse] for k, v in result.items()}


@functools.partial(jax.jit, static_argnums=(1, 6, 7))
def curves_batch(params, config: ViTConfig, images, labels, masks, first_layers,
                 chunk: int = 8, objective=None):
  """Pruning-curve masks [M, L, H] of one batch with prefix reuse -> {metric: [M, B]}."""
  objective = _objective(config, objective)
  targets, logp_full, blocks, _ = _unmasked(params, config, images, labels, objective)
  return _curves_reuse(params, config, blocks, targets, logp_full, masks, first_layers, chunk,
                       objective)


@functools.partial(jax.jit, static_argnums=(1, 8, 10, 11))
def stage2_batch(params, config: ViTConfig, images, labels, masks, first_layers,
                 head_index, keeps, renormalize: bool, layers, chunk: int = 8,
                 objective=None):
  """Stage 2 of one batch, sharing one unmasked forward: (unmasked {metric: [B]}, curve
  masks {metric: [M, B]} (prefix reuse from each mask's first masked layer), partial
  pruning {metric: [P, V, B]} (prefix reuse, see _partial_reuse))."""
  objective = _objective(config, objective)
  targets, logp_full, blocks, logits = _unmasked(params, config, images, labels, objective)
  full = image_metrics(logits, targets, logp_full, objective)
  reuse = model_lib.supports_prefix_reuse(config)
  # An intercepted model cannot resume mid-way: curve masks run as full forwards, partial
  # pruning reruns the whole model with the edit in its layer.
  if reuse:
    curves = (_curves_reuse(params, config, blocks, targets, logp_full, masks, first_layers,
                            chunk, objective) if masks.shape[0] else {})
    partial = (_partial_reuse(params, config, blocks, targets, logp_full, head_index, keeps,
                              renormalize, layers, chunk, objective)
               if head_index.shape[0] else {})
  else:
    curves = (_metrics_for_masks(params, config, images, targets, logp_full, masks, chunk,
                                 objective) if masks.shape[0] else {})
    partial = (_partial_whole(params, config, images, targets, logp_full, head_index, keeps,
                              renormalize, chunk, objective) if head_index.shape[0] else {})
  return full, curves, partial


# --- streaming driver ----------------------------------------------------------------------

def default_chunk() -> int:
  return 1 if jax.default_backend() == 'cpu' else 8


# Stage-2 defaults, chosen by the cost model (cost.py, README "Cost"): on ViT-Ti/16 and
# ViT-B/16 the whole `analyze` stays within 2x the ablation scan's limit per image at 64
# images and within 1.25x at 1,024.
DEFAULT_SUBSET_IMAGES = 20
DEFAULT_CURVE_POINTS = 6
DEFAULT_RANDOM_ORDERS = 2
DEFAULT_PARTIAL_HEADS = 3


@dataclasses.dataclass(frozen=True)
class ImportanceOptions:
  batch_size: int = option(DEFAULT_BATCH_SIZE, 'images per batch')
  chunk: Optional[int] = option(
      None, 'head masks evaluated at once, vmapped; lower it to save memory (default: 1 on '
            'CPU, where big vmapped batches fall out of cache, 8 on accelerators)', parse=int)
  per_image: bool = option(False, "keep every image's values (per-image distributions)")
  subset_images: Optional[int] = option(
      DEFAULT_SUBSET_IMAGES,
      'pruning curves and partial pruning on a class-stratified subset of this many images '
      '(seeded by --seed; stored with standard errors); 0 for all images', parse=int)
  curve_points: Optional[int] = option(
      DEFAULT_CURVE_POINTS, 'points on each pruning curve, evenly spaced head counts from '
      'none to all removed (0: every head count)', parse=int)
  random_orders: int = option(DEFAULT_RANDOM_ORDERS, 'random pruning orders to compare against')
  seed: int = option(0, 'seed of the random pruning orders and of the stage-2 subset')
  partial_heads: Optional[int] = option(
      DEFAULT_PARTIAL_HEADS, 'partial pruning for the N heads of highest Taylor importance '
      '(0: all heads)', parse=int)
  partial_radii: tuple = option(
      (1, 2, 3), 'Chebyshev radii (patches) for local/global partial pruning',
      flag='--radii', parse=parse_ints())
  partial_region: Optional[tuple] = option(
      None, 'query region row0,col0,row1,col1 in patches, half-open (default: the central '
            'half of the grid)', flag='--region', parse=parse_ints(4))
  renormalize: bool = option(
      False, 'renormalise the attention left after partial pruning (default: no, so that '
             'removing part of a head removes only that part of its output)')
  classes_npz: Optional[str] = option(
      None, 'an .npz with a class matrix `classes` [C, E] (and optionally `bias` [C], '
            '`scale`, `normalize`) turning the embedding of a model without a classifier '
            'into logits: SigLIP text embeddings (normalize=1, scale=exp(t), bias=b) or a '
            'linear probe; then the classification metrics apply', parse=str)
  taylor_probes: int = option(
      4, 'random probes per image for the Taylor score under the embedding objective')
  dtype: str = option('float32', precision.HELP, parse=precision.parse)
  mask_shards: int = option(
      1, 'split the single-head ablation scan\'s heads over K devices: a 2-D (batch x masks) '
         'mesh of (devices / K) x K, for large models with small batches; K must divide '
         'each process\'s device count (results equal K = 1 within float rounding)')
  progress: bool = option(True, 'no progress bars', flag='--no-progress')
  save_every_seconds: float = option(30., cli=False)

  def __post_init__(self):
    check(self, 'batch_size', self.batch_size, low=1)
    check(self, 'chunk', self.chunk, low=1, optional=True)
    check(self, 'subset_images', self.subset_images, low=0, optional=True)
    if self.curve_points not in (None, 0):
      check(self, 'curve_points', self.curve_points, low=2)
    check(self, 'random_orders', self.random_orders, low=0)
    check(self, 'partial_heads', self.partial_heads, low=0, optional=True)
    check(self, 'taylor_probes', self.taylor_probes, low=1)
    check(self, 'mask_shards', self.mask_shards, low=1)
    check(self, 'seed', self.seed, low=0, high=MAX_SEED)
    precision.check(self, 'dtype', self.dtype)
    if not self.partial_radii:
      raise OptionError('partial_radii', 'expected at least one radius')
    for r in self.partial_radii:
      check(self, 'partial_radii', r, low=1)
    if self.partial_region is not None and len(self.partial_region) != 4:
      raise OptionError('partial_region', f'expected row0,col0,row1,col1, got '
                                          f'{self.partial_region!r}')

  def check_model(self, config: ViTConfig) -> None:
    """Raises OptionError for radii or a region that do not fit the model's patch grid, or
    mask shards that do not divide the devices."""
    partial_variants(config, self.partial_radii, self.partial_region)
    parallel.batch_mesh(mask_shards=self.mask_shards)

  def subset_size(self, n_images: int) -> int:
    """Images in the stage-2 subset for a source of n_images."""
    cap = self.subset_images or n_images
    return min(n_images, cap)

  def curve_masks(self, config: ViTConfig) -> int:
    """Pruning-curve masks stage 2 computes at most: every order's inner points, and the
    all-removed mask once (none removed is the unmasked model)."""
    n = config.num_layers * config.num_heads
    counts = curve_counts(config, self.curve_points)
    inner = [c for c in counts if 0 < c < n]
    orders = len(ORDER_METRICS) + self.random_orders
    return orders * len(inner) + (1 if counts[-1] == n else 0)


def curve_counts(config: ViTConfig, points: Optional[int]) -> list:
  n = config.num_layers * config.num_heads
  points = n + 1 if not points else max(2, min(points, n + 1))
  return sorted({int(round(x)) for x in np.linspace(0, n, points)})


def head_orders(scores: dict, config: ViTConfig, random_orders: int, seed: int,
                metrics: Sequence[str] = ORDER_METRICS) -> dict:
  """Flat head orders, least important first: one per metric of `scores` ({name: [L, H]})
  in `metrics`, plus seeded random ones."""
  orders = {}
  for name in metrics:
    # Stable sort; ties broken by head index so orders are reproducible.
    orders[name] = np.argsort(np.asarray(scores[name]).ravel(), kind='stable')
  rng = np.random.default_rng(seed)
  n = config.num_layers * config.num_heads
  for i in range(random_orders):
    orders[f'random_{i}'] = rng.permutation(n)
  return orders


def select_partial_heads(taylor: np.ndarray, count: Optional[int]) -> np.ndarray:
  """Flat indices (ascending) of the heads to partially prune: the `count` with the
  highest Taylor importance (all heads when count is 0 or None)."""
  n = taylor.size
  count = n if not count else count
  top = np.argsort(-taylor.ravel(), kind='stable')[:min(count, n)]
  return np.sort(top)


def stratified_subset(strata: np.ndarray, size: int, seed: int) -> np.ndarray:
  """Indices (ascending) of `size` of the images with strata >= 0, each stratum (class)
  represented in proportion to its size; deterministic given the seed.

  Each stratum is shuffled; image j of a stratum of n gets the key (j + 1/2) / n, and the
  `size` smallest keys are taken (ties by stratum), so every prefix is proportional.
  """
  strata = np.asarray(strata)
  rng = np.random.default_rng([seed, 1])
  keys, index = [], []
  for c in np.unique(strata[strata >= 0]):
    members = rng.permutation(np.flatnonzero(strata == c))
    keys.append((np.arange(len(members)) + .5) / len(members) + c * 1e-9)
    index.append(members)
  if not index:
    return np.zeros(0, np.int64)
  keys, index = np.concatenate(keys), np.concatenate(index)
  return np.sort(index[np.argsort(keys, kind='stable')[:size]])


def _valid_sum(x, valid):
  """Sum over the last (batch) axis of the valid entries, in float64 on the host."""
  x = np.asarray(x, np.float64)
  return np.sum(np.where(valid, x, 0.), axis=-1)


# The accumulators are float64 sums over images, flat arrays by name, so that a
# ProgressStore saves them as they are.

def stage1_sums(config: ViTConfig, n_images: int, per_image: bool) -> dict:
  L, H = config.num_layers, config.num_heads
  acc = {'count': np.zeros(()), 'labelled': np.zeros(()), 'taylor': np.zeros((L, H))}
  acc.update({f'full_{k}': np.zeros(()) for k in ABLATION_METRICS})
  acc.update({f'ablation_{k}': np.zeros((L, H)) for k in ABLATION_METRICS})
  # Each image's stratum (its target class; -1: not read) for the stage-2 subset.
  acc['target'] = np.full(n_images, -1, np.int32)
  if config.has_pool_attention:  # the MAP head's heads: a pooling row
    acc['pool_taylor'] = np.zeros(H)
    acc.update({f'pool_ablation_{k}': np.zeros(H) for k in ABLATION_METRICS})
  if per_image:
    for k in PER_IMAGE:
      acc[f'per_image_{k}'] = np.full((n_images, L, H), np.nan, np.float32)
    # The unmasked model on each image (the image overview): NaN / -1 where unreadable.
    acc['per_image_loss'] = np.full(n_images, np.nan, np.float32)
    acc['per_image_prediction'] = np.full(n_images, -1., np.float32)
  return acc


PER_IMAGE = ('taylor', 'ablation_loss', 'ablation_kl')


def _strata(out, labels, objective: Objective):
  """Each image's stratum for the stage-2 subset: its target class; under the embedding
  objective its label (unlabelled images are one stratum, 0)."""
  if objective.label_metrics:
    return targets_from(out, labels, objective)
  return jnp.maximum(labels, 0)


def add_stage1(acc: dict, batch, grads, ablation, full, targets=None, logits=None,
               pool_grads=None, pool_ablation=None) -> None:
  """Adds one batch's Taylor |grads| [B, L, H], ablation {metric: [L, H, B]} and unmasked
  {metric: [B]} metrics of the valid images to the sums (and per-image rows; with the
  targets [B], each image's stratum of the stage-2 subset; with the unmasked logits
  [B, C], also each image's loss and predicted class); with a MAP head also its heads'
  pool_grads [B, H] and pool_ablation {metric: [H, B]}."""
  valid = batch.valid
  bad = valid & ~np.isfinite(np.asarray(full['loss']))
  if bad.any():
    raise NonFiniteError("the model's loss", batch.index[bad])
  if pool_grads is not None:
    acc['pool_taylor'] += _valid_sum(np.moveaxis(np.asarray(pool_grads), 0, -1), valid)
    for m in ABLATION_METRICS:
      acc[f'pool_ablation_{m}'] += _valid_sum(pool_ablation[m], valid)
  acc['count'] += valid.sum()
  acc['labelled'] += (valid & (batch.labels >= 0)).sum()
  acc['taylor'] += _valid_sum(np.moveaxis(np.asarray(grads), 0, -1), valid)
  for m in ABLATION_METRICS:
    acc[f'full_{m}'] += _valid_sum(full[m], valid)
    acc[f'ablation_{m}'] += _valid_sum(ablation[m], valid)
  if targets is not None and 'target' in acc:
    acc['target'][batch.index[valid]] = np.asarray(targets)[valid]
  if 'per_image_taylor' in acc:
    rows = batch.index[valid]
    acc['per_image_taylor'][rows] = np.asarray(grads)[valid]
    full_loss = np.asarray(full['loss'])
    acc['per_image_ablation_loss'][rows] = np.moveaxis(
        np.asarray(ablation['loss']) - full_loss, -1, 0)[valid]
    acc['per_image_ablation_kl'][rows] = np.moveaxis(np.asarray(ablation['kl']), -1, 0)[valid]
    if logits is not None and 'per_image_prediction' in acc:
      acc['per_image_loss'][rows] = full_loss[valid]
      acc['per_image_prediction'][rows] = np.argmax(np.asarray(logits), -1)[valid]


def head_scores(acc: dict) -> tuple:
  """Means from the stage-1 sums: ({metric: [L, H]}, Baseline of the unmasked model)."""
  count = acc['count']
  taylor = acc['taylor'] / count
  norm = np.linalg.norm(taylor, axis=1, keepdims=True)
  scores = {'taylor': taylor, 'taylor_normalized': taylor / np.where(norm > 0, norm, 1.)}
  base = {m: acc[f'full_{m}'] / count for m in ABLATION_METRICS}
  scores['ablation_loss'] = acc['ablation_loss'] / count - base['loss']
  scores['ablation_top1'] = base['top1'] - acc['ablation_top1'] / count
  scores['ablation_top5'] = base['top5'] - acc['ablation_top5'] / count
  scores['ablation_kl'] = acc['ablation_kl'] / count
  if 'pool_taylor' in acc:
    scores['pool_taylor'] = acc['pool_taylor'] / count
    scores['pool_ablation_loss'] = acc['pool_ablation_loss'] / count - base['loss']
    scores['pool_ablation_top1'] = base['top1'] - acc['pool_ablation_top1'] / count
    scores['pool_ablation_top5'] = base['top5'] - acc['pool_ablation_top5'] / count
    scores['pool_ablation_kl'] = acc['pool_ablation_kl'] / count
  baseline = Baseline(float(base['loss']), float(base['top1']), float(base['top5']))
  return scores, baseline


class Stage2Plan(NamedTuple):
  """What stage 2 evaluates, fixed by the stage-1 scores."""
  order_names: list        # [O]
  counts: list             # [P]
  curve_masks: np.ndarray  # [O * P, L, H]
  heads: np.ndarray        # [E] flat indices of the partially pruned heads, ascending
  layers: tuple            # [E] their layers (static for jit)
  keeps: np.ndarray        # [V, T, T]
  subset: np.ndarray = np.zeros(0, np.int64)  # [S] image indices of the stage-2 subset
  unique_masks: np.ndarray = np.zeros((0, 0, 0), np.float32)  # [U, L, H] computed masks
  mask_of: np.ndarray = np.zeros(0, np.int64)  # [O * P] row of unique_masks, -1: none removed
  first_layers: tuple = ()  # [U] first layer with a head removed (static for jit)


def plan_stage2(acc: dict, config: ViTConfig, options: ImportanceOptions,
                variants: list, objective: Optional[Objective] = None) -> Stage2Plan:
  scores, _ = head_scores(acc)
  # Without labels' metrics (the embedding objective) top-1 drops are all 0: no order.
  metrics = tuple(m for m in ORDER_METRICS if m != 'ablation_top1' or objective is None
                  or objective.label_metrics)
  orders = head_orders(scores, config, options.random_orders, options.seed, metrics)
  counts = curve_counts(config, options.curve_points)
  masks = np.concatenate([pruning_masks(o, counts, config) for o in orders.values()])
  heads = select_partial_heads(scores['taylor'], options.partial_heads)
  layers = tuple(int(h) // config.num_heads for h in heads)
  # Masks are computed once each: no head removed is the unmasked model (free), all
  # removed is the same for every order, and orders may share a prefix.
  flat = masks.reshape(len(masks), -1)
  unmasked = flat.min(axis=1) == 1.
  unique, inverse = np.unique(flat[~unmasked], axis=0, return_inverse=True)
  mask_of = np.full(len(masks), -1, np.int64)
  mask_of[~unmasked] = np.ravel(inverse)
  unique = unique.reshape(-1, config.num_layers, config.num_heads).astype(np.float32)
  targets = acc['target']
  subset = stratified_subset(targets, options.subset_size(int((targets >= 0).sum())),
                             options.seed)
  # One more keep than variants, all zeros: the whole head removed, on the same subset
  # and images as its parts (finalise splits it off as partial_whole_*).
  keeps = np.stack([v.keep for v in variants])
  keeps = np.concatenate([keeps, np.zeros_like(keeps[:1])])
  return Stage2Plan(list(orders), counts, masks, heads, layers, keeps, subset, unique,
                    mask_of, first_masked_layers(unique))


class _Saver:
  """Saves the sums to a ProgressStore, throttled: per-image arrays make a save O(images)."""

  def __init__(self, store: Optional[ProgressStore], every_seconds: float):
    self.store, self.every, self.last = store, every_seconds, time.monotonic()

  def __call__(self, acc: dict, stage: int, next_batch: int, force: bool = False) -> None:
    if self.store and (force or time.monotonic() - self.last > self.every):
      self.store.save(next_batch, {**acc, 'stage': np.asarray(stage)})
      self.last = time.monotonic()


class _StageClock:
  """Wall time of a stage, its first batch (which includes compilation) apart."""

  def __init__(self, timings: Optional[dict], name: str):
    self.timings, self.name = timings, name
    self.start = self.last = time.perf_counter()
    self.batches, self.images, self.first = 0, 0, None
    self.compile_seconds = None

  def compile(self, fn, *args, **kwargs) -> None:
    """Compiles jitted `fn` for `args` ahead of its first call, timing it (the call then
    finds the compiled program in JAX's cache; with the persistent cache on, a second run
    loads it from disk instead)."""
    if self.compile_seconds is None and hasattr(fn, 'lower'):
      t0 = time.perf_counter()
      fn.lower(*args, **kwargs).compile()
      self.compile_seconds = time.perf_counter() - t0

  def batch(self, valid) -> None:
    now = time.perf_counter()
    if self.first is None:
      self.first = now - self.last
    self.last = now
    self.batches += 1
    self.images += int(np.sum(valid))

  def done(self) -> None:
    if self.timings is not None and self.batches:
      total = time.perf_counter() - self.start
      steady = (total - self.first) / (self.batches - 1) if self.batches > 1 else None
      self.timings[self.name] = {
          'seconds': total, 'first_batch_seconds': self.first, 'batches': self.batches,
          'images': self.images,
          # The first batch's excess over a later one: compilation (or a cache load).
          'compile_seconds': self.compile_seconds if self.compile_seconds is not None else
                             max(self.first - steady, 0.) if steady is not None else None}


def run_stage1(params, config, batches, first_batch, acc, chunk, mesh, save,
               timings=None, objective=None) -> None:
  """Taylor and the ablation scan over `batches` (batch numbers from first_batch)."""
  objective = _objective(config, objective)
  clock = _StageClock(timings, 'importance stage 1')
  for k, batch in enumerate(batches, start=first_batch):
    images, labels, index = parallel.shard_batch(
        mesh, (precision.like_params(batch.images, params), batch.labels,
               np.asarray(batch.index, np.int32)))
    args = (params, config, images, labels, chunk, objective, index)
    split = mesh if parallel.mask_shards(mesh) > 1 else None  # the heads over 'masks'
    clock.compile(stage1_batch, *args, mesh=split)
    grads, pool_grads, ablation, pool_ablation, out = stage1_batch(*args, mesh=split)
    full = full_metrics(out, labels, objective)
    strata = _strata(out, labels, objective)
    logits = objective.logits(out) if objective.label_metrics else None
    # With several processes, each reads back (and adds) only its own rows.
    add_stage1(acc, _global_batch(batch, mesh), *parallel.to_host(
        (grads, ablation, full, strata, logits, pool_grads, pool_ablation)))
    save(acc, 1, k + 1)
    clock.batch(batch.valid)
  clock.done()
  save(acc, 2, 0, force=True)


def stage2_sums(plan: Stage2Plan) -> dict:
  """Per-image rows for the images of the stage-2 subset (bounded by its size)."""
  s = len(plan.subset)
  acc = {}
  for m in ABLATION_METRICS:
    acc[f's2_full_{m}'] = np.full(s, np.nan)
    acc[f's2_curve_{m}'] = np.full((s, len(plan.unique_masks)), np.nan)
    acc[f's2_partial_{m}'] = np.full((s, len(plan.heads), len(plan.keeps)), np.nan)
  return acc


def run_stage2(params, config, batches, first_batch, acc, plan: Stage2Plan, renormalize,
               chunk, mesh, save, timings=None, objective=None) -> None:
  """Pruning curves and partial pruning over `batches` of the subset, into `acc`'s
  per-subset-image rows (batch.index indexes the subset)."""
  if 's2_full_loss' not in acc:
    acc.update(stage2_sums(plan))
  masks = parallel.replicate(mesh, plan.unique_masks)
  heads, keeps = jnp.asarray(plan.heads), jnp.asarray(plan.keeps)
  first_layers = jnp.asarray(plan.first_layers, jnp.int32)
  layers = jnp.asarray(plan.layers, jnp.int32)
  clock = _StageClock(timings, 'importance stage 2')
  for k, batch in enumerate(batches, start=first_batch):
    images, labels = parallel.shard_batch(
        mesh, (precision.like_params(batch.images, params), batch.labels))
    args = (params, config, images, labels, masks, first_layers, heads, keeps, renormalize,
            layers, chunk, objective)
    clock.compile(stage2_batch, *args)
    full, curves, partial = parallel.to_host(stage2_batch(*args))
    valid = _global_batch(batch, mesh).valid
    rows = _global_batch(batch, mesh).index[valid]
    for m in ABLATION_METRICS:
      acc[f's2_full_{m}'][rows] = np.asarray(full[m])[valid]
      if curves:
        acc[f's2_curve_{m}'][rows] = np.moveaxis(np.asarray(curves[m]), -1, 0)[valid]
      if partial:
        acc[f's2_partial_{m}'][rows] = np.moveaxis(np.asarray(partial[m]), -1, 0)[valid]
    save(acc, 2, k + 1)
    clock.batch(batch.valid)
  clock.done()


def _mean_se(x: np.ndarray) -> tuple:
  """Mean and standard error of the mean over the first axis (float64)."""
  x = np.asarray(x, np.float64)
  n = x.shape[0]
  mean = x.mean(0)
  se = x.std(0, ddof=1) / np.sqrt(n) if n > 1 else np.full_like(mean, np.nan)
  return mean, se


def _global_batch(batch, mesh):
  """This process's batch at its rows of the global batch (the others invalid)."""
  if not parallel.is_multiprocess(mesh):
    return batch
  return batch._replace(valid=parallel.global_rows(batch.valid, mesh),
                        labels=parallel.global_rows(batch.labels, mesh, -1),
                        index=parallel.global_rows(batch.index, mesh, -1))


# Per-image rows (one process fills each row; the others hold the fill): merged, not summed.
_ROWS_FILL = {'target': -1, 'per_image_prediction': -1}


def reduce_sums(acc: dict, mesh) -> dict:
  """The sums of every process of `mesh` (exact, float64); per-image rows merged."""
  if not parallel.is_multiprocess(mesh):
    return acc
  rows = {k: v for k, v in acc.items()
          if k.startswith(('per_image_', 's2_')) or k in _ROWS_FILL}
  out = parallel.allreduce_sums({k: v for k, v in acc.items() if k not in rows}, mesh)
  out.update({k: parallel.allgather_rows(v, mesh, _ROWS_FILL.get(k, np.nan))
              for k, v in rows.items()})
  return out


def finalise(acc: dict, plan: Stage2Plan, variants: list,
             objective: Optional[Objective] = None) -> ImportanceResult:
  """Means and changes against the unmasked model, from the sums of stage 1 and the
  per-image rows of stage 2 (means over its subset, with standard errors)."""
  scores, baseline = head_scores(acc)
  count = acc['count']
  shape = (len(plan.order_names), len(plan.counts))
  curves, partial, whole = {}, {}, {}
  for m in ABLATION_METRICS:
    full = acc[f's2_full_{m}']                                       # [S]
    per_mask = np.concatenate([acc[f's2_curve_{m}'], full[:, None]], axis=1)
    values = per_mask[:, plan.mask_of]                               # -1: the unmasked model
    curves[m] = _mean_se(values)
    # As for ablation: loss increase, accuracy drops, KL; paired with each image's own
    # unmasked value.
    pruned = acc[f's2_partial_{m}']                                  # [S, E, V]
    sign = {'loss': 1., 'kl': 1.}.get(m, -1.)
    change = pruned if m == 'kl' else sign * (pruned - full[:, None, None])
    partial[m] = _mean_se(change[..., :len(variants)])
    whole[m] = _mean_se(change[..., len(variants)])  # the last keep: the whole head
  subset_base = Baseline(*(float(np.mean(acc[f's2_full_{m}'])) for m in ('loss', 'top1', 'top5')))
  return ImportanceResult(
      **scores, baseline=baseline, curve_counts=np.asarray(plan.counts),
      curve_orders=tuple(plan.order_names),
      **{f'curve_{m}': curves[m][0].reshape(shape) for m in ABLATION_METRICS},
      partial_heads=np.asarray(plan.heads),
      partial_variants=tuple((v.name, v.description) for v in variants),
      **{f'partial_{m}': partial[m][0] for m in ABLATION_METRICS},
      images=int(count), labelled_images=int(acc['labelled']),
      label_free=int(acc['labelled']) < int(count),
      **{f'per_image_{k}': acc.get(f'per_image_{k}') for k in PER_IMAGE},
      subset_index=np.asarray(plan.subset, np.int64), subset_baseline=subset_base,
      **{f'curve_{m}_se': curves[m][1].reshape(shape) for m in ABLATION_METRICS},
      **{f'partial_{m}_se': partial[m][1] for m in ABLATION_METRICS},
      **{f'partial_whole_{m}': whole[m][0] for m in ABLATION_METRICS},
      **{f'partial_whole_{m}_se': whole[m][1] for m in ABLATION_METRICS},
      per_image_loss=acc.get('per_image_loss'),
      per_image_prediction=(None if acc.get('per_image_prediction') is None
                            else acc['per_image_prediction'].astype(np.int32)),
      objective=objective.describe() if objective is not None else None)


def compute_importance(params, config: ViTConfig, source: BatchSource,
                       options: ImportanceOptions = ImportanceOptions(), mesh=None,
                       store: Optional[ProgressStore] = None,
                       timings: Optional[dict] = None,
                       objective: Optional[Objective] = None) -> ImportanceResult:
  """Every importance metric, streamed over the images of `source`.

  Stage 1 (Taylor, ablation) reads every image; stage 2 (pruning curves, partial pruning)
  a class-stratified subset of options.subset_images of them (all when there are fewer).
  mesh: a parallel.batch_mesh() (default: every device of every process, as a 2-D
  (batch x masks) mesh when options.mask_shards > 1; with several processes each reads
  only its shard of `source` — and of the subset — and the sums are reduced exactly).
  store: where progress is saved after batches, so that an interrupted run with the same
  store continues (one store per process; all processes resume together
  or start over). timings: a dict to which each stage's wall time is added.
  objective: default classification for a classifier, embedding distortion otherwise
  (`classes_objective` for a class matrix). options.dtype 'bfloat16' runs the forwards in
  bfloat16 (the metrics are still float32, see precision.py).
  """
  objective = _objective(config, objective)
  if objective.kind == 'embedding':
    objective = dataclasses.replace(objective, taylor_probes=options.taylor_probes,
                                    seed=options.seed)
  if mesh is None:
    mesh = parallel.batch_mesh(mask_shards=options.mask_shards)
  elif options.mask_shards not in (1, parallel.mask_shards(mesh)):
    raise OptionError('mask_shards', f'{options.mask_shards} differs from the given mesh\'s '
                      f'\'masks\' axis ({parallel.mask_shards(mesh)})', ImportanceOptions)
  n_images, whole = len(source), source
  # No bigger batch than the images need (a padded batch computes its padding too).
  batch_size = parallel.local_batch_size(min(options.batch_size, max(n_images, 1)), mesh)
  if parallel.is_multiprocess(mesh):
    source = process_shard(source, batch_size, jax.process_index(),
                           parallel.process_count(mesh))
  chunk = options.chunk or default_chunk()
  variants = partial_variants(config, options.partial_radii, options.partial_region)
  params = parallel.replicate(mesh, precision.cast(params, options.dtype))
  save = _Saver(store, options.save_every_seconds)

  stage, first, acc = 1, 0, stage1_sums(config, n_images, options.per_image)
  saved = store.load() if store else None
  if not parallel.agree(-1 if saved is None else saved[0] * 4 + int(saved[1]['stage']), mesh):
    saved = None  # processes saved at different batches: all start over
  if saved is not None:
    first, acc = saved
    stage = int(acc.pop('stage'))
  if stage == 1:
    run_stage1(params, config, source.batches(batch_size, first, progress=options.progress,
                                              desc='importance 1/2'),
               first, acc, chunk, mesh, save, timings, objective)
    first = 0
  plan = plan_stage2(reduce_sums(acc, mesh), config, options, variants, objective)
  subset = subset_source(whole, plan.subset)
  # No more padding than the device count needs when the subset is smaller than a batch.
  batch2 = parallel.local_batch_size(min(options.batch_size, max(len(subset), 1)), mesh)
  if parallel.is_multiprocess(mesh):
    subset = process_shard(subset, batch2, jax.process_index(), parallel.process_count(mesh))
  run_stage2(params, config, subset.batches(batch2, first, progress=options.progress,
                                            desc='importance 2/2'),
             first, acc, plan, options.renormalize, chunk, mesh, save, timings, objective)
  if timings is not None:  # what each stage evaluated, for the cost report (cost.stage1/2)
    timings.setdefault('importance stage 1', {}).update(
        taylor_probes=objective.taylor_probes if objective.kind == 'embedding' else 1)
    timings.setdefault('importance stage 2', {}).update(
        images=len(plan.subset), first_layers=plan.first_layers, layers=plan.layers,
        variants=len(variants))
  return finalise(reduce_sums(acc, mesh), plan, variants, objective)
