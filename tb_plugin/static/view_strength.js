// Strength view: how strongly patches attend by offset. Small multiples of every head, the
// selected head's offset map, neighbourhood profiles, layer trends, a locality table and
// the class token's attention, all against the uniform and self-only reference heads
// (`baselines` in strength/meta).

import {categoryKey, headColour, layerColour, extent, frame, heatCanvas, legend, niceTicks, ratio,
        reference, yDomain} from './charts.js';
import {array, arrays, meta as analysisMeta} from './data.js';
import {checkbox, dropdown, el, svg, tip} from './dom.js';
import {fmt, headName, tokens} from './format.js';
import {changed, onSelect, publish, select, state, use} from './state.js';
import {headKinds} from './kinds.js';

export {renderStrength as render};

const ROBUST = 0.95;   // the shared offset scale's ends: that quantile of each side's ratios

export async function renderStrength(body, info) {
  // offset_mean (as large as offset_ratio) only labels the focus map: one head's slice
  // at a time (offsetMean below), the first together with the rest.
  const names = ['offset_ratio', 'offset_pairs', 'neighbourhood_share',
                 'mean_distance', 'entropy', 'self_share'];
  for (const k of ['cls_share', 'cls_attention', 'to_cls', 'pool_attention',
                   'mean_distance_quantiles', 'entropy_quantiles']) {
    if (`strength/${k}` in info.tags) names.push(k);
  }
  const means = {};
  const offsetMean = (l, h) => (means[`${l},${h}`] = means[`${l},${h}`] ||
                                array('strength/offset_mean', {index: l, index2: h}));
  offsetMean(state.layer, state.head).catch(() => {});   // awaited by the focus map
  const [meta, a] = await Promise.all([analysisMeta('strength'),
                                       arrays('strength', names)]);
  const {offset_ratio: ratioMaps} = a;
  const cfg = meta.config;
  // spanY × spanX: offsets per axis (2h - 1 by 2w - 1 for an h × w patch grid); n: distances
  // 0 … max(h, w) - 1 (Chebyshev); T tokens.
  const spanY = ratioMaps[0][0].length, spanX = ratioMaps[0][0][0].length;
  const st = {...a, meta, L: ratioMaps.length, H: ratioMaps[0].length, spanY, spanX,
              span: Math.max(spanY, spanX), nY: (spanY + 1) / 2, nX: (spanX + 1) / 2,
              n: a.neighbourhood_share[0][0].length, T: tokens(cfg), base: meta.baselines || null,
              offsetMean};
  // One scale for every offset map, fitted to the data and centred on uniform: each side
  // ends at the 95th percentile of its ratios (beyond: its full colour), so a head at 3x
  // uniform is as red as the scale goes, not pale next to the demo's 87x neighbour head.
  st.scale = ratio(ratioMaps, undefined, {robust: ROBUST});
  const uniformDistance = st.base ? st.base.uniform.mean_distance : null;
  publish('strengthNumbers', {distance: a.mean_distance, entropy: a.entropy, uniformDistance});
  st.kinds = headKinds({offsetRatio: ratioMaps, clsShare: a.cls_share || null, distance: a.mean_distance,
                        uniformDistance, T: st.T});
  publish('headKinds', st.kinds);
  const multiples = el('div', {class: 'panel'});
  const focus = el('div', {class: 'panel'});
  const curves = el('div', {class: 'panel'});
  const trends = el('div', {class: 'panel'});
  const table = el('div', {class: 'panel'});
  const cls = el('div', {class: 'panel'});
  body.append(el('p', {class: 'help'}, `${meta.images} images. Offset maps show attention by ` +
                 '(dy, dx) = key − query in patches, as multiples of uniform attention (1/T), on a ' +
                 'diverging log scale: white = uniform, red = more, blue = less.' +
                 (st.base ? '' : ' This run has no stored baselines (re-run strength to get them).')),
              el('div', {class: 'row'}, multiples, focus), el('div', {class: 'row'}, curves, trends),
              el('div', {class: 'row'}, table, cls));

  const grid = smallMultiples(st);
  multiples.append(el('h3', {}, 'Offset strength of every head (rows: layers, columns: heads)'),
                   grid, state.scaleMode === 'shared' ? legend(st.scale, 180, 'multiples-legend')
                       : el('p', {class: 'help', id: 'multiples-legend'},
                            'Each map on its own log scale, centred at 1× uniform (hover for its range).'));
  const drawFocus = () => drawOffsetFocus(focus, grid, st);
  const drawCurves = () => drawNeighbourhood(curves, st);
  const drawTrends = () => drawLayerTrends(trends, st);
  const drawTable = () => drawLocalityTable(table, st);
  const drawCls = () => drawClassToken(cls, st);
  const focusDrawn = drawFocus();
  drawCurves(); drawTrends(); drawTable(); drawCls();
  await focusDrawn;
  // A new head only moves the table's highlight (its rows do not depend on the selection).
  const markTable = () => {
    let selected = null;
    for (const row of table.querySelectorAll('#locality-table tbody tr[data-layer]')) {
      const on = +row.dataset.layer === state.layer && +row.dataset.head === state.head;
      row.classList.toggle('selected', on);
      if (on) selected = row;
    }
    if (selected && !LOCALITY_SORT.key) scrollIntoBox(table.querySelector('.table-scroll'), selected);
  };
  onSelect(drawFocus, drawCurves, drawTrends, markTable, drawCls);
}

