// Patterns view: what heads have learned. The autoencoder's decoded pattern map (cells that
// hold no sample faded), the samples themselves in the latent plane coloured by layer or
// head, real sample maps of a clicked cell with their image and query patch, and the head
// clusters with the statistics behind their names.

import {CATEGORICAL, categoryKey, grey, headColour, layerColour, extent, frame, heatCanvas, legend, niceTicks,
        ratio} from './charts.js';
import {array, arrayFlat, arrays, meta as analysisMeta, q, unpack} from './data.js';
import {dropdown, el, hideTooltip, svg, tip} from './dom.js';
import {fmt, gridShape, headName, tokens} from './format.js';
import {changed, onFilter, onSelect, publish, select, setImageFilter, state, use, whenPublished} from './state.js';
import {kindMix} from './kinds.js';

const SAMPLES_SHOWN = 6;
// Cluster colours: the categorical ones less red, which marks the selected head everywhere.
const CLUSTER_COLOURS = CATEGORICAL.filter((c) => c !== '#e15759');
const SCATTER_MAX = 6000;   // points drawn in the latent scatter (an even subsample beyond)

export {renderPatterns as render};

export async function renderPatterns(body, info) {
  const [meta, a, samples, map] = await Promise.all([
      analysisMeta('patterns'),
      arrays('patterns', ['head_density', 'head_cluster', 'cluster_pattern',
                          'train_loss', 'val_loss', 'map_extent']),
      arrays('patterns', ['sample_cell', 'sample_index', 'sample_latent']),
      arrayFlat('patterns/map')]);   // [g, g, c, c], read once, in order
  const {head_density: density} = a;
  // g: pattern map side (cells); c: side of one decoded pattern.
  const pt = {...a, ...samples, map, meta, info, g: map.shape[0], c: map.shape[2], L: density.length,
              H: density[0].length, n: (map.shape[2] + 1) / 2};
  pt.T = tokens(meta.config);
  [pt.gh, pt.gw] = gridShape(meta.config);   // the patch grid of a plain sample map
  // Samples per cell, and per head and cell.
  const g = pt.g;
  pt.cellSamples = Array.from({length: g * g}, () => []);
  pt.headCount = new Map();
  pt.sample_cell.forEach(([r, k], s) => {
    pt.cellSamples[r * g + k].push(s);
    const [, l, h] = pt.sample_index[s];
    const key = `${l},${h},${r},${k}`;
    pt.headCount.set(key, (pt.headCount.get(key) || 0) + 1);
    pt.headCount.set(`${l},${h}`, (pt.headCount.get(`${l},${h}`) || 0) + 1);
  });
  // Each cell's cluster: the head cluster most of its samples come from (-1: none).
  pt.cellCluster = pt.cellSamples.map((members) => {
    const counts = new Map();
    for (const s of members) {
      const [, l, h] = pt.sample_index[s];
      const j = a.head_cluster[l][h];
      counts.set(j, (counts.get(j) || 0) + 1);
    }
    let best = -1, most = 0;
    for (const [j, c] of counts) if (c > most || (c === most && j < best)) { best = j; most = c; }
    return best;
  });
  publish('clusters', {cluster: a.head_cluster, names: meta.cluster_names.map((_, j) => clusterName(pt, j))});
  const mapBox = el('div', {class: 'panel'});
  const scatterBox = el('div', {class: 'panel'});
  const cellBox = el('div', {class: 'panel cell-panel', id: 'cell-panel'});
  const clusterBox = el('div', {class: 'panel'});
  const empty = pt.cellSamples.filter((c) => !c.length).length;
  body.append(el('p', {class: 'help'}, `${meta.samples} sampled query maps, re-centred on the ` +
                 `query (centre cell = the query patch). Autoencoder reconstruction error ` +
                 `${fmt(meta.reconstruction_error)} (data variance ${fmt(meta.data_variance)}). ` +
                 `${empty} of ${g * g} map cells hold no sample: they are faded (the decoder's extrapolation, not a pattern any head shows).`),
              el('div', {class: 'row'}, mapBox, scatterBox, cellBox), el('div', {class: 'row'}, clusterBox));
  const drawMap = () => drawPatternMap(mapBox, cellBox, pt);
  const drawScatter = () => drawSampleScatter(scatterBox, cellBox, pt);
  const drawClusters = () => drawClusterList(clusterBox, pt);
  drawMap(); drawScatter(); drawClusters(); drawCell(cellBox, pt);
  if (!use('headKinds') && info.analyses.includes('strength')) {
    whenPublished('headKinds').then(() => {   // the names follow the kinds once known
      publish('clusters', {cluster: a.head_cluster, names: meta.cluster_names.map((_, j) => clusterName(pt, j))});
      drawClusters();
      changed();
    });
  }
  // A new head only moves the clusters' highlight: the list is not drawn anew.
  const markClusters = () => {
    const j = pt.head_cluster[state.layer][state.head];
    for (const row of clusterBox.querySelectorAll('.cluster')) row.classList.toggle('selected', +row.dataset.cluster === j);
    for (const chip of clusterBox.querySelectorAll('.chip[data-layer]')) {
      chip.classList.toggle('selected', +chip.dataset.layer === state.layer && +chip.dataset.head === state.head);
    }
  };
  onSelect(drawMap, drawScatter, markClusters, () => drawCell(cellBox, pt));
  onFilter(drawScatter);
}

