// Importance view: which heads matter. A layer × head grid, two metrics against each other,
// pruning curves, and why the selected head matters (partial pruning, per-image spread).

import {autoScale, extent, frame, layerColour, layerKey, legend, logScale, niceTicks, padded,
        rankScale, spearman} from './charts.js';
import {array, arrays, meta as analysisMeta} from './data.js';
import {dropdown, el, fold, hideTooltip, nextPaint, svg, tip} from './dom.js';
import {METRIC_LABELS, fmt, fmtSigned, headName, metricLabel} from './format.js';
import {onFilter, onMetric, onSelect, publish, select, selectionToken, setImageFilter, setMetric, stale,
        state, use} from './state.js';

const CURVE_PALETTE = ['#e15759', '#4e79a7', '#59a14f', '#f28e2b', '#b07aa1'];
const PARTIAL_METRICS = [['loss', 'loss increase'], ['top1', 'top-1 drop'], ['kl', 'KL to unmasked (nats)']];
// Curve and partial-pruning metrics [slot, label] under each objective.
const CURVE_METRICS = {classification: [['top1', 'top-1 accuracy'], ['kl', 'KL'], ['loss', 'loss']],
                       embedding: [['loss', 'cosine distortion'], ['kl', 'relative L2 distortion']]};
const PARTIAL_EMBEDDING = [['loss', 'cosine distortion'], ['kl', 'relative L2 distortion']];
const isEmbedding = (meta) => !!meta.objective && meta.objective.kind === 'embedding';
// Metrics the objective does not define (top-1/top-5 without a classifier) are not offered.
const UNDEFINED = {embedding: new Set(['ablation_top1', 'ablation_top5'])};
const defined = (meta, m) => !(UNDEFINED[isEmbedding(meta) ? 'embedding' : 'classification'] || new Set()).has(m);
const POOL_METRICS = ['taylor', 'ablation_loss', 'ablation_top1', 'ablation_top5', 'ablation_kl'];

// What importance was measured against, in one sentence for the summary.
function objectiveText(meta) {
  const o = meta.objective;
  if (!o || o.kind === 'classification' && o.classes == null) return 'Measured against the model\'s own classifier.';
  if (o.kind === 'classification') return `Measured against logits from the embedding and a class matrix (${o.source}, ${o.classes} classes).`;
  return `Measured against ${o.source || 'the pooled embedding'} (the model has no classifier): "loss" = cosine ` +
         'distortion 1 − cos(e_masked, e), "KL" = relative L2 distortion |e_masked − e| / |e|; ' +
         'top-1/top-5 are undefined.';
}

export {renderImportance as render};

export async function renderImportance(body, info) {
  const imp = await loadImportance(info.tags);
  const {meta} = imp;
  const summary = el('p', {class: 'help'},
      (isEmbedding(meta) ? `${meta.images} images. ` :
       `${meta.images} images (${meta.labelled_images} labelled${meta.label_free ?
        '; unlabelled images use the model\'s own prediction as target' : ''}). `) +
      (meta.objective && meta.objective.kind === 'embedding' ? '' :
       `Unmasked: top-1 ${fmt(meta.baseline.top1)}, loss ${fmt(meta.baseline.loss)}. `) +
      objectiveText(meta));
  summary.id = 'importance-summary';
  const gridBox = el('div', {class: 'panel'});
  const scatterBox = el('div', {class: 'panel'});
  const curveBox = el('div', {class: 'panel'});
  const detailBox = el('div', {class: 'panel', id: 'detail-panel'});
  const histBox = el('div', {class: 'panel', id: 'hist-panel'});
  // One row: at 1600 x 1000 the whole view fits one screen (the per-image histogram below
  // the pruning curves, not below the partial bars); narrower, the panels wrap.
  body.append(summary, el('div', {class: 'row'}, gridBox, scatterBox,
                          el('div', {class: 'column'}, curveBox, histBox), detailBox));
  publish('perImageTaylor', imp.perImageTaylor);
  publishNumbers(imp);
  const grid = () => drawGrid(gridBox, imp);
  const scatter = () => drawScatter(scatterBox, imp);
  const detail = () => drawDetail(detailBox, imp);
  const hist = () => drawHistogram(histBox, imp);
  grid();
  await nextPaint();   // the grid is the page's first paint; the other panels follow
  scatter(); drawCurves(curveBox, imp); await Promise.all([detail(), hist()]);
  // The pruning curves do not depend on the selected head.
  onSelect(grid, scatter, detail, hist);
  onMetric(grid, () => publishNumbers(imp));
  onFilter(hist);   // the histogram shows the images chosen elsewhere
}