// The scale of one map: the shared one, or (per-map) its own log range centred at 1×.
const mapScale = (st, m) => state.scaleMode === 'shared' ? st.scale : ratio(m);

// One small offset map per head.
function smallMultiples(st) {
  const {offset_ratio: ratioMaps, mean_distance: dist, L, H, span} = st;
  const grid = el('div', {class: 'multiples', style: `grid-template-columns: 22px repeat(${H}, auto)`});
  grid.append(el('span', {}), ...Array.from({length: H}, (_, h) => el('span', {class: 'tick-label'}, `H${h}`)));
  for (let l = 0; l < L; l++) {
    grid.append(el('span', {class: 'tick-label'}, `L${l}`));
    for (let h = 0; h < H; h++) {
      const sc = mapScale(st, ratioMaps[l][h]);
      const c = heatCanvas(ratioMaps[l][h], sc, Math.max(2, Math.floor(44 / span)),
                           {cls: 'offset-small'});
      c.dataset.layer = l; c.dataset.head = h;
      c.addEventListener('click', () => select(l, h));
      grid.append(tip(c, `${headName(l, h)} (${st.kinds[l][h]}): mean distance ${fmt(dist[l][h], 'px')}` +
                         (state.scaleMode === 'shared' ? '' : `; colours ${sc.ticks[0][1]} … ${sc.ticks[2][1]}`)));
    }
  }
  return grid;
}