// The decoded latent grid (the paper's view D): each decoded pattern in grey on its own log
// range, so its shape shows; the selected head's density as a red heat over the map (where
// its samples fall, smoothed between cells); each head cluster's region outlined in its
// colour and numbered. Hovering a cell shows its real samples beside the map (a click keeps
// them). The decoded cells and the outlines are drawn once; a new selection repaints only
// the heat (a head click repaints every view).
function drawPatternMap(mapBox, cellBox, pt) {
  hideTooltip();
  const {map, g, c} = pt;
  const {layer: l, head: h} = state;
  if (!pt.mapWrap) {
    const cellPx = Math.max(2, Math.floor(48 / c));
    // Geometry of the CSS grid: cells of cellPx * c plus a 2-px border, 4 px apart.
    const outer = c * cellPx + 4, pitch = outer + 4, side = g * pitch - 4;
    pt.geometry = {outer, pitch, side};
    const wrap = el('div', {class: 'pattern-map', id: 'pattern-map',
                            style: `grid-template-columns: repeat(${g}, ${outer}px); grid-auto-rows: ${outer}px`});
    // The decoded patterns are painted into one canvas below the grid (one canvas, not one
    // per cell: a run switch otherwise spends most of this view's time making 144); the
    // grid's cells above it take the pointer, the selection and the empty cells' veil.
    const cells = el('canvas', {id: 'pattern-cells', width: side, height: side, class: 'map-layer'});
    paintPatterns(cells, pt, cellPx);
    for (let r = 0; r < g; r++) {
      for (let k = 0; k < g; k++) {
        const all = pt.cellSamples[r * g + k].length;
        const cell = el('div', {class: 'pattern-cell' + (all ? '' : ' empty-cell'), 'data-row': r, 'data-col': k,
                                'data-samples': all, 'data-cluster': pt.cellCluster[r * g + k]});
        cell.addEventListener('click', () => {
          clearTimeout(pt.hoverTimer);
          state.cell = [r, k];
          for (const x of wrap.children) x.classList.toggle('selected', x === cell);
          drawCell(cellBox, pt);
        });
        // Real samples on hover: the cell panel previews the hovered pattern (after a
        // short rest, so that crossing the map does not fetch every cell on the way).
        cell.addEventListener('mouseenter', () => {
          clearTimeout(pt.hoverTimer);
          const shown = pt.preview || state.cell;
          if (shown && shown[0] === r && shown[1] === k) return;   // already shown
          pt.hoverTimer = setTimeout(() => drawCell(cellBox, pt, [r, k]), HOVER_MS);
        });
        wrap.append(tip(cell, () => {
          const {layer: sl, head: sh} = state;
          const mine = pt.headCount.get(`${sl},${sh},${r},${k}`) || 0;
          const of = pt.headCount.get(`${sl},${sh}`) || 0;
          const j = pt.cellCluster[r * g + k];
          return all ? `cell (${r}, ${k}): ${all} sample${all === 1 ? '' : 's'} in all (cluster ${j}); ` +
                       `${mine} of ${of} samples of ${headName(sl, sh)}`
                     : `cell (${r}, ${k}): no sample falls here (decoder extrapolation)`;
        }));
      }
    }
    wrap.addEventListener('mouseleave', () => {   // back to the clicked cell, if any
      clearTimeout(pt.hoverTimer);
      if (pt.preview) drawCell(cellBox, pt);
    });
    // The heat: one pixel a cell, scaled up smoothly by the browser so that each pixel's
    // centre sits on its cell's centre (the cells' pitch, less the 4-px gap at the ends).
    pt.heat = el('canvas', {id: 'pattern-density', width: g, height: g, class: 'map-layer heat',
                            style: `left:${outer / 2 - pitch / 2}px;top:${outer / 2 - pitch / 2}px;width:${g * pitch}px;height:${g * pitch}px`});
    const stage = el('div', {class: 'pattern-stage', style: `width:${side}px;height:${side}px`},
                     cells, pt.heat, clusterOutlines(pt), wrap);
    const sc = grey(0, 1, 'each pattern: log scale');
    sc.ticks = [[0, `≤ peak/${FLOOR}`], [1, 'peak']];
    pt.mapWrap = wrap;
    pt.mapTitle = el('h3', {});
    pt.heatKey = el('span', {class: 'help', id: 'pattern-heat-key'});
    const clusterKey = el('div', {class: 'keys', id: 'pattern-cluster-key'}, el('span', {class: 'help'}, 'outlined: the cells most of whose samples come from head cluster '),
        pt.meta.cluster_names.map((_, j) => el('span', {style: `color:${CLUSTER_COLOURS[j % CLUSTER_COLOURS.length]}`}, `■ ${j} `)));
    mapBox.replaceChildren(pt.mapTitle, stage,
                           el('div', {class: 'controls'}, legend(sc, 140, 'pattern-legend'), pt.heatKey), clusterKey);
  }
  for (const canvas of pt.mapWrap.children) {
    const r = +canvas.dataset.row, k = +canvas.dataset.col;
    canvas.classList.toggle('selected', !!state.cell && state.cell[0] === r && state.cell[1] === k);
  }
  const peak = drawHeat(pt, pt.head_density[l][h]);
  pt.mapTitle.textContent = `Pattern map; red heat: where ${headName(l, h)}'s samples fall`;
  pt.heatKey.textContent = peak > 0 ? `red: ${headName(l, h)}'s share of samples per cell, 0 → ${fmt(peak)} (transparent → red)`
                                    : `${headName(l, h)} has no samples`;
}

