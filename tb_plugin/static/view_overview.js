// Image overview (the paper's view A): every analysed image with its label, the unmasked
// model's prediction, correctness and loss, and the selected head's per-image importance.
// Sortable; paginated (PAGE rows drawn at a time, so 10,000 images stay responsive);
// filtered by a click on the per-image histogram; a row opens the image's attention maps
// when they are stored.

import {colour, extent} from './charts.js';
import {array, meta as analysisMeta, q} from './data.js';
import {el, hideTooltip} from './dom.js';
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
  const ov = {meta, loss, prediction, N, taylor: null, storedImages, table: el('div', {id: 'overview-table-box'}),
              summary: el('div', {class: 'help', id: 'overview-summary'})};
  if (!has('per_image_taylor') || !prediction) {
    body.append(el('p', {class: 'help empty-view'}, 'Per-image predictions and importance are not stored for this run. ' +
                   'Run: vit-analytics importance ... --per-image'));
  }
  ov.thumbs = el('div', {id: 'overview-thumbs-box'});
  body.append(ov.summary, ov.thumbs, ov.table);
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
    parts.push(`${right} of ${known} labelled images predicted correctly`);
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
  const pages = Math.max(1, Math.ceil(rows.length / PAGE));
  state.imagePage = Math.min(state.imagePage, pages - 1);
  const shown = rows.slice(state.imagePage * PAGE, (state.imagePage + 1) * PAGE);
  const stored = ov.storedImages;
  const head = el('tr', {}, cols.map(([k, label]) => el('th', {
      class: 'sortable' + (k === state.imageSort ? ' sorted' : ''), 'data-key': k,
      onclick: () => { state.imageSortDesc = state.imageSort === k ? !state.imageSortDesc : k === 'taylor' || k === 'loss';
                       state.imageSort = k; state.imagePage = 0; drawTable(ov); }},
      label + (k === state.imageSort ? (state.imageSortDesc ? ' ▼' : ' ▲') : ''))));
  const body = shown.map((i) => el('tr', {
      'data-image': i, class: [stored.includes(i) ? 'stored' : '', i === state.overviewImage ? 'selected' : '',
                               correct(i) === 0 ? 'wrong' : ''].join(' ').trim(),
      onclick: () => openImage(ov, i)}, cols.map(([, , , show]) => el('td', {}, show(i)))));
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
      missing > 0 ? el('p', {class: 'help', id: 'overview-thumbs-note'},
          `Thumbnails of ${t.index.length} of ${ov.N} images (${t.budget_mib} MiB); store all with ` +
          `--thumbnail-budget-mib ${Math.ceil(ov.N * t.px * t.px * 3 / 2 ** 20 * 10) / 10} when running importance.`) : null);
}
