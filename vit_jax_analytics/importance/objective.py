"""What "the model's output got worse" means: the `Objective`, and the per-image metrics
(loss, top-1, top-5, KL slots) it defines.

  classification  the model's logits (a classifier), or logits made from its embedding by a
                  user-supplied class matrix (`--classes-npz`: SigLIP text embeddings for
                  zero-shot, or a linear probe). Metrics: cross-entropy, top-1/5, KL.
  embedding       models without a classifier (SigLIP image towers, self-supervised
                  backbones): ablation is embedding distortion against the unmasked model's
                  pooled embedding e of the same image, per image:
                    loss slot: 1 - cos(e_masked, e)          ('cosine distortion')
                    kl slot:   |e_masked - e| / |e|          ('relative L2 distortion')
                    top1/top5: undefined (always 1, so their drops are 0)
                  Taylor: see taylor.py.
The metric slots keep their names (loss, top1, top5, kl) under both objectives, so pruning
curves and partial pruning run unchanged; `Objective.definitions` says what each slot is.
Targets are the labels, or the unmasked model's own prediction for unlabelled images.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax_analytics import precision
from vit_jax_analytics.errors import OptionError
from vit_jax_analytics.model import ViTConfig
from vit_jax_analytics.results import ABLATION_METRICS  # noqa: F401 (importance.ABLATION_METRICS)


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
    return precision.widen(flat_embedding(out_full))

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


def flat_embedding(out):
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


def resolve_objective(config: ViTConfig, objective: Optional[Objective]) -> Objective:
  """The objective given, or the model's default: resolved once, where a kernel is entered."""
  return default_objective(config) if objective is None else objective


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


def full_metrics(logits, labels, objective: Optional[Objective] = None):
  """Per-image metrics of the unmasked model, {metric: [B]}."""
  if objective is None:
    objective = Objective('classification') if logits.ndim == 2 else Objective('embedding')
  targets = targets_from(logits, labels, objective)
  return image_metrics(logits, targets, objective.reference(logits), objective)
