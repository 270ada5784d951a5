// Image overview (the paper's view A): every analysed image with its label, the unmasked
// model's prediction, correctness and loss, and the selected head's per-image importance.
// Sortable; paginated (PAGE rows drawn at a time, so 10,000 images stay responsive);
// filtered by a click on the per-image histogram; a row opens the image's attention maps
// when they are stored.

import {array, meta as analysisMeta} from './data.js';
import {el, hideTooltip} from './dom.js';
import {fmt, headName} from './format.js';
import {changed, onSelect, state} from './state.js';

const PAGE = 50;

export async function renderOverview(body, info) {
  const has = (t) => `importance/${t}` in info.tags;
  const meta = await analysisMeta('importance');
  const [loss, prediction] = await Promise.all([
      has('per_image_loss') ? array('importance/per_image_loss') : null,
      has('per_image_prediction') ? array('importance/per_image_prediction') : null]);
  const N = meta.image_names.length;
  if (info.analyses.includes('strength') && !state.storedImages) {
    state.storedImages = (await analysisMeta('strength')).map_image_index || [];
  }
  const ov = {meta, loss, prediction, N, taylor: null, table: el('div', {id: 'overview-table-box'}),
              summary: el('div', {class: 'help', id: 'overview-summary'})};
  if (!has('per_image_taylor') || !prediction) {
    body.append(el('p', {class: 'help empty-view'}, 'Per-image predictions and importance are not stored for this run. ' +
                   'Run: vit-analytics importance ... --per-image'));
  }
  body.append(ov.summary, ov.table);
  // The selected head's per-image values; false when a newer selection has since been made
  // (its own load draws the table: the column never shows another head's values).
  const load = async () => {
    if (has('per_image_taylor') && state.imp && state.imp.perImageTaylor) {
      const {layer, head} = state;
      const taylor = await state.imp.perImageTaylor(layer, head);
      if (state.layer !== layer || state.head !== head) return false;
      ov.taylor = taylor;
    }
    return true;
  };
  await load();
  drawSummary(ov);
  drawTable(ov);
  state.redrawOverview = () => { state.imagePage = 0; drawTable(ov); };
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
  const pages = Math.max(1, Math.ceil(rows.length / PAGE));
  state.imagePage = Math.min(state.imagePage, pages - 1);
  const shown = rows.slice(state.imagePage * PAGE, (state.imagePage + 1) * PAGE);
  const stored = state.storedImages || [];
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
  const stored = state.storedImages || [];
  const k = stored.indexOf(i);
  drawTable(ov);
  const note = document.getElementById('overview-note');
  if (k >= 0 && state.showImage) {
    state.showImage(k);
    document.getElementById('view-images')?.scrollIntoView({block: 'start'});
  } else if (note) {
    note.textContent = `${ov.meta.image_names[i]}: its attention maps are not stored (${stored.length} images have them). ` +
                       'Re-run strength with a larger --map-images, or --map-budget-mib to store every image that fits.';
  }
}
