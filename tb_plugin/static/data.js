// Fetching from this plugin's JSON routes and unpacking the arrays they send.

import {state} from './state.js';

export async function getJSON(url) {
  const r = await fetch(url);
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

// Arrays arrive packed: {shape, dtype, data_b64} (little-endian float32 or int32).
export function unpack(r) {
  const bin = atob(r.data_b64);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  const flat = Array.from(r.dtype === 'float32' ? new Float32Array(bytes.buffer)
                                                : new Int32Array(bytes.buffer));
  const nest = (offset, dims) => {
    if (!dims.length) return flat[offset];
    const stride = dims.slice(1).reduce((a, b) => a * b, 1);
    return Array.from({length: dims[0]}, (_, i) => nest(offset + i * stride, dims.slice(1)));
  };
  return r.shape.length ? nest(0, r.shape) : flat[0];
}

// The training step shown (null: the latest of each analysis); set by the header's step
// selector and sent with every fetch of the selected run.
export const view = {step: null};

// Query string for the selected run (at the selected step).
export const q = (params) => new URLSearchParams(
    {run: state.run, ...(view.step == null ? {} : {step: view.step}), ...params}).toString();
export const array = (tag, extra = {}) => getJSON(`./array?${q({tag, ...extra})}`).then(unpack);
export const arrayOf = (run, tag) => getJSON(`./array?${new URLSearchParams({run, tag})}`).then(unpack);
// {name: array} for tags `${prefix}/${name}`, fetched in parallel.
export async function arrays(prefix, names) {
  const values = await Promise.all(names.map((name) => array(`${prefix}/${name}`)));
  return Object.fromEntries(names.map((name, i) => [name, values[i]]));
}