const HOVER_MS = 120;
const FLOOR = 30;   // a pattern's range: its peak down to peak / FLOOR (log)

// Every decoded pattern into `canvas`, at its cell of the grid (inside its 2-px border). Each
// pattern on its own range: the decoded patterns differ mostly in shape, which one shared
// range hides (144 near-identical dark squares); on a log scale down to 1/FLOOR of its
// peak, so that the surround shows, not only the peak. Grey (white: little attention,
// black: the peak), so that the head's red heat and the clusters' colours stay readable
// over it.
function paintPatterns(canvas, pt, cellPx) {
  const {map, g, c} = pt, {pitch, side} = pt.geometry, m = map.data;
  const ctx = canvas.getContext('2d');
  const image = ctx.createImageData(side, side);
  const px = new Uint32Array(image.data.buffer);
  const levels = 256, shade = grey(0, levels - 1);   // the ramp as pixels, once
  const PIXEL = new Uint8ClampedArray(4), PIXEL32 = new Uint32Array(PIXEL.buffer);
  const lut = Uint32Array.from({length: levels}, (_, i) => {
    const [R, G, B] = shade.rgb(i);
    PIXEL[0] = R; PIXEL[1] = G; PIXEL[2] = B; PIXEL[3] = 255;
    return PIXEL32[0];
  });
  const logFloor = Math.log(FLOOR);
  for (let r = 0; r < g; r++) {
    for (let k = 0; k < g; k++) {
      const base = (r * g + k) * c * c;
      let hi = 1e-12;
      for (let i = base; i < base + c * c; i++) if (m[i] > hi) hi = m[i];
      const logHi = Math.log(hi);
      const x0 = k * pitch + 2, y0 = r * pitch + 2;
      for (let i = 0; i < c; i++) {
        for (let j = 0; j < c; j++) {
          const v = m[base + i * c + j];
          const t = v > 0 ? 1 - Math.min(1, (logHi - Math.log(v)) / logFloor) : 0;
          const pixel = lut[Math.round(Math.max(0, t) * (levels - 1))];
          for (let y = 0; y < cellPx; y++) {
            const start = (y0 + i * cellPx + y) * side + x0 + j * cellPx;
            px.fill(pixel, start, start + cellPx);
          }
        }
      }
    }
  }
  ctx.putImageData(image, 0, 0);
}

