"""head_kinds on a hand-built ViT whose heads attend to known offsets (the kinds are known
by construction), and purity against hand-counted examples."""

import json

import numpy as np
import pytest

from vit_jax_analytics import head_kinds, strength
from vit_jax_analytics.batches import ArraySource
from tests.tiny import offset_heads_model, tiny_images

PATTERNS = ('left', 'right', 'up', 'self', 'uniform')


@pytest.fixture(scope='module')
def known():
  params, config = offset_heads_model(grid=6, patterns=PATTERNS, layers=2)
  images = tiny_images(4, config)
  result = strength.compute_strength(params, config, ArraySource(images),
                                     strength.StrengthOptions(batch_size=4, map_images=0,
                                                              progress=False))
  return result, config


def test_kinds_of_heads_built_to_attend_to_known_offsets(known):
  result, config = known
  names, kinds = head_kinds.head_names(result), head_kinds.head_kinds(result)
  for layer in range(config.num_layers):
    assert list(names[layer]) == ['offset (+0, -1)', 'offset (+0, +1)', 'offset (-1, +0)',
                                  'self', 'global']
    assert list(kinds[layer]) == ['neighbour-offset'] * 3 + ['self', 'global']
  # The left head gives (almost) all of a query's attention to its left neighbour.
  assert head_kinds.offset_share(result, 0, 0, 0, -1) > 0.95
  assert head_kinds.offset_share(result, 0, 0, 0, 1) < 0.01
  assert head_kinds.offset_share(result, 1, 2, -1, 0) > 0.95
  ratio = head_kinds.distance_ratio(result)
  # Uniform attention's mean distance is the baseline's (same grid, same definition).
  np.testing.assert_allclose(ratio[:, 4], 1., rtol=1e-3)
  # A neighbour is 1 patch away: 4 px here, against ~16 px for uniform on a 6 x 6 grid.
  np.testing.assert_allclose(result.mean_distance[:, :3], 4., rtol=0.05)
  np.testing.assert_allclose(head_kinds.layer_distance_ratio(result), ratio.mean(1))


def test_summary_is_plain_data(known):
  result, _ = known
  summary = head_kinds.summary(result)
  json.dumps(summary)
  assert summary['kinds'] == {'neighbour-offset': 6, 'self': 2, 'global': 2}
  assert summary['heads']['L1H1']['name'] == 'offset (+0, +1)'


def test_purity_against_hand_counts():
  labels = np.array([0, 0, 1, 1, 1, 2])
  kinds = np.array(['a', 'a', 'b', 'b', 'a', 'c'], object)
  assert head_kinds.purity(labels, kinds) == pytest.approx(5 / 6)
  assert head_kinds.clusters_by_kind(labels, kinds) == {0: {'a': 2}, 1: {'b': 2, 'a': 1},
                                                        2: {'c': 1}}
  # One cluster: purity is the majority share whatever the shuffle.
  one = np.zeros(6, int)
  assert set(head_kinds.chance_purity(one, kinds, draws=20)) == {0.5}
  # Perfect clusters score 1; shuffled ones less on average.
  perfect = np.array([0, 0, 0, 1, 1, 2])
  sorted_kinds = np.array(['a', 'a', 'a', 'b', 'b', 'c'], object)
  assert head_kinds.purity(perfect, sorted_kinds) == 1.
  assert head_kinds.chance_purity(perfect, sorted_kinds, draws=500).mean() < 0.9
  with pytest.raises(ValueError):
    head_kinds.purity(np.array([0, 1]), np.array(['a'], object))


def test_parse_offset():
  assert head_kinds.parse_offset('offset (+0, -1)') == (0, -1)
  assert head_kinds.parse_offset('offset (-2, +3)') == (-2, 3)
  assert head_kinds.parse_offset('global') is None