// The selected head's offset map, large, with dx/dy numbers and the query outlined.
async function drawOffsetFocus(focus, grid, st) {
  const {offset_ratio: ratioMaps, offset_pairs: pairs, span, spanY, spanX, nY, nX} = st;
  const {layer: l, head: h} = state;
  const mean = await st.offsetMean(l, h).catch(() => null);   // null: the labels say '–'
  if (l !== state.layer || h !== state.head) return;   // a newer head is being drawn
  const cell = Math.max(8, Math.floor(260 / span));
  const m = ratioMaps[l][h];
  const sc = mapScale(st, m);
  const x0 = 52, y0 = 10, w = spanX * cell, hgt = spanY * cell;
  const s = svg('svg', {width: Math.max(w, 230) + x0 + 10, height: hgt + 64, id: 'offset-focus'});
  for (let r = 0; r < spanY; r++) {
    for (let k = 0; k < spanX; k++) {
      s.append(tip(svg('rect', {x: x0 + k * cell, y: y0 + r * cell, width: cell, height: cell,
                                fill: sc.colour(m[r][k]), class: 'offset-cell'}),
          `offset (dy ${r - nY + 1}, dx ${k - nX + 1}): mean ${mean ? fmt(mean[r][k]) : '–'} = ` +
          `${fmt(m[r][k])} × uniform; ${pairs[r][k]} query-key pairs`));
    }
  }
  // Whole-patch offsets on both axes (a few, so that they stay legible).
  for (const d of niceTicks(-(nX - 1), nX - 1, 6, true)) {
    s.append(svg('text', {x: x0 + (d + nX - 1 + 0.5) * cell, y: y0 + hgt + 12,
                          'text-anchor': 'middle', class: 'tick offset-tick'}, `${d}`));
  }
  for (const d of niceTicks(-(nY - 1), nY - 1, 6, true)) {
    s.append(svg('text', {x: x0 - 4, y: y0 + (d + nY - 1 + 0.5) * cell + 3, 'text-anchor': 'end',
                          class: 'tick offset-tick'}, `${d}`));
  }
  s.append(svg('rect', {x: x0 + (nX - 1) * cell, y: y0 + (nY - 1) * cell, width: cell,
                        height: cell, class: 'centre'}),
           svg('text', {x: x0 + w / 2, y: y0 + hgt + 28, 'text-anchor': 'middle',
                        class: 'axis-label'}, 'dx = key − query column (→ key to the right)'),
           svg('text', {x: x0 + w / 2, y: y0 + hgt + 44, 'text-anchor': 'middle',
                        class: 'axis-label'}, 'outlined: the query itself (dx = dy = 0)'),
           svg('text', {x: 12, y: y0 + hgt / 2, 'text-anchor': 'middle',
                        transform: `rotate(-90 12 ${y0 + hgt / 2})`, class: 'axis-label'},
               'dy = key − query row (↓ key below)'));
  focus.replaceChildren(el('h3', {}, `${headName(l, h)}: attention by offset`), s,
                        legend(sc, 220, 'focus-legend'));
  for (const c of grid.querySelectorAll('canvas')) {
    c.classList.toggle('selected', +c.dataset.layer === l && +c.dataset.head === h);
  }
}

// Cumulative attention share by distance, one line per head, and the two reference heads.
function drawNeighbourhood(curves, {neighbourhood_share: neigh, L, H, n, base}) {
  const f = frame(340, 230, [0, n - 1], [0, 1], 'Chebyshev distance (patches)',
                  'cumulative attention share', {xInteger: true});
  const s = svg('svg', {width: 340, height: 230, id: 'neighbourhood'}, f.g);
  if (base) {
    for (const [ref, cls, label] of [[base.uniform, 'reference', 'uniform'], [base.self, 'reference self', 'self only']]) {
      s.append(svg('polyline', {points: ref.neighbourhood_share.map((v, d) => `${f.x(d)},${f.y(v)}`).join(' '),
                                class: `${cls} reference-curve`, 'data-reference': label}));
    }
  }
  for (let l = 0; l < L; l++) {
    for (let h = 0; h < H; h++) {
      const sel = l === state.layer && h === state.head;
      if (sel) continue;
      const line = svg('polyline', {points: neigh[l][h].map((v, d) => `${f.x(d)},${f.y(v)}`).join(' '),
                                    class: 'curve faint', stroke: layerColour(l, L),
                                    onclick: () => select(l, h)});
      s.append(tip(line, `${headName(l, h)}: within 1 patch ${fmt(neigh[l][h][Math.min(1, n - 1)])}`));
    }
  }
  const sel = neigh[state.layer][state.head];
  s.append(svg('polyline', {points: sel.map((v, d) => `${f.x(d)},${f.y(v)}`).join(' '),
                            class: 'curve selected', stroke: '#212121'}));
  curves.replaceChildren(el('h3', {}, `Neighbourhood profile (${headName(state.layer, state.head)} in black)`), s,
      el('div', {class: 'keys'}, el('span', {class: 'reference-key'}, '┄ uniform attention  '),
         el('span', {class: 'reference-key self'}, '┄ self only')),
      categoryKey(L, 'L', 'colour = layer'));
}

