"""What kind is each head? Names heads from the strength statistics with the project's own
pattern naming (`patterns.describe_pattern`, applied to each head's mean attention by
offset) and its mean attention distance against uniform attention, and measures how well
the pattern autoencoder's head clusters separate those kinds (purity, against the purity
of random clusterings of the same sizes).

Pure functions of typed results (no I/O); `run_summary` reads a run directory for
notebooks and for `vit-analytics kinds`.
"""

from __future__ import annotations

import collections
from typing import Optional

import numpy as np

from vit_jax_analytics.errors import DataError
from vit_jax_analytics.logdir import reader
from vit_jax_analytics.patterns import describe_pattern
from vit_jax_analytics.results import PatternResult, StrengthResult

# Kinds, most specific first. A head is
#   neighbour-offset  named 'offset (dy, dx)' with (dy, dx) one of the 8 neighbours
#   offset            named 'offset (dy, dx)' further away
#   self              named 'self' (over half its attention on its own patch)
#   class-token       named 'class-token-focused'
#   local             named 'local', 'row' or 'column', or mean distance < LOCAL_BELOW x uniform
#   global            mean distance >= GLOBAL_ABOVE x uniform
#   mixed             the rest: diffuse but nearer than uniform
KINDS = ('neighbour-offset', 'offset', 'self', 'class-token', 'local', 'mixed', 'global')
LOCAL_BELOW = 0.5
GLOBAL_ABOVE = 0.85


def head_names(strength: StrengthResult) -> np.ndarray:
  """[L, H] describe_pattern of each head's mean attention by offset (and class-token
  share): 'offset (+0, +1)', 'self', 'local', 'row', 'column', 'class-token-focused',
  'global'."""
  L, H = strength.mean_distance.shape
  cls = strength.cls_share if strength.cls_share is not None else np.zeros((L, H))
  out = np.empty((L, H), object)
  for l in range(L):
    for h in range(H):
      out[l, h] = describe_pattern(np.asarray(strength.offset_mean[l, h], np.float64),
                                   float(cls[l, h]))
  return out


def parse_offset(name: str) -> Optional[tuple]:
  """'offset (+0, -1)' -> (0, -1); other names -> None."""
  if not name.startswith('offset ('):
    return None
  dy, dx = name[len('offset ('):-1].split(',')
  return int(dy), int(dx)


def distance_ratio(strength: StrengthResult) -> np.ndarray:
  """[L, H] mean attention distance / that of uniform attention on the same grid."""
  return strength.mean_distance / strength.baselines['uniform']['mean_distance']


def head_kinds(strength: StrengthResult, local_below: float = LOCAL_BELOW,
               global_above: float = GLOBAL_ABOVE) -> np.ndarray:
  """[L, H] kind of each head (see KINDS)."""
  if not 0 < local_below < global_above:
    raise ValueError(f'expected 0 < local_below < global_above, got {local_below}, '
                     f'{global_above}')
  names, ratio = head_names(strength), distance_ratio(strength)
  out = np.empty(names.shape, object)
  for idx, name in np.ndenumerate(names):
    offset = parse_offset(name)
    if offset is not None:
      out[idx] = 'neighbour-offset' if max(map(abs, offset)) == 1 else 'offset'
    elif name == 'self':
      out[idx] = 'self'
    elif name == 'class-token-focused':
      out[idx] = 'class-token'
    elif name in ('local', 'row', 'column') or ratio[idx] < local_below:
      out[idx] = 'local'
    elif ratio[idx] >= global_above:
      out[idx] = 'global'
    else:
      out[idx] = 'mixed'
  return out


def offset_share(strength: StrengthResult, layer: int, head: int, dy: int, dx: int) -> float:
  """Mean attention weight a patch query gives the key at offset (dy, dx) (key - query,
  in patches; over the queries that have such a key and over the images)."""
  om = strength.offset_mean[layer, head]
  cy, cx = om.shape[0] // 2, om.shape[1] // 2
  return float(om[cy + dy, cx + dx])


