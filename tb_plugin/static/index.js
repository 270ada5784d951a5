// ViT Analytics: linked views of head importance, attention strength, patterns and images.
// Plain ES modules, no dependencies: TensorBoard calls render() inside the plugin's iframe.
// Data comes only from this plugin's JSON routes (./runs, ./meta, ./array, ./png, ./attention).

// charts.js is imported by the views only; importing it here too lets the browser fetch it
// together with the other modules instead of one round-trip later.
import './charts.js';
import {forgetMeta, getJSON, meta, trainingSteps, view} from './data.js';
import {checkbox, createTooltip, dropdown, el, hideTooltip, nextPaint, section} from './dom.js';
import {fmt, headName} from './format.js';
import {changed, onChange, resetForRun, state} from './state.js';
import {CSS} from './style.js';
import {readURL, writeURL} from './url.js';
import {renderImportance} from './view_importance.js';

// Only the first view's modules are imported before render() runs; the other views' modules
// are fetched while the first view is drawn (later(), below), so that their number does not
// delay the first paint.
const later = (load, name) => async (...args) => (await load())[name](...args);
const renderStrength = later(() => import('./view_strength.js'), 'renderStrength');
const renderPatterns = later(() => import('./view_patterns.js'), 'renderPatterns');
const renderOverview = later(() => import('./view_overview.js'), 'renderOverview');
const renderImages = later(() => import('./view_images.js'), 'renderImages');
const renderTraining = later(() => import('./view_training.js'), 'renderTraining');
const renderComparison = later(() => import('./view_compare.js'), 'renderComparison');
const preloadViews = () => ['./view_strength.js', './view_patterns.js', './view_overview.js',
                            './view_images.js', './view_training.js', './view_compare.js']
    .forEach((m) => import(m).catch(() => {}));   // a failure is reported by the view

// [section id, title, help, render, analysis it needs (default: the id), what to run]
const VIEWS = [
  ['importance', 'Which heads matter?', 'Pruning-based importance: mask gradients and single-head ablation.',
   renderImportance, 'importance', 'vit-analytics importance --checkpoint CKPT --images DIR --logdir LOGDIR --per-image'],
  ['strength', 'How strongly do patches attend to their neighbours?',
   'Every locality number is drawn against two reference heads: uniform attention (1/T to every token) and self-only attention.',
   renderStrength, 'strength', 'vit-analytics strength --checkpoint CKPT --images DIR --logdir LOGDIR'],
  ['patterns', 'What patterns have heads learned?', null, renderPatterns, 'patterns',
   'vit-analytics patterns --checkpoint CKPT --images DIR --logdir LOGDIR'],
  ['overview', 'Image overview', 'Every analysed image: label, prediction, loss and the selected head\'s per-image importance.',
   renderOverview, 'importance', 'vit-analytics importance ... --per-image'],
  ['images', 'Attention of one image', null, renderImages, 'strength',
   'vit-analytics strength ... --map-images N'],
  ['training', 'Over training', 'Per-head importance, mean distance and entropy against the training step (rows: layers, columns: heads). The selected head is highlighted; the dashed line marks the step shown.',
   renderTraining, 'steps', 'vit-analytics train-demo --log-every K, or training.analyse_step in your loop'],
];
const RELOAD_MS = 5000;   // the run list follows new runs (TensorBoard reloads every few s)

