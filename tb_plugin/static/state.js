// The selection shared by all views: one selected head everywhere, and the views that
// redraw when it changes.

import {headName} from './format.js';

export const state = {run: null, layer: 0, head: 0, image: 0, query: null, cell: null,
                      metric: 'taylor', scatterX: 'taylor', scatterY: 'ablation_loss',
                      curveMetric: 'top1', overlay: 'head', compare: ''};
const listeners = [];

// Views register their selection-dependent draw functions here.
export function onSelect(...draws) {
  listeners.push(...draws);
}

export function select(layer, head) {
  state.layer = layer;
  state.head = head;
  document.getElementById('selected-head').textContent = headName(layer, head);
  for (const f of listeners) f();
}

// A new run starts with head L0 H0, the first image and no query; the old views are gone,
// so their listeners go too. Chosen metrics, overlay and comparison stay.
export function resetForRun(run) {
  state.run = run; state.layer = 0; state.head = 0; state.image = 0; state.query = null; state.cell = null;
  listeners.length = 0;
}
