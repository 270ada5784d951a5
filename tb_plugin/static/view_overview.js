// Image overview (the paper's view A): every analysed image as a thumbnail and a table row
// (label, the unmasked model's prediction, correctness, loss, the selected head's per-image
// importance), and laid out by the heads it depends on. Sortable; paginated (PAGE rows
// drawn at a time, so 10,000 images stay responsive). One image filter for the page
// (state.setImageFilter): brushing the layout sets it, and so do a bar of the per-image
// histogram and a pattern of the pattern map; the histogram, the pattern samples and the
// image strip follow it. A row, thumbnail or point opens the image's attention maps when
// they are stored; a run that stores fewer says which flag stores them all.

import {colour, extent} from './charts.js';
import {array, meta as analysisMeta, q} from './data.js';
import {el, hideTooltip, svg, tip} from './dom.js';
import {fmt, headName, storeAllMaps} from './format.js';
import {onFilter, onSelect, selectionToken, setImageFilter, stale, state, use} from './state.js';

const PAGE = 50;

export {renderOverview as render};

export async function renderOverview(body, info) {
  const has = (t) => `importance/${t}` in info.tags;
  const meta = await analysisMeta('importance');
  const [loss, prediction] = await Promise.all([
      has('per_image_loss') ? array('importance/per_image_loss') : null,
      has('per_image_prediction') ? array('importance/per_image_prediction') : null]);
  const N = meta.image_names.length;
  // Which images have stored maps: the strength meta says (the images view publishes the
  // same list, but may not have drawn yet).
  const storedImages = info.analyses.includes('strength')
      ? (await analysisMeta('strength')).map_image_index || [] : [];
  // Without a classifier the stored per-image loss is NaN: then there is none to show.
  const ov = {meta, loss: loss && loss.some(Number.isFinite) ? loss : null, prediction, N, taylor: null, storedImages, table: el('div', {id: 'overview-table-box'}),
              summary: el('div', {class: 'help', id: 'overview-summary'})};
  if (!has('per_image_taylor') || !prediction) {
    body.append(el('p', {class: 'help empty-view'}, 'Per-image predictions and importance are not stored for this run. ' +
                   'Run: vit-analytics importance ... --per-image'));
  }
  ov.thumbs = el('div', {id: 'overview-thumbs-box'});
  ov.layout = el('div', {class: 'panel', id: 'overview-layout-box'});
  body.append(ov.summary, el('div', {class: 'row'}, ov.layout, el('div', {style: 'flex: 1 1 400px; min-width: 0'}, ov.thumbs)), ov.table);
  // The selected head's per-image values; false when a newer selection has since been made
  // (its own load draws the table: the column never shows another head's values).
  const load = async () => {
    const perImageTaylor = use('perImageTaylor');
    if (has('per_image_taylor') && perImageTaylor) {
      const token = selectionToken();
      const taylor = await perImageTaylor(state.layer, state.head);
      if (stale(token)) return false;
      ov.taylor = taylor;
    }
    return true;
  };
  await load();
  if (has('per_image_taylor') && N <= LAYOUT_MAX) {
    const vectors = await array('importance/per_image_taylor');   // [image][layer][head]
    ov.X = standardise(vectors);
    ov.xy = layout(ov.X);
    ov.cluster = kmeans(ov.X, Math.max(2, Math.min(CLUSTERS_MAX, Math.round(Math.sqrt(N / 2)))));
  }
  ov.strengthMeta = info.analyses.includes('strength') ? await analysisMeta('strength') : null;
  drawSummary(ov);
  drawTable(ov);
  onFilter(() => drawTable(ov));
  // A new head changes the table's Taylor column; the thumbnails and the layout only when
  // they are coloured or ordered by it (else a head click would redraw them for nothing).
  onSelect(async () => {
    if (!(await load())) return;
    const byHead = ov.thumbColour === 'taylor' || state.imageSort === 'taylor';
    drawTable(ov, {pictures: byHead});
  });
}