export async function render() {
  document.head.append(el('style', {}, CSS));
  const root = el('div', {id: 'vit-root'});
  document.body.append(root, createTooltip());
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
        el('p', {}, 'Write one with: vit-analytics analyze --checkpoint CKPT --images DIR --logdir LOGDIR'),
        el('p', {}, 'This page checks for new runs every few seconds.')));
    pollRuns([], () => location.reload());
    return;
  }
  const fromURL = readURL();
  const first = runs.some((r) => r.run === fromURL.run) ? fromURL.run : runs[0].run;
  if (runs.some((r) => r.run === fromURL.compare)) state.compare = fromURL.compare;
  for (const k of ['metric', 'scaleMode']) if (fromURL[k]) state[k] = fromURL[k];
  const content = el('div', {id: 'content'});
  const page = {runs, content};
  const show = (run, keep) => showRun(page, run, keep);
  const runSelect = dropdown(runs.map((r) => [r.run, r.run]), first,
                             (r) => { view.step = null; show(r); }, 'run-select');
  // Training steps of the run (filled by showRun); choosing one redraws every view there.
  const stepSelect = dropdown([], '', (s) => { view.step = s === '' ? null : +s;
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
  pollRuns(runs.map((r) => r.run), (latest) => updateRuns(page, latest));
  await show(first, {layer: fromURL.layer ?? 0, head: fromURL.head ?? 0,
                     image: fromURL.image ?? 0, query: fromURL.query ?? null});
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
  state.data = {};
  forgetMeta();
  page.runSelect.value = run;
  const info = {...runs.find((r) => r.run === run)};
  const steps = trainingSteps(run);
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
      sec.querySelector('.body').append(el('p', {class: 'help'}, `Could not draw: ${e.message}`));
    }));
  }
  for (const [id, title, help, renderView, needs, command] of VIEWS) {
    const sec = section(`view-${id}`, title, help);
    content.append(sec);
    const body = sec.querySelector('.body');
    draws.push(async () => {
      if (!info.analyses.includes(needs)) {
        body.append(el('p', {class: 'help empty-view'}, `Not computed for this run. Run: ${command}`));
        return;
      }
      try {
        await renderView(body, info);
      } catch (e) {
        body.append(el('p', {class: 'help'}, `Could not draw: ${e.message}`));
      }
    });
  }
  const first = draws.splice(state.compare ? 1 : 0, 1)[0];   // the importance view
  await first();
  preloadViews();
  await nextPaint();
  info.steps = await steps;
  const stepSelect = document.getElementById('step-select');
  stepSelect.replaceChildren(el('option', {value: ''}, 'latest'),
                             ...info.steps.map((s) => el('option', {value: s}, `${s}`)));
  stepSelect.value = view.step == null ? '' : `${view.step}`;
  document.getElementById('step-label').style.display = info.steps.length > 1 ? '' : 'none';
  if (info.steps.length > 1) info.analyses = [...info.analyses, 'steps'];
  box.fill();
  await Promise.all(draws.map((draw) => draw()));
  changed();
  document.body.dataset.ready = 'true';
}

// What the run is: the model's config and every metric's definition (from the stored meta).
// fill() fetches them (after the first view, which needs the requests more).
function about(info) {
  const box = el('details', {id: 'about-run'}, el('summary', {}, `About run ${info.run}: model, images and metric definitions`));
  const fill = async () => {
    const metas = await Promise.all(['importance', 'strength', 'patterns'].filter((a) => info.analyses.includes(a))
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

// The selected head's key numbers in the sticky header (whatever the views loaded).
function drawHeadNumbers() {
  const box = document.getElementById('head-numbers');
  if (!box) return;
  const {layer: l, head: h} = state;
  const d = state.data || {};
  const parts = [];
  if (d.importance) parts.push(`${d.metricLabel}: ${fmt(d.importance[state.metric][l][h])} (rank ${d.rank(l, h)} of ${d.heads})`);
  if (d.distance) parts.push(`mean distance ${fmt(d.distance[l][h])} px${d.uniformDistance != null ? ` (uniform ${fmt(d.uniformDistance)})` : ''}`);
  if (d.entropy) parts.push(`entropy ${fmt(d.entropy[l][h])} nats`);
  if (d.cluster) parts.push(`cluster ${d.cluster[l][h]}: ${d.clusterNames[d.cluster[l][h]]}`);
  box.textContent = parts.join(' · ');
}

// Follows TensorBoard's reload: new runs written while the page is open join the lists.
function pollRuns(known, onNew) {
  let names = known.join('\n');
  setInterval(async () => {
    try {
      const latest = (await getJSON('./runs')).runs;
      const now = latest.map((r) => r.run).join('\n');
      if (now !== names) { names = now; onNew(latest); }
    } catch (e) { /* TensorBoard restarting: try again later */ }
  }, RELOAD_MS);
}

function updateRuns(page, latest) {
  const added = latest.filter((r) => !page.runs.some((o) => o.run === r.run)).map((r) => r.run);
  page.runs.splice(0, page.runs.length, ...latest);
  const options = (select, extra) => {
    const value = select.value;
    select.replaceChildren(...extra, ...latest.map((r) => el('option', {value: r.run}, r.run)));
    select.value = latest.some((r) => r.run === value) || value === '' ? value : latest[0].run;
  };
  options(page.runSelect, []);
  options(page.compareSelect, [el('option', {value: ''}, 'none')]);
  if (added.length) document.getElementById('run-note').textContent = `new run${added.length > 1 ? 's' : ''}: ${added.join(', ')}`;
}

// A state change outside a run switch (kept here so the views stay independent).
export {changed};
