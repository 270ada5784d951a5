// ViT Analytics: linked views of head importance, attention strength, patterns and images.
// Plain ES modules, no dependencies: TensorBoard calls index.js's render() inside the
// plugin's iframe, which calls render() here with the first view's data (./first_view).
// Data comes only from this plugin's JSON routes (./runs, ./meta, ./array, ./png, ./attention).

// charts.js is imported by the views only; importing it here too lets the browser fetch it
// together with the other modules instead of one round-trip later.
import './charts.js';
import {forgetMeta, forgetRun, getJSON, guard, live, meta, newScope, preload, trainingSteps, view} from './data.js';
import {createTooltip, dropdown, el, hideTooltip, nextPaint, section} from './dom.js';
import {fmt, headName, kindLabel} from './format.js';
import {changed, onChange, resetForRun, state, use} from './state.js';
import {CSS} from './style.js';
import {readURL, writeURL} from './url.js';
import {FIRST_VIEW, VIEWS, moduleOf} from './views.js';
import {render as renderFirst} from './view_importance.js';

// Only the first view's module is imported before render() runs; the other views' modules
// are fetched while the first view is drawn (preloadViews), so that their number does not
// delay the first paint. Every view module exports render(body, info).
const loaders = Object.fromEntries(VIEWS.map((v) => [v.id, v === FIRST_VIEW
    ? async () => ({render: renderFirst}) : () => import(`./${moduleOf(v)}`)]));
const preloadViews = () => VIEWS.forEach((v) => loaders[v.id]().catch(() => {}));   // a failure is reported by the view
const renderComparison = async (...args) => (await import('./view_compare.js')).renderComparison(...args);

const RELOAD_MS = 5000;   // the run list follows new runs (TensorBoard reloads every few s)

// `first`: the body of ./first_view, or null (then every request goes to its own route).
export async function render(first = null) {
  document.head.append(el('style', {}, CSS));
  const root = el('div', {id: 'vit-root'});
  document.body.append(root, createTooltip());
  let runs;
  try {
    preload(first);
    runs = first ? first.runs : (await getJSON('./runs')).runs;
  } catch (e) {
    root.append(el('p', {class: 'empty'}, `Could not load the analysis: ${e.message}`));
    return;
  }
  if (!runs.length) {
    root.append(el('div', {class: 'empty', id: 'empty-state'},
        el('p', {}, 'No ViT analysis in this logdir yet.'),
        el('p', {}, 'Write one with: vit-analytics analyze --checkpoint CKPT --images DIR --logdir LOGDIR'),
        el('p', {}, 'This page checks for new runs every few seconds.')));
    pollRuns([], () => location.reload());
    return;
  }
  const fromURL = readURL();
  const shown = runs.some((r) => r.run === fromURL.run) ? fromURL.run : runs[0].run;
  if (runs.some((r) => r.run === fromURL.compare)) state.compare = fromURL.compare;
  for (const k of ['metric', 'scaleMode']) if (fromURL[k]) state[k] = fromURL[k];
  const content = el('div', {id: 'content'});
  const page = {runs, content};
  const show = (run, keep) => showRun(page, run, keep);
  const runSelect = dropdown(runs.map((r) => [r.run, r.run]), shown,
                             (r) => { page.step = null; show(r); }, 'run-select');
  // Training steps of the run (filled by showRun); choosing one redraws every view there.
  const stepSelect = dropdown([], '', (s) => { page.step = s === '' ? null : +s;
                                              show(state.run, keepSelection()); },
                              'step-select');
  const compareSelect = dropdown([['', 'none'], ...runs.map((r) => [r.run, r.run])], state.compare,
                                 (r) => { state.compare = r; show(state.run, keepSelection()); },
                                 'compare-select');
  page.runSelect = runSelect; page.compareSelect = compareSelect;
  const scaleSelect = dropdown([['shared', 'one scale for all maps'], ['per-map', 'each map its own scale']],
                               state.scaleMode, (v) => { state.scaleMode = v; show(state.run, keepSelection()); },
                               'scale-mode');
  root.append(el('header', {id: 'sticky-header'},
                 el('div', {class: 'header-row'},
                    el('label', {}, 'Run ', runSelect),
                    el('label', {id: 'step-label', style: 'display:none'}, 'Step ', stepSelect),
                    el('label', {}, 'Compare with ', compareSelect),
                    el('label', {}, 'Maps: ', scaleSelect),
                    el('span', {id: 'run-note', class: 'help'})),
                 el('div', {class: 'header-row'},
                    el('span', {}, 'Selected head: ', el('b', {id: 'selected-head'}, headName(0, 0))),
                    el('span', {id: 'head-numbers', class: 'numbers'}),
                    el('span', {class: 'help'}, 'Click a head in any view to select it everywhere; the URL keeps the selection.'))),
              content);
  onChange(() => { drawHeadNumbers(); writeURL(); });
  pollRuns(runs, (latest) => updateRuns(page, latest));
  await show(shown, {layer: fromURL.layer ?? 0, head: fromURL.head ?? 0,
                     image: fromURL.image ?? 0, query: fromURL.query ?? null});
  preload(null);   // what the first view did not use is not kept
}

