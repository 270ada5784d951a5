// Colour scales, legends, axes and heat maps shared by the views.
//
// Three kinds of colour scale, each with its own legend:
//   sequential(lo, hi)   viridis, for non-negative magnitudes (importance, counts);
//   signed(values)       diverging, centred at 0, symmetric (changes: ablation drops, Δ);
//   ratio(values)        diverging on log(value), centred at 1× uniform, symmetric in log,
//                        so that attention below uniform is as visible as above it.

import {el, svg} from './dom.js';
import {fmt, tickFmt} from './format.js';

// Viridis, sampled; linear interpolation between stops.
const VIRIDIS = [[68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
                 [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37]];
// Blue - white - red (ColorBrewer RdBu, reversed so that "more" is red).
const DIVERGING = [[33, 102, 172], [67, 147, 195], [146, 197, 222], [209, 229, 240],
                   [247, 247, 247], [253, 219, 199], [244, 165, 130], [214, 96, 77],
                   [178, 24, 43]];
// Categorical colours (layer or head), Tableau 10.
export const CATEGORICAL = ['#4e79a7', '#f28e2b', '#e15759', '#76b7b2', '#59a14f', '#edc948',
                            '#b07aa1', '#ff9da7', '#9c755f', '#bab0ac'];

const MISSING = [204, 204, 204];   // #ccc: a value that is not a number

// [r, g, b] at t in [0, 1] (clipped) of a ramp; MISSING for NaN.
function rampRGB(stops, t) {
  if (t == null || Number.isNaN(t)) return MISSING;
  t = Math.min(1, Math.max(0, t)) * (stops.length - 1);
  const i = Math.min(Math.floor(t), stops.length - 2), f = t - i;
  const a = stops[i], b = stops[i + 1];
  return [Math.round(a[0] + f * (b[0] - a[0])), Math.round(a[1] + f * (b[1] - a[1])),
          Math.round(a[2] + f * (b[2] - a[2]))];
}

function ramp(stops, t) {
  if (t == null || Number.isNaN(t)) return '#ccc';
  const c = rampRGB(stops, t);
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}

export const colour = (t) => ramp(VIRIDIS, t);
export const divergingColour = (t) => ramp(DIVERGING, (t + 1) / 2);   // t in [-1, 1]
const divergingRGB = (t) => rampRGB(DIVERGING, (t + 1) / 2);

// The finite numbers of a value or nested arrays of them, in order (a walk: 3-4x faster than
// flat(Infinity) on the strength view's 280,000 values).
export function finite(values) {
  const out = [];
  const walk = (v) => {
    if (Array.isArray(v)) {
      for (let i = 0; i < v.length; i++) walk(v[i]);
    } else if (v != null && Number.isFinite(v)) {
      out.push(v);
    }
  };
  walk(values);
  return out;
}

// The k-th smallest of the numbers in a (a typed array, reordered in place): Hoare's
// selection, O(n) on average, where sorting all would be O(n log n).
function kthSmallest(a, k) {
  let lo = 0, hi = a.length - 1;
  while (hi > lo) {
    const x = a[lo], y = a[(lo + hi) >> 1], z = a[hi];
    const pivot = Math.max(Math.min(x, y), Math.min(Math.max(x, y), z));   // median of three
    let i = lo, j = hi;
    while (i <= j) {
      while (a[i] < pivot) i++;
      while (a[j] > pivot) j--;
      if (i <= j) { const t = a[i]; a[i] = a[j]; a[j] = t; i++; j--; }
    }
    if (k <= j) hi = j;
    else if (k >= i) lo = i;
    else return a[k];   // between j and i every value equals the pivot
  }
  return a[k];
}

export function extent(values) {
  const v = finite(values);
  let lo = Infinity, hi = -Infinity;
  for (const x of v) { if (x < lo) lo = x; if (x > hi) hi = x; }
  return v.length ? [lo, hi] : [0, 1];
}

// A scale: {kind, lo, hi, colour(v) (a CSS colour), rgb(v) (the same as [r, g, b]),
// ticks: [[value, label]], label}.
export function sequential(lo, hi, label) {
  const t = (v) => (v - lo) / ((hi - lo) || 1);
  return {kind: 'sequential', lo, hi, label, colour: (v) => colour(t(v)),
          rgb: (v) => rampRGB(VIRIDIS, t(v)), ticks: [[lo, fmt(lo)], [hi, fmt(hi)]]};
}

// A grey scale (white low, black high) for what colour is drawn over: the pattern map's
// decoded patterns under the selected head's red heat and the clusters' outlines.
const GREYS = [[250, 250, 250], [20, 20, 20]];
export function grey(lo, hi, label) {
  const t = (v) => (v - lo) / ((hi - lo) || 1);
  return {kind: 'sequential', lo, hi, label, colour: (v) => ramp(GREYS, t(v)),
          rgb: (v) => rampRGB(GREYS, t(v)), stops: [[0, GREYS[0]], [1, GREYS[1]]],
          ticks: [[lo, fmt(lo)], [hi, fmt(hi)]]};
}

export function signed(values, label) {
  const [lo, hi] = extent(values);
  const max = Math.max(Math.abs(lo), Math.abs(hi)), m = max || 1;
  return {kind: 'signed', lo: -m, hi: m, label, colour: (v) => divergingColour(v / m),
          rgb: (v) => divergingRGB(v / m), ticks: max ? [[-m, fmt(-m)], [0, '0'], [m, fmt(m)]] : [[0, 'all 0']]};
}

// A metric with negative values gets the signed scale, else the sequential one.
export function autoScale(values, label) {
  const [lo, hi] = extent(values);
  return lo < 0 ? signed(values, label) : sequential(lo, hi, label);
}

// Ratios to uniform (1 = uniform) on a log scale fitted to the values shown: white at 1×,
// full red at their largest ratio, full blue at their smallest (each side on its own log
// range, so a map that is mostly a little below uniform and one cell 60× above shows that
// cell bright red, not a sea of blue). The legend's ends are the data's range. Each side
// spans at least 1.5× (near-uniform maps stay pale) and at most 1000× (the low side: an
// edge offset with almost no attention cannot wash the rest out); values <= 0 are the
// floor.
export function ratio(values, label = '× uniform attention', opts = {}) {
  const v = finite(values);
  let lo = Infinity, hi = -Infinity;
  for (const x of v) if (x > 0) { if (x < lo) lo = x; if (x > hi) hi = x; }
  if (!(hi > 0)) { lo = 1; hi = 1; }
  // robust: each side ends at that quantile of its values (above / below uniform) instead of
  // its extreme, and what lies beyond is drawn at the end's colour: one 87x head then does
  // not leave every other head's 2-5x pale.
  let clipHi = false, clipLo = false;
  if (opts.robust) {
    const above = [], below = [];
    for (const x of v) { if (x > 1) above.push(Math.log(x)); else if (x > 0 && x < 1) below.push(-Math.log(x)); }
    if (above.length) { const q = Math.exp(quantile(above, opts.robust)); clipHi = q < hi; hi = q; }
    if (below.length) { const q = Math.exp(-quantile(below, opts.robust)); clipLo = q > lo; lo = q; }
  }
  const up = Math.min(Math.max(Math.log(Math.max(hi, 1)), Math.log(1.5)), Math.log(1e6));
  const down = Math.min(Math.max(-Math.log(Math.min(lo, 1)), Math.log(1.5)), Math.log(1e3));
  const t = (x) => (x > 0 ? (Math.log(x) >= 0 ? Math.min(1, Math.log(x) / up) : Math.max(-1, Math.log(x) / down)) : -1);
  const show = (x) => `${fmt(x)}×`;
  const shownLo = Math.max(Math.min(lo, 1), Math.exp(-down)), shownHi = Math.max(hi, 1);
  return {kind: 'ratio', lo: Math.exp(-down), hi: Math.exp(up), label, t, robust: opts.robust || null,
          colour: (x) => divergingColour(t(x)), rgb: (x) => divergingRGB(t(x)),
          dataLo: shownLo, dataHi: shownHi,
          ticks: [[shownLo, (clipLo ? '≤' : '') + show(shownLo)], [1, '1× uniform'],
                  [shownHi, (clipHi ? '≥' : '') + show(shownHi)]]};
}

// The q-quantile of the numbers in `a` (numpy's default: linear between the order
// statistics at q (n - 1)); `a` is left as it is.
export function quantile(a, q) {
  const sorted = Float64Array.from(a).sort();
  const pos = q * (sorted.length - 1), i = Math.floor(pos), f = pos - i;
  return i + 1 < sorted.length ? sorted[i] + f * (sorted[i + 1] - sorted[i]) : sorted[i];
}

// A sequential scale on log10 of the values (the positive ones; 0 and below are grey).
export function logScale(values, label) {
  const v = finite(values).filter((x) => x > 0);
  let [lo, hi] = v.length ? extent(v.map(Math.log10)) : [0, 1];
  if (hi - lo < 1e-9) { lo -= 0.5; hi += 0.5; }
  const t = (x) => (x > 0 ? (Math.log10(x) - lo) / (hi - lo) : NaN);
  return {kind: 'sequential', scale: 'log', lo, hi, label: `${label} (log scale; grey: ≤ 0)`,
          colour: (x) => colour(t(x)), rgb: (x) => rampRGB(VIRIDIS, t(x)),
          ticks: [[lo, fmt(10 ** lo)], [hi, fmt(10 ** hi)]]};
}

// A sequential scale on the values' ranks (1 = the largest, brightest).
export function rankScale(values, label) {
  const v = finite(values), n = v.length;
  const order = [...v].sort((a, b) => b - a);
  const rank = (x) => { const i = order.indexOf(x); return i < 0 ? NaN : i + 1; };
  const t = (x) => (n > 1 ? 1 - (rank(x) - 1) / (n - 1) : 1);
  return {kind: 'sequential', scale: 'rank', lo: 0, hi: 1, label: `${label} (rank)`,
          colour: (x) => colour(t(x)), rgb: (x) => rampRGB(VIRIDIS, t(x)),
          ticks: [[0, `rank ${n}`], [1, 'rank 1']]};
}

// A domain with 6% padding on each side (points at the ends are drawn whole).
export function padded(values) {
  const [lo, hi] = extent(values);
  const pad = (hi - lo) * 0.06 || Math.abs(hi) * 0.06 || 1;
  return [lo - pad, hi + pad];
}

// Ranks (1 = the largest; ties get their mean rank).
export function ranks(xs) {
  const order = xs.map((x, i) => [x, i]).sort((p, q) => q[0] - p[0]);
  const r = new Array(xs.length);
  for (let i = 0; i < order.length;) {
    let j = i;
    while (j + 1 < order.length && order[j + 1][0] === order[i][0]) j++;
    for (let k = i; k <= j; k++) r[order[k][1]] = (i + j) / 2 + 1;
    i = j + 1;
  }
  return r;
}

// Spearman's rank correlation of two equally long lists (NaN if either is constant).
export function spearman(a, b) {
  const ra = ranks(a), rb = ranks(b), n = a.length;
  const ma = ra.reduce((s, x) => s + x, 0) / n, mb = rb.reduce((s, x) => s + x, 0) / n;
  let num = 0, da = 0, db = 0;
  for (let i = 0; i < n; i++) {
    num += (ra[i] - ma) * (rb[i] - mb); da += (ra[i] - ma) ** 2; db += (rb[i] - mb) ** 2;
  }
  return da && db ? num / Math.sqrt(da * db) : NaN;
}

// Layers are ordered: one sequential ramp (dark = first, bright = last) everywhere a colour
// stands for a layer, so L10 never looks like L0. Heads are not ordered: categorical
// colours, Tableau 10 up to 10 heads, evenly spaced hues beyond.
export const layerColour = (l, L) => colour(L > 1 ? 0.9 * l / (L - 1) : 0);
export const headColour = (h, H) => (H <= CATEGORICAL.length ? CATEGORICAL[h]
    : `hsl(${Math.round(360 * h / H)}, 65%, 48%)`);
// The key of layerColour: a ramp from L0 to the last layer.
export function layerKey(L, id) {
  const sc = sequential(0, Math.max(1, L - 1) / 0.9, 'layer');
  sc.hi = Math.max(1, L - 1);
  sc.colour = (l) => layerColour(l, L);
  sc.ticks = [[0, 'L0'], [Math.max(1, L - 1), `L${L - 1}`]];
  const node = legend({...sc, stops: Array.from({length: 9}, (_, i) => [i / 8, rampRGB(VIRIDIS, 0.9 * i / 8)])}, 160, id);
  return node;
}

// A legend for any scale: the ramp with its ticks (centre tick for diverging scales).
export function legend(scale, width = 180, id) {
  const gid = 'grad' + Math.random().toString(36).slice(2);
  const pos = (t) => 10 + t * width;
  const frac = scale.kind === 'ratio'
      ? (v) => (Math.log(v) - Math.log(scale.dataLo)) / ((Math.log(scale.dataHi) - Math.log(scale.dataLo)) || 1)
      : (v) => (v - scale.lo) / ((scale.hi - scale.lo) || 1);
  // The ramp as the scale colours its range: a ratio legend spans the data's range, with
  // white where 1× falls in it.
  const offsets = scale.stops || (scale.kind === 'ratio'
      ? Array.from({length: 17}, (_, i) => {
        const v = Math.exp(Math.log(scale.dataLo) + i / 16 * (Math.log(scale.dataHi) - Math.log(scale.dataLo)));
        return [i / 16, scale.rgb(v)];
      })
      : (scale.kind === 'sequential' ? VIRIDIS : DIVERGING).map((c, i, a) => [i / (a.length - 1), c]));
  const stops = offsets.map(([o, c]) => svg('stop', {offset: `${100 * o}%`, 'stop-color': `rgb(${c})`}));
  // Tick labels that would overlap drop out, the middle one first (the ends say the range).
  let ticks = scale.ticks.map(([v, label]) => [Math.min(1, Math.max(0, frac(v))), label]);
  // Each label's [left, right] as it is anchored (start, middle, end), at ~6.2 px a character.
  const span = (a, i) => {
    const w = 6.2 * a[i][1].length, x = pos(a[i][0]);
    return i === 0 ? [x, x + w] : i === a.length - 1 ? [x - w, x] : [x - w / 2, x + w / 2];
  };
  const overlaps = (a) => a.some((_, i) => i && span(a, i)[0] < span(a, i - 1)[1] + 4);
  if (ticks.length === 3 && overlaps(ticks)) ticks = [ticks[0], [ticks[1][0], '1×'], ticks[2]];
  if (ticks.length === 3 && overlaps(ticks)) ticks = [ticks[0], ticks[2]];
  const node = svg('svg', {width: width + 30, height: 42, class: 'legend',
                           'data-kind': scale.kind},
      svg('defs', {}, svg('linearGradient', {id: gid}, stops)),
      svg('rect', {x: 10, y: 4, width, height: 10, fill: `url(#${gid})`}),
      ticks.map(([t, label], i, a) => [
          svg('line', {x1: pos(t), x2: pos(t), y1: 14, y2: 18, class: 'axis'}),
          svg('text', {x: pos(t), y: 28, class: 'tick legend-tick',
                       'text-anchor': i === 0 ? 'start' : i === a.length - 1 ? 'end' : 'middle'},
              label)]),
      svg('text', {x: 10 + width / 2, y: 40, 'text-anchor': 'middle', class: 'axis-label'},
          scale.label || ''));
  if (id) node.id = id;
  return node;
}

// Ticks at "nice" round numbers inside [lo, hi]; integer: only whole numbers (layers,
// distances, epochs). Values within a step's 1e-9 of 0 are exactly 0 (no "-1.6e-9").
export function niceTicks(lo, hi, count = 5, integer = false) {
  if (!(hi > lo)) return [lo];
  let step = Math.pow(10, Math.floor(Math.log10((hi - lo) / count)));
  for (const m of [1, 2, 5, 10]) {
    if ((hi - lo) / (step * m) <= count * 1.5) { step *= m; break; }
  }
  if (integer) step = Math.max(1, Math.round(step));
  const out = [];
  for (let v = Math.ceil(lo / step - 1e-9) * step; v <= hi + step * 1e-9; v += step) {
    out.push(Math.abs(v) < step * 1e-9 ? 0 : +v.toPrecision(12));
  }
  return out;
}

// Axes for line and scatter charts. opts: xInteger, yInteger (whole-number ticks),
// xTicks / yTicks (explicit tick values).
export function frame(width, height, xDomain, yDomain, xLabel, yLabel, opts = {}) {
  const m = {l: 58, r: 18, t: 8, b: 34, ...(opts.margin || {})};
  const x = (v) => m.l + (v - xDomain[0]) / ((xDomain[1] - xDomain[0]) || 1) * (width - m.l - m.r);
  const y = (v) => height - m.b - (v - yDomain[0]) / ((yDomain[1] - yDomain[0]) || 1) *
      (height - m.t - m.b);
  const g = svg('g', {});
  g.append(svg('line', {x1: m.l, x2: width - m.r, y1: height - m.b, y2: height - m.b, class: 'axis'}),
           svg('line', {x1: m.l, x2: m.l, y1: m.t, y2: height - m.b, class: 'axis'}));
  const xt = opts.xTicks || niceTicks(xDomain[0], xDomain[1], opts.xCount || 5, opts.xInteger);
  const yt = opts.yTicks || niceTicks(yDomain[0], yDomain[1], 4, opts.yInteger);
  for (const xv of xt) {
    g.append(svg('line', {x1: x(xv), x2: x(xv), y1: height - m.b, y2: height - m.b + 3, class: 'axis'}),
             svg('text', {x: x(xv), y: height - m.b + 13, 'text-anchor': 'middle',
                          class: 'tick x-tick'}, opts.xFormat ? opts.xFormat(xv) : tickFmt(xv)));
  }
  for (const yv of yt) {
    g.append(svg('line', {x1: m.l - 3, x2: m.l, y1: y(yv), y2: y(yv), class: 'axis'}),
             svg('text', {x: m.l - 5, y: y(yv) + 3, 'text-anchor': 'end', class: 'tick y-tick'},
                 tickFmt(yv)));
  }
  g.append(svg('text', {x: (m.l + width - m.r) / 2, y: height - 4, 'text-anchor': 'middle',
                        class: 'axis-label'}, xLabel),
           svg('text', {x: 11, y: (m.t + height - m.b) / 2,
                        transform: `rotate(-90 11 ${(m.t + height - m.b) / 2})`,
                        'text-anchor': 'middle', class: 'axis-label'}, yLabel));
  return {g, x, y, m, width, height};
}

// A dashed horizontal reference line with a label at its right end.
export function reference(f, value, label, cls = 'reference') {
  if (value == null || !Number.isFinite(value)) return [];
  const y = f.y(value);
  return [svg('line', {x1: f.m.l, x2: f.width - f.m.r, y1: y, y2: y, class: cls}),
          svg('text', {x: f.width - f.m.r - 2, y: y - 3, 'text-anchor': 'end',
                       class: 'reference-label'}, label)];
}

// A y domain that shows the data and the given reference values; from zero on request.
export function yDomain(values, refs = [], fromZero = false) {
  const [lo, hi] = extent([finite(values), finite(refs)]);
  const pad = (hi - lo) * 0.05 || Math.abs(hi) * 0.05 || 1;
  return [fromZero ? Math.min(0, lo) : lo - pad, hi + pad];
}

// Colour key for categorical colours: `${prefix}${i}` swatches.
export function categoryKey(count, prefix, title) {
  if (prefix === 'L') return el('div', {class: 'keys category-key'}, layerKey(count));
  return el('div', {class: 'keys category-key'}, el('span', {class: 'help'}, `${title}: `),
      Array.from({length: count}, (_, i) => el('span', {style: `color:${headColour(i, count)}`},
                                               `■ ${prefix}${i} `)));
}

// matrix [rows][cols] drawn with the scale's colours, cell × cell pixels per value. The
// pixels are written directly (one putImageData), not as a fillRect per value: the strength
// view draws 280,000 values on the ViT-L/16 benchmark.
export function heatCanvas(matrix, scale, cell, opts = {}) {
  const rows = matrix.length, cols = matrix[0].length, width = cols * cell;
  const c = el('canvas', {width, height: rows * cell, class: opts.cls || ''});
  if (!width || !rows) return c;
  const ctx = c.getContext('2d');
  const image = ctx.createImageData(width, rows * cell);
  const px = new Uint32Array(image.data.buffer);   // one RGBA pixel per element
  for (let r = 0; r < rows; r++) {
    const line = r * cell * width;
    for (let k = 0; k < cols; k++) px.fill(rgba(scale.rgb(matrix[r][k])), line + k * cell, line + (k + 1) * cell);
    for (let y = 1; y < cell; y++) px.copyWithin(line + y * width, line, line + width);
  }
  ctx.putImageData(image, 0, 0);
  return c;
}

// An opaque [r, g, b] as one pixel of a Uint32Array over ImageData bytes (in the platform's
// byte order, whichever it is).
const PIXEL = new Uint8ClampedArray(4), PIXEL32 = new Uint32Array(PIXEL.buffer);
function rgba([r, g, b]) {
  PIXEL[0] = r; PIXEL[1] = g; PIXEL[2] = b; PIXEL[3] = 255;
  return PIXEL32[0];
}