// Mean distance, entropy and the share within radius r against layer, each with the
// uniform and self-only reference lines.
function drawLayerTrends(trends, st) {
  const {mean_distance: dist, entropy, neighbourhood_share: neigh, L, H, n, base} = st;
  const r = Math.min(state.radius, n - 1);
  const within = neigh.map((row) => row.map((v) => v[r]));
  const u = base ? base.uniform : null, s0 = base ? base.self : null;
  const charts = [
      [dist, 'mean attention distance (px)', 'trend-distance', u && u.mean_distance, s0 && s0.mean_distance],
      [entropy, 'attention entropy (nats)', 'trend-entropy', u && u.entropy, s0 && s0.entropy],
      [within, `attention share within ${r} patch${r === 1 ? '' : 'es'}`, 'trend-share',
       u && u.neighbourhood_share[r], s0 && s0.neighbourhood_share[r]]]
      .map(([v, label, id, uni, self]) => trendChart(v, label, id, L, H, uni, self));
  const radius = dropdown(Array.from({length: n}, (_, d) => [String(d), `r = ${d}`]), String(r),
                          (v) => { state.radius = +v; drawLayerTrends(trends, st); changed(); }, 'radius-select');
  trends.replaceChildren(el('h3', {}, 'Layer trends (each head a point; grey line = layer mean)'),
      el('div', {class: 'controls'},
         checkbox('y axis from zero', state.yFromZero, (v) => { state.yFromZero = v; drawLayerTrends(trends, st); }, 'y-from-zero'),
         el('label', {}, ' share within ', radius)),
      el('div', {class: 'row tight'}, ...charts), categoryKey(H, 'H', 'colour = head'));
}

// One per-head value against layer: a point per head (spread a little by head), the layer
// mean as a line, and the reference heads as dashed lines.
function trendChart(v, label, id, L, H, uniform, self) {
  const f = frame(300, 200, [-0.3, Math.max(1, L - 1) + 0.3], yDomain(v, [uniform], state.yFromZero),
                  'layer', label, {xInteger: true, xTicks: niceTicks(0, Math.max(0, L - 1), 8, true)});
  const s = svg('svg', {width: 300, height: 200, id}, f.g);
  s.append(...reference(f, uniform, 'uniform'));
  const [lo, hi] = yDomain(v, [uniform], state.yFromZero);
  if (self != null && self >= lo && self <= hi) s.append(...reference(f, self, 'self only', 'reference self'));
  const means = v.map((row) => row.reduce((a, b) => a + b, 0) / row.length);
  s.append(svg('polyline', {points: means.map((m, l) => `${f.x(l)},${f.y(m)}`).join(' '),
                            class: 'curve', stroke: '#888'}));
  for (let l = 0; l < L; l++) {
    for (let h = 0; h < H; h++) {
      const sel = l === state.layer && h === state.head;
      s.append(tip(svg('circle', {cx: f.x(l) + (h - (H - 1) / 2) * 2, cy: f.y(v[l][h]),
                                  r: sel ? 6 : 3.5, class: 'point' + (sel ? ' selected' : ''),
                                  fill: headColour(h, H),
                                  onclick: () => select(l, h)}),
                   `${headName(l, h)}: ${fmt(v[l][h])}` + (uniform != null ? ` (uniform ${fmt(uniform)})` : '')));
    }
  }
  return s;
}

const LOCALITY_SORT = {key: null, desc: true};

