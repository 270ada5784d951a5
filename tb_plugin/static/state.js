// The selection shared by all views: one selected head everywhere, and the views that
// redraw when it (or the chosen metric) changes. The selection is mirrored into the URL
// (see url.js), so that a view can be shared.

import {hideTooltip} from './dom.js';
import {headName} from './format.js';

export const state = {run: null, layer: 0, head: 0, image: 0, query: null, cell: null,
                      metric: 'taylor', scatterX: 'taylor', scatterY: 'ablation_loss',
                      curveMetric: 'top1', partialMetric: 'loss', overlay: 'head',
                      compare: '', scaleMode: 'shared', yFromZero: false, radius: 1,
                      sampleColour: 'layer', qkColour: 'role', imageSort: 'index', imageSortDesc: false,
                      imagePage: 0, imageFilter: null, overviewImage: null};
const listeners = [];
const metricListeners = [];
const changeListeners = [];

// Views register their selection-dependent draw functions here.
export function onSelect(...draws) {
  listeners.push(...draws);
}

// Draw functions that depend on the importance metric chosen in the grid.
export function onMetric(...draws) {
  metricListeners.push(...draws);
}

// Called after any change of the shared state (the URL and the header follow it).
export function onChange(f) {
  changeListeners.push(f);
}

export function changed() {
  for (const f of changeListeners) f();
}

export function select(layer, head) {
  hideTooltip();
  state.layer = layer;
  state.head = head;
  document.getElementById('selected-head').textContent = headName(layer, head);
  for (const f of listeners) f();
  changed();
}

export function setMetric(metric) {
  hideTooltip();
  state.metric = metric;
  for (const f of metricListeners) f();
  changed();
}

// A new run starts with head L0 H0, the first image and no query (unless `keep` says
// otherwise: a shared URL); the old views are gone, so their listeners go too. Chosen
// metrics, overlay and comparison stay.
export function resetForRun(run, keep = {}) {
  Object.assign(state, {run, layer: 0, head: 0, image: 0, query: null, cell: null,
                        imagePage: 0, imageFilter: null, overviewImage: null, storedImages: null,
                        showImage: null, imp: null, redrawOverview: null}, keep);
  listeners.length = 0;
  metricListeners.length = 0;
}
