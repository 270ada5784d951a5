// Importance view: which heads matter. A layer × head grid, two metrics against each other,
// pruning curves, and why the selected head matters (partial pruning, per-image spread).

import {colour, extent, frame, legend} from './charts.js';
import {array, arrays, getJSON, q} from './data.js';
import {dropdown, el, svg, tip} from './dom.js';
import {METRIC_LABELS, fmt, headName} from './format.js';
import {onSelect, select, state} from './state.js';

const CURVE_PALETTE = ['#e15759', '#4e79a7', '#59a14f', '#f28e2b', '#b07aa1'];

export async function renderImportance(body, info) {
  const imp = await loadImportance(info.tags);
  const {meta} = imp;
  const summary = el('p', {class: 'help'},
      `${meta.images} images (${meta.labelled_images} labelled${meta.label_free ?
        '; unlabelled images use the model\'s own prediction as target' : ''}). ` +
      `Unmasked: top-1 ${fmt(meta.baseline.top1)}, loss ${fmt(meta.baseline.loss)}.`);
  const gridBox = el('div', {class: 'panel'});
  const scatterBox = el('div', {class: 'panel'});
  const curveBox = el('div', {class: 'panel'});
  const detailBox = el('div', {class: 'panel'});
  body.append(summary, el('div', {class: 'row'}, gridBox, scatterBox),
              el('div', {class: 'row'}, curveBox, detailBox));

  const grid = () => drawGrid(gridBox, imp);
  const scatter = () => drawScatter(scatterBox, imp);
  const detail = () => drawDetail(detailBox, imp);
  grid(); scatter(); drawCurves(curveBox, imp); await detail();
  // The pruning curves do not depend on the selected head.
  onSelect(grid, scatter, detail);
}

// Everything the importance panels draw from, fetched once per run.
async function loadImportance(tags) {
  const meta = await getJSON(`./meta?${q({analysis: 'importance'})}`);
  const metrics = Object.keys(meta.definitions);
  const [values, c, p] = await Promise.all([
      arrays('importance', metrics),
      arrays('importance', ['curve_counts', 'curve_top1', 'curve_kl', 'curve_loss']),
      arrays('importance', ['partial_heads', 'partial_loss', 'partial_top1', 'partial_kl'])]);
  let perImageTaylor = null;
  return {
    meta, values,
    curves: {counts: c.curve_counts, top1: c.curve_top1, kl: c.curve_kl, loss: c.curve_loss},
    partial: {heads: p.partial_heads, loss: p.partial_loss, top1: p.partial_top1,
              kl: p.partial_kl},
    L: values.taylor.length, H: values.taylor[0].length,
    options: metrics.map((m) => [m, METRIC_LABELS[m] || m]),
    // Large, and only the detail panel needs it: fetched once, on first use; null when the
    // run has no per-image importance.
    perImageTaylor: 'importance/per_image_taylor' in tags
        ? () => (perImageTaylor = perImageTaylor || array('importance/per_image_taylor')) : null,
  };
}

function drawGrid(box, imp) {
  const {values, L, H, options} = imp;
  const v = values[state.metric];
  const [lo, hi] = extent(v);
  const cell = Math.max(14, Math.min(34, Math.floor(300 / Math.max(L, H))));
  const s = svg('svg', {width: H * cell + 40, height: L * cell + 30, id: 'importance-grid'});
  for (let l = 0; l < L; l++) {
    s.append(svg('text', {x: 26, y: 20 + l * cell + cell / 2 + 4, 'text-anchor': 'end',
                          class: 'tick'}, `L${l}`));
    for (let h = 0; h < H; h++) {
      const rect = svg('rect', {x: 30 + h * cell, y: 20 + l * cell, width: cell - 1,
                                height: cell - 1, fill: colour((v[l][h] - lo) / ((hi - lo) || 1)),
                                class: 'imp-cell' + (l === state.layer && h === state.head ?
                                                     ' selected' : ''),
                                'data-layer': l, 'data-head': h,
                                onclick: () => select(l, h)});
      s.append(tip(rect, () => `${headName(l, h)} · ${METRIC_LABELS[state.metric] || state.metric}` +
                   ` = ${fmt(values[state.metric][l][h])}`));
    }
  }
  for (let h = 0; h < H; h++) {
    s.append(svg('text', {x: 30 + h * cell + cell / 2, y: 14, 'text-anchor': 'middle',
                          class: 'tick'}, `H${h}`));
  }
  box.replaceChildren(el('h3', {}, 'Importance of each layer × head'),
      dropdown(options, state.metric, (m) => { state.metric = m; drawGrid(box, imp); },
               'metric-select'),
      el('div', {}, s), legend(lo, hi, METRIC_LABELS[state.metric] || state.metric));
}