// The selected head's density ([g][g] shares of its samples) as a red heat over the map: one
// pixel per cell, scaled up smoothly so that pixel centres sit on the cells' centres;
// opacity by the square root of the share over the largest (a head spread over many cells
// stays visible). Returns the largest share.
function drawHeat(pt, density) {
  const {g} = pt;
  const peak = Math.max(0, ...density.flat().filter(Number.isFinite));
  const ctx = pt.heat.getContext('2d');
  const image = ctx.createImageData(g, g);
  density.forEach((row, r) => row.forEach((v, k) => {
    const i = 4 * (r * g + k);
    image.data.set([214, 39, 40, peak > 0 && v > 0 ? Math.round(255 * 0.85 * Math.sqrt(v / peak)) : 0], i);
  }));
  ctx.putImageData(image, 0, 0);
  pt.heat.dataset.layer = state.layer; pt.heat.dataset.head = state.head;
  pt.heat.dataset.peak = peak;
  return peak;
}

// Each cluster's region (the cells it holds most samples of) outlined in its colour, its
// number at its fullest cell: one segment per cell side whose neighbour belongs elsewhere.
function clusterOutlines(pt) {
  const {g, cellCluster} = pt, {outer, pitch, side} = pt.geometry;
  const at = (r, k) => (r < 0 || k < 0 || r >= g || k >= g ? -2 : cellCluster[r * g + k]);
  const s = svg('svg', {id: 'pattern-outlines', width: side, height: side, class: 'map-layer'});
  const best = new Map();   // cluster -> [samples, r, k]
  for (let r = 0; r < g; r++) {
    for (let k = 0; k < g; k++) {
      const j = at(r, k);
      if (j < 0) continue;
      const n = pt.cellSamples[r * g + k].length;
      if (!best.has(j) || n > best.get(j)[0]) best.set(j, [n, r, k]);
      const colour = CLUSTER_COLOURS[j % CLUSTER_COLOURS.length];
      const x0 = k * pitch - 2, y0 = r * pitch - 2, x1 = x0 + pitch, y1 = y0 + pitch;
      for (const [dr, dk, a, b, c2, d] of [[-1, 0, x0, y0, x1, y0], [1, 0, x0, y1, x1, y1],
                                            [0, -1, x0, y0, x0, y1], [0, 1, x1, y0, x1, y1]]) {
        if (at(r + dr, k + dk) === j) continue;
        // Inset by 1.5 px into the cell's own side, so two regions' borders lie side by side.
        const ix = dk * -1.5, iy = dr * -1.5;
        s.append(svg('line', {x1: a + ix, y1: b + iy, x2: c2 + ix, y2: d + iy, stroke: colour,
                              'stroke-width': 2.5, class: 'cluster-edge', 'data-cluster': j}));
      }
    }
  }
  for (const [j, [, r, k]] of best) {
    s.append(svg('text', {x: k * pitch + outer / 2, y: r * pitch + outer / 2 + 5, 'text-anchor': 'middle',
                          class: 'cluster-label', fill: CLUSTER_COLOURS[j % CLUSTER_COLOURS.length],
                          'data-cluster': j}, `${j}`));
  }
  return s;
}

// The samples in the latent plane, on the map's grid (row 0 at the top), coloured by layer
// or head; the selected head's samples ringed.
function drawSampleScatter(box, cellBox, pt) {
  const idx = pt.sample_index;
  // The points are drawn once per colouring; a new selection only redraws the rings.
  if (!pt.scatter || pt.scatter.by !== state.sampleColour) pt.scatter = sampleScatter(box, cellBox, pt);
  const {rings, filtered, xy, note} = pt.scatter;
  const ringed = [], chosen = [];
  const images = state.imageFilter ? new Set(state.imageFilter.indices) : null;
  for (const [sIdx, x, y] of xy) {
    const [image, l, h] = idx[sIdx];
    if (l === state.layer && h === state.head) ringed.push(svg('circle', {cx: x, cy: y, r: 3.5, class: 'sample-selected'}));
    if (images && images.has(image)) chosen.push(svg('rect', {x: x - 2.5, y: y - 2.5, width: 5, height: 5, class: 'sample-filtered'}));
  }
  rings.replaceChildren(...ringed);
  filtered.replaceChildren(...chosen);
  filtered.dataset.count = chosen.length;
  note.textContent = `ringed: ${headName(state.layer, state.head)}` +
      (images ? `; blue squares: samples of ${state.imageFilter.label}` : '') +
      '; grid rows run upwards here (latent 2), downwards in the map' +
      (pt.scatter.step > 1 ? `; every ${pt.scatter.step}th sample drawn` : '');
}

