// Comparison view: two runs side by side, importance grids on one colour scale and the
// mean attention distance by layer.

import {colour, extent, frame, legend} from './charts.js';
import {arrayOf} from './data.js';
import {el, svg, tip} from './dom.js';
import {METRIC_LABELS, fmt, headName} from './format.js';
import {select, state} from './state.js';

const RUN_COLOURS = ['#4e79a7', '#e15759'];

export async function renderComparison(body, runs, other) {
  const pair = [runs.find((r) => r.run === state.run), runs.find((r) => r.run === other)];
  const row = el('div', {class: 'row'});
  body.append(row);
  await compareImportance(row, pair);
  await compareDistance(row, pair);
}

async function compareImportance(row, pair) {
  const grids = [];
  for (const info of pair) {
    if (!info.analyses.includes('importance')) continue;
    grids.push([info.run, await arrayOf(info.run, `importance/${state.metric}`)]);
  }
  // One colour scale for both, so equal colours mean equal values.
  const [lo, hi] = extent(grids.map(([, v]) => v));
  for (const [run, v] of grids) {
    const cell = 16;
    const s = svg('svg', {width: v[0].length * cell + 34, height: v.length * cell + 6,
                          class: 'compare-grid'});
    v.forEach((rowv, l) => rowv.forEach((x, h) => s.append(tip(svg('rect', {
        x: 30 + h * cell, y: l * cell, width: cell - 1, height: cell - 1,
        fill: colour((x - lo) / ((hi - lo) || 1)), class: 'imp-cell',
        onclick: () => select(l, h)}), `${run} ${headName(l, h)}: ${fmt(x)}`))));
    row.append(el('div', {class: 'panel'}, el('h3', {}, `${run}: ${METRIC_LABELS[state.metric]}`), s));
  }
  if (grids.length) row.append(el('div', {class: 'panel'}, legend(lo, hi, METRIC_LABELS[state.metric])));
}

// Layer means of each run's mean attention distance, one line per run.
async function compareDistance(row, pair) {
  const trends = [];
  for (const info of pair) {
    if (!info.analyses.includes('strength')) continue;
    const d = await arrayOf(info.run, 'strength/mean_distance');
    trends.push([info.run, d.map((r) => r.reduce((a, b) => a + b, 0) / r.length)]);
  }
  if (!trends.length) return;
  const L = Math.max(...trends.map(([, t]) => t.length));
  const f = frame(320, 200, [0, Math.max(1, L - 1)], extent(trends.map(([, t]) => t)), 'layer',
                  'mean attention distance (px)');
  const s = svg('svg', {width: 320, height: 200, class: 'compare-trend'}, f.g);
  const keys = el('div', {class: 'keys'});
  trends.forEach(([run, t], i) => {
    s.append(svg('polyline', {points: t.map((v, l) => `${f.x(l)},${f.y(v)}`).join(' '),
                              class: 'curve', stroke: RUN_COLOURS[i]}));
    t.forEach((v, l) => s.append(tip(svg('circle', {cx: f.x(l), cy: f.y(v), r: 3, fill: RUN_COLOURS[i]}),
                                     `${run} layer ${l}: ${fmt(v)} px (mean over heads)`)));
    keys.append(el('span', {style: `color:${RUN_COLOURS[i]}`}, `■ ${run} `));
  });
  row.append(el('div', {class: 'panel'}, el('h3', {}, 'Mean attention distance by layer'), s, keys));
}