// Every head's locality numbers, each against the uniform head; sortable; a click selects.
function drawLocalityTable(box, st) {
  const {mean_distance: dist, entropy, neighbourhood_share: neigh, self_share: self,
         cls_share: clsShare, L, H, n, base} = st;
  const r = Math.min(state.radius, n - 1);
  const u = base ? base.uniform : null;
  const q = st.mean_distance_quantiles;
  const cols = [
    ['head', 'head', (l, h) => l * H + h, (l, h) => headName(l, h)],
    ['kind', 'kind', (l, h) => st.kinds[l][h], (l, h) => st.kinds[l][h]],
    ['distance', 'mean distance (px)', (l, h) => dist[l][h], (l, h) => fmt(dist[l][h])],
    ['distance_ratio', '÷ uniform', (l, h) => u ? dist[l][h] / u.mean_distance : NaN,
     (l, h) => u ? fmt((dist[l][h] / u.mean_distance)) : '–'],
    ['distance_spread', 'p5–p95 over images', (l, h) => q ? q[l][h][4] - q[l][h][0] : NaN,
     (l, h) => q ? `${fmt(q[l][h][0])}–${fmt(q[l][h][4])}` : '–'],
    ['share', `share ≤ ${r}`, (l, h) => neigh[l][h][r], (l, h) => fmt(neigh[l][h][r])],
    ['share_ratio', '÷ uniform', (l, h) => u ? neigh[l][h][r] / u.neighbourhood_share[r] : NaN,
     (l, h) => u ? fmt((neigh[l][h][r] / u.neighbourhood_share[r])) : '–'],
    ['entropy', 'entropy (nats)', (l, h) => entropy[l][h], (l, h) => fmt(entropy[l][h])],
    ['entropy_ratio', '÷ log T', (l, h) => u ? entropy[l][h] / u.entropy : NaN,
     (l, h) => u ? fmt((entropy[l][h] / u.entropy)) : '–'],
    ['self', 'self share', (l, h) => self[l][h], (l, h) => fmt(self[l][h])],
  ];
  if (clsShare) {
    cols.push(['cls', 'class-token share', (l, h) => clsShare[l][h], (l, h) => fmt(clsShare[l][h])],
              ['cls_ratio', '÷ uniform', (l, h) => u ? clsShare[l][h] / u.cls_share : NaN,
               (l, h) => u ? fmt((clsShare[l][h] / u.cls_share)) : '–']);
  }
  const rows = [];
  for (let l = 0; l < L; l++) for (let h = 0; h < H; h++) rows.push([l, h]);
  const sortCol = cols.find((c) => c[0] === LOCALITY_SORT.key);
  const cmp = (x, y) => (typeof x === 'string' ? x.localeCompare(y) : x - y);
  if (sortCol) rows.sort((a, b) => cmp(sortCol[2](...a), sortCol[2](...b)) * (LOCALITY_SORT.desc ? -1 : 1));
  const head = el('tr', {}, cols.map(([key, label]) => el('th', {
      class: 'sortable' + (key === LOCALITY_SORT.key ? ' sorted' : ''), 'data-key': key,
      onclick: () => { LOCALITY_SORT.desc = LOCALITY_SORT.key === key ? !LOCALITY_SORT.desc : true;
                       LOCALITY_SORT.key = key; drawLocalityTable(box, st); }},
      label + (key === LOCALITY_SORT.key ? (LOCALITY_SORT.desc ? ' ▼' : ' ▲') : ''))));
  const uniformRow = u ? el('tr', {class: 'reference-row'}, cols.map(([key]) => el('td', {},
      {head: 'uniform', distance: fmt(u.mean_distance), share: fmt(u.neighbourhood_share[r]),
       entropy: fmt(u.entropy), self: fmt(u.self_share), cls: u.cls_share != null ? fmt(u.cls_share) : '–',
       distance_ratio: '1', share_ratio: '1', entropy_ratio: '1', cls_ratio: '1'}[key] || ''))) : null;
  const bodyRows = rows.map(([l, h]) => el('tr', {
      class: l === state.layer && h === state.head ? 'selected' : '', 'data-layer': l, 'data-head': h,
      onclick: () => select(l, h)}, cols.map(([, , , show]) => el('td', {}, show(l, h)))));
  box.replaceChildren(el('h3', {}, 'Locality of every head, against uniform attention'),
      el('p', {class: 'help'}, `÷ uniform: the value divided by the uniform head's (1 = no preference; share ≤ ${r} above 1 = local). Click a column to sort, a row to select.`),
      el('div', {class: 'table-scroll'}, el('table', {class: 'data', id: 'locality-table'},
          el('thead', {}, head), el('tbody', {}, uniformRow, bodyRows))));
  const selected = box.querySelector('tr.selected');
  if (selected && !sortCol) scrollIntoBox(box.querySelector('.table-scroll'), selected);
}