function drawSummary({meta, prediction, N}) {
  const labels = meta.labels || [];
  const names = meta.class_names || [];
  const counts = new Map();
  labels.forEach((l) => counts.set(l, (counts.get(l) || 0) + 1));
  const parts = [`${N} images`];
  if (prediction) {
    let right = 0, known = 0;
    prediction.forEach((p, i) => { if (labels[i] >= 0 && p >= 0) { known++; if (p === labels[i]) right++; } });
    if (known) parts.push(`${right} of ${known} labelled images predicted correctly`);
  }
  const makeUp = [...counts.entries()].sort((a, b) => a[0] - b[0])
      .map(([l, c]) => `${l < 0 ? 'unlabelled' : names[l] ?? l}: ${c}`).join(', ');
  document.getElementById('overview-summary')?.replaceChildren(
      el('span', {}, parts.join('; ') + '. '), el('span', {id: 'class-makeup'}, `Classes: ${makeUp}.`));
}

const className = (meta, c) => c == null || c < 0 ? '–' : `${(meta.class_names || [])[c] ?? c}`;

function drawTable(ov, {pictures = true} = {}) {
  hideTooltip();
  const {meta, loss, prediction, taylor, N} = ov;
  const labels = meta.labels || [];
  const correct = (i) => prediction && labels[i] >= 0 && prediction[i] >= 0 ? (prediction[i] === labels[i] ? 1 : 0) : -1;
  const cols = [
    ['index', '#', (i) => i, (i) => `${i}`],
    ['name', 'image', (i) => meta.image_names[i], (i) => meta.image_names[i]],
    ['label', 'label', (i) => labels[i] ?? -1, (i) => className(meta, labels[i])],
    ['prediction', 'prediction', (i) => prediction ? prediction[i] : -1, (i) => prediction ? className(meta, prediction[i]) : '–'],
    ['correct', 'correct', correct, (i) => ({1: '✓', 0: '✗', '-1': '–'})[correct(i)]],
    ['loss', 'loss', (i) => loss ? loss[i] : NaN, (i) => loss ? fmt(loss[i]) : '–'],
    ['taylor', `Taylor ${headName(state.layer, state.head)}`, (i) => taylor ? taylor[i] : NaN, (i) => taylor ? fmt(taylor[i]) : '–'],
  ];
  // Columns the run has no value for (an embedding model: no label, prediction or loss) are
  // left out rather than shown as a column of dashes.
  const labelled = labels.some((l) => l >= 0);
  const predicted = prediction && prediction.some((p) => p >= 0);
  const absent = new Set([...(labelled ? [] : ['label', 'correct']), ...(predicted ? [] : ['prediction', 'correct']),
                          ...(loss ? [] : ['loss']), ...(taylor ? [] : ['taylor'])]);
  let rows = state.imageFilter ? [...state.imageFilter.indices] : Array.from({length: N}, (_, i) => i);
  const col = cols.find((c) => c[0] === state.imageSort) || cols[0];
  const key = col[2], dir = state.imageSortDesc ? -1 : 1;
  rows.sort((a, b) => {
    const x = key(a), y = key(b);
    if (typeof x === 'string') return x.localeCompare(y) * dir;
    const nx = Number.isFinite(x), ny = Number.isFinite(y);
    if (!nx || !ny) return nx ? -1 : ny ? 1 : a - b;      // missing values last
    return (x - y) * dir || a - b;
  });
  const colouring = imageColours(ov, correct);
  if (pictures || !ov.thumbs.firstChild) {
    drawThumbnails(ov, rows, colouring);
    drawLayout(ov, colouring);
  } else {   // the colour menu names the selected head
    const option = ov.thumbs.querySelector('#thumb-colour option[value="taylor"]');
    if (option) option.textContent = `Taylor of ${headName(state.layer, state.head)}`;
  }
  const pages = Math.max(1, Math.ceil(rows.length / PAGE));
  state.imagePage = Math.min(state.imagePage, pages - 1);
  const shown = rows.slice(state.imagePage * PAGE, (state.imagePage + 1) * PAGE);
  const stored = ov.storedImages;
  const shownCols = cols.filter(([k]) => !absent.has(k));
  const head = el('tr', {}, shownCols.map(([k, label]) => el('th', {
      class: 'sortable' + (k === state.imageSort ? ' sorted' : ''), 'data-key': k,
      onclick: () => { state.imageSortDesc = state.imageSort === k ? !state.imageSortDesc : k === 'taylor' || k === 'loss';
                       state.imageSort = k; state.imagePage = 0; drawTable(ov); }},
      label + (k === state.imageSort ? (state.imageSortDesc ? ' ▼' : ' ▲') : ''))));
  const body = shown.map((i) => el('tr', {
      'data-image': i, class: [stored.includes(i) ? 'stored' : '', i === state.overviewImage ? 'selected' : '',
                               correct(i) === 0 ? 'wrong' : ''].join(' ').trim(),
      onclick: () => openImage(ov, i)}, shownCols.map(([, , , show]) => el('td', {}, show(i)))));
  const nav = el('div', {class: 'pager'},
      el('button', {id: 'overview-prev', onclick: () => { state.imagePage--; drawTable(ov); }, disabled: state.imagePage <= 0}, '‹ previous'),
      el('span', {id: 'overview-page'}, ` page ${state.imagePage + 1} of ${pages} (${rows.length} images) `),
      el('button', {id: 'overview-next', onclick: () => { state.imagePage++; drawTable(ov); }, disabled: state.imagePage >= pages - 1}, 'next ›'),
      state.imageFilter ? el('span', {class: 'filter', id: 'overview-filter'}, ` filtered: ${state.imageFilter.label} `,
          el('button', {id: 'overview-show-all', onclick: () => setImageFilter(null)}, 'show all')) : null);
  ov.table.replaceChildren(nav, el('div', {class: 'table-scroll tall'},
      el('table', {class: 'data', id: 'overview-table'}, el('thead', {}, head), el('tbody', {}, body))),
      el('p', {class: 'help', id: 'overview-note'}, (stored.length
          ? `Rows in bold have stored attention maps (${stored.length === N ? 'all' : stored.length} of ${N}); click one to show them below.`
          : 'No attention maps stored.') + storeAll(ov)));
}