const keepSelection = () => ({layer: state.layer, head: state.head, image: state.image,
                              query: state.query});

// Draws every view of one run (and the comparison, if one is chosen) into content.
// The first view is drawn alone and painted before anything else starts (first paint);
// then the others are drawn at once, so that their requests overlap each other's drawing.
// body[data-ready] is 'true' once all are drawn.
async function showRun(page, run, keep = {}) {
  const {content, runs} = page;
  document.body.dataset.ready = 'false';
  hideTooltip();
  resetForRun(run, keep);
  forgetMeta();
  const scope = newScope(run, page.step ?? null);
  page.runSelect.value = run;
  const info = {...runs.find((r) => r.run === run)};
  page.shown = info;
  const steps = guard(scope, trainingSteps(run));
  document.getElementById('selected-head').textContent = headName(state.layer, state.head);
  const box = about(info);
  content.replaceChildren(box.node);
  const draws = [];
  if (state.compare) {
    const sec = section('view-compare', state.compare === run ? `${run} compared with itself` :
                        `${run} compared with ${state.compare}`,
                        'Each run on its own colour scale; the Δ grid (one scale centred at 0) and the rank scatter say how they differ. The metric is the one chosen in the importance view.');
    sec.classList.add('wide');
    content.append(sec);
    draws.push(() => renderComparison(sec.querySelector('.body'), runs, state.compare).catch((e) => {
      if (live(scope)) sec.querySelector('.body').append(el('p', {class: 'help'}, `Could not draw: ${e.message}`));
    }));
  }
  const sections = {};
  for (const v of VIEWS) {
    const sec = section(`view-${v.id}`, v.title, v.help);
    sections[v.id] = sec;
    content.append(sec);
    const body = sec.querySelector('.body');
    draws.push(async () => {
      if (!info.analyses.includes(v.needs)) {
        if (v.hideWithout) { sec.remove(); return; }
        body.append(el('p', {class: 'help empty-view'}, `Not computed for this run. Run: ${v.command}`));
        return;
      }
      try {
        const module = await guard(scope, loaders[v.id]());
        await module.render(body, info);
      } catch (e) {
        if (live(scope)) body.append(el('p', {class: 'help'}, `Could not draw: ${e.message}`));
      }
    });
  }
  const first = draws.splice(state.compare ? 1 : 0, 1)[0];   // the first view
  await first();
  if (!live(scope)) return;
  preloadViews();
  await nextPaint();
  if (!live(scope)) return;
  info.steps = await steps;
  const stepSelect = document.getElementById('step-select');
  stepSelect.replaceChildren(el('option', {value: ''}, 'latest'),
                             ...info.steps.map((s) => el('option', {value: s}, `${s}`)));
  stepSelect.value = view.step == null ? '' : `${view.step}`;
  document.getElementById('step-label').style.display = info.steps.length > 1 ? '' : 'none';
  if (info.steps.length > 1) info.analyses = [...info.analyses, 'steps'];
  box.fill();
  await Promise.all(draws.map((draw) => draw()));
  if (!live(scope)) return;
  changed();
  document.body.dataset.ready = 'true';
}