function sampleScatter(box, cellBox, pt) {
  const {map_extent: ext, sample_latent: lat, sample_index: idx, g, L, H} = pt;
  const size = 260;
  const by = state.sampleColour;
  const f = frame(size + 70, size + 44, ext[0], [ext[1][1], ext[1][0]], 'latent 1', 'latent 2',
                  {xTicks: [], yTicks: []});
  const s = svg('svg', {width: size + 70, height: size + 44, id: 'sample-scatter', 'data-colour': by}, f.g);
  for (let i = 1; i < g; i++) {
    const x = f.x(ext[0][0] + i / g * (ext[0][1] - ext[0][0]));
    const y = f.y(ext[1][0] + i / g * (ext[1][1] - ext[1][0]));
    s.append(svg('line', {x1: x, x2: x, y1: f.m.t, y2: f.y(ext[1][0]), class: 'gridline'}),
             svg('line', {x1: f.m.l, x2: f.width - f.m.r, y1: y, y2: y, class: 'gridline'}));
  }
  const clamp = (v, lo, hi) => Math.min(Math.max(v, Math.min(lo, hi)), Math.max(lo, hi));
  const step = Math.max(1, Math.ceil(lat.length / SCATTER_MAX));
  const xy = [], marks = [];
  // The points as one string of markup (parsed at once: thousands of createElementNS and
  // setAttribute calls were a third of this view's share of a run switch).
  for (let sIdx = 0; sIdx < lat.length; sIdx += step) {
    const [, l, h] = idx[sIdx];
    const x = f.x(clamp(lat[sIdx][0], ext[0][0], ext[0][1])), y = f.y(clamp(lat[sIdx][1], ext[1][0], ext[1][1]));
    const fill = by === 'layer' ? layerColour(l, L) : headColour(h, H);
    marks.push(`<circle cx="${x.toFixed(1)}" cy="${y.toFixed(1)}" r="2" fill="${fill}" class="sample-point"/>`);
    xy.push([sIdx, x, y]);
  }
  const points = svg('g', {class: 'points'});
  points.innerHTML = marks.join('');
  s.append(points);
  const rings = svg('g', {class: 'rings'}), filtered = svg('g', {class: 'filtered', id: 'sample-filtered'});
  s.append(filtered, rings);
  s.addEventListener('click', (e) => {   // a click picks the map cell under the pointer
    const rect = s.getBoundingClientRect();
    const fx = (e.clientX - rect.left - f.m.l) / (f.width - f.m.l - f.m.r);
    const fy = (e.clientY - rect.top - f.m.t) / (f.height - f.m.t - f.m.b);
    if (fx < 0 || fx >= 1 || fy < 0 || fy >= 1) return;
    state.cell = [g - 1 - Math.floor(fy * g), Math.floor(fx * g)];
    for (const x of document.querySelectorAll('#pattern-map .pattern-cell')) {
      x.classList.toggle('selected', +x.dataset.row === state.cell[0] && +x.dataset.col === state.cell[1]);
    }
    drawCell(cellBox, pt);
  });
  const note = el('p', {class: 'help'});
  box.replaceChildren(el('h3', {}, 'The samples on the map\'s grid'),
      el('label', {}, 'colour by ', dropdown([['layer', 'layer'], ['head', 'head']], by,
                                             (v) => { state.sampleColour = v; drawSampleScatter(box, cellBox, pt); },
                                             'sample-colour')),
      el('div', {}, s),
      categoryKey(by === 'layer' ? L : H, by === 'layer' ? 'L' : 'H', `colour = ${by}`), note);
  return {s, rings, filtered, xy, note, by, step};
}