function openImage(ov, i) {
  state.overviewImage = i;
  const stored = ov.storedImages;
  const k = stored.indexOf(i);
  drawTable(ov);
  const note = document.getElementById('overview-note');
  if (k >= 0 && use('openImage')) {
    use('openImage')(k);
    document.getElementById('view-images')?.scrollIntoView({block: 'start'});
  } else if (note) {
    note.textContent = `${ov.meta.image_names[i]}: its attention maps are not stored (${stored.length} images have them).` + storeAll(ov);
  }
}

const THUMBS_SHOWN = 600;

const storeAll = (ov) => (ov.strengthMeta ? storeAllMaps(ov.strengthMeta, ov.N) : '');

// What colours an image (thumbnail frames and layout points): correctness where there are
// labels, the loss, the image's cluster (k-means on its per-image importance of every head)
// or the selected head's Taylor value; one control for both.
const CLUSTERS_MAX = 8;
function imageColours(ov, correct) {
  const labelled = ov.prediction && (ov.meta.labels || []).some((l) => l >= 0);
  const options = [...(labelled ? [['correct', 'correctness']] : []), ...(ov.loss ? [['loss', 'loss']] : []),
                   ...(ov.cluster ? [['cluster', 'cluster (by the heads it depends on)']] : []),
                   ...(ov.taylor ? [['taylor', `Taylor of ${headName(state.layer, state.head)}`]] : [])];
  if (!options.length) options.push(['none', 'none']);
  if (!options.some(([v]) => v === ov.thumbColour)) ov.thumbColour = options[0][0];
  const by = ov.thumbColour;
  const value = {correct, loss: (i) => ov.loss[i], taylor: (i) => ov.taylor[i],
                 cluster: (i) => ov.cluster[i], none: () => NaN}[by];
  const [lo, hi] = by === 'loss' || by === 'taylor' ? extent(Array.from({length: ov.N}, (_, i) => value(i))) : [0, 1];
  const colourOf = (i) => {
    const v = value(i);
    if (by === 'correct') return v === 1 ? '#59a14f' : v === 0 ? '#e15759' : '#bdbdbd';
    if (by === 'cluster') return IMAGE_CLUSTER_COLOURS[v % IMAGE_CLUSTER_COLOURS.length];
    return Number.isFinite(v) ? colour((v - lo) / ((hi - lo) || 1)) : '#bdbdbd';
  };
  const k = ov.cluster ? Math.max(...ov.cluster) + 1 : 0;
  const key = () => by === 'correct' ? el('span', {class: 'help'}, 'green: right, red: wrong, grey: no label')
      : by === 'cluster' ? el('span', {class: 'keys overview-cluster-key'}, Array.from({length: k}, (_, j) =>
          el('span', {style: `color:${IMAGE_CLUSTER_COLOURS[j % IMAGE_CLUSTER_COLOURS.length]}`},
             `■ ${j} (${ov.cluster.filter((c) => c === j).length}) `)))
      : by === 'none' ? null : el('span', {class: 'help'}, `dark ${fmt(lo)} → bright ${fmt(hi)}`);
  const control = el('label', {}, 'colour by ', el('select', {id: 'thumb-colour', onchange: (e) => { ov.thumbColour = e.target.value; drawTable(ov); }},
      options.map(([v, label]) => { const o = el('option', {value: v}, label); o.selected = v === by; return o; })));
  return {by, value, colourOf, key, control};
}
// Image clusters: categorical, without the selection's red or the right/wrong green.
const IMAGE_CLUSTER_COLOURS = ['#4e79a7', '#f28e2b', '#b07aa1', '#76b7b2', '#edc948', '#9c755f', '#ff9da7', '#bab0ac'];