def layer_distance_ratio(strength: StrengthResult) -> np.ndarray:
  """[L] mean over each layer's heads of distance_ratio: locality against depth."""
  return distance_ratio(strength).mean(axis=1)


def purity(labels: np.ndarray, kinds: np.ndarray) -> float:
  """Share of heads whose kind is their cluster's most common kind."""
  labels, kinds = np.ravel(labels), np.ravel(kinds)
  if labels.shape != kinds.shape or not labels.size:
    raise ValueError(f'labels and kinds must be non-empty and of one shape, got '
                     f'{labels.shape} and {kinds.shape}')
  top = sum(collections.Counter(kinds[labels == c]).most_common(1)[0][1]
            for c in np.unique(labels))
  return top / labels.size


def chance_purity(labels: np.ndarray, kinds: np.ndarray, draws: int = 2000,
                  seed: int = 0) -> np.ndarray:
  """Purities of `draws` random clusterings with the same cluster sizes (the labels
  shuffled over heads): what purity clusters that ignore the patterns reach."""
  rng = np.random.default_rng(seed)
  labels = np.ravel(labels)
  return np.asarray([purity(rng.permutation(labels), kinds) for _ in range(draws)])


def clusters_by_kind(labels: np.ndarray, kinds: np.ndarray) -> dict:
  """{cluster: {kind: heads}} (most common kind first)."""
  labels, kinds = np.ravel(labels), np.ravel(kinds)
  return {int(c): dict(collections.Counter(kinds[labels == c]).most_common())
          for c in np.unique(labels)}


def head_label(flat: int, num_heads: int) -> str:
  return f'L{flat // num_heads}H{flat % num_heads}'


def summary(strength: StrengthResult, patterns: Optional[PatternResult] = None,
              importance=None) -> dict:
  """What a run shows, as plain data: every head's name, kind, distance ratio; the kinds
  counted; locality by layer; with patterns, the clusters' purity against the kinds (and
  chance); with importance, the heads ranked by ablation and Taylor scores."""
  names, kinds, ratio = head_names(strength), head_kinds(strength), distance_ratio(strength)
  L, H = kinds.shape
  out = {
      'uniform_mean_distance_px': strength.baselines['uniform']['mean_distance'],
      'heads': {head_label(l * H + h, H): {
          'name': names[l, h], 'kind': kinds[l, h],
          'mean_distance_px': round(float(strength.mean_distance[l, h]), 2),
          'distance_ratio': round(float(ratio[l, h]), 3),
          'self_share': round(float(strength.self_share[l, h]), 3),
          'peak_offset_share': round(float(strength.offset_mean[l, h].max()), 3)}
          for l in range(L) for h in range(H)},
      'kinds': dict(collections.Counter(kinds.ravel()).most_common()),
      'layer_distance_ratio': [round(float(r), 3) for r in layer_distance_ratio(strength)],
  }
  if patterns is not None:
    labels = patterns.head_cluster
    chance = chance_purity(labels, kinds)
    out['clusters'] = {
        'names': list(patterns.cluster_names),
        'by_kind': clusters_by_kind(labels, kinds),
        'purity': round(purity(labels, kinds), 3),
        'chance_purity_mean': round(float(chance.mean()), 3),
        'chance_purity_p99': round(float(np.quantile(chance, 0.99)), 3)}
  if importance is not None:
    for metric in ('ablation_loss', 'taylor'):
      scores = np.asarray(getattr(importance, metric))
      order = np.argsort(-scores.ravel(), kind='stable')
      out[f'top_{metric}'] = [(head_label(int(i), H), float(scores.ravel()[i]))
                              for i in order[:5]]
  return out


def run_summary(run_dir) -> dict:
  """summary() of a run directory's stored results (each analysis if present)."""
  present = reader.steps(run_dir)
  if 'strength' not in present:
    raise DataError(f'{run_dir}: no strength results (run `vit-analytics strength` or '
                    f'`analyze` into it first)')
  return summary(reader.read_strength(run_dir),
                   reader.read_patterns(run_dir) if 'patterns' in present else None,
                   reader.read_importance(run_dir) if 'importance' in present else None)