// What the run is: the model's config and every metric's definition (from the stored meta).
// fill() fetches them (after the first view, which needs the requests more).
function about(info) {
  const box = el('details', {id: 'about-run'}, el('summary', {}, `About run ${info.run}: model, images and metric definitions`));
  const fill = async () => {
    const analyses = [...new Set(VIEWS.map((v) => v.needs))].filter((a) => a !== 'steps');
    const metas = await Promise.all(analyses.filter((a) => info.analyses.includes(a))
        .map((a) => meta(a).then((m) => [a, m])));
    if (!metas.length) return;
    const cfg = metas[0][1].config || {};
    box.append(el('h3', {}, 'Model'), el('table', {class: 'kv', id: 'model-config'},
        Object.entries(cfg).map(([k, v]) => el('tr', {}, el('th', {}, k), el('td', {}, JSON.stringify(v))))),
        el('p', {}, `Checkpoint: ${metas[0][1].checkpoint || '–'}; images: ${metas[0][1].image_folder || '–'}`));
    const defs = el('dl', {id: 'definitions'});
    for (const [a, m] of metas) {
      for (const [k, d] of Object.entries(m.definitions || {})) defs.append(el('dt', {}, `${a}/${k}`), el('dd', {}, d));
      for (const v of m.partial_variants || []) defs.append(el('dt', {}, `partial: ${v.name}`), el('dd', {}, v.description));
    }
    box.append(el('h3', {}, 'Definitions'), defs);
  };
  return {node: box, fill: () => { fill().catch(() => {}); }};
}

// The selected head's key numbers in the sticky header (whatever the views published):
// one line of fixed height, the rest in its tooltip.
function drawHeadNumbers() {
  const box = document.getElementById('head-numbers');
  if (!box) return;
  const {layer: l, head: h} = state;
  const parts = [];
  const kinds = use('headKinds'), imp = use('importanceNumbers'), st = use('strengthNumbers'), cl = use('clusters');
  if (kinds) parts.push(`kind: ${kindLabel(kinds[l][h])}`);
  if (imp) parts.push(`${imp.label(state.metric)} ${fmt(imp.values[state.metric][l][h])} (rank ${imp.rank(l, h)} of ${imp.heads})`);
  if (st) parts.push(`mean distance ${fmt(st.distance[l][h], 'px')}${st.uniformDistance != null ? ` (${fmt(st.distance[l][h] / st.uniformDistance)}× uniform)` : ''}`);
  if (st) parts.push(`entropy ${fmt(st.entropy[l][h], 'nats')}`);
  if (cl) parts.push(`cluster ${cl.cluster[l][h]}: ${cl.names[cl.cluster[l][h]]}`);
  box.textContent = parts.join(' · ');
  box.title = parts.join('\n');
}

// Follows TensorBoard's reload: new runs written while the page is open join the lists,
// and a run whose analyses changed (one more written) is redrawn if it is the one shown.
function pollRuns(known, onNew) {
  let last = signature(known);
  setInterval(async () => {
    try {
      const latest = (await getJSON('./runs')).runs;
      const now = signature(latest);
      if (now !== last) { last = now; onNew(latest); }
    } catch (e) { /* TensorBoard restarting: try again later */ }
  }, RELOAD_MS);
}

// What the poll compares: each run with its analyses and tags.
const signature = (runs) => runs.map((r) => `${r.run}:${r.analyses.join('+')}:${Object.keys(r.tags || {}).length}:${r.written ?? ''}`).join('\n');

function updateRuns(page, latest) {
  const added = latest.filter((r) => !page.runs.some((o) => o.run === r.run)).map((r) => r.run);
  const before = page.runs.find((r) => r.run === state.run);
  for (const r of page.runs) {   // a run written again: what was kept of it is stale
    const now = latest.find((x) => x.run === r.run);
    if (!now || signature([now]) !== signature([r])) forgetRun(r.run);
  }
  page.runs.splice(0, page.runs.length, ...latest);
  const options = (select, extra) => {
    const value = select.value;
    select.replaceChildren(...extra, ...latest.map((r) => el('option', {value: r.run}, r.run)));
    select.value = latest.some((r) => r.run === value) || value === '' ? value : latest[0].run;
  };
  options(page.runSelect, []);
  options(page.compareSelect, [el('option', {value: ''}, 'none')]);
  if (added.length) document.getElementById('run-note').textContent = `new run${added.length > 1 ? 's' : ''}: ${added.join(', ')}`;
  const now = latest.find((r) => r.run === state.run);
  if (now && before && signature([now]) !== signature([before])) {
    document.getElementById('run-note').textContent = `${now.run}: analyses updated`;
    showRun(page, state.run, keepSelection());
  }
}

// A state change outside a run switch (kept here so the views stay independent).
export {changed};