// Every image with a stored thumbnail (importance/thumbnails: an atlas), in the table's order
// (sort and filter), framed by the chosen colour; a click opens its attention maps.
function drawThumbnails(ov, rows, {by, value, colourOf, key, control}) {
  const t = ov.meta.thumbnails;
  if (!t) {
    ov.thumbs.replaceChildren(el('div', {class: 'controls'}, control, key()), el('p', {class: 'help', id: 'overview-thumbs-note'},
        'No thumbnails stored for this run (re-run importance: they are stored with it, --thumbnail-budget-mib MIB).'));
    return;
  }
  const slot = new Map(t.index.map((i, k) => [i, k]));
  const frame = colourOf;
  // A small run's thumbnails drawn twice their stored size (they fill the panel).
  const zoom = ov.N <= 60 ? 2 : 1, px = t.px * zoom;
  const rowsOfAtlas = Math.ceil(t.index.length / t.columns);
  const url = `./png?${q({tag: 'importance/thumbnails'})}`;
  const shown = rows.filter((i) => slot.has(i)).slice(0, THUMBS_SHOWN);
  const grid = el('div', {class: 'thumb-grid', id: 'overview-thumbs'}, shown.map((i) => {
    const k = slot.get(i);
    const v = value(i);
    return el('div', {class: 'overview-thumb' + (i === state.overviewImage ? ' selected' : ''), 'data-image': i,
                      title: `${ov.meta.image_names[i]}${by === 'correct' || by === 'none' ? '' : by === 'cluster' ? ` · cluster ${v}` : ` · ${fmt(v)}`}`,
                      style: `width:${px}px;height:${px}px;background:url("${url}") ${-(k % t.columns) * px}px ` +
                             `${-Math.floor(k / t.columns) * px}px / ${t.columns * px}px ${rowsOfAtlas * px}px;outline:3px solid ${frame(i)}`,
                      onclick: () => openImage(ov, i)});
  }));
  const missing = ov.N - t.index.length;
  ov.thumbs.replaceChildren(
      el('div', {class: 'controls'}, control, key(), el('span', {class: 'help'}, 'thumbnails in the table\'s order')),
      grid,
      ...(missing <= 0 ? [] : [el('p', {class: 'help', id: 'overview-thumbs-note'},
          `Thumbnails of ${t.index.length} of ${ov.N} images (${t.budget_mib} MiB); store all with ` +
          `--thumbnail-budget-mib ${Math.ceil(ov.N * t.px * t.px * 3 / 2 ** 20 * 10) / 10} when running importance.`)]));
}

const LAYOUT_MAX = 2000;   // images laid out by their importance vectors (the whole array is fetched)