// Scrolls the table's own box (not the page) so that the row shows below the sticky column
// headers; at the next frame, when the layout is computed anyway, and only once the table
// is on screen (a head click with the table out of sight forced a layout of the whole page
// for it: a third of the click's time).
function scrollIntoBox(scroller, row) {
  const scroll = () => requestAnimationFrame(() => {
    if (!row.isConnected) return;
    const box = scroller.getBoundingClientRect(), r = row.getBoundingClientRect();
    const top = box.top + scroller.querySelector('thead').getBoundingClientRect().height;
    if (r.top < top) scroller.scrollTop -= top - r.top;
    else if (r.bottom > box.bottom) scroller.scrollTop += r.bottom - box.bottom;
  });
  if (waiting) waiting.disconnect();   // the previous table is gone
  const seen = waiting = new IntersectionObserver((entries) => {
    if (!entries.some((e) => e.isIntersecting)) return;
    seen.disconnect();
    scroll();
  });
  seen.observe(scroller);
}
let waiting = null;

// The class token's attention to each patch, and each patch's attention to it (× uniform);
// without a class token, a MAP head's probe attention to each patch.
function drawClassToken(box, st) {
  const {cls_attention: fromCls, to_cls: toCls, pool_attention: pool, span} = st;
  const {layer: l, head: h} = state;
  if ((!fromCls || !toCls) && pool) {
    drawPoolProbe(box, pool, h, span);
    return;
  }
  if (!fromCls || !toCls) {
    box.replaceChildren(el('h3', {}, 'Class token'), el('p', {class: 'help'},
        `This model has no class token (${st.meta.config.classifier} pooling): nothing to show.`));
    return;
  }
  const T = st.T, n = (span + 1) / 2;
  const times = (m) => m.map((row) => row.map((v) => v * T));
  const maps = [[times(fromCls[l][h]), 'class token → each patch', 'cls-attention'],
                [times(toCls[l][h]), 'each patch → class token', 'to-cls']];
  const cell = Math.max(4, Math.floor(140 / n));
  const panels = maps.map(([m, title, id]) => {
    const sc = state.scaleMode === 'shared' ? ratio(maps.map((x) => x[0])) : ratio(m);
    const c = heatCanvas(m, sc, cell, {cls: 'cls-map'});
    c.id = id;
    return el('div', {}, el('h3', {}, title), tip(c, `${title}: mean over images, × uniform (1/T)`), legend(sc, 140));
  });
  box.replaceChildren(el('h3', {}, `${headName(l, h)}: class-token attention (× uniform, mean over images)`),
                      el('div', {class: 'row tight'}, ...panels));
}

// The MAP head's probe → each patch, for the pooling head with the selected head's index
// (× uniform over the patches, mean over images).
function drawPoolProbe(box, pool, h, span) {
  const P = pool[0].length * pool[0][0].length;
  const head = Math.min(h, pool.length - 1);
  const m = pool[head].map((row) => row.map((v) => v * P));
  const sc = state.scaleMode === 'shared' ? ratio(pool.map((x) => x.map((r) => r.map((v) => v * P))))
                                          : ratio(m);
  const c = heatCanvas(m, sc, Math.max(4, Math.floor(280 / span)), {cls: 'cls-map'});
  c.id = 'pool-attention';
  box.replaceChildren(el('h3', {}, `Pooling (MAP) head ${head}: probe → each patch (× uniform, mean over images)`),
      el('p', {class: 'help'}, 'This model pools with a MAP head: a learned probe attends to the ' +
         'tokens. Its attention is where the pooled embedding looks; select a head to see that ' +
         'pooling head.'),
      tip(c, `pooling head ${head}: mean over images, × uniform (1/patches)`), legend(sc, 160));
}
