// Strength view: how strongly patches attend by offset. Small multiples of every head, the
// selected head's offset map, neighbourhood profiles and layer trends.

import {colour, extent, frame, heatCanvas, legend} from './charts.js';
import {arrays, getJSON, q} from './data.js';
import {el, svg, tip} from './dom.js';
import {fmt, headName} from './format.js';
import {onSelect, select, state} from './state.js';

export async function renderStrength(body) {
  const [meta, a] = await Promise.all([
      getJSON(`./meta?${q({analysis: 'strength'})}`),
      arrays('strength', ['offset_ratio', 'offset_mean', 'offset_pairs', 'neighbourhood_share',
                          'mean_distance', 'entropy'])]);
  const {offset_ratio: ratio} = a;
  // span: offsets per axis (2n - 1 for an n × n patch grid).
  const st = {...a, L: ratio.length, H: ratio[0].length, span: ratio[0][0].length,
              n: (ratio[0][0].length + 1) / 2, range: extent(ratio)};
  const multiples = el('div', {class: 'panel'});
  const focus = el('div', {class: 'panel'});
  const curves = el('div', {class: 'panel'});
  const trends = el('div', {class: 'panel'});
  body.append(el('p', {class: 'help'}, `${meta.images} images. Offset maps show attention by ` +
                 '(dy, dx) = key − query in patches, as multiples of uniform attention (1/T).'),
              el('div', {class: 'row'}, multiples, focus), el('div', {class: 'row'}, curves, trends));

  const grid = smallMultiples(st);
  const [lo, hi] = st.range;
  multiples.append(el('h3', {}, 'Offset strength of every head (rows: layers, columns: heads)'),
                   grid, legend(lo, hi, '× uniform'));
  const drawFocus = () => drawOffsetFocus(focus, grid, st);
  const drawCurves = () => drawNeighbourhood(curves, st);
  const drawTrends = () => drawLayerTrends(trends, st);
  drawFocus(); drawCurves(); drawTrends();
  onSelect(drawFocus, drawCurves, drawTrends);
}

// One small offset map per head, on one colour scale.
function smallMultiples({offset_ratio: ratio, mean_distance: dist, L, H, span, range: [lo, hi]}) {
  const grid = el('div', {class: 'multiples', style: `grid-template-columns: repeat(${H}, auto)`});
  for (let l = 0; l < L; l++) {
    for (let h = 0; h < H; h++) {
      const c = heatCanvas(ratio[l][h], lo, hi, Math.max(2, Math.floor(44 / span)),
                           {cls: 'offset-small'});
      c.dataset.layer = l; c.dataset.head = h;
      c.addEventListener('click', () => select(l, h));
      grid.append(tip(c, `${headName(l, h)}: mean distance ${fmt(dist[l][h])} px`));
    }
  }
  return grid;
}

// The selected head's offset map, large, with the query's own offset outlined.
function drawOffsetFocus(focus, grid, st) {
  const {offset_ratio: ratio, offset_mean: mean, offset_pairs: pairs, span, n} = st;
  const [lo, hi] = st.range;
  const {layer: l, head: h} = state;
  const cell = Math.max(8, Math.floor(260 / span));
  const m = ratio[l][h];
  const s = svg('svg', {width: span * cell + 50, height: span * cell + 50, id: 'offset-focus'});
  for (let r = 0; r < span; r++) {
    for (let k = 0; k < span; k++) {
      s.append(tip(svg('rect', {x: 40 + k * cell, y: 10 + r * cell, width: cell, height: cell,
                                fill: colour((m[r][k] - lo) / ((hi - lo) || 1)),
                                class: 'offset-cell'}),
          `offset (dy ${r - n + 1}, dx ${k - n + 1}): mean ${fmt(mean[l][h][r][k])} = ` +
          `${fmt(m[r][k])} × uniform; ${pairs[r][k]} query-key pairs`));
    }
  }
  s.append(svg('rect', {x: 40 + (n - 1) * cell, y: 10 + (n - 1) * cell, width: cell,
                        height: cell, class: 'centre'}),
           svg('text', {x: 40 + span * cell / 2, y: span * cell + 38, 'text-anchor': 'middle',
                        class: 'axis-label'}, 'dx (patches, key − query)'),
           svg('text', {x: 12, y: 10 + span * cell / 2, 'text-anchor': 'middle',
                        transform: `rotate(-90 12 ${10 + span * cell / 2})`, class: 'axis-label'},
               'dy (patches)'));
  focus.replaceChildren(el('h3', {}, `${headName(l, h)}: attention by offset`), s,
                        legend(lo, hi, '× uniform attention'));
  for (const c of grid.children) {
    c.classList.toggle('selected', +c.dataset.layer === l && +c.dataset.head === h);
  }
}

// Cumulative attention share by distance, one line per head.
function drawNeighbourhood(curves, {neighbourhood_share: neigh, L, H, n}) {
  const f = frame(330, 220, [0, n - 1], [0, 1], 'Chebyshev distance (patches)',
                  'cumulative attention share');
  const s = svg('svg', {width: 330, height: 220, id: 'neighbourhood'}, f.g);
  for (let l = 0; l < L; l++) {
    for (let h = 0; h < H; h++) {
      const sel = l === state.layer && h === state.head;
      const line = svg('polyline', {points: neigh[l][h].map((v, d) => `${f.x(d)},${f.y(v)}`).join(' '),
                                    class: 'curve' + (sel ? ' selected' : ' faint'),
                                    stroke: sel ? '#e15759' : colour(l / Math.max(1, L - 1)),
                                    onclick: () => select(l, h)});
      s.append(tip(line, `${headName(l, h)}: within 1 patch ${fmt(neigh[l][h][Math.min(1, n - 1)])}`));
    }
  }
  curves.replaceChildren(el('h3', {}, 'Neighbourhood profile (selected head in red)'), s);
}

function drawLayerTrends(trends, {mean_distance: dist, entropy, L, H}) {
  const charts = [[dist, 'mean attention distance (px)', 'trend-distance'],
                  [entropy, 'attention entropy (nats)', 'trend-entropy']]
      .map(([v, label, id]) => trendChart(v, label, id, L, H));
  trends.replaceChildren(el('h3', {}, 'Layer trends (each head a point; line = layer mean)'),
                         ...charts);
}

// One per-head value against layer: a point per head (spread a little by head), and the
// layer mean as a line.
function trendChart(v, label, id, L, H) {
  const f = frame(300, 200, [0, Math.max(1, L - 1)], extent(v), 'layer', label);
  const s = svg('svg', {width: 300, height: 200, id}, f.g);
  const means = v.map((row) => row.reduce((a, b) => a + b, 0) / row.length);
  s.append(svg('polyline', {points: means.map((m, l) => `${f.x(l)},${f.y(m)}`).join(' '),
                            class: 'curve', stroke: '#888'}));
  for (let l = 0; l < L; l++) {
    for (let h = 0; h < H; h++) {
      const sel = l === state.layer && h === state.head;
      s.append(tip(svg('circle', {cx: f.x(l) + (h - (H - 1) / 2) * 2, cy: f.y(v[l][h]),
                                  r: sel ? 6 : 3.5, class: 'point' + (sel ? ' selected' : ''),
                                  fill: colour(h / Math.max(1, H - 1)),
                                  onclick: () => select(l, h)}),
                   `${headName(l, h)}: ${fmt(v[l][h])}`));
    }
  }
  return s;
}
