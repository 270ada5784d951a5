// What kind is each head: the same rules as vit_jax_analytics/head_kinds.py (and
// patterns.describe_pattern), applied in the page to the strength view's arrays, so that
// the header, the grids' tooltips, the locality table and the cluster names say what
// `vit-analytics kinds` says. tests/test_plugin_views2.py checks both agree on real runs.

export const KINDS = ['neighbour-offset', 'offset', 'self', 'class-token', 'local', 'mixed', 'global'];
const LOCAL_BELOW = 0.5, GLOBAL_ABOVE = 0.85;

// patterns.describe_pattern of a mean re-centred pattern [2n-1][2n-1] (weights) and the
// share of attention on the class token.
export function describePattern(pattern, toCls) {
  const side = pattern.length, c = (side - 1) / 2;
  let sum = 0;
  for (const row of pattern) for (const v of row) sum += v;
  const total = sum + toCls;
  if (total <= 0) return 'empty';
  if (toCls / total > 0.5) return 'class-token-focused';
  const s = Math.max(sum, 1e-12);
  let best = -Infinity, by = 0, bx = 0, local = 0, row = 0, column = 0;
  pattern.forEach((r, y) => r.forEach((v, x) => {
    const p = v / s;
    if (p > best) { best = p; by = y; bx = x; }   // the first maximum, as np.argmax
    if (Math.max(Math.abs(y - c), Math.abs(x - c)) <= 1) local += p;
    if (y === c) row += p;
    if (x === c) column += p;
  }));
  const sign = (d) => (d >= 0 ? `+${d}` : `${d}`);
  if (pattern[c][c] / s > 0.5) return 'self';
  if (best > 0.4) return `offset (${sign(by - c)}, ${sign(bx - c)})`;
  if (local > 0.6) return 'local';
  if (row > 0.6) return 'row';
  if (column > 0.6) return 'column';
  return 'global';
}

// The kind of one head from its pattern's name and its mean distance ÷ uniform's.
export function kindOf(name, distanceRatio) {
  const m = /^offset \(([-+]\d+), ([-+]\d+)\)$/.exec(name);
  if (m) return Math.max(Math.abs(+m[1]), Math.abs(+m[2])) === 1 ? 'neighbour-offset' : 'offset';
  if (name === 'self') return 'self';
  if (name === 'class-token-focused') return 'class-token';
  if (['local', 'row', 'column'].includes(name) || distanceRatio < LOCAL_BELOW) return 'local';
  if (distanceRatio >= GLOBAL_ABOVE) return 'global';
  return 'mixed';
}

// [L][H] kinds from strength arrays: offset_ratio [L][H][2h-1][2w-1] (× uniform 1/T),
// cls_share [L][H] or null, mean_distance [L][H], the uniform head's mean distance, T.
export function headKinds({offsetRatio, clsShare, distance, uniformDistance, T}) {
  return offsetRatio.map((layer, l) => layer.map((m, h) => {
    const pattern = m.map((row) => row.map((v) => v / T));
    const name = describePattern(pattern, clsShare ? clsShare[l][h] : 0);
    return kindOf(name, uniformDistance ? distance[l][h] / uniformDistance : NaN);
  }));
}

// The most common kinds of a set of heads, as "local (4), mixed (2)".
export function kindMix(kinds, heads) {
  const counts = new Map();
  for (const [l, h] of heads) counts.set(kinds[l][h], (counts.get(kinds[l][h]) || 0) + 1);
  return [...counts.entries()].sort((a, b) => b[1] - a[1] || KINDS.indexOf(a[0]) - KINDS.indexOf(b[0]));
}
