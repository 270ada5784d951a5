// ViT Analytics: linked views of head importance, attention strength, patterns and images.
// Plain ES module, no dependencies: TensorBoard calls render() inside the plugin's iframe.
// Data comes only from this plugin's JSON routes (./runs, ./meta, ./array, ./png, ./attention).

const SVGNS = 'http://www.w3.org/2000/svg';
const state = {run: null, layer: 0, head: 0, image: 0, query: null, cell: null,
               metric: 'taylor', scatterX: 'taylor', scatterY: 'ablation_loss',
               curveMetric: 'top1', overlay: 'head', compare: ''};
const listeners = [];
let data = {};
let tooltip;

const METRIC_LABELS = {
  taylor: 'Taylor |dL/dξ|', taylor_normalized: 'Taylor (layer-normalised)',
  ablation_loss: 'ablation: loss increase', ablation_top1: 'ablation: top-1 drop',
  ablation_top5: 'ablation: top-5 drop', ablation_kl: 'ablation: KL (nats)',
};

// --- small DOM / SVG helpers ------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'style') node.style.cssText = v;
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children.flat()) if (c != null) node.append(c);
  return node;
}

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children.flat()) if (c != null) node.append(c);
  return node;
}

async function getJSON(url) {
  const r = await fetch(url);
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

// Arrays arrive packed: {shape, dtype, data_b64} (little-endian float32 or int32).
function unpack(r) {
  const bin = atob(r.data_b64);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  const flat = Array.from(r.dtype === 'float32' ? new Float32Array(bytes.buffer)
                                                : new Int32Array(bytes.buffer));
  const nest = (offset, dims) => {
    if (!dims.length) return flat[offset];
    const stride = dims.slice(1).reduce((a, b) => a * b, 1);
    return Array.from({length: dims[0]}, (_, i) => nest(offset + i * stride, dims.slice(1)));
  };
  return r.shape.length ? nest(0, r.shape) : flat[0];
}

const q = (params) => new URLSearchParams({run: state.run, ...params}).toString();
const array = (tag, extra = {}) => getJSON(`./array?${q({tag, ...extra})}`).then(unpack);
const arrayOf = (run, tag) => getJSON(`./array?${new URLSearchParams({run, tag})}`).then(unpack);
// {name: array} for tags `${prefix}/${name}`, fetched in parallel.
async function arrays(prefix, names) {
  const values = await Promise.all(names.map((name) => array(`${prefix}/${name}`)));
  return Object.fromEntries(names.map((name, i) => [name, values[i]]));
}
const fmt = (v) => v == null || Number.isNaN(v) ? '–' : Math.abs(v) >= 1000 || (Math.abs(v) < 1e-3 && v !== 0)
    ? v.toExponential(3) : (+v).toFixed(4);
const headName = (l, h) => `L${l} H${h}`;
const tickFmt = (v) => Math.abs(v) >= 1e4 || (Math.abs(v) < 1e-3 && v !== 0)
    ? v.toExponential(1) : `${+v.toPrecision(3)}`;

// Viridis, sampled; linear interpolation between stops.
const VIRIDIS = [[68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
                 [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37]];
function colour(t) {
  if (t == null || Number.isNaN(t)) return '#ccc';
  t = Math.min(1, Math.max(0, t)) * (VIRIDIS.length - 1);
  const i = Math.min(Math.floor(t), VIRIDIS.length - 2), f = t - i;
  const c = VIRIDIS[i].map((a, k) => Math.round(a + f * (VIRIDIS[i + 1][k] - a)));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}

function extent(values) {
  const v = values.flat(Infinity).filter((x) => x != null && Number.isFinite(x));
  return v.length ? [Math.min(...v), Math.max(...v)] : [0, 1];
}

function legend(lo, hi, label, width = 180) {
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

function tip(node, text) {
  node.addEventListener('mousemove', (e) => {
    tooltip.textContent = typeof text === 'function' ? text() : text;
    tooltip.style.display = 'block';
    tooltip.style.left = `${e.clientX + 12}px`;
    tooltip.style.top = `${e.clientY + 12}px`;
  });
  node.addEventListener('mouseleave', () => { tooltip.style.display = 'none'; });
  return node;
}

function select(layer, head) {
  state.layer = layer;
  state.head = head;
  document.getElementById('selected-head').textContent = headName(layer, head);
  for (const f of listeners) f();
}

function dropdown(options, value, onchange, id) {
  const s = el('select', {id, onchange: (e) => onchange(e.target.value)},
               options.map(([v, label]) => el('option', {value: v}, label)));
  s.value = value;
  return s;
}

// Axes for line and scatter charts.
function frame(width, height, xDomain, yDomain, xLabel, yLabel) {
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

function heatCanvas(matrix, lo, hi, cell, opts = {}) {
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

function section(id, title, help) {
  return el('section', {id}, el('h2', {}, title), help ? el('p', {class: 'help'}, help) : null,
            el('div', {class: 'body'}));
}

// --- importance ---------------------------------------------------------------------------

async function renderImportance(body) {
  const meta = await getJSON(`./meta?${q({analysis: 'importance'})}`);
  const metrics = Object.keys(meta.definitions);
  const [values, c, p] = await Promise.all([
      arrays('importance', metrics),
      arrays('importance', ['curve_counts', 'curve_top1', 'curve_kl', 'curve_loss']),
      arrays('importance', ['partial_heads', 'partial_loss', 'partial_top1', 'partial_kl'])]);
  const tags = data.tags;
  const curves = {counts: c.curve_counts, top1: c.curve_top1, kl: c.curve_kl, loss: c.curve_loss};
  const partial = {heads: p.partial_heads, loss: p.partial_loss, top1: p.partial_top1,
                   kl: p.partial_kl};
  const L = values.taylor.length, H = values.taylor[0].length;
  const perImage = 'importance/per_image_taylor' in tags;
  let perImageTaylor = null;  // fetched once, on first use

  const info = el('p', {class: 'help'},
      `${meta.images} images (${meta.labelled_images} labelled${meta.label_free ?
        '; unlabelled images use the model\'s own prediction as target' : ''}). ` +
      `Unmasked: top-1 ${fmt(meta.baseline.top1)}, loss ${fmt(meta.baseline.loss)}.`);
  const gridBox = el('div', {class: 'panel'});
  const scatterBox = el('div', {class: 'panel'});
  const curveBox = el('div', {class: 'panel'});
  const detailBox = el('div', {class: 'panel'});
  body.append(info, el('div', {class: 'row'}, gridBox, scatterBox),
              el('div', {class: 'row'}, curveBox, detailBox));
  const options = metrics.map((m) => [m, METRIC_LABELS[m] || m]);

  function drawGrid() {
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
    gridBox.replaceChildren(el('h3', {}, 'Importance of each layer × head'),
        dropdown(options, state.metric, (m) => { state.metric = m; drawGrid(); }, 'metric-select'),
        el('div', {}, s), legend(lo, hi, METRIC_LABELS[state.metric] || state.metric));
  }

  function drawScatter() {
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
    scatterBox.replaceChildren(el('h3', {}, 'Two metrics, each head a point (colour = layer)'),
        el('label', {}, 'x ', dropdown(options, state.scatterX,
                                       (m) => { state.scatterX = m; drawScatter(); })),
        el('label', {}, ' y ', dropdown(options, state.scatterY,
                                        (m) => { state.scatterY = m; drawScatter(); })),
        el('div', {}, s));
  }

  function drawCurves() {
    const m = state.curveMetric, rows = curves[m], counts = curves.counts;
    const total = L * H;
    const f = frame(380, 240, [0, 100], extent(rows), '% of heads removed (least important first)',
                    m === 'top1' ? 'top-1 accuracy' : m === 'kl' ? 'KL to unmasked (nats)' : 'loss');
    const s = svg('svg', {width: 380, height: 240, id: 'pruning-curves'}, f.g);
    const px = counts.map((c) => 100 * c / total);
    const randomRows = meta.curve_orders.map((o, i) => o.startsWith('random') ? rows[i] : null)
        .filter(Boolean);
    if (randomRows.length) {
      const lo = px.map((_, j) => Math.min(...randomRows.map((r) => r[j])));
      const hi = px.map((_, j) => Math.max(...randomRows.map((r) => r[j])));
      const mean = px.map((_, j) => randomRows.reduce((a, r) => a + r[j], 0) / randomRows.length);
      const band = px.map((p, j) => `${f.x(p)},${f.y(hi[j])}`).concat(
          px.map((p, j) => `${f.x(p)},${f.y(lo[j])}`).reverse()).join(' ');
      s.append(svg('polygon', {points: band, class: 'band'}),
               svg('polyline', {points: px.map((p, j) => `${f.x(p)},${f.y(mean[j])}`).join(' '),
                                class: 'curve random'}));
    }
    const palette = ['#e15759', '#4e79a7', '#59a14f', '#f28e2b', '#b07aa1'];
    const keys = el('div', {class: 'keys'});
    meta.curve_orders.forEach((o, i) => {
      if (o.startsWith('random')) return;
      const c = palette[i % palette.length];
      const line = svg('polyline', {points: px.map((p, j) => `${f.x(p)},${f.y(rows[i][j])}`).join(' '),
                                    class: 'curve', stroke: c});
      s.append(line);
      px.forEach((p, j) => s.append(tip(svg('circle', {cx: f.x(p), cy: f.y(rows[i][j]), r: 2.5,
                                                       fill: c}),
          `${o}: ${counts[j]} heads removed → ${fmt(rows[i][j])}`)));
      keys.append(el('span', {style: `color:${c}`}, `■ ${o} `));
    });
    if (randomRows.length) keys.append(el('span', {class: 'random-key'},
                                         `■ random (mean, min–max of ${randomRows.length})`));
    curveBox.replaceChildren(el('h3', {}, 'Pruning curves: metric orders against random'),
        dropdown([['top1', 'top-1 accuracy'], ['kl', 'KL'], ['loss', 'loss']], m,
                 (v) => { state.curveMetric = v; drawCurves(); }), el('div', {}, s), keys);
  }

  async function drawDetail() {
    const {layer: l, head: h} = state;
    const parts = [el('h3', {}, `Why does ${headName(l, h)} matter?`)];
    const row = partial.heads.indexOf(l * H + h);
    if (row >= 0) {
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
      parts.push(el('p', {class: 'help'}, 'Loss increase when only part of its attention is removed:'),
                 s);
    } else {
      parts.push(el('p', {class: 'help'}, 'Partial pruning was not computed for this head ' +
                    '(only for the most important ones; see --partial-heads).'));
    }
    if (perImage) {
      perImageTaylor = perImageTaylor || array('importance/per_image_taylor');
      const v = await perImageTaylor;
      const xs = v.map((img) => img[l][h]).filter((x) => x != null);
      const [lo, hi] = extent(xs);
      const bins = 20, counts = new Array(bins).fill(0);
      xs.forEach((x) => counts[Math.min(bins - 1, Math.floor((x - lo) / ((hi - lo) || 1) * bins))]++);
      const f = frame(380, 150, [lo, hi], [0, Math.max(...counts)], 'Taylor importance per image',
                      'images');
      const s = svg('svg', {width: 380, height: 150, id: 'per-image-hist'}, f.g);
      counts.forEach((c, i) => s.append(tip(svg('rect', {
          x: f.x(lo + i / bins * (hi - lo)), y: f.y(c), width: Math.max(1, 340 / bins - 2),
          height: f.y(0) - f.y(c), class: 'bar'}), `${c} images`)));
      parts.push(s);
    } else {
      parts.push(el('p', {class: 'help'}, 'Per-image distributions: run importance with --per-image.'));
    }
    detailBox.replaceChildren(...parts);
  }

  drawGrid(); drawScatter(); drawCurves(); await drawDetail();
  listeners.push(drawGrid, drawScatter, drawDetail);
}

// --- strength -----------------------------------------------------------------------------

async function renderStrength(body) {
  const [meta, a] = await Promise.all([
      getJSON(`./meta?${q({analysis: 'strength'})}`),
      arrays('strength', ['offset_ratio', 'offset_mean', 'offset_pairs', 'neighbourhood_share',
                          'mean_distance', 'entropy'])]);
  const {offset_ratio: ratio, offset_mean: mean, offset_pairs: pairs,
         neighbourhood_share: neigh, mean_distance: dist, entropy} = a;
  const L = ratio.length, H = ratio[0].length, span = ratio[0][0].length, n = (span + 1) / 2;
  const [lo, hi] = extent(ratio);
  const multiples = el('div', {class: 'panel'});
  const focus = el('div', {class: 'panel'});
  const curves = el('div', {class: 'panel'});
  const trends = el('div', {class: 'panel'});
  body.append(el('p', {class: 'help'}, `${meta.images} images. Offset maps show attention by ` +
                 '(dy, dx) = key − query in patches, as multiples of uniform attention (1/T).'),
              el('div', {class: 'row'}, multiples, focus), el('div', {class: 'row'}, curves, trends));

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
  multiples.append(el('h3', {}, 'Offset strength of every head (rows: layers, columns: heads)'),
                   grid, legend(lo, hi, '× uniform'));

  function drawFocus() {
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

  function drawCurves() {
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

  function drawTrends() {
    const boxes = [[dist, 'mean attention distance (px)', 'trend-distance'],
                   [entropy, 'attention entropy (nats)', 'trend-entropy']].map(([v, label, id]) => {
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
    });
    trends.replaceChildren(el('h3', {}, 'Layer trends (each head a point; line = layer mean)'),
                           ...boxes);
  }

  drawFocus(); drawCurves(); drawTrends();
  listeners.push(drawFocus, drawCurves, drawTrends);
}

// --- patterns -----------------------------------------------------------------------------

async function renderPatterns(body) {
  const [meta, a] = await Promise.all([
      getJSON(`./meta?${q({analysis: 'patterns'})}`),
      arrays('patterns', ['map', 'head_density', 'head_cluster', 'cluster_pattern',
                          'train_loss', 'val_loss'])]);
  const {map, head_density: density, head_cluster: clusters, cluster_pattern: reps,
         train_loss: trainLoss, val_loss: valLoss} = a;
  const g = map.length, c = map[0][0].length, L = density.length, H = density[0].length;
  const mapBox = el('div', {class: 'panel'});
  const clusterBox = el('div', {class: 'panel'});
  body.append(el('p', {class: 'help'}, `${meta.samples} sampled query maps, re-centred on the ` +
                 `query (centre cell = the query patch). Autoencoder reconstruction error ` +
                 `${fmt(meta.reconstruction_error)} (data variance ${fmt(meta.data_variance)}).`),
              el('div', {class: 'row'}, mapBox, clusterBox));
  const cellPx = Math.max(3, Math.floor(40 / c));

  function drawMap() {
    const {layer: l, head: h} = state;
    const d = density[l][h];
    const dmax = Math.max(1e-12, ...d.flat());
    const wrap = el('div', {class: 'pattern-map', id: 'pattern-map',
                            style: `grid-template-columns: repeat(${g}, auto)`});
    for (let r = 0; r < g; r++) {
      for (let k = 0; k < g; k++) {
        const canvas = heatCanvas(map[r][k], 0, 1, cellPx, {cls: 'pattern-cell'});
        canvas.style.outline = d[r][k] > 0 ? `3px solid rgba(225,87,89,${0.25 + 0.75 * d[r][k] / dmax})` : '';
        canvas.dataset.row = r; canvas.dataset.col = k;
        canvas.addEventListener('click', () => { state.cell = [r, k]; drawCellHeads(); });
        wrap.append(tip(canvas, `cell (${r}, ${k}): ${fmt(100 * d[r][k])}% of ${headName(l, h)}'s samples`));
      }
    }
    mapBox.replaceChildren(el('h3', {}, `Pattern map (decoded latent grid); red: where ${headName(l, h)}'s samples fall`),
                           wrap, el('div', {id: 'cell-heads'}));
    drawCellHeads();
  }

  function drawCellHeads() {
    const box = mapBox.querySelector('#cell-heads');
    if (!state.cell) { box.replaceChildren(el('p', {class: 'help'}, 'Click a pattern to list the heads that produce it.')); return; }
    const [r, k] = state.cell;
    const heads = [];
    for (let l = 0; l < L; l++) for (let h = 0; h < H; h++) if (density[l][h][r][k] > 0) heads.push([density[l][h][r][k], l, h]);
    heads.sort((a, b) => b[0] - a[0]);
    box.replaceChildren(el('p', {}, `Heads producing pattern (${r}, ${k}):`),
        el('div', {class: 'chips'}, heads.length ? heads.map(([v, l, h]) =>
            el('button', {class: 'chip', onclick: () => select(l, h)}, `${headName(l, h)} ${fmt(100 * v)}%`))
            : 'none'));
  }

  function drawClusters() {
    const rows = reps.map((rep, j) => {
      const members = [];
      for (let l = 0; l < L; l++) for (let h = 0; h < H; h++) if (clusters[l][h] === j) members.push([l, h]);
      const [lo, hi] = extent(rep);
      return el('div', {class: 'cluster' + (clusters[state.layer][state.head] === j ? ' selected' : '')},
          heatCanvas(rep, lo, hi, Math.max(3, Math.floor(60 / rep.length))),
          el('div', {}, el('b', {}, `cluster ${j}: ${meta.cluster_names[j]}`),
             el('div', {class: 'chips'}, members.map(([l, h]) =>
                 el('button', {class: 'chip' + (l === state.layer && h === state.head ? ' selected' : ''),
                               onclick: () => select(l, h)}, headName(l, h))))));
    });
    const f = frame(260, 130, [1, Math.max(2, trainLoss.length)], extent([trainLoss, valLoss]), 'epoch', 'loss');
    const s = svg('svg', {width: 260, height: 130}, f.g,
        svg('polyline', {points: trainLoss.map((v, i) => `${f.x(i + 1)},${f.y(v)}`).join(' '), class: 'curve', stroke: '#4e79a7'}),
        svg('polyline', {points: valLoss.map((v, i) => `${f.x(i + 1)},${f.y(v)}`).join(' '), class: 'curve', stroke: '#e15759'}));
    clusterBox.replaceChildren(el('h3', {}, 'Head clusters (mean re-centred attention of members)'),
                               ...rows, el('h3', {}, 'Autoencoder training (blue train, red validation)'), s);
  }

  drawMap(); drawClusters();
  listeners.push(drawMap, drawClusters);
}

// --- images -------------------------------------------------------------------------------

async function renderImages(body) {
  const meta = await getJSON(`./meta?${q({analysis: 'strength'})}`);
  const indices = meta.map_image_index;
  if (!indices.length) { body.append(el('p', {class: 'help'}, 'No stored attention maps (run strength with --map-images).')); return; }
  const cfg = meta.config, n = cfg.image_size / cfg.patch_size, cls = cfg.classifier === 'token' ? 1 : 0;
  const thumbs = el('div', {class: 'thumbs'});
  indices.forEach((idx, i) => {
    const img = el('img', {src: `./png?${q({tag: `strength/map_image/${i}`})}`, class: 'thumb',
                           title: meta.image_names[idx], onclick: () => { state.image = i; state.query = null; draw(); }});
    thumbs.append(img);
  });
  const main = el('div', {class: 'panel'});
  const heads = el('div', {class: 'panel'});
  body.append(el('p', {class: 'help'}, 'Click a patch of the image to see where it attends.'),
              thumbs, el('div', {class: 'row'}, main, heads));
  const size = 336, patch = size / n;
  let result = null;

  async function fetchQuery() {
    if (state.query == null) { result = null; return; }
    const r = await getJSON(`./attention?${q({image: state.image, query: state.query + cls})}`);
    result = {attention: unpack(r.attention), rollout: unpack(r.rollout)};
  }

  function overlayCanvas(weights, alpha = 0.65) {
    const c = el('canvas', {width: size, height: size, class: 'overlay'});
    if (!weights) return c;
    const ctx = c.getContext('2d');
    const patches = weights.slice(cls);
    const max = Math.max(1e-12, ...patches);
    patches.forEach((w, p) => {
      const r = Math.floor(p / n), k = p % n;
      ctx.fillStyle = colour(w / max).replace('rgb', 'rgba').replace(')', `,${alpha * (0.15 + 0.85 * w / max)})`);
      ctx.fillRect(k * patch, r * patch, patch, patch);
    });
    if (state.query != null) {
      ctx.strokeStyle = '#ff2d55'; ctx.lineWidth = 3;
      ctx.strokeRect((state.query % n) * patch, Math.floor(state.query / n) * patch, patch, patch);
    }
    return c;
  }

  function draw() {
    const {layer: l, head: h} = state;
    for (const [i, t] of [...thumbs.children].entries()) t.classList.toggle('selected', i === state.image);
    const weights = result ? (state.overlay === 'rollout' ? result.rollout[l] : result.attention[l][h]) : null;
    const stage = el('div', {class: 'stage', style: `width:${size}px;height:${size}px`},
        el('img', {src: `./png?${q({tag: `strength/map_image/${state.image}`})}`, width: size, height: size, class: 'base'}),
        overlayCanvas(weights));
    stage.id = 'image-stage';
    stage.addEventListener('click', async (e) => {
      const rect = stage.getBoundingClientRect();
      const k = Math.min(n - 1, Math.floor((e.clientX - rect.left) / patch));
      const r = Math.min(n - 1, Math.floor((e.clientY - rect.top) / patch));
      state.query = r * n + k;
      await fetchQuery();
      draw();
    });
    tip(stage, () => weights ? 'attention overlay: brighter = stronger' : 'click a patch');
    const label = state.query == null ? 'no patch selected' :
        `query patch (row ${Math.floor(state.query / n)}, col ${state.query % n}) · ` +
        (state.overlay === 'rollout' ? `rollout to layer ${l}` : `${headName(l, h)}`);
    main.replaceChildren(el('h3', {}, meta.image_names[indices[state.image]]),
        dropdown([['head', 'selected head'], ['rollout', 'attention rollout']], state.overlay,
                 (v) => { state.overlay = v; draw(); }, 'overlay-select'),
        el('p', {class: 'help', id: 'query-label'}, label), stage);
    const grid = el('div', {class: 'multiples', id: 'head-multiples',
                            style: `grid-template-columns: repeat(${cfg.num_heads}, auto)`});
    if (result) {
      result.attention.forEach((layer, li) => layer.forEach((w, hi) => {
        const m = [];
        for (let r = 0; r < n; r++) m.push(w.slice(cls + r * n, cls + (r + 1) * n));
        const c = heatCanvas(m, 0, Math.max(...w.slice(cls)), Math.max(3, Math.floor(48 / n)),
                             {cls: 'offset-small' + (li === l && hi === h ? ' selected' : '')});
        c.addEventListener('click', () => select(li, hi));
        grid.append(tip(c, `${headName(li, hi)}: max ${fmt(Math.max(...w.slice(cls)))}` +
                           (cls ? `, to class token ${fmt(w[0])}` : '')));
      }));
    }
    heads.replaceChildren(el('h3', {}, 'This patch\'s attention in every head'), result ? grid :
                          el('p', {class: 'help'}, 'Click a patch of the image.'));
  }
  draw();
  listeners.push(draw);
}

// --- comparison of two runs ---------------------------------------------------------------

async function renderComparison(body, runs, other) {
  const pair = [runs.find((r) => r.run === state.run), runs.find((r) => r.run === other)];
  const row = el('div', {class: 'row'});
  body.append(row);
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
  const trends = [];
  for (const info of pair) {
    if (!info.analyses.includes('strength')) continue;
    const d = await arrayOf(info.run, 'strength/mean_distance');
    trends.push([info.run, d.map((r) => r.reduce((a, b) => a + b, 0) / r.length)]);
  }
  if (trends.length) {
    const L = Math.max(...trends.map(([, t]) => t.length));
    const f = frame(320, 200, [0, Math.max(1, L - 1)], extent(trends.map(([, t]) => t)), 'layer',
                    'mean attention distance (px)');
    const s = svg('svg', {width: 320, height: 200, class: 'compare-trend'}, f.g);
    const colours = ['#4e79a7', '#e15759'];
    const keys = el('div', {class: 'keys'});
    trends.forEach(([run, t], i) => {
      s.append(svg('polyline', {points: t.map((v, l) => `${f.x(l)},${f.y(v)}`).join(' '),
                                class: 'curve', stroke: colours[i]}));
      t.forEach((v, l) => s.append(tip(svg('circle', {cx: f.x(l), cy: f.y(v), r: 3, fill: colours[i]}),
                                       `${run} layer ${l}: ${fmt(v)} px (mean over heads)`)));
      keys.append(el('span', {style: `color:${colours[i]}`}, `■ ${run} `));
    });
    row.append(el('div', {class: 'panel'}, el('h3', {}, 'Mean attention distance by layer'), s, keys));
  }
}

// --- page ---------------------------------------------------------------------------------

const CSS = `
body { font: 13px/1.4 Roboto, system-ui, sans-serif; margin: 0; color: #212121; }
#vit-root { padding: 12px 16px; }
header { display: flex; gap: 16px; align-items: center; margin-bottom: 8px; flex-wrap: wrap; }
h2 { font-size: 16px; margin: 18px 0 4px; border-bottom: 1px solid #ddd; }
h3 { font-size: 13px; margin: 4px 0; font-weight: 500; }
.help { color: #616161; margin: 2px 0 6px; }
.row { display: flex; flex-wrap: wrap; gap: 16px; }
.panel { border: 1px solid #e0e0e0; border-radius: 4px; padding: 8px; background: #fff; }
.tick { font-size: 10px; fill: #616161; }
.axis-label { font-size: 11px; fill: #424242; }
.axis { stroke: #9e9e9e; }
.imp-cell { cursor: pointer; stroke: #fff; }
.imp-cell.selected, .point.selected { stroke: #e15759; stroke-width: 3; }
.point { cursor: pointer; stroke: #fff; }
.curve { fill: none; stroke-width: 2; }
.curve.faint { stroke-width: 1; opacity: 0.35; cursor: pointer; }
.curve.selected { stroke-width: 3; }
.curve.random { stroke: #9e9e9e; stroke-dasharray: 4 3; }
.band { fill: #bdbdbd; opacity: 0.4; }
.random-key { color: #9e9e9e; }
.bar { fill: #4e79a7; } .bar.negative { fill: #f28e2b; }
.centre { fill: none; stroke: #fff; stroke-width: 1.5; }
.multiples { display: grid; gap: 3px; }
.offset-small, .pattern-cell { cursor: pointer; image-rendering: pixelated; border: 2px solid transparent; }
.offset-small.selected { border-color: #e15759; }
.pattern-map { display: grid; gap: 4px; }
.cluster { display: flex; gap: 8px; align-items: center; padding: 4px; }
.cluster.selected { background: #fdecea; }
.chips { display: flex; flex-wrap: wrap; gap: 4px; }
.chip { border: 1px solid #bdbdbd; border-radius: 10px; background: #fafafa; cursor: pointer; padding: 1px 8px; font-size: 11px; }
.chip.selected { border-color: #e15759; background: #fdecea; }
.thumbs { display: flex; gap: 6px; flex-wrap: wrap; }
.thumb { width: 56px; height: 56px; image-rendering: pixelated; cursor: pointer; border: 2px solid transparent; }
.thumb.selected { border-color: #e15759; }
.stage { position: relative; cursor: crosshair; }
.stage img.base, .stage canvas.overlay { position: absolute; left: 0; top: 0; image-rendering: pixelated; }
#vit-tooltip { position: fixed; display: none; background: rgba(33,33,33,.92); color: #fff; padding: 4px 8px; border-radius: 3px; pointer-events: none; z-index: 10; font-size: 12px; max-width: 420px; }
.empty { padding: 40px; color: #616161; font-size: 15px; }
`;

export async function render() {
  document.head.append(el('style', {}, CSS));
  tooltip = el('div', {id: 'vit-tooltip'});
  const root = el('div', {id: 'vit-root'});
  document.body.append(root, tooltip);
  let runs;
  try {
    runs = (await getJSON('./runs')).runs;
  } catch (e) {
    root.append(el('p', {class: 'empty'}, `Could not load the analysis: ${e.message}`));
    return;
  }
  if (!runs.length) {
    root.append(el('div', {class: 'empty', id: 'empty-state'},
        el('p', {}, 'No ViT analysis in this logdir yet.'),
        el('p', {}, 'Write one with: vit-analytics analyze --checkpoint CKPT --images DIR --logdir LOGDIR')));
    return;
  }
  const content = el('div', {id: 'content'});
  const runSelect = dropdown(runs.map((r) => [r.run, r.run]), runs[0].run,
                             (r) => show(r), 'run-select');
  const compareSelect = dropdown([['', 'none'], ...runs.map((r) => [r.run, r.run])], '',
                                 (r) => { state.compare = r; show(state.run); }, 'compare-select');
  root.append(el('header', {}, el('label', {}, 'Run ', runSelect),
                 runs.length > 1 ? el('label', {}, 'Compare with ', compareSelect) : null,
                 el('span', {}, 'Selected head: ', el('b', {id: 'selected-head'}, headName(0, 0))),
                 el('span', {class: 'help'}, 'Click a head in any view to select it everywhere.')),
              content);

  async function show(run) {
    document.body.dataset.ready = 'false';
    state.run = run; state.layer = 0; state.head = 0; state.image = 0; state.query = null; state.cell = null;
    listeners.length = 0;
    const info = runs.find((r) => r.run === run);
    data = {tags: info.tags};
    document.getElementById('selected-head').textContent = headName(0, 0);
    const views = [
      ['importance', 'Which heads matter?', 'Pruning-based importance: mask gradients and single-head ablation.', renderImportance],
      ['strength', 'How strongly do patches attend to their neighbours?', null, renderStrength],
      ['patterns', 'What patterns have heads learned?', null, renderPatterns],
      ['images', 'Images', null, renderImages, 'strength'],
    ];
    content.replaceChildren();
    if (state.compare && state.compare !== run) {
      const sec = section('view-compare', `${run} compared with ${state.compare}`,
                          'Same colour scale for both runs. Select a metric in the importance view.');
      content.append(sec);
      await renderComparison(sec.querySelector('.body'), runs, state.compare);
    }
    for (const [id, title, help, fn, needs] of views) {
      const sec = section(`view-${id}`, title, help);
      content.append(sec);
      if (!info.analyses.includes(needs || id)) {
        sec.querySelector('.body').append(el('p', {class: 'help'},
            `Not computed for this run (vit-analytics ${needs || id} …).`));
        continue;
      }
      try {
        await fn(sec.querySelector('.body'));
      } catch (e) {
        sec.querySelector('.body').append(el('p', {class: 'help'}, `Could not draw: ${e.message}`));
      }
    }
    document.body.dataset.ready = 'true';
  }
  await show(runs[0].run);
}