// The heads behind the selected cell (or `preview`, the hovered one), and a few of its real
// samples with their image and query patch. The panel keeps its size, so the page does not
// jump.
async function drawCell(box, pt, preview = null) {
  pt.preview = preview;
  // Nothing hovered or picked: the selected head's most common pattern, so that the panel
  // shows real samples from the start.
  const headsOwn = !preview && !state.cell;
  const shown = preview || state.cell || headsCommonCell(pt);
  if (!shown) {
    box.replaceChildren(el('h3', {}, 'Samples of a pattern'),
        el('p', {class: 'help', id: 'cell-heads'}, 'Hover over a pattern to see its real samples and the heads that produce it; a click keeps them.'));
    return;
  }
  const [r, k] = shown;
  const {L, H, g} = pt;
  const members = pt.cellSamples[r * g + k];
  const heads = [];
  for (let l = 0; l < L; l++) {
    for (let h = 0; h < H; h++) {
      const c = pt.headCount.get(`${l},${h},${r},${k}`);
      if (c) heads.push([c, l, h]);
    }
  }
  heads.sort((a, b) => b[0] - a[0]);
  const chips = el('div', {class: 'chips', id: 'cell-heads'}, heads.length ? heads.map(([c, l, h]) =>
      el('button', {class: 'chip' + (l === state.layer && h === state.head ? ' selected' : ''),
                    onclick: () => select(l, h)},
         `${headName(l, h)}: ${c} of ${pt.headCount.get(`${l},${h}`)} samples`))
      : el('span', {class: 'help', id: 'cell-empty'}, 'No sample falls in this cell: the decoded pattern is the decoder\'s extrapolation, shown by no head.'));
  const gallery = el('div', {class: 'sample-gallery', id: 'sample-gallery'});
  box.replaceChildren(el('h3', {}, `Pattern (${r}, ${k}): ${members.length} sample${members.length === 1 ? '' : 's'}` +
                             (preview ? ' (hovered)' : headsOwn ? ` (${headName(state.layer, state.head)}'s most common; hover another)` : '')),
                      chips, imagesButton(pt, members), gallery);
  box.dataset.row = r; box.dataset.col = k;
  if (!members.length || !(`patterns/sample_plain` in pt.info.tags)) return;
  // Prefer the selected head's samples, then spread over the others.
  const mine = members.filter((s) => pt.sample_index[s][1] === state.layer && pt.sample_index[s][2] === state.head);
  const others = members.filter((s) => !mine.includes(s));
  const pick = [...mine, ...others.filter((_, i) => i % Math.max(1, Math.floor(others.length / SAMPLES_SHOWN)) === 0)]
      .slice(0, SAMPLES_SHOWN);
  const {gh, gw} = pt;
  const cell = Math.max(4, Math.floor(84 / Math.max(gh, gw)));
  // Slots of the samples' size until their maps arrive: the panel keeps its height.
  const slots = pick.map(() => el('div', {class: 'sample-slot', style: `width:${gw * cell}px`},
      el('div', {style: `width:${gw * cell}px;height:${gh * cell}px`}),
      el('div', {class: 'caption'}, '\u00a0'), el('div', {class: 'caption'}, '\u00a0')));
  gallery.append(...slots);
  pt.sampleMaps = pt.sampleMaps || new Map();   // sample -> promise of its map (hover re-asks)
  const maps = await Promise.all(pick.map((s) => {
    if (!pt.sampleMaps.has(s)) pt.sampleMaps.set(s, array('patterns/sample_plain', {index: s}));
    return pt.sampleMaps.get(s);
  }));
  const now = pt.preview || state.cell || headsCommonCell(pt);
  if (!now || now[0] !== r || now[1] !== k) return;
  const names = pt.meta.image_names || [];
  const stored = use('storedImages') || [];
  pick.forEach((s, j) => {
    const [image, l, h, query] = pt.sample_index[s];
    const m = maps[j].map((row) => row.map((v) => v * pt.T));
    const sc = ratio(m);
    const stage = el('div', {class: 'sample-stage', style: `width:${gw * cell}px;height:${gh * cell}px`});
    const k2 = stored.indexOf(image);
    if (k2 >= 0) stage.append(el('img', {src: `./png?${q({tag: `strength/map_image/${k2}`})}`, class: 'base',
                                          width: gw * cell, height: gh * cell}));
    const c = heatCanvas(m, sc, cell, {cls: 'overlay sample-map' + (k2 >= 0 ? ' translucent' : '')});
    const ctx = c.getContext('2d');
    ctx.strokeStyle = '#111'; ctx.lineWidth = 2;
    const [qr, qc] = [Math.floor(query / gw), query % gw];
    ctx.strokeRect(qc * cell + 1, qr * cell + 1, cell - 2, cell - 2);
    stage.append(c);
    slots[j].replaceWith(el('div', {class: 'sample', 'data-sample': s, style: `width:${gw * cell}px`},
        tip(stage, `${headName(l, h)}, image ${names[image] ?? image}, query patch (row ${qr}, col ${qc}) outlined; × uniform, ${sc.ticks[0][1]} … ${sc.ticks[2][1]}`),
        el('div', {class: 'caption'}, `${headName(l, h)} · ${names[image] ?? `image ${image}`}`),
        el('div', {class: 'caption'}, `query (${qr}, ${qc}) · peak ${fmt(Math.max(...m.flat()))}×`)));
  });
}