// The images' per-image Taylor importance of every head ([image][L * H]), each head scaled
// to unit variance over the images (missing values 0): what the layout and the clusters read.
export function standardise(vectors) {
  const X = vectors.map((v) => v.flat().map((x) => (Number.isFinite(x) ? x : 0)));
  const n = X.length, d = n ? X[0].length : 0;
  for (let j = 0; j < d; j++) {
    let m = 0; for (let i = 0; i < n; i++) m += X[i][j]; m /= n;
    let v = 0; for (let i = 0; i < n; i++) { X[i][j] -= m; v += X[i][j] ** 2; }
    const sd = Math.sqrt(v / n) || 1;
    for (let i = 0; i < n; i++) X[i][j] /= sd;
  }
  return X;
}

// Each image a point: its standardised vector projected on the first two principal axes, so
// images that depend on the same heads lie together. -> [[x, y]] per image.
export function layout(X) {
  const n = X.length, d = n ? X[0].length : 0;
  if (n < 3) return X.map((_, i) => [i, 0]);
  const axes = [];
  for (let a = 0; a < 2; a++) {   // power iteration on X^T X, deflated by the axes found
    let w = Array.from({length: d}, (_, j) => Math.cos(j + a));
    for (let it = 0; it < 100; it++) {
      const s = X.map((row) => row.reduce((acc, x, j) => acc + x * w[j], 0));
      const next = new Array(d).fill(0);
      X.forEach((row, i) => row.forEach((x, j) => { next[j] += x * s[i]; }));
      for (const u of axes) { const dot = next.reduce((acc, x, j) => acc + x * u[j], 0); u.forEach((x, j) => { next[j] -= dot * x; }); }
      const norm = Math.hypot(...next) || 1;
      w = next.map((x) => x / norm);
    }
    axes.push(w);
  }
  return X.map((row) => axes.map((w) => row.reduce((acc, x, j) => acc + x * w[j], 0)));
}

// k-means of the rows of X: Lloyd's iterations from k-means++ seeds, the best (least
// within-cluster sum of squares) of RESTARTS seedings from a fixed pseudo-random sequence
// (the same clusters on every load); clusters numbered by size (0 the largest).
// -> [cluster] per row.
const RESTARTS = 10;
export function kmeans(X, k) {
  const n = X.length;
  k = Math.min(k, n);
  if (!n || k < 1) return [];
  const dist = (a, b) => { let s = 0; for (let j = 0; j < a.length; j++) s += (a[j] - b[j]) ** 2; return s; };
  let seed = 12345;
  const random = () => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed / 2147483648; };
  let best = null;
  for (let run = 0; run < RESTARTS; run++) {
    const centres = [X[Math.floor(random() * n)].slice()];
    while (centres.length < k) {   // k-means++: the next seed drawn by squared distance
      const d2 = X.map((row) => Math.min(...centres.map((c) => dist(row, c))));
      const total = d2.reduce((a, b) => a + b, 0);
      let r = random() * total, i = 0;
      while (i < n - 1 && r >= d2[i]) { r -= d2[i]; i++; }
      centres.push(X[i].slice());
    }
    let label = new Array(n).fill(-1);
    for (let it = 0; it < 100; it++) {
      const next = X.map((row) => { let b = 0, bd = Infinity; centres.forEach((c, j) => { const v = dist(row, c); if (v < bd) { bd = v; b = j; } }); return b; });
      const same = next.every((v, i) => v === label[i]);
      label = next;
      if (same) break;
      centres.forEach((c, j) => {
        const members = X.filter((_, i) => label[i] === j);
        if (members.length) c.forEach((_, d) => { c[d] = members.reduce((a, row) => a + row[d], 0) / members.length; });
      });
    }
    const cost = X.reduce((a, row, i) => a + dist(row, centres[label[i]]), 0);
    if (!best || cost < best.cost - 1e-9) best = {cost, label};
  }
  const sizes = Array.from({length: k}, (_, j) => best.label.filter((v) => v === j).length);
  const order = sizes.map((c, j) => [c, j]).filter(([c]) => c > 0).sort((a, b) => b[0] - a[0] || a[1] - b[1]).map(([, j]) => j);
  const rename = new Map(order.map((j, r) => [j, r]));
  return best.label.map((j) => rename.get(j));
}

