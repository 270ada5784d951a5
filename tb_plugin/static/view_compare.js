// Comparison view: two runs (or a run with itself) side by side: each run's importance
// grid (own scale, or one shared), their difference as a Δ grid on a scale centred at 0, a
// rank scatter with Spearman's ρ, the class make-up of each run's images, and the mean
// attention distance by layer. Redrawn when the metric or the selected head changes.

import {autoScale, frame, legend, niceTicks, ranks, reference, signed, spearman, yDomain} from './charts.js';
import {arrayOf, metaOf} from './data.js';
import {el, hideTooltip, svg, tip} from './dom.js';
import {fmt, headName, isEmbeddingMeta, metricLabel} from './format.js';
import {onMetric, onSelect, select, state} from './state.js';

const RUN_COLOURS = ['#4e79a7', '#e15759'];

export async function renderComparison(body, runs, other) {
  const pair = [runs.find((r) => r.run === state.run), runs.find((r) => r.run === other)];
  const cmp = {pair, cache: {}, metas: {}, imp: el('div', {class: 'row', id: 'compare-importance'}),
               rest: el('div', {class: 'row'})};
  if (pair[0].run === pair[1].run) {
    body.append(el('p', {class: 'help', id: 'compare-self'},
        `Comparing ${pair[0].run} with itself: every Δ is 0 and ρ = 1 (a check of the views, not a finding).`));
  }
  body.append(cmp.imp, cmp.rest);
  for (const info of pair) {
    if (info.analyses.includes('importance')) {
      cmp.metas[info.run] = await metaOf(info.run, 'importance');
    }
  }
  const draw = () => compareImportance(cmp);
  await draw();
  makeUp(cmp);
  await compareDistance(cmp);
  onMetric(draw);
  onSelect(draw);
}

async function values(cmp, run, metric) {
  const key = `${run}/${metric}`;
  cmp.cache[key] = cmp.cache[key] || arrayOf(run, `importance/${metric}`);
  return cmp.cache[key];
}

function grid(v, sc, id, title, tipText, cls = 'compare-grid') {
  const L = v.length, H = v[0].length;
  const cell = Math.max(12, Math.min(22, Math.floor(280 / Math.max(L, H))));
  const s = svg('svg', {width: H * cell + 34, height: L * cell + 22, class: cls, id});
  for (let l = 0; l < L; l++) {
    s.append(svg('text', {x: 26, y: 18 + l * cell + cell / 2 + 3, 'text-anchor': 'end', class: 'tick'}, `L${l}`));
  }
  for (let h = 0; h < H; h++) {
    s.append(svg('text', {x: 30 + h * cell + cell / 2, y: 12, 'text-anchor': 'middle', class: 'tick'}, `H${h}`));
  }
  v.forEach((row, l) => row.forEach((x, h) => s.append(tip(svg('rect', {
      x: 30 + h * cell, y: 16 + l * cell, width: cell - 1, height: cell - 1, fill: sc.colour(x),
      class: 'imp-cell' + (l === state.layer && h === state.head ? ' selected' : ''),
      'data-layer': l, 'data-head': h, onclick: () => select(l, h)}), () => tipText(l, h, x)))));
  return el('div', {class: 'panel'}, el('h3', {}, title), s, legend(sc, 180));
}

async function compareImportance(cmp) {
  hideTooltip();
  const metric = state.metric;
  const runs = cmp.pair.filter((info) => info.analyses.includes('importance')).map((i) => i.run);
  // Each run's own name for the metric (an embedding-objective run's "loss" is a distortion).
  const labelOf = (run) => metricLabel(cmp.metas[run], metric);
  const label = labelOf(runs[0]);
  if (!runs.length) { cmp.imp.replaceChildren(el('p', {class: 'help'}, 'Neither run has importance.')); return; }
  const grids = await Promise.all(runs.map((run) => values(cmp, run, metric).catch(() => null)));
  if (metric !== state.metric) return;    // a newer metric is being drawn
  const panels = [];
  // Each run on its own scale (one shared scale turns a run with smaller values dark); the
  // Δ grid shows the differences on one scale centred at 0.
  runs.forEach((run, i) => {
    if (!grids[i]) return;
    const sc2 = autoScale(grids[i], labelOf(run));
    panels.push(grid(grids[i], sc2, `compare-grid-${i}`, `${run}: ${labelOf(run)}`,
                     (l, h, x) => `${run} ${headName(l, h)}: ${fmt(x)}`));
  });
  const [a, b] = grids;
  const same = runs.length === 2 && a && b && a.length === b.length && a[0].length === b[0].length;
  if (same) {
    const delta = a.map((row, l) => row.map((x, h) => x - b[l][h]));
    panels.push(grid(delta, signed(delta, `Δ = ${runs[0]} − ${runs[1]}`), 'compare-delta',
                     `Δ ${label}: ${runs[0]} − ${runs[1]}`,
                     (l, h, x) => `${headName(l, h)}: ${fmt(a[l][h])} − ${fmt(b[l][h])} = ${fmt(x)}`,
                     'delta-grid'));
    panels.push(rankScatter(a, b, runs));
  } else if (runs.length === 2) {
    panels.push(el('p', {class: 'help'}, 'The runs have different numbers of layers or heads: no Δ grid or rank scatter.'));
  }
  cmp.imp.replaceChildren(...panels);
}

