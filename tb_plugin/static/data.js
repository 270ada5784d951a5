// Fetching from this plugin's JSON routes and unpacking the arrays they send.

// Bodies that ./first_view brought, by the request they answer ('array?run=R&tag=T'), each
// used once: the first view's requests are answered from them, not from the network.
const preloaded = new Map();

// Takes the body of ./first_view (null: forgets what is left of the last one).
export function preload(first) {
  preloaded.clear();
  if (!first || first.run == null) return;
  const query = (params) => new URLSearchParams({run: first.run, ...params}).toString();
  for (const [analysis, value] of Object.entries(first.meta || {})) {
    preloaded.set(`meta?${query({analysis})}`, value);
  }
  for (const [tag, value] of Object.entries(first.arrays || {})) {
    preloaded.set(`array?${query({tag})}`, value);
  }
  if (first.steps) preloaded.set(`steps?${query({})}`, {steps: first.steps});
}

export async function getJSON(url) {
  const key = url.replace(/^\.\//, '');
  if (preloaded.has(key)) {
    const body = preloaded.get(key);
    preloaded.delete(key);
    return body;
  }
  if (!KEPT.test(key)) return fetchJSON(url);
  if (kept.has(key)) {   // most recently used last
    const entry = kept.get(key);
    kept.delete(key);
    kept.set(key, entry);
    return entry.body;
  }
  const entry = {body: fetchJSON(url), size: key.length};
  kept.set(key, entry);
  entry.body.then((body) => {
    entry.size += body && body.data_b64 ? body.data_b64.length : JSON.stringify(body).length;
    keptSize += entry.size;
    for (const [k, e] of kept) {   // the least recently used go first
      if (keptSize <= KEPT_CHARS || e === entry) break;
      kept.delete(k);
      keptSize -= e.size;
    }
  }, () => { if (kept.get(key) === entry) kept.delete(key); });   // a failure is not kept
  return entry.body;
}

async function fetchJSON(url) {
  const r = await fetch(url);
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

// The stored values a run's views asked for, kept (up to KEPT_CHARS characters of response,
// least recently used dropped first) so that switching back to a run shown before asks
// TensorBoard for nothing: a run's stored values change only when an analysis is written
// again, and then the run list says so (`written`) and forgetRun drops them.
const KEPT = /^(array|meta|attention)\?/;
const KEPT_CHARS = 96e6;
const kept = new Map();
let keptSize = 0;
export function forgetRun(run) {
  for (const [k, e] of [...kept]) {
    if (new URLSearchParams(k.slice(k.indexOf('?') + 1)).get('run') === run) {
      kept.delete(k);
      keptSize -= e.size;
    }
  }
}

// Arrays arrive packed: {shape, dtype, data_b64} (little-endian float32 or int32); they
// are unpacked into nested arrays of numbers ([layer][head][...]).
export function unpack(r) {
  const flat = decode(r);
  const shape = r.shape;
  if (!shape.length) return flat[0];
  const strides = shape.map((_, d) => shape.slice(d + 1).reduce((a, b) => a * b, 1));
  const last = shape.length - 1;
  const nest = (d, offset) => {
    const out = [];
    if (d === last) {
      for (let i = 0; i < shape[d]; i++) out.push(flat[offset + i]);
    } else {
      for (let i = 0; i < shape[d]; i++) out.push(nest(d + 1, offset + i * strides[d]));
    }
    return out;
  };
  return nest(0, 0);
}

// The flat typed array of a packed array.
function decode(r) {
  let bytes;
  if (Uint8Array.fromBase64) {
    bytes = Uint8Array.fromBase64(r.data_b64);
  } else {
    const bin = atob(r.data_b64);
    bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  }
  return r.dtype === 'float32' ? new Float32Array(bytes.buffer, bytes.byteOffset, bytes.length / 4)
                               : new Int32Array(bytes.buffer, bytes.byteOffset, bytes.length / 4);
}

// The run shown and its step: a scope. Every fetch below belongs to the scope in which it
// was asked for, and settles only while that scope is still the one shown (else never):
// a view's code after an `await` of these never runs for a run or step replaced since, so
// it neither draws into a page that is gone nor registers listeners or asks for more data
// of the new run in the old view's name.
let scope = {run: null, step: null, gen: 0};
export function newScope(run, step) {
  scope = {run, step, gen: scope.gen + 1};
  return scope;
}
export const currentScope = () => scope;
export const live = (s) => s === scope;
// `promise`, dropped (left pending) once scope `s` is no longer shown.
export function guard(s, promise) {
  return new Promise((resolve, reject) => {
    promise.then((v) => { if (live(s)) resolve(v); }, (e) => { if (live(s)) reject(e); });
  });
}

// The training step shown (null: the latest of each analysis); set by the header's step
// selector (newScope) and sent with every fetch of the selected run.
export const view = {get step() { return scope.step; }};

// Query string for the run (at the step) of scope `s` (default: the one shown).
export const q = (params, s = scope) => new URLSearchParams(
    {run: s.run, ...(s.step == null ? {} : {step: s.step}), ...params}).toString();
// The stored meta of an analysis of the run shown (at its step). Several views read the
// same meta: it is asked for once per scope. The object is shared: read it, never change it.
const metas = new Map();
export function meta(analysis) {
  const s = scope, key = `${s.gen}:${q({analysis}, s)}`;
  if (!metas.has(key)) {
    const value = getJSON(`./meta?${q({analysis}, s)}`);
    value.catch(() => metas.delete(key));   // a failure is not kept
    metas.set(key, value);
  }
  return guard(s, metas.get(key));
}
export const forgetMeta = () => metas.clear();
export const array = (tag, extra = {}) => {
  const s = scope;
  return guard(s, getJSON(`./array?${q({tag, ...extra}, s)}`).then(unpack));
};
// An array as {shape, data}: its flat typed array, not unpacked into nested arrays (for the
// large ones that are read once, in order).
export const arrayFlat = (tag, extra = {}) => {
  const s = scope;
  return guard(s, getJSON(`./array?${q({tag, ...extra}, s)}`).then((r) => ({shape: r.shape, data: decode(r)})));
};
export const json = (route, params = {}) => {
  const s = scope;
  return guard(s, getJSON(`./${route}?${q(params, s)}`));
};
// Another run's array (the comparison), while the scope it was asked in is shown.
export const arrayOf = (run, tag) => guard(scope, getJSON(`./array?${new URLSearchParams({run, tag})}`).then(unpack));
export const metaOf = (run, analysis) => guard(scope, getJSON(`./meta?${new URLSearchParams({run, analysis})}`));
// {name: array} for tags `${prefix}/${name}`, fetched in parallel.
export async function arrays(prefix, names) {
  const values = await Promise.all(names.map((name) => array(`${prefix}/${name}`)));
  return Object.fromEntries(names.map((name, i) => [name, values[i]]));
}

// The sorted union of the steps at which the run's analyses were written.
export async function trainingSteps(run) {
  try {
    const {steps} = await getJSON(`./steps?${new URLSearchParams({run})}`);
    return [...new Set(Object.values(steps).flat())].sort((a, b) => a - b);
  } catch (e) {
    return [];
  }
}