// The selected head's numbers for the sticky header.
function publishNumbers(imp) {
  const v = imp.values[state.metric] || imp.values.taylor;
  const flat = v.flat().filter((x) => Number.isFinite(x)).sort((a, b) => b - a);
  publish('importanceNumbers', {values: imp.values, label: imp.label, heads: imp.L * imp.H,
                         rank: (l, h) => flat.indexOf(v[l][h]) + 1});
}

// Everything the importance panels draw from, fetched once per run.
async function loadImportance(tags) {
  // The metrics are the keys of meta.definitions; the known ones are asked for together with
  // the meta (one round-trip less before the grid), any other once the meta names it.
  const early = Object.fromEntries(Object.keys(METRIC_LABELS).filter((m) => `importance/${m}` in tags)
      .map((m) => {
        const values = array(`importance/${m}`);
        values.catch(() => {});   // a failure is reported where the values are awaited
        return [m, values];
      }));
  const [meta, c, p] = await Promise.all([
      analysisMeta('importance'),
      arrays('importance', ['curve_counts', 'curve_top1', 'curve_kl', 'curve_loss']),
      arrays('importance', ['partial_heads', 'partial_loss', 'partial_top1', 'partial_kl'])]);
  const metrics = Object.keys(meta.definitions).filter((m) => defined(meta, m));
  const values = Object.fromEntries(await Promise.all(
      metrics.map(async (m) => [m, await (early[m] || array(`importance/${m}`))])));
  if (!(state.metric in values)) state.metric = 'taylor';
  for (const k of ['scatterX', 'scatterY']) if (!(state[k] in values)) state[k] = k === 'scatterX' ? 'taylor' : 'ablation_loss';
  // A MAP head's pooling heads ([H] per metric): a row of their own below the layers.
  const poolNames = meta.pool_heads ? POOL_METRICS.filter((m) => `importance/pool_${m}` in tags) : [];
  const poolArrays = poolNames.length ? await arrays('importance', poolNames.map((m) => `pool_${m}`)) : {};
  const pool = Object.fromEntries(poolNames.map((m) => [m, poolArrays[`pool_${m}`]]));
  const label = (m) => metricLabel(meta, m);
  const perImageTaylor = new Map();   // 'l,h' -> promise of that head's [image] values
  return {
    meta, tags, values, pool, label, hasCurveSe: 'importance/curve_top1_se' in tags,
    curves: {counts: c.curve_counts, top1: c.curve_top1, kl: c.curve_kl, loss: c.curve_loss},
    partial: {heads: p.partial_heads, loss: p.partial_loss, top1: p.partial_top1,
              kl: p.partial_kl},
    // Standard errors and the whole head on the same subset (item 6), fetched on first use.
    partialExtra: null,
    L: values.taylor.length, H: values.taylor[0].length,
    options: metrics.map((m) => [m, label(m)]),
    // One head's per-image Taylor importance [image], for the detail panel and the image
    // overview: fetched per head on first use (the whole [image, layer, head] array is
    // 20 MB at 10,000 images of a ViT-L); null when the run has no per-image importance.
    perImageTaylor: 'importance/per_image_taylor' in tags ? (l, h) => {
      const key = `${l},${h}`;
      if (!perImageTaylor.has(key)) {
        const value = array('importance/per_image_taylor', {layer: l, head: h});
        value.catch(() => perImageTaylor.delete(key));   // a failure is not kept
        perImageTaylor.set(key, value);
      }
      return perImageTaylor.get(key);
    } : null,
  };
}