// [row, col] of the map cell holding most of the selected head's samples, or null.
function headsCommonCell(pt) {
  let best = null, most = 0;
  for (let r = 0; r < pt.g; r++) {
    for (let k = 0; k < pt.g; k++) {
      const c = pt.headCount.get(`${state.layer},${state.head},${r},${k}`) || 0;
      if (c > most) { most = c; best = [r, k]; }
    }
  }
  return best;
}

// "Show these images": the images the cell's samples come from become the image filter (the
// image overview, the histogram and the image strip follow).
function imagesButton(pt, members) {
  if (!members.length) return null;
  const images = [...new Set(members.map((s) => pt.sample_index[s][0]))].sort((a, b) => a - b);
  return el('button', {id: 'cell-images', class: 'chip', onclick: () => {
    const [r, k] = pt.preview || state.cell;
    setImageFilter({indices: images, label: `the ${images.length} images of pattern (${r}, ${k})`, source: 'patterns'});
  }}, `filter the ${images.length} image${images.length === 1 ? '' : 's'} it comes from`);
}

// Statistics behind a cluster's name, as patterns.describe_pattern decides it.
const RULES = [['cls', 'class-token share', 0.5, 'class-token-focused'],
               ['self', 'self share', 0.5, 'self'], ['peak', 'peak share', 0.4, 'offset'],
               ['local', 'share within 1 patch', 0.6, 'local'], ['row', 'share in its row', 0.6, 'row'],
               ['column', 'share in its column', 0.6, 'column']];

export function patternStatistics(pattern) {
  const c = (pattern.length - 1) / 2;
  const sum = pattern.flat().reduce((a, b) => a + b, 0);
  const cls = Math.max(0, 1 - sum);            // a query's weights over patches and class token sum to 1
  const p = pattern.map((row) => row.map((v) => v / Math.max(sum, 1e-12)));
  let local = 0, row = 0, column = 0, peak = 0, entropy = 0, cells = 0;
  p.forEach((rw, y) => rw.forEach((v, x) => {
    if (Math.max(Math.abs(y - c), Math.abs(x - c)) <= 1) local += v;
    if (y === c) row += v;
    if (x === c) column += v;
    peak = Math.max(peak, v);
    if (v > 0) { entropy -= v * Math.log(v); cells++; }
  }));
  return {cls, self: p[c][c], peak, local, row, column, entropy, cells};
}

// A cluster's name: its members' most common head kind (kinds.js, as `vit-analytics
// kinds`), or the pattern rule's name (meta) when the strength view has not computed the
// kinds. "none of the above" no longer collapses to "global": that is a kind of its own.
function clusterName(pt, j) {
  const kinds = use('headKinds');
  if (!kinds) return pt.meta.cluster_names[j];
  const mix = kindMix(kinds, members(pt, j));
  return mix.length ? mix[0][0] : pt.meta.cluster_names[j];
}

function members(pt, j) {
  const out = [];
  for (let l = 0; l < pt.L; l++) for (let h = 0; h < pt.H; h++) if (pt.head_cluster[l][h] === j) out.push([l, h]);
  return out;
}

function kindText(pt, heads) {
  const kinds = use('headKinds');
  if (!kinds) return '';
  return 'kinds of its heads: ' + kindMix(kinds, heads).map(([k, c]) => `${k} ${c}`).join(', ') +
         ` (pattern rule: ${pt.meta.cluster_names[heads.length ? pt.head_cluster[heads[0][0]][heads[0][1]] : 0]})`;
}

