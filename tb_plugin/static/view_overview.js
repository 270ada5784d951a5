// Image overview (the paper's view A): every analysed image with its label, the unmasked
// model's prediction, correctness and loss, and the selected head's per-image importance.
// Sortable; paginated (PAGE rows drawn at a time, so 10,000 images stay responsive);
// filtered by a click on the per-image histogram; a row opens the image's attention maps
// when they are stored.

import {colour, extent} from './charts.js';
import {array, meta as analysisMeta, q} from './data.js';
import {el, hideTooltip, svg, tip} from './dom.js';
import {fmt, headName} from './format.js';
import {changed, onSelect, publish, selectionToken, stale, state, use} from './state.js';

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
    ov.vectors = await array('importance/per_image_taylor');   // [image][layer][head]
    ov.xy = layout(ov.vectors);
  }
  drawSummary(ov);
  drawTable(ov);
  publish('filterChanged', () => { state.imagePage = 0; drawTable(ov); });
  onSelect(async () => { if (await load()) drawTable(ov); });
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

function drawTable(ov) {
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
  drawThumbnails(ov, rows, {loss: cols[5], taylor: cols[6], correct});
  drawLayout(ov, {correct});
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
          el('button', {onclick: () => { state.imageFilter = null; state.imagePage = 0; drawTable(ov); changed(); }}, 'show all')) : null);
  ov.table.replaceChildren(nav, el('div', {class: 'table-scroll tall'},
      el('table', {class: 'data', id: 'overview-table'}, el('thead', {}, head), el('tbody', {}, body))),
      el('p', {class: 'help', id: 'overview-note'}, stored.length
          ? `Rows in bold have stored attention maps (${stored.length} of ${N}); click one to show them below. Store more, or all, with --map-images N or --map-budget-mib MIB.`
          : 'No attention maps stored; run strength with --map-images N or --map-budget-mib MIB.'));
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
    note.textContent = `${ov.meta.image_names[i]}: its attention maps are not stored (${stored.length} images have them). ` +
                       'Re-run strength with a larger --map-images, or --map-budget-mib to store every image that fits.';
  }
}

const THUMBS_SHOWN = 600;
const THUMB_COLOURS = [['correct', 'correctness'], ['loss', 'loss'], ['taylor', 'Taylor of the selected head']];

// Every image with a stored thumbnail (importance/thumbnails: an atlas), in the table's order
// (sort and filter), framed by the chosen measure; a click opens its attention maps.
function drawThumbnails(ov, rows, {loss, taylor, correct}) {
  const t = ov.meta.thumbnails;
  if (!t) {
    ov.thumbs.replaceChildren(el('p', {class: 'help', id: 'overview-thumbs-note'},
        'No thumbnails stored for this run (re-run importance: they are stored with it, --thumbnail-budget-mib MIB).'));
    return;
  }
  const slot = new Map(t.index.map((i, k) => [i, k]));
  const by = ov.thumbColour || (ov.prediction && (ov.meta.labels || []).some((l) => l >= 0) ? 'correct' : 'taylor');
  ov.thumbColour = by;
  const value = {correct, loss: loss[2], taylor: taylor[2]}[by];
  const [lo, hi] = by === 'correct' ? [0, 1] : extent(rows.map(value));
  const frame = (i) => {
    const v = value(i);
    if (by === 'correct') return v === 1 ? '#59a14f' : v === 0 ? '#e15759' : '#bdbdbd';
    return Number.isFinite(v) ? colour((v - lo) / ((hi - lo) || 1)) : '#bdbdbd';
  };
  const url = `./png?${q({tag: 'importance/thumbnails'})}`;
  const shown = rows.filter((i) => slot.has(i)).slice(0, THUMBS_SHOWN);
  const grid = el('div', {class: 'thumb-grid', id: 'overview-thumbs'}, shown.map((i) => {
    const k = slot.get(i);
    const v = value(i);
    return el('div', {class: 'overview-thumb' + (i === state.overviewImage ? ' selected' : ''), 'data-image': i,
                      title: `${ov.meta.image_names[i]}${by === 'correct' ? '' : ` · ${fmt(v)}`}`,
                      style: `width:${t.px}px;height:${t.px}px;background:url("${url}") ${-(k % t.columns) * t.px}px ` +
                             `${-Math.floor(k / t.columns) * t.px}px;outline:3px solid ${frame(i)}`,
                      onclick: () => openImage(ov, i)});
  }));
  const missing = ov.N - t.index.length;
  ov.thumbs.replaceChildren(
      el('div', {class: 'controls'}, el('span', {class: 'help'}, 'In the table\'s order; frame: '),
         el('select', {id: 'thumb-colour', onchange: (e) => { ov.thumbColour = e.target.value; drawTable(ov); }},
            THUMB_COLOURS.map(([v, label]) => { const o = el('option', {value: v}, label); o.selected = v === by; return o; })),
         by === 'correct' ? el('span', {class: 'help'}, 'green: right, red: wrong, grey: no label')
             : el('span', {class: 'help'}, `dark ${fmt(lo)} → bright ${fmt(hi)}`)),
      grid,
      ...(missing <= 0 ? [] : [el('p', {class: 'help', id: 'overview-thumbs-note'},
          `Thumbnails of ${t.index.length} of ${ov.N} images (${t.budget_mib} MiB); store all with ` +
          `--thumbnail-budget-mib ${Math.ceil(ov.N * t.px * t.px * 3 / 2 ** 20 * 10) / 10} when running importance.`)]));
}