function drawScatter(box, imp) {
  const {values, L, H, options} = imp;
  const xs = values[state.scatterX].flat(), ys = values[state.scatterY].flat();
  const f = frame(300, 240, extent(xs), extent(ys), METRIC_LABELS[state.scatterX],
                  METRIC_LABELS[state.scatterY]);
  const s = svg('svg', {width: 300, height: 240, id: 'importance-scatter'}, f.g);
  for (let l = 0; l < L; l++) {
    for (let h = 0; h < H; h++) {
      const sel = l === state.layer && h === state.head;
      s.append(tip(svg('circle', {cx: f.x(values[state.scatterX][l][h]),
                                  cy: f.y(values[state.scatterY][l][h]), r: sel ? 6 : 4,
                                  class: 'point' + (sel ? ' selected' : ''),
                                  fill: colour(l / Math.max(1, L - 1)),
                                  onclick: () => select(l, h)}),
                   () => `${headName(l, h)}: x ${fmt(values[state.scatterX][l][h])}, ` +
                         `y ${fmt(values[state.scatterY][l][h])}`));
    }
  }
  box.replaceChildren(el('h3', {}, 'Two metrics, each head a point (colour = layer)'),
      el('label', {}, 'x ', dropdown(options, state.scatterX,
                                     (m) => { state.scatterX = m; drawScatter(box, imp); })),
      el('label', {}, ' y ', dropdown(options, state.scatterY,
                                      (m) => { state.scatterY = m; drawScatter(box, imp); })),
      el('div', {}, s));
}

function drawCurves(box, imp) {
  const {meta, curves, L, H} = imp;
  // Runs that averaged the curves over a subset store standard errors: fetched once, then
  // drawn as a band of +-1.96 SE (95%) around each metric order's curve.
  if (meta.subset_images != null && imp.curveSe === undefined) {
    imp.curveSe = null;
    arrays('importance', ['curve_top1_se', 'curve_kl_se', 'curve_loss_se'])
        .then((se) => { imp.curveSe = {top1: se.curve_top1_se, kl: se.curve_kl_se,
                                       loss: se.curve_loss_se}; drawCurves(box, imp); })
        .catch(() => {});
  }
  const m = state.curveMetric, rows = curves[m], counts = curves.counts;
  const se = imp.curveSe ? imp.curveSe[m] : null;
  const span = se ? extent(rows.flatMap((r, i) => r.flatMap((v, j) => {
    const e = Number.isFinite(se[i][j]) ? 1.96 * se[i][j] : 0;
    return [v - e, v + e];
  }))) : extent(rows);
  const f = frame(380, 240, [0, 100], span, '% of heads removed (least important first)',
                  m === 'top1' ? 'top-1 accuracy' : m === 'kl' ? 'KL to unmasked (nats)' : 'loss');
  const s = svg('svg', {width: 380, height: 240, id: 'pruning-curves'}, f.g);
  const px = counts.map((c) => 100 * c / (L * H));
  const randomRows = meta.curve_orders.map((o, i) => o.startsWith('random') ? rows[i] : null)
      .filter(Boolean);
  if (randomRows.length) s.append(...randomBand(f, px, randomRows));
  if (se) {
    meta.curve_orders.forEach((o, i) => {
      if (o.startsWith('random')) return;
      const e = se[i].map((v) => Number.isFinite(v) ? 1.96 * v : 0);
      const band = px.map((p, j) => `${f.x(p)},${f.y(rows[i][j] + e[j])}`).concat(
          px.map((p, j) => `${f.x(p)},${f.y(rows[i][j] - e[j])}`).reverse()).join(' ');
      s.append(svg('polygon', {points: band, class: 'se-band',
                               fill: CURVE_PALETTE[i % CURVE_PALETTE.length],
                               'fill-opacity': 0.12, stroke: 'none'}));
    });
  }
  const keys = el('div', {class: 'keys'});
  orderCurves(s, keys, f, px, rows, counts, meta.curve_orders);
  if (randomRows.length) keys.append(el('span', {class: 'random-key'},
                                       `■ random (mean, min–max of ${randomRows.length})`));
  const n = meta.subset_images, of = meta.images;
  const note = n == null ? '' : n < of
      ? `Means over a class-stratified subset of ${n} of the ${of} images` +
        (se ? '; shaded: ±1.96 standard errors.' : '.')
      : `Means over all ${n} images` + (se ? '; shaded: ±1.96 standard errors.' : '.');
  box.replaceChildren(el('h3', {}, 'Pruning curves: metric orders against random'),
      dropdown([['top1', 'top-1 accuracy'], ['kl', 'KL'], ['loss', 'loss']], m,
               (v) => { state.curveMetric = v; drawCurves(box, imp); }), el('div', {}, s), keys,
      el('div', {class: 'note', id: 'curve-subset'}, note));
}