function drawClusterList(clusterBox, pt) {
  hideTooltip();
  const {head_cluster: clusters, cluster_pattern: reps, meta, L, H, T} = pt;
  const times = reps.map((rep) => rep.map((row) => row.map((v) => v * T)));
  const shared = ratio(times);
  const rows = reps.map((rep, j) => {
    const members = [];
    for (let l = 0; l < L; l++) for (let h = 0; h < H; h++) if (clusters[l][h] === j) members.push([l, h]);
    const sc = state.scaleMode === 'shared' ? shared : ratio(times[j]);
    const st = patternStatistics(rep);
    let fired = false;
    const stats = el('table', {class: 'rules'}, RULES.map(([key, label, threshold, name]) => {
      const hit = !fired && st[key] > threshold;
      fired = fired || hit;
      return el('tr', {class: hit ? 'fired' : ''}, el('td', {}, label), el('td', {}, fmt(st[key])),
                el('td', {}, `> ${threshold} → ${name}`));
    }), el('tr', {class: fired ? '' : 'fired'}, el('td', {}, 'none of the above'), el('td', {}, ''),
           el('td', {}, '→ by mean distance: global (≥ 0.85× uniform), local (< 0.5×), else mixed')),
       el('tr', {}, el('td', {}, 'entropy over patches'), el('td', {}, fmt(st.entropy)),
          el('td', {}, `uniform over its ${st.cells} cells: ${fmt(Math.log(Math.max(1, st.cells)))}`)));
    return el('div', {class: 'cluster' + (clusters[state.layer][state.head] === j ? ' selected' : ''), 'data-cluster': j},
        el('div', {}, heatCanvas(times[j], sc, Math.max(3, Math.floor(60 / rep.length)), {cls: 'cluster-map'}),
           state.scaleMode === 'shared' ? null : legend(sc, 90)),
        el('div', {}, el('b', {style: `color:${CLUSTER_COLOURS[j % CLUSTER_COLOURS.length]}`}, '■ '),
           el('b', {class: 'cluster-name'}, `cluster ${j}: ${clusterName(pt, j)}`),
           el('div', {class: 'help cluster-kinds'}, kindText(pt, members)),
           el('span', {class: 'help'}, ` · peak ${fmt(Math.max(...times[j].flat()))}× uniform`),
           el('div', {class: 'chips'}, members.map(([l, h]) =>
               el('button', {class: 'chip' + (l === state.layer && h === state.head ? ' selected' : ''),
                             'data-layer': l, 'data-head': h, onclick: () => select(l, h)}, headName(l, h))))),
        el('details', {class: 'rules-fold'}, el('summary', {}, 'why this name: the rule statistics'), stats));
  });
  clusterBox.replaceChildren(el('h3', {}, 'Head clusters: mean re-centred attention of the members (× uniform), and why each got its name'),
                             el('p', {class: 'help'}, 'The first rule whose statistic passes its threshold names the cluster (highlighted). ' +
                                    'Offsets far from the centre lie inside the image for fewer query patches, so their mean (and colour) is lower.'),
                             ...(state.scaleMode === 'shared' ? [legend(shared, 180, 'cluster-legend')] : []),
                             ...rows, el('h3', {}, 'Autoencoder training'),
                             trainingChart(pt.train_loss, pt.val_loss),
                             el('div', {class: 'keys'}, el('span', {style: 'color:#4e79a7'}, '■ training '),
                                el('span', {style: 'color:#e15759'}, '■ validation')));
}

function trainingChart(trainLoss, valLoss) {
  const E = Math.max(2, trainLoss.length);
  const f = frame(280, 140, [1, E], extent([trainLoss, valLoss]), 'epoch', 'loss',
                  {xInteger: true, xTicks: niceTicks(1, E, 5, true)});
  return svg('svg', {width: 280, height: 140, id: 'training-chart'}, f.g,
      svg('polyline', {points: trainLoss.map((v, i) => `${f.x(i + 1)},${f.y(v)}`).join(' '), class: 'curve', stroke: '#4e79a7'}),
      svg('polyline', {points: valLoss.map((v, i) => `${f.x(i + 1)},${f.y(v)}`).join(' '), class: 'curve', stroke: '#e15759'}));
}
