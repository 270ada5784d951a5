// Over-training view: per-head importance, mean distance and entropy against the training
// step, as small multiples (rows: layers, columns: heads) on one scale per metric. The
// selected head is highlighted everywhere; the step shown by the other views is marked.

import {frame} from './charts.js';
import {json, unpack, view} from './data.js';
import {el, svg, tip} from './dom.js';
import {fmt, headName} from './format.js';
import {onSelect, select, state} from './state.js';

const SERIES = [['importance/taylor', 'Taylor importance'],
                ['strength/mean_distance', 'mean attention distance (px)'],
                ['strength/entropy', 'attention entropy (nats)']];
const W = 64, HT = 38;

export {renderTraining as render};

export async function renderTraining(body, info) {
  const wanted = SERIES.filter(([tag]) => info.tags && info.tags[tag]);
  const series = await Promise.all(wanted.map(([tag]) =>
      json('series', {tag})));
  const panels = el('div', {class: 'row', id: 'training-panels'});
  body.append(el('p', {class: 'help'}, `${info.steps.length} steps: ${info.steps[0]} to ` +
                 `${info.steps[info.steps.length - 1]}. Click a chart to select its head.`), panels);
  const draws = wanted.map(([tag, label], i) => {
    const panel = el('div', {class: 'panel training-metric', 'data-tag': tag});
    panels.append(panel);
    const steps = series[i].steps, values = unpack(series[i]);  // [step][layer][head]
    const draw = () => drawMultiples(panel, label, steps, values);
    draw();
    return draw;
  });
  onSelect(...draws);
}

function drawMultiples(panel, label, steps, values) {
  const L = values[0].length, H = values[0][0].length;
  const flat = values.flat(2).filter(Number.isFinite);
  const lo = Math.min(...flat), hi = Math.max(...flat);
  const x0 = steps[0], x1 = steps[steps.length - 1];
  const x = (s) => 2 + (s - x0) / ((x1 - x0) || 1) * (W - 4);
  const y = (v) => HT - 2 - (v - lo) / ((hi - lo) || 1) * (HT - 4);
  const grid = el('div', {class: 'multiples', style: `grid-template-columns: repeat(${H}, auto)`});
  for (let l = 0; l < L; l++) {
    for (let h = 0; h < H; h++) {
      const chosen = l === state.layer && h === state.head;
      const points = steps.map((s, k) => `${x(s)},${y(values[k][l][h])}`).join(' ');
      const chart = svg('svg', {width: W, height: HT, class: 'training-cell' + (chosen ? ' selected' : ''),
                                'data-layer': l, 'data-head': h, onclick: () => select(l, h)},
          svg('rect', {x: 0.5, y: 0.5, width: W - 1, height: HT - 1, fill: chosen ? '#fff4e5' : '#fafafa',
                       stroke: chosen ? '#e8710a' : '#ddd', 'stroke-width': chosen ? 2 : 1}),
          view.step == null ? null : svg('line', {x1: x(view.step), x2: x(view.step), y1: 0, y2: HT,
                                                  stroke: '#999', 'stroke-dasharray': '2,2'}),
          svg('polyline', {points, fill: 'none', stroke: chosen ? '#e8710a' : '#3b528b',
                           'stroke-width': chosen ? 2 : 1.2}));
      tip(chart, () => `${headName(l, h)} ${label}: ` +
          steps.map((s, k) => `step ${s}: ${fmt(values[k][l][h])}`).join(', '));
      grid.append(chart);
    }
  }
  // The selected head at full size, with axes.
  const big = svg('svg', {width: 300, height: 170, class: 'training-focus'});
  const f = frame(300, 170, [x0, x1], [lo, hi], 'step', label);
  big.append(f.g, svg('polyline', {points: steps.map((s, k) =>
      `${f.x(s)},${f.y(values[k][state.layer][state.head])}`).join(' '), fill: 'none',
      stroke: '#e8710a', 'stroke-width': 2}));
  panel.replaceChildren(el('h3', {}, `${label} (${fmt(lo)} to ${fmt(hi)})`), grid,
                        el('h3', {}, `${headName(state.layer, state.head)}`), big);
}