// The grid's colour scale: linear (signed metrics diverge at 0), log (most heads are small
// next to a few large ones: 7e-4 … 0.095 is one colour on a linear scale) or rank.
const GRID_SCALES = [['linear', 'linear'], ['log', 'log'], ['rank', 'rank']];
function gridScale(values, label) {
  if (state.gridScale === 'log') return logScale(values, label);
  if (state.gridScale === 'rank') return rankScale(values, label);
  return autoScale(values, label);
}

function drawGrid(box, imp) {
  hideTooltip();
  const {values, L, H, options, meta} = imp;
  const v = values[state.metric];
  const label = imp.label(state.metric);
  const poolRow = imp.pool[state.metric] || null;
  // Signed metrics (an ablation can help) on a diverging scale centred at 0; the pooling
  // row on the same scale as the layers.
  const sc = gridScale(poolRow ? [...v, poolRow] : v, label);
  const cell = Math.max(14, Math.min(30, Math.floor(300 / Math.max(L, H))));
  const poolY = 20 + L * cell + 8;
  const s = svg('svg', {width: H * cell + 40, height: L * cell + 30 + (poolRow ? cell + 8 : 0),
                        id: 'importance-grid', 'data-scale': sc.kind});
  for (let l = 0; l < L; l++) {
    s.append(svg('text', {x: 26, y: 20 + l * cell + cell / 2 + 4, 'text-anchor': 'end',
                          class: 'tick'}, `L${l}`));
    for (let h = 0; h < H; h++) {
      const rect = svg('rect', {x: 30 + h * cell, y: 20 + l * cell, width: cell - 1,
                                height: cell - 1, fill: sc.colour(v[l][h]),
                                class: 'imp-cell' + (l === state.layer && h === state.head ?
                                                     ' selected' : ''),
                                'data-layer': l, 'data-head': h,
                                onclick: () => select(l, h)});
      s.append(tip(rect, () => `${headName(l, h)} · ${imp.label(state.metric)}` +
                   ` = ${fmt(values[state.metric][l][h])}` +
                   (use('headKinds') ? ` · kind: ${use('headKinds')[l][h]}` : '')));
    }
  }
  for (let h = 0; h < H; h++) {
    s.append(svg('text', {x: 30 + h * cell + cell / 2, y: 14, 'text-anchor': 'middle',
                          class: 'tick'}, `H${h}`));
  }
  if (poolRow) {
    s.append(svg('text', {x: 26, y: poolY + cell / 2 + 4, 'text-anchor': 'end', class: 'tick'}, 'pool'));
    poolRow.forEach((x, h) => s.append(tip(svg('rect', {
        x: 30 + h * cell, y: poolY, width: cell - 1, height: cell - 1, fill: sc.colour(x),
        class: 'imp-cell pool-cell', 'data-pool-head': h}),
        () => `MAP pooling head ${h} (probe → tokens) · ${imp.label(state.metric)} = ${fmt(x)}`)));
  }
  const poolNote = Object.keys(imp.pool).length ? (poolRow
      ? ' The "pool" row: the MAP head\'s pooling heads (masking one reruns only the pooling); they are not in the pruning curves or partial pruning.'
      : ' (This metric has no pooling-head row.)') : '';
  box.replaceChildren(el('h3', {}, 'Importance of each layer × head'),
      el('div', {class: 'controls'},
         dropdown(options, state.metric, (m) => setMetric(m), 'metric-select'),
         el('label', {}, 'colour ', dropdown(GRID_SCALES, state.gridScale,
                                             (k) => { state.gridScale = k; drawGrid(box, imp); }, 'grid-scale'))),
      fold((meta.definitions[state.metric] || '') + (poolNote ? '.' + poolNote : ''), 'metric-definition'),
      el('div', {}, s), legend(sc, 200, 'importance-legend'));
}