// The random orders as one grey band (min–max) around their dashed mean.
function randomBand(f, px, randomRows) {
  const lo = px.map((_, j) => Math.min(...randomRows.map((r) => r[j])));
  const hi = px.map((_, j) => Math.max(...randomRows.map((r) => r[j])));
  const mean = px.map((_, j) => randomRows.reduce((a, r) => a + r[j], 0) / randomRows.length);
  const band = px.map((p, j) => `${f.x(p)},${f.y(hi[j])}`).concat(
      px.map((p, j) => `${f.x(p)},${f.y(lo[j])}`).reverse()).join(' ');
  return [svg('polygon', {points: band, class: 'band'}),
          svg('polyline', {points: px.map((p, j) => `${f.x(p)},${f.y(mean[j])}`).join(' '),
                           class: 'curve random'})];
}

// One coloured line per metric order, with a point (and tooltip) per pruning step.
function orderCurves(s, keys, f, px, rows, counts, orders) {
  orders.forEach((o, i) => {
    if (o.startsWith('random')) return;
    const c = CURVE_PALETTE[i % CURVE_PALETTE.length];
    const line = svg('polyline', {points: px.map((p, j) => `${f.x(p)},${f.y(rows[i][j])}`).join(' '),
                                  class: 'curve', stroke: c});
    s.append(line);
    px.forEach((p, j) => s.append(tip(svg('circle', {cx: f.x(p), cy: f.y(rows[i][j]), r: 2.5,
                                                     fill: c}),
        `${o}: ${counts[j]} heads removed → ${fmt(rows[i][j])}`)));
    keys.append(el('span', {style: `color:${c}`}, `■ ${o} `));
  });
}

async function drawDetail(box, imp) {
  const {layer: l, head: h} = state;
  const parts = [el('h3', {}, `Why does ${headName(l, h)} matter?`), ...partialBars(imp, l, h)];
  if (imp.perImageTaylor) {
    const v = await imp.perImageTaylor();
    parts.push(perImageHistogram(v.map((img) => img[l][h]).filter((x) => x != null)));
  } else {
    parts.push(el('p', {class: 'help'}, 'Per-image distributions: run importance with --per-image.'));
  }
  box.replaceChildren(...parts);
}

// Loss increase of the whole head and of each partial variant, as horizontal bars.
function partialBars(imp, l, h) {
  const {meta, partial, values, H} = imp;
  const row = partial.heads.indexOf(l * H + h);
  if (row < 0) {
    return [el('p', {class: 'help'}, 'Partial pruning was not computed for this head ' +
               '(only for the most important ones; see --partial-heads).')];
  }
  const bars = meta.partial_variants.map((v, j) => ({v, loss: partial.loss[row][j],
                                                      kl: partial.kl[row][j]}));
  const max = Math.max(1e-12, ...bars.map((b) => Math.abs(b.loss)),
                       Math.abs(values.ablation_loss[l][h]));
  const s = svg('svg', {width: 380, height: 18 * (bars.length + 1) + 10, id: 'partial-bars'});
  const all = {v: {name: 'whole head', description: 'the whole head masked out'},
               loss: values.ablation_loss[l][h], kl: values.ablation_kl[l][h]};
  [all, ...bars].forEach((b, j) => {
    const w = 200 * Math.abs(b.loss) / max;
    s.append(svg('text', {x: 118, y: 14 + 18 * j, 'text-anchor': 'end', class: 'tick'}, b.v.name),
             tip(svg('rect', {x: 122, y: 4 + 18 * j, width: Math.max(1, w), height: 13,
                              class: b.loss >= 0 ? 'bar' : 'bar negative'}),
                 `${b.v.description}: loss ${b.loss >= 0 ? '+' : ''}${fmt(b.loss)}, KL ${fmt(b.kl)}`),
             svg('text', {x: 126 + w, y: 14 + 18 * j, class: 'tick'}, fmt(b.loss)));
  });
  return [el('p', {class: 'help'}, 'Loss increase when only part of its attention is removed:'), s];
}

// Histogram (20 bins) of one head's Taylor importance over the images.
function perImageHistogram(xs) {
  const [lo, hi] = extent(xs);
  const bins = 20, counts = new Array(bins).fill(0);
  xs.forEach((x) => counts[Math.min(bins - 1, Math.floor((x - lo) / ((hi - lo) || 1) * bins))]++);
  const f = frame(380, 150, [lo, hi], [0, Math.max(...counts)], 'Taylor importance per image',
                  'images');
  const s = svg('svg', {width: 380, height: 150, id: 'per-image-hist'}, f.g);
  counts.forEach((c, i) => s.append(tip(svg('rect', {
      x: f.x(lo + i / bins * (hi - lo)), y: f.y(c), width: Math.max(1, 340 / bins - 2),
      height: f.y(0) - f.y(c), class: 'bar'}), `${c} images`)));
  return s;
}
