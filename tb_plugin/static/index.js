// ViT Analytics: linked views of head importance, attention strength, patterns and images.
// Plain ES modules, no dependencies: TensorBoard calls render() inside the plugin's iframe.
// Data comes only from this plugin's JSON routes (./runs, ./meta, ./array, ./png, ./attention).

import {getJSON, view} from './data.js';
import {createTooltip, dropdown, el, section} from './dom.js';
import {headName} from './format.js';
import {resetForRun, state} from './state.js';
import {CSS} from './style.js';
import {renderComparison} from './view_compare.js';
import {renderImages} from './view_images.js';
import {renderImportance} from './view_importance.js';
import {renderPatterns} from './view_patterns.js';
import {renderStrength} from './view_strength.js';
import {renderTraining, trainingSteps} from './view_training.js';

// [section id, title, help, render, analysis it needs (default: the id)]
const VIEWS = [
  ['importance', 'Which heads matter?', 'Pruning-based importance: mask gradients and single-head ablation.', renderImportance],
  ['strength', 'How strongly do patches attend to their neighbours?', null, renderStrength],
  ['patterns', 'What patterns have heads learned?', null, renderPatterns],
  ['images', 'Images', null, renderImages, 'strength'],
  ['training', 'Over training', 'Per-head importance, mean distance and entropy against the training step (rows: layers, columns: heads). The selected head is highlighted; the dashed line marks the step shown.', renderTraining, 'steps'],
];

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
        el('p', {}, 'Write one with: vit-analytics analyze --checkpoint CKPT --images DIR --logdir LOGDIR')));
    return;
  }
  const content = el('div', {id: 'content'});
  const show = (run) => showRun(content, runs, run);
  const runSelect = dropdown(runs.map((r) => [r.run, r.run]), runs[0].run,
                             (r) => { view.step = null; show(r); }, 'run-select');
  // Training steps of the run (filled by showRun); choosing one redraws every view there.
  const stepSelect = dropdown([], '', (s) => { view.step = s === '' ? null : +s; show(state.run); },
                              'step-select');
  const compareSelect = dropdown([['', 'none'], ...runs.map((r) => [r.run, r.run])], '',
                                 (r) => { state.compare = r; show(state.run); }, 'compare-select');
  root.append(el('header', {}, el('label', {}, 'Run ', runSelect),
                 el('label', {id: 'step-label'}, 'Step ', stepSelect),
                 runs.length > 1 ? el('label', {}, 'Compare with ', compareSelect) : null,
                 el('span', {}, 'Selected head: ', el('b', {id: 'selected-head'}, headName(0, 0))),
                 el('span', {class: 'help'}, 'Click a head in any view to select it everywhere.')),
              content);
  await show(runs[0].run);
}

// Draws every view of one run (and the comparison, if one is chosen) into content.
// body[data-ready] is 'true' once all are drawn.
async function showRun(content, runs, run) {
  document.body.dataset.ready = 'false';
  resetForRun(run);
  const info = {...runs.find((r) => r.run === run)};
  info.steps = await trainingSteps(run);
  const stepSelect = document.getElementById('step-select');
  stepSelect.replaceChildren(el('option', {value: ''}, 'latest'),
                             ...info.steps.map((s) => el('option', {value: s}, `${s}`)));
  stepSelect.value = view.step == null ? '' : `${view.step}`;
  document.getElementById('step-label').style.display = info.steps.length > 1 ? '' : 'none';
  if (info.steps.length > 1) info.analyses = [...info.analyses, 'steps'];
  document.getElementById('selected-head').textContent = headName(0, 0);
  content.replaceChildren();
  if (state.compare && state.compare !== run) {
    const sec = section('view-compare', `${run} compared with ${state.compare}`,
                        'Same colour scale for both runs. Select a metric in the importance view.');
    content.append(sec);
    await renderComparison(sec.querySelector('.body'), runs, state.compare);
  }
  for (const [id, title, help, renderView, needs] of VIEWS) {
    const sec = section(`view-${id}`, title, help);
    content.append(sec);
    if (!info.analyses.includes(needs || id)) {
      sec.querySelector('.body').append(el('p', {class: 'help'},
          `Not computed for this run (vit-analytics ${needs || id} …).`));
      continue;
    }
    try {
      await renderView(sec.querySelector('.body'), info);
    } catch (e) {
      sec.querySelector('.body').append(el('p', {class: 'help'}, `Could not draw: ${e.message}`));
    }
  }
  document.body.dataset.ready = 'true';
}
