// ViT Analytics: the plugin's entry point. TensorBoard imports this module in the plugin's
// iframe and calls render(); the page itself is app.js and the modules it imports.
//
// This module imports only views.js (the table of views, which imports nothing), so that it
// runs as soon as they arrive: it asks at once for what the first view draws (./first_view
// with the first view's analysis: the runs, the shown run's steps, the analysis' meta and
// every array of it without a per-image axis, chosen by the plugin, in one response), and
// at the same time for every module the first view needs (modulepreload: all at once, not
// one level of imports after another). The first view's requests are then answered from
// that response (data.js), and anything it lacks is asked for as usual.

import {FIRST_VIEW, FIRST_VIEW_MODULES} from './views.js';

// The run named in the URL's selection (`vit=run:<name>,...` in the frame's hash or in
// TensorBoard's; see url.js), or null.
function runInURL() {
  for (const w of [window, window.parent]) {
    try {
      const m = /(?:^|[#&])vit=([^&]*)/.exec(w.location.hash || '');
      const run = m && /(?:^|,)run:([^,]*)/.exec(decodeURIComponent(m[1]));
      if (run) return run[1];
    } catch (e) { /* another origin, or a malformed escape */ }
  }
  return null;
}

// The data first: the browser opens at most 6 connections to TensorBoard's server, and the
// modules would otherwise take them all before it.
const params = new URLSearchParams({analyses: FIRST_VIEW.needs});
const wanted = runInURL();
if (wanted) params.set('run', wanted);
const first = fetch(`./first_view?${params}`).then((r) => (r.ok ? r.json() : null))
    .catch(() => null);   // the page then asks route by route
for (const name of FIRST_VIEW_MODULES) {
  const link = document.createElement('link');
  link.rel = 'modulepreload';
  link.href = new URL(name, import.meta.url).href;
  document.head.append(link);
}
const app = import('./app.js');

export async function render() {
  const [page, data] = await Promise.all([app, first]);
  return page.render(data);
}