function drawScatter(box, imp) {
  hideTooltip();
  const {values, L, H, options} = imp;
  const xs = values[state.scatterX].flat(), ys = values[state.scatterY].flat();
  const W = 320, HT = 250;
  // Padded domains: the extreme heads are drawn whole, not clipped by the axes.
  const f = frame(W, HT, padded(xs), padded(ys), imp.label(state.scatterX),
                  imp.label(state.scatterY));
  const s = svg('svg', {width: W, height: HT, id: 'importance-scatter'}, f.g);
  for (let l = 0; l < L; l++) {
    for (let h = 0; h < H; h++) {
      const sel = l === state.layer && h === state.head;
      s.append(tip(svg('circle', {cx: f.x(values[state.scatterX][l][h]),
                                  cy: f.y(values[state.scatterY][l][h]), r: sel ? 6 : 4,
                                  class: 'point' + (sel ? ' selected' : ''),
                                  fill: layerColour(l, L),
                                  onclick: () => select(l, h)}),
                   () => `${headName(l, h)}: x ${fmt(values[state.scatterX][l][h])}, ` +
                         `y ${fmt(values[state.scatterY][l][h])}`));
    }
  }
  const rho = spearman(xs, ys);
  box.replaceChildren(el('h3', {}, 'Two metrics, each head a point (colour = layer)'),
      el('div', {class: 'controls'},
         el('label', {}, 'x ', dropdown(options, state.scatterX,
                                        (m) => { state.scatterX = m; drawScatter(box, imp); }, 'scatter-x')),
         el('label', {}, ' y ', dropdown(options, state.scatterY,
                                         (m) => { state.scatterY = m; drawScatter(box, imp); }, 'scatter-y'))),
      el('div', {},
         el('b', {id: 'scatter-spearman', title: 'Spearman rank correlation of the two metrics over the heads'},
            `Spearman ρ = ${Number.isFinite(rho) ? rho.toFixed(2) : '–'}`)),
      el('div', {}, s), layerKey(L, 'scatter-layer-legend'));
}