// The 2-D layout, coloured as the thumbnails; dragging a rectangle sets the page's image
// filter (the table, the thumbnails, the histogram, the pattern samples and the image strip
// follow); the images in the filter are drawn strong, the rest faint.
function drawLayout(ov, {by, colourOf, key}) {
  if (!ov.xy) {
    ov.layout.replaceChildren(el('h3', {}, 'Images by the heads they depend on'),
        el('p', {class: 'help'}, ov.N > LAYOUT_MAX ? `Laid out for runs of up to ${LAYOUT_MAX} images.` : 'Needs per-image importance (--per-image).'));
    return;
  }
  const size = 260, pad = 10;
  const [x0, x1] = extent(ov.xy.map((p) => p[0])), [y0, y1] = extent(ov.xy.map((p) => p[1]));
  const sx = (x) => pad + (x - x0) / ((x1 - x0) || 1) * (size - 2 * pad);
  const sy = (y) => size - pad - (y - y0) / ((y1 - y0) || 1) * (size - 2 * pad);
  const chosen = state.imageFilter ? new Set(state.imageFilter.indices) : null;
  const s = svg('svg', {width: size, height: size, id: 'overview-layout', class: 'layout', 'data-colour': by},
      svg('rect', {x: 0, y: 0, width: size, height: size, fill: '#fafafa', stroke: '#e0e0e0'}));
  ov.xy.forEach(([x, y], i) => s.append(tip(svg('circle', {
      cx: sx(x), cy: sy(y), r: i === state.overviewImage ? 6 : 4.5, fill: by === 'none' ? '#4e79a7' : colourOf(i), 'data-image': i,
      'data-cluster': ov.cluster ? ov.cluster[i] : '',
      class: 'point layout-point' + (chosen && !chosen.has(i) ? ' faded' : '') + (i === state.overviewImage ? ' selected' : ''),
      onclick: () => openImage(ov, i)}), () => ov.meta.image_names[i] + (ov.cluster ? ` · cluster ${ov.cluster[i]}` : ''))));
  // Brushing: a dragged rectangle chooses the images inside it.
  let start = null;
  const brush = svg('rect', {class: 'brush', width: 0, height: 0});
  s.append(brush);
  const at = (e) => { const r = s.getBoundingClientRect(); return [e.clientX - r.left, e.clientY - r.top]; };
  s.addEventListener('mousedown', (e) => { if (e.target.tagName === 'circle') return; start = at(e); e.preventDefault(); });
  s.addEventListener('mousemove', (e) => {
    if (!start) return;
    const [x, y] = at(e);
    Object.entries({x: Math.min(x, start[0]), y: Math.min(y, start[1]), width: Math.abs(x - start[0]),
                    height: Math.abs(y - start[1])}).forEach(([k, v]) => brush.setAttribute(k, v));
  });
  s.addEventListener('mouseup', (e) => {
    if (!start) return;
    const [x, y] = at(e);
    const [ax, bx] = [Math.min(x, start[0]), Math.max(x, start[0])], [ay, by2] = [Math.min(y, start[1]), Math.max(y, start[1])];
    start = null;
    const inside = ov.xy.map(([px, py], i) => [sx(px), sy(py), i]).filter(([px, py]) => px >= ax && px <= bx && py >= ay && py <= by2)
        .map(([, , i]) => i);
    setImageFilter(inside.length && bx - ax > 3
        ? {indices: inside, label: `${inside.length} image${inside.length === 1 ? '' : 's'} chosen in the layout`, source: 'layout'} : null);
  });
  ov.layout.replaceChildren(el('h3', {}, 'Images by the heads they depend on'), s, el('div', {class: 'layout-key'}, key()),
      el('p', {class: 'help'}, 'Each image a point: its per-image Taylor importance of every head, on the first two ' +
         'principal axes (near: depends on the same heads); coloured as the thumbnails. ' +
         'Drag a rectangle to choose images: the thumbnails, the table, the per-image histogram, the pattern samples and the image strip follow.'));
}
