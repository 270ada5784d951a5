// The selection in the URL, so that a view can be shared: `vit=<key>:<value>,...` in the
// hash of TensorBoard's page (after `#vit_analytics`, as TensorBoard's own `&key=value`
// hash parameters), mirrored in the plugin frame's own hash.

import {state} from './state.js';

const KEYS = ['run', 'compare', 'layer', 'head', 'image', 'query', 'metric', 'scaleMode'];
const INTEGER = new Set(['layer', 'head', 'image', 'query']);

function parse(hash) {
  const m = /(?:^|[#&])vit=([^&]*)/.exec(hash || '');
  if (!m) return null;
  const out = {};
  for (const part of decodeURIComponent(m[1]).split(',')) {
    const i = part.indexOf(':');
    if (i < 0) continue;
    const k = part.slice(0, i), v = part.slice(i + 1);
    if (!KEYS.includes(k)) continue;
    if (INTEGER.has(k)) { if (/^[0-9]{1,6}$/.test(v)) out[k] = +v; } else out[k] = v;
  }
  return out;
}

function topLocation() {
  try { return window.parent !== window ? window.parent.location : null; } catch (e) { return null; }
}

export function readURL() {
  const top = topLocation();
  return parse(location.hash) || (top && parse(top.hash)) || {};
}

export function encodeState() {
  const parts = KEYS.filter((k) => state[k] != null && state[k] !== '')
      .map((k) => `${k}:${state[k]}`);
  return `vit=${encodeURIComponent(parts.join(','))}`;
}

export function writeURL() {
  const value = encodeState();
  // The full address, not '#…' alone: that resolves against the page's <base> (the plugin
  // page alone has one), which would turn the address into one that cannot be reloaded.
  try { history.replaceState(null, '', `${location.pathname}${location.search}#${value}`); } catch (e) { /* sandboxed */ }
  const top = topLocation();
  if (!top) return;
  try {
    const hash = top.hash.replace(/^#/, '');
    const kept = hash.split('&').filter((p) => p && !p.startsWith('vit='));
    if (!kept.length) kept.push('vit_analytics');
    window.parent.history.replaceState(window.parent.history.state, '',
                                       `${top.pathname}${top.search}#${[...kept, value].join('&')}`);
  } catch (e) { /* another origin: the frame's own hash still holds it */ }
}