function drawCurves(box, imp) {
  const {meta, curves, L, H} = imp;
  // Runs that averaged the curves over a subset store standard errors: fetched once, then
  // drawn as a band of +-1.96 SE (95%) around each metric order's curve.
  if (meta.subset_images != null && imp.hasCurveSe && imp.curveSe === undefined) {
    imp.curveSe = null;
    arrays('importance', ['curve_top1_se', 'curve_kl_se', 'curve_loss_se'])
        .then((se) => { imp.curveSe = {top1: se.curve_top1_se, kl: se.curve_kl_se,
                                       loss: se.curve_loss_se}; drawCurves(box, imp); })
        .catch(() => {});
  }
  const choices = CURVE_METRICS[isEmbedding(meta) ? 'embedding' : 'classification'];
  if (!choices.some(([k]) => k === state.curveMetric)) state.curveMetric = choices[0][0];
  const m = state.curveMetric, rows = curves[m], counts = curves.counts;
  const se = imp.curveSe ? imp.curveSe[m] : null;
  const span = se ? extent(rows.flatMap((r, i) => r.flatMap((v, j) => {
    const e = Number.isFinite(se[i][j]) ? 1.96 * se[i][j] : 0;
    return [v - e, v + e];
  }))) : extent(rows);
  const f = frame(340, 240, [0, 100], span, '% of heads removed (least important first)',
                  choices.find(([k]) => k === m)[1]);
  const s = svg('svg', {width: 340, height: 240, id: 'pruning-curves'}, f.g);
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
      dropdown(choices, m,
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
  hideTooltip();
  const {layer: l, head: h} = state;
  const token = selectionToken();
  if (imp.partialExtra === null) imp.partialExtra = loadPartialExtra(imp);
  const extra = await imp.partialExtra;
  if (stale(token)) return;   // a newer selection draws instead
  const parts = [el('h3', {}, `Why does ${headName(l, h)} matter?`), ...partialBars(imp, extra, l, h, box)];
  box.replaceChildren(...parts.filter((p) => p != null));   // (a null would show as "null")
}

// The selected head's per-image Taylor importance (a panel of its own, below the curves).
async function drawHistogram(box, imp) {
  const {layer: l, head: h} = state;
  if (!imp.perImageTaylor) {
    box.replaceChildren(el('h3', {}, 'Per-image Taylor importance'),
                        el('p', {class: 'help empty-view'}, 'Per-image distributions: run importance with --per-image.'));
    return;
  }
  const token = selectionToken();
  const v = await imp.perImageTaylor(l, h);
  if (stale(token)) return;   // a newer selection draws instead
  hideTooltip();
  box.replaceChildren(perImageHistogram(v.map((x, i) => [x, i]).filter(([x]) => Number.isFinite(x)), imp));
}

// The standard errors of partial pruning and the whole head on the same subset (runs
// written before the whole head was measured there lack it: then the bar is the ablation
// over every image, and says so).
async function loadPartialExtra(imp) {
  const tags = imp.tags || {};
  const names = [];
  for (const m of ['loss', 'top1', 'kl']) {
    for (const t of [`partial_${m}_se`, `partial_whole_${m}`, `partial_whole_${m}_se`]) {
      if (`importance/${t}` in tags) names.push(t);
    }
  }
  return names.length ? arrays('importance', names) : {};
}

// The whole head and each partial variant: signed bars around zero with ±1.96 SE whiskers,
// for the chosen metric; the whole head on the same images as its parts; the local and
// global parts' difference with its standard error; the definitions folded.
function partialBars(imp, extra, l, h, box) {
  const {meta, partial, values, H} = imp;
  const row = partial.heads.indexOf(l * H + h);
  if (row < 0) {
    return [el('p', {class: 'help'}, 'Partial pruning was not computed for this head ' +
               '(only for the most important ones; see --partial-heads).')];
  }
  const choices = isEmbedding(meta) ? PARTIAL_EMBEDDING : PARTIAL_METRICS;
  if (!choices.some(([k]) => k === state.partialMetric)) state.partialMetric = choices[0][0];
  const m = state.partialMetric;
  const seOf = extra[`partial_${m}_se`] || null;
  const wholeSame = extra[`partial_whole_${m}`] ? extra[`partial_whole_${m}`][row] : null;
  const wholeSe = extra[`partial_whole_${m}_se`] ? extra[`partial_whole_${m}_se`][row] : null;
  const n = meta.subset_images ?? meta.images;
  const whole = wholeSame != null
      ? {v: {name: 'whole head', description: `the whole head removed, on the same ${n} images as its parts`},
         x: wholeSame, se: wholeSe, whole: true}
      : {v: {name: 'whole head*', description: `the whole head removed, over all ${meta.images} images (*not the parts' ${n}: re-run importance to measure it on the same images)`},
         x: {loss: values.ablation_loss, top1: values.ablation_top1, kl: values.ablation_kl}[m][l][h],
         se: null, whole: true};
  const bars = [whole, ...meta.partial_variants.map((v, j) => ({v, x: partial[m][row][j],
                                                               se: seOf ? seOf[row][j] : null}))];
  const e = (b) => (Number.isFinite(b.se) ? 1.96 * b.se : 0);
  const [lo, hi] = extent([bars.flatMap((b) => [b.x - e(b), b.x + e(b)]), 0]);
  const pad = (hi - lo) * 0.05 || 1e-6;
  const BAR = 20;
  const f = frame(400, BAR * bars.length + 44, [lo - pad, hi + pad], [0, bars.length],
                  choices.find((p) => p[0] === m)[1], '', {yTicks: [], margin: {l: 84, r: 64}});
  const s = svg('svg', {width: 400, height: BAR * bars.length + 44, id: 'partial-bars', 'data-metric': m}, f.g);
  const x0 = f.x(0);
  s.append(svg('line', {x1: x0, x2: x0, y1: f.m.t, y2: f.y(0), class: 'zero-line'}));
  bars.forEach((b, j) => {
    const y = f.m.t + 4 + j * BAR, xv = f.x(b.x);
    s.append(svg('text', {x: f.m.l - 4, y: y + 11, 'text-anchor': 'end', class: 'tick bar-label'}, b.v.name),
             tip(svg('rect', {x: b.x >= 0 ? x0 : x0 - Math.max(1, x0 - xv), y,
                              width: Math.max(1, Math.abs(xv - x0)), height: 14,
                              class: (b.x >= 0 ? 'bar' : 'bar negative') + (b.whole ? ' whole' : ''),
                              'data-value': b.x, 'data-se': b.se ?? ''}),
                 `${b.v.description}: ${m} ${fmtSigned(b.x)}` + (Number.isFinite(b.se) ? ` ± ${fmt(1.96 * b.se)} (95%)` : '')),
             svg('text', {x: Math.max(xv, x0, f.x(b.x + e(b))) + 3, y: y + 11, class: 'tick bar-value'},
                 fmtSigned(b.x)));
    if (e(b) > 0) {
      const [a, c] = [f.x(b.x - e(b)), f.x(b.x + e(b))];
      s.append(svg('g', {class: 'whisker'},
          svg('line', {x1: a, x2: c, y1: y + 7, y2: y + 7}),
          svg('line', {x1: a, x2: a, y1: y + 3, y2: y + 11}),
          svg('line', {x1: c, x2: c, y1: y + 3, y2: y + 11})));
    }
  });
  const defs = el('details', {class: 'variant-definitions', id: 'variant-definitions'},
                  el('summary', {}, 'What each bar removes'),
                  el('dl', {}, bars.map((b) => [el('dt', {}, b.v.name), el('dd', {}, b.v.description)])));
  return [el('div', {class: 'controls'}, 'Change when only part of its attention is removed: ',
             dropdown(choices, m, (v) => { state.partialMetric = v; drawDetail(box, imp); },
                      'partial-metric')),
          el('p', {class: 'help'}, (isEmbedding(meta)
              ? 'Bars right of 0: removing that part distorts the embedding more.'
              : 'Bars right of 0: removing that part hurts (loss up, top-1 down, predictions change); left: it helps.') +
              ` Means over the same ${n} images; whiskers: ±1.96 standard errors.`),
          s, localGlobal(meta, partial[m][row], seOf ? seOf[row] : null), defs];
}

// Global minus local part at each radius, with its standard error (the two treated as
// independent: √(SE₁² + SE₂²)) and how many standard errors that is.
function localGlobal(meta, row, se) {
  const names = meta.partial_variants.map((v) => v.name);
  const lines = [];
  for (const [j, name] of names.entries()) {
    const r = /^local_r(\d+)$/.exec(name);
    const g = r ? names.indexOf(`global_r${r[1]}`) : -1;
    if (g < 0) continue;
    const d = row[g] - row[j];
    const sd = se ? Math.hypot(se[g], se[j]) : NaN;
    lines.push(el('tr', {'data-radius': r[1]}, el('td', {}, `r = ${r[1]}`),
                  el('td', {}, `global − local = ${fmtSigned(d)}`),
                  el('td', {}, Number.isFinite(sd) ? `SE ${fmt(sd)}` : 'SE –'),
                  el('td', {class: 'z'}, Number.isFinite(sd) && sd > 0 ? `${fmt(Math.abs(d) / sd)} SE` : '')));
  }
  return lines.length ? el('table', {class: 'data compact', id: 'local-global'}, el('tbody', {}, lines)) : null;
}

// Histogram of one head's Taylor importance over the images, on log-spaced bins; a bar
// click makes its images the page's image filter. Images chosen elsewhere (brushed in the
// image overview's layout, a pattern's images) are drawn as a dark bar inside each bar: how
// many of the chosen images fall in it.
function perImageHistogram(pairs, imp) {
  const positive = pairs.filter(([x]) => x > 0);
  const zeros = pairs.length - positive.length;
  const logs = positive.map(([x]) => Math.log10(x));
  let [lo, hi] = extent(logs);
  if (hi - lo < 1e-6) { lo -= 0.5; hi += 0.5; }
  const bins = 20, members = Array.from({length: bins}, () => []);
  positive.forEach(([x, i], k) => members[Math.min(bins - 1, Math.floor((logs[k] - lo) / (hi - lo) * bins))].push(i));
  const counts = members.map((m) => m.length);
  const W = 330, HT = 130;
  const f = frame(W, HT, [lo, hi], [0, Math.max(1, ...counts)], 'Taylor importance per image (log scale)',
                  'images', {yInteger: true, xTicks: niceTicks(lo, hi, 5, true).length >= 2 ? niceTicks(lo, hi, 5, true) : niceTicks(lo, hi, 4),
                             xFormat: (v) => {
                               const x = Math.pow(10, v);
                               if (x >= 1e-3 && x < 1e4) return `${+x.toPrecision(2)}`;
                               return Number.isInteger(v) ? `1e${v}` : x.toExponential(1);
                             }});
  const filter = state.imageFilter;
  const chosen = filter && filter.bin == null ? new Set(filter.indices) : null;
  const s = svg('svg', {width: W, height: HT, id: 'per-image-hist', 'data-filtered': chosen ? chosen.size : 0}, f.g);
  const width = (f.x(hi) - f.x(lo)) / bins;
  members.forEach((m, i) => {
    const c = m.length;
    const b0 = Math.pow(10, lo + i / bins * (hi - lo)), b1 = Math.pow(10, lo + (i + 1) / bins * (hi - lo));
    const active = filter && filter.bin === i && filter.head === `${state.layer},${state.head}`;
    const x = f.x(lo + i / bins * (hi - lo)) + 0.5;
    const inside = chosen ? m.filter((j) => chosen.has(j)).length : 0;
    s.append(tip(svg('rect', {
        x, y: f.y(c), width: Math.max(1, width - 1),
        height: Math.max(c ? 1 : 0, f.y(0) - f.y(c)), class: 'bar hist-bar' + (active ? ' selected' : '') + (chosen ? ' dimmed' : ''),
        'data-bin': i, 'data-count': c,
        onclick: () => {
          setImageFilter(active ? null : {bin: i, head: `${state.layer},${state.head}`, indices: m, source: 'histogram',
                                          label: `Taylor ${fmt(b0)}–${fmt(b1)} (${headName(state.layer, state.head)})`});
        }}), () => `${c} image${c === 1 ? '' : 's'} with Taylor ${fmt(b0)}–${fmt(b1)}` +
                   (chosen ? `, ${inside} of them chosen (${filter.label})` : '') + '; click to choose them'));
    if (inside) {
      s.append(svg('rect', {x, y: f.y(inside), width: Math.max(1, width - 1), height: Math.max(1, f.y(0) - f.y(inside)),
                            class: 'hist-chosen', 'data-bin': i, 'data-count': inside}));
    }
  });
  return el('div', {}, el('h3', {}, `Per-image Taylor importance of ${headName(state.layer, state.head)}`), s,
            chosen ? el('p', {class: 'help', id: 'hist-filter-note'}, `Dark: ${filter.label}.`) : null,
            zeros ? el('p', {class: 'help'}, `${zeros} image${zeros === 1 ? '' : 's'} with exactly 0 not shown on the log axis.`) : null);
}
