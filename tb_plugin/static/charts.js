// Colour scale, legends, axes and heat maps shared by the views.

import {el, svg} from './dom.js';
import {fmt, tickFmt} from './format.js';

// Viridis, sampled; linear interpolation between stops.
const VIRIDIS = [[68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
                 [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37]];

export function colour(t) {
  if (t == null || Number.isNaN(t)) return '#ccc';
  t = Math.min(1, Math.max(0, t)) * (VIRIDIS.length - 1);
  const i = Math.min(Math.floor(t), VIRIDIS.length - 2), f = t - i;
  const c = VIRIDIS[i].map((a, k) => Math.round(a + f * (VIRIDIS[i + 1][k] - a)));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}

export function extent(values) {
  const v = values.flat(Infinity).filter((x) => x != null && Number.isFinite(x));
  return v.length ? [Math.min(...v), Math.max(...v)] : [0, 1];
}

export function legend(lo, hi, label, width = 180) {
  const id = 'grad' + Math.random().toString(36).slice(2);
  const stops = VIRIDIS.map((c, i) => svg('stop', {offset: `${100 * i / (VIRIDIS.length - 1)}%`,
                                                   'stop-color': `rgb(${c})`}));
  return svg('svg', {width: width + 20, height: 40, class: 'legend'},
    svg('defs', {}, svg('linearGradient', {id}, stops)),
    svg('rect', {x: 10, y: 4, width, height: 10, fill: `url(#${id})`}),
    svg('text', {x: 10, y: 27, class: 'tick'}, fmt(lo)),
    svg('text', {x: width + 10, y: 27, 'text-anchor': 'end', class: 'tick'}, fmt(hi)),
    svg('text', {x: 10 + width / 2, y: 38, 'text-anchor': 'middle', class: 'axis-label'}, label));
}

// Axes for line and scatter charts.
export function frame(width, height, xDomain, yDomain, xLabel, yLabel) {
  const m = {l: 48, r: 10, t: 8, b: 34};
  const x = (v) => m.l + (v - xDomain[0]) / ((xDomain[1] - xDomain[0]) || 1) * (width - m.l - m.r);
  const y = (v) => height - m.b - (v - yDomain[0]) / ((yDomain[1] - yDomain[0]) || 1) *
      (height - m.t - m.b);
  const g = svg('g', {});
  g.append(svg('line', {x1: m.l, x2: width - m.r, y1: height - m.b, y2: height - m.b, class: 'axis'}),
           svg('line', {x1: m.l, x2: m.l, y1: m.t, y2: height - m.b, class: 'axis'}));
  for (let i = 0; i <= 4; i++) {
    const xv = xDomain[0] + i / 4 * (xDomain[1] - xDomain[0]);
    const yv = yDomain[0] + i / 4 * (yDomain[1] - yDomain[0]);
    g.append(svg('text', {x: x(xv), y: height - m.b + 13, 'text-anchor': 'middle', class: 'tick'},
                 tickFmt(xv)),
             svg('text', {x: m.l - 4, y: y(yv) + 3, 'text-anchor': 'end', class: 'tick'},
                 tickFmt(yv)));
  }
  g.append(svg('text', {x: (m.l + width - m.r) / 2, y: height - 4, 'text-anchor': 'middle',
                        class: 'axis-label'}, xLabel),
           svg('text', {x: 10, y: height / 2, transform: `rotate(-90 10 ${height / 2})`,
                        'text-anchor': 'middle', class: 'axis-label'}, yLabel));
  return {g, x, y};
}

export function heatCanvas(matrix, lo, hi, cell, opts = {}) {
  const rows = matrix.length, cols = matrix[0].length;
  const c = el('canvas', {width: cols * cell, height: rows * cell, class: opts.cls || ''});
  const ctx = c.getContext('2d');
  for (let r = 0; r < rows; r++) {
    for (let k = 0; k < cols; k++) {
      ctx.fillStyle = colour((matrix[r][k] - lo) / ((hi - lo) || 1));
      ctx.fillRect(k * cell, r * cell, cell, cell);
    }
  }
  return c;
}