function rankScatter(a, b, runs) {
  const H = a[0].length;
  const fa = a.flat(), fb = b.flat();
  const ra = ranks(fa), rb = ranks(fb), n = fa.length;
  const rho = spearman(fa, fb);
  const ticks = niceTicks(1, n, 5, true);
  const f = frame(280, 260, [0.5, n + 0.5], [n + 0.5, 0.5], `rank in ${runs[0]}`, `rank in ${runs[1]}`,
                  {xTicks: ticks, yTicks: ticks});
  const s = svg('svg', {width: 280, height: 260, id: 'rank-scatter'}, f.g,
                svg('line', {x1: f.x(1), y1: f.y(1), x2: f.x(n), y2: f.y(n), class: 'reference'}));
  fa.forEach((_, i) => {
    const l = Math.floor(i / H), h = i % H, sel = l === state.layer && h === state.head;
    s.append(tip(svg('circle', {cx: f.x(ra[i]), cy: f.y(rb[i]), r: sel ? 6 : 3.5,
                                class: 'point' + (sel ? ' selected' : ''), fill: '#4e79a7',
                                onclick: () => select(l, h)}),
                 `${headName(l, h)}: rank ${ra[i]} in ${runs[0]}, ${rb[i]} in ${runs[1]}`));
  });
  return el('div', {class: 'panel'}, el('h3', {}, 'Rank of each head in both runs'),
            el('p', {id: 'spearman'}, `Spearman ρ = ${Number.isFinite(rho) ? rho.toFixed(3) : '–'}`), s,
            el('p', {class: 'help'}, 'On the diagonal: the same rank in both runs.'));
}

// The class make-up of each run's images (from importance/meta).
function makeUp(cmp) {
  const box = el('div', {class: 'panel', id: 'compare-makeup'}, el('h3', {}, 'Images of each run'));
  for (const info of cmp.pair) {
    const m = cmp.metas[info.run];
    if (!m) { box.append(el('p', {class: 'help'}, `${info.run}: no importance analysis.`)); continue; }
    const counts = new Map();
    (m.labels || []).forEach((l) => counts.set(l, (counts.get(l) || 0) + 1));
    const names = m.class_names || [];
    const text = [...counts.entries()].sort((x, y) => x[0] - y[0])
        .map(([l, c]) => `${l < 0 ? 'unlabelled' : names[l] ?? l}: ${c}`).join(', ');
    // Without a classifier top-1 and the loss are undefined (the stored values are 1 and ~0).
    const base = isEmbeddingMeta(m) ? `measured against ${m.objective.source || 'the embedding'}`
                                    : `top-1 ${fmt(m.baseline.top1)}, loss ${fmt(m.baseline.loss)}`;
    box.append(el('p', {class: 'makeup'}, el('b', {}, `${info.run}`),
        ` ${m.images} images (${m.labelled_images} labelled), ${base}. Classes: ${text}.`));
  }
  cmp.rest.append(box);
}

// Layer means of each run's mean attention distance, as a multiple of its own uniform
// head's (the runs may have different grids: pixels would not compare), one line per run.
async function compareDistance(cmp) {
  const trends = [];
  for (const info of cmp.pair) {
    if (!info.analyses.includes('strength')) continue;
    const [d, meta] = await Promise.all([arrayOf(info.run, 'strength/mean_distance'), metaOf(info.run, 'strength')]);
    const u = meta.baselines ? meta.baselines.uniform.mean_distance : null;
    const means = d.map((r) => r.reduce((a, b) => a + b, 0) / r.length);
    trends.push([info.run, u ? means.map((v) => v / u) : means, !!u]);
  }
  if (!trends.length) return;
  const ratio = trends.every(([, , r]) => r);
  const L = Math.max(...trends.map(([, t]) => t.length));
  const f = frame(340, 210, [-0.3, Math.max(1, L - 1) + 0.3], yDomain(trends.map(([, t]) => t), ratio ? [1] : [], state.yFromZero),
                  'layer', ratio ? 'mean distance ÷ its run\'s uniform' : 'mean attention distance (px)',
                  {xTicks: niceTicks(0, Math.max(0, L - 1), 8, true)});
  const s = svg('svg', {width: 340, height: 210, class: 'compare-trend', id: 'compare-distance', 'data-ratio': ratio},
                f.g, ...(ratio ? reference(f, 1, 'uniform (each run\'s own)') : []));
  const keys = el('div', {class: 'keys'});
  trends.forEach(([run, t], i) => {
    s.append(svg('polyline', {points: t.map((v, l) => `${f.x(l)},${f.y(v)}`).join(' '),
                              class: 'curve', stroke: RUN_COLOURS[i]}));
    t.forEach((v, l) => s.append(tip(svg('circle', {cx: f.x(l), cy: f.y(v), r: 3, fill: RUN_COLOURS[i]}),
                                     `${run} layer ${l}: ${ratio ? `${fmt(v)}× uniform` : fmt(v, 'px')} (mean over heads)`)));
    keys.append(el('span', {style: `color:${RUN_COLOURS[i]}`}, `■ ${run}${i && trends[0][0] === run ? ' (same run)' : ''} `));
  });
  cmp.rest.append(el('div', {class: 'panel'}, el('h3', {}, 'Mean attention distance by layer, against each run\'s uniform attention'), s, keys));
}
