// The selection shared by all views: one selected head everywhere, and the views that
// redraw when it (or the chosen metric) changes. The selection is mirrored into the URL
// (see url.js), so that a view can be shared.
//
// Two tokens keep late work from drawing over newer work:
//   the scope (data.js) of the run shown: every fetch of a view settles only while its
//     run (and step) is still the one shown, so a view's code after an `await` never runs
//     for a run that has been replaced, and never registers a listener for it;
//   state.selection, bumped by every select(): a draw that awaited something checks
//     `stale(token)` before drawing a head that is no longer selected.
// What one view offers the others goes through publish() under a key declared in
// PUBLISHED; nothing else is added to `state`.

import {hideTooltip} from './dom.js';
import {headName} from './format.js';

export const state = {run: null, layer: 0, head: 0, image: 0, query: null, cell: null,
                      metric: 'taylor', scatterX: 'taylor', scatterY: 'ablation_loss',
                      gridScale: 'linear', curveMetric: 'top1', partialMetric: 'loss',
                      overlay: 'head', overlayOpacity: 0.7,
                      compare: '', scaleMode: 'shared', yFromZero: false, radius: 1,
                      sampleColour: 'layer', qkColour: 'role', imageSort: 'index', imageSortDesc: false,
                      imagePage: 0, imageFilter: null, overviewImage: null, selection: 0};

// The keys views publish for each other, and what each holds (who publishes it).
export const PUBLISHED = {
  importanceNumbers: 'importance: {values, label(metric), rank(l, h), heads} for the header',
  perImageTaylor: 'importance: (l, h) => promise of that head\'s [image] Taylor values, or null',
  strengthNumbers: 'strength: {distance, entropy, uniformDistance} [L][H] for the header',
  headKinds: 'strength: [L][H] kind of each head (kinds.js)',
  clusters: 'patterns: {cluster [L][H], names [cluster]}',
  storedImages: 'images: [k] -> index of the k-th image with stored attention maps',
  openImage: 'images: (k) => shows stored image k',
};
const published = new Map();
let waiting = new Map();   // key -> resolvers of whenPublished

export function publish(key, value) {
  if (!(key in PUBLISHED)) throw new Error(`publish: undeclared key ${key}`);
  published.set(key, value);
  for (const resolve of waiting.get(key) || []) resolve(value);
  waiting.delete(key);
}

// The value under `key` once published for the run shown (never, if the run changes first).
export function whenPublished(key) {
  if (!(key in PUBLISHED)) throw new Error(`whenPublished: undeclared key ${key}`);
  if (published.has(key)) return Promise.resolve(published.get(key));
  return new Promise((resolve) => waiting.set(key, [...(waiting.get(key) || []), resolve]));
}

// The value published under `key` for the run shown (undefined until published).
export function use(key) {
  if (!(key in PUBLISHED)) throw new Error(`use: undeclared key ${key}`);
  return published.get(key);
}

const listeners = [];
const metricListeners = [];
const filterListeners = [];
const changeListeners = [];

// Views register their selection-dependent draw functions here.
export function onSelect(...draws) {
  listeners.push(...draws);
}

// Draw functions that depend on the importance metric chosen in the grid.
export function onMetric(...draws) {
  metricListeners.push(...draws);
}

// Draw functions that depend on the image filter (state.imageFilter: the images chosen by
// brushing in the image overview's layout, a bar of the per-image histogram or a pattern
// of the pattern map; every view that shows images follows it).
export function onFilter(...draws) {
  filterListeners.push(...draws);
}

// filter: null (every image) or {indices: [image], label, source: who chose them, bin?}.
export function setImageFilter(filter) {
  hideTooltip();
  state.imageFilter = filter && filter.indices.length ? filter : null;
  state.imagePage = 0;
  for (const f of filterListeners) f();
  changed();
}

// Called after any change of the shared state (the URL and the header follow it).
export function onChange(f) {
  changeListeners.push(f);
}

export function changed() {
  for (const f of changeListeners) f();
}

// A token of the current selection; stale(token) once another head has been selected.
export const selectionToken = () => state.selection;
export const stale = (token) => token !== state.selection;

export function select(layer, head) {
  hideTooltip();
  state.layer = layer;
  state.head = head;
  state.selection++;
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
// otherwise: a shared URL); the old views are gone, so their listeners and what they
// published go too. Chosen metrics, overlay and comparison stay.
export function resetForRun(run, keep = {}) {
  Object.assign(state, {run, layer: 0, head: 0, image: 0, query: null, cell: null,
                        imagePage: 0, imageFilter: null, overviewImage: null}, keep);
  state.selection++;
  listeners.length = 0;
  metricListeners.length = 0;
  filterListeners.length = 0;
  published.clear();
  waiting = new Map();
}
