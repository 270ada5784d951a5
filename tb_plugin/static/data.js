// Fetching from this plugin's JSON routes and unpacking the arrays they send.

import {state} from './state.js';

export async function getJSON(url) {
  const r = await fetch(url);
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
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

// The training step shown (null: the latest of each analysis); set by the header's step
// selector and sent with every fetch of the selected run.
export const view = {step: null};

// Query string for the selected run (at the selected step).
export const q = (params) => new URLSearchParams(
    {run: state.run, ...(view.step == null ? {} : {step: view.step}), ...params}).toString();
// The stored meta of an analysis of the selected run (at the selected step). Several views
// read the same meta: it is asked for once, and forgotten when showRun draws a run or step
// anew (forgetMeta). The object is shared: read it, never change it.
const metas = new Map();
export function meta(analysis) {
  const key = q({analysis});
  if (!metas.has(key)) {
    const value = getJSON(`./meta?${key}`);
    value.catch(() => metas.delete(key));   // a failure is not kept
    metas.set(key, value);
  }
  return metas.get(key);
}
export const forgetMeta = () => metas.clear();
export const array = (tag, extra = {}) => getJSON(`./array?${q({tag, ...extra})}`).then(unpack);
export const arrayOf = (run, tag) => getJSON(`./array?${new URLSearchParams({run, tag})}`).then(unpack);
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