const LAYOUT_MAX = 2000;   // images laid out by their importance vectors (the whole array is fetched)

// Each image a point: its per-image Taylor importance of every head ([L * H], each head
// scaled to unit variance over the images), projected on the first two principal axes, so
// images that depend on the same heads lie together. -> [[x, y]] per image.
export function layout(vectors) {
  const X = vectors.map((v) => v.flat().map((x) => (Number.isFinite(x) ? x : 0)));
  const n = X.length, d = n ? X[0].length : 0;
  if (n < 3) return X.map((_, i) => [i, 0]);
  for (let j = 0; j < d; j++) {
    let m = 0; for (let i = 0; i < n; i++) m += X[i][j]; m /= n;
    let v = 0; for (let i = 0; i < n; i++) { X[i][j] -= m; v += X[i][j] ** 2; }
    const sd = Math.sqrt(v / n) || 1;
    for (let i = 0; i < n; i++) X[i][j] /= sd;
  }
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

// The 2-D layout, coloured by correctness or loss; dragging a rectangle filters the table,
// the thumbnails (and shows which images the histogram's bar holds); the filter in force is
// drawn strong, the rest faint.
function drawLayout(ov, {correct}) {
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
  const labelled = ov.prediction && (ov.meta.labels || []).some((l) => l >= 0);
  // Right / wrong where there are labels, else the loss, else the selected head's Taylor value.
  const measure = labelled ? null : ov.loss ? ov.loss : ov.taylor;
  const [lo, hi] = measure ? extent(measure) : [0, 1];
  const fill = (i) => (labelled ? ({1: '#59a14f', 0: '#e15759'}[correct(i)] || '#9e9e9e')
      : measure && Number.isFinite(measure[i]) ? colour((measure[i] - lo) / ((hi - lo) || 1)) : '#4e79a7');
  const s = svg('svg', {width: size, height: size, id: 'overview-layout', class: 'layout'},
      svg('rect', {x: 0, y: 0, width: size, height: size, fill: '#fafafa', stroke: '#e0e0e0'}));
  ov.xy.forEach(([x, y], i) => s.append(tip(svg('circle', {
      cx: sx(x), cy: sy(y), r: i === state.overviewImage ? 6 : 4, fill: fill(i), 'data-image': i,
      class: 'point layout-point' + (chosen && !chosen.has(i) ? ' faded' : '') + (i === state.overviewImage ? ' selected' : ''),
      onclick: () => openImage(ov, i)}), () => ov.meta.image_names[i])));
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
    const [ax, bx] = [Math.min(x, start[0]), Math.max(x, start[0])], [ay, by] = [Math.min(y, start[1]), Math.max(y, start[1])];
    start = null;
    const inside = ov.xy.map(([px, py], i) => [sx(px), sy(py), i]).filter(([px, py]) => px >= ax && px <= bx && py >= ay && py <= by)
        .map(([, , i]) => i);
    state.imageFilter = inside.length && bx - ax > 3 ? {indices: inside, label: `${inside.length} images chosen in the layout`} : null;
    state.imagePage = 0;
    drawTable(ov);
    changed();
  });
  ov.layout.replaceChildren(el('h3', {}, 'Images by the heads they depend on'), s,
      el('p', {class: 'help'}, 'Each image a point: its per-image Taylor importance of every head, on the first two ' +
         'principal axes (near: depends on the same heads). ' + (labelled ? 'Green: right, red: wrong. ' : ov.loss ? 'Colour: loss (dark low, bright high). '
          : ov.taylor ? `Colour: Taylor of ${headName(state.layer, state.head)} (dark low, bright high). ` : '') +
         'Drag a rectangle to filter the thumbnails and the table; a click opens the image.'));
}
