// Images view: the stored images; clicking a patch overlays where it attends (selected head
// or rollout) and shows that patch's attention in every head. Grids may be h × w; tokens
// before the patches (class token, registers) are skipped. For a model pooled by a MAP head
// (no class token), with no patch selected the overlay is where the model looks: the MAP
// head's attention (selected head) or the rollout started from it.

import {colour, heatCanvas} from './charts.js';
import {array, getJSON, q, unpack} from './data.js';
import {dropdown, el, tip} from './dom.js';
import {fmt, headName} from './format.js';
import {onSelect, select, state} from './state.js';

const STAGE_PX = 336;

export async function renderImages(body) {
  const meta = await getJSON(`./meta?${q({analysis: 'strength'})}`);
  const indices = meta.map_image_index;
  if (!indices.length) { body.append(el('p', {class: 'help'}, 'No stored attention maps (run strength with --map-images).')); return; }
  const cfg = meta.config;
  const [gh, gw] = (Array.isArray(cfg.image_size) ? cfg.image_size : [cfg.image_size, cfg.image_size])
      .map((s) => s / cfg.patch_size);
  // cls: the tokens before the patches (class token, registers), so patch p is token p + cls.
  const hasCls = cfg.classifier === 'token';
  const im = {meta, indices, cfg, n: gw, gh, hasCls, cls: (hasCls ? 1 : 0) + (cfg.num_registers || 0),
              pool: cfg.classifier === 'map',
              patch: STAGE_PX / Math.max(gh, gw), result: null, thumbs: el('div', {class: 'thumbs'}),
              main: el('div', {class: 'panel'}), heads: el('div', {class: 'panel'})};
  indices.forEach((idx, i) => {
    const img = el('img', {src: `./png?${q({tag: `strength/map_image/${i}`})}`, class: 'thumb',
                           title: meta.image_names[idx],
                           onclick: () => { state.image = i; state.query = null; drawImage(im); }});
    im.thumbs.append(img);
  });
  body.append(el('p', {class: 'help'}, 'Click a patch of the image to see where it attends.'),
              im.thumbs, el('div', {class: 'row'}, im.main, im.heads));
  const draw = () => drawImage(im);
  draw();
  onSelect(draw);
}

// The attention of the selected query patch, every layer and head (null without a query).
async function fetchQuery(im) {
  if (state.query == null) { im.result = null; if (im.pool) await fetchPool(im); return; }
  const r = await getJSON(`./attention?${q({image: state.image, query: state.query + im.cls})}`);
  im.result = {attention: unpack(r.attention), rollout: unpack(r.rollout)};
}

// The MAP pooling head's attention [H, T] and the rollout from it [T] of the shown image.
async function fetchPool(im) {
  const [attention, rollout] = await Promise.all([
      array(`strength/map_pool_attention/${state.image}`), array(`strength/map_pool_rollout/${state.image}`)]);
  im.poolResult = {image: state.image, attention, rollout};
}

function overlayCanvas(im, weights, alpha = 0.65) {
  const {n, gh, cls, patch} = im;
  const c = el('canvas', {width: n * patch, height: gh * patch, class: 'overlay'});
  if (!weights) return c;
  const ctx = c.getContext('2d');
  const patches = weights.slice(cls);
  const max = Math.max(1e-12, ...patches);
  patches.forEach((w, p) => {
    const r = Math.floor(p / n), k = p % n;
    ctx.fillStyle = colour(w / max).replace('rgb', 'rgba').replace(')', `,${alpha * (0.15 + 0.85 * w / max)})`);
    ctx.fillRect(k * patch, r * patch, patch, patch);
  });
  if (state.query != null) {
    ctx.strokeStyle = '#ff2d55'; ctx.lineWidth = 3;
    ctx.strokeRect((state.query % n) * patch, Math.floor(state.query / n) * patch, patch, patch);
  }
  return c;
}

function drawImage(im) {
  const {layer: l, head: h} = state;
  const {meta, indices, n, result} = im;
  for (const [i, t] of [...im.thumbs.children].entries()) t.classList.toggle('selected', i === state.image);
  if (im.pool && state.query == null && (im.poolResult || {}).image !== state.image) {
    fetchPool(im).then(() => drawImage(im));
  }
  const pool = im.pool && state.query == null && (im.poolResult || {}).image === state.image ? im.poolResult : null;
  let weights = result ? (state.overlay === 'rollout' ? result.rollout[l] : result.attention[l][h]) : null;
  if (pool) weights = state.overlay === 'rollout' ? pool.rollout : pool.attention[Math.min(h, pool.attention.length - 1)];
  const label = pool ? (state.overlay === 'rollout' ? 'where the model looks: rollout from the MAP pooling head' :
                        `where the model looks: MAP pooling head ${Math.min(h, pool.attention.length - 1)} (click a patch for its attention)`) :
      state.query == null ? 'no patch selected' :
      `query patch (row ${Math.floor(state.query / n)}, col ${state.query % n}) · ` +
      (state.overlay === 'rollout' ? `rollout to layer ${l}` : `${headName(l, h)}`);
  im.main.replaceChildren(el('h3', {}, meta.image_names[indices[state.image]]),
      dropdown([['head', 'selected head'], ['rollout', 'attention rollout']], state.overlay,
               (v) => { state.overlay = v; drawImage(im); }, 'overlay-select'),
      el('p', {class: 'help', id: 'query-label'}, label), imageStage(im, weights));
  im.heads.replaceChildren(el('h3', {}, 'This patch\'s attention in every head'), result ? headMultiples(im) :
                           el('p', {class: 'help'}, 'Click a patch of the image.'));
}

// The image with the attention overlay; a click picks the query patch.
function imageStage(im, weights) {
  const {n, gh, patch} = im;
  const [width, height] = [n * patch, gh * patch];
  const stage = el('div', {class: 'stage', style: `width:${width}px;height:${height}px`},
      el('img', {src: `./png?${q({tag: `strength/map_image/${state.image}`})}`, width,
                 height, class: 'base'}),
      overlayCanvas(im, weights));
  stage.id = 'image-stage';
  stage.addEventListener('click', async (e) => {
    const rect = stage.getBoundingClientRect();
    const k = Math.min(n - 1, Math.floor((e.clientX - rect.left) / patch));
    const r = Math.min(gh - 1, Math.floor((e.clientY - rect.top) / patch));
    state.query = r * n + k;
    await fetchQuery(im);
    drawImage(im);
  });
  return tip(stage, () => weights ? 'attention overlay: brighter = stronger' : 'click a patch');
}

// The query patch's attention as a small map per head; a click selects that head.
function headMultiples(im) {
  const {cfg, n, gh, cls, hasCls, result} = im;
  const {layer: l, head: h} = state;
  const grid = el('div', {class: 'multiples', id: 'head-multiples',
                          style: `grid-template-columns: repeat(${cfg.num_heads}, auto)`});
  result.attention.forEach((layer, li) => layer.forEach((w, hi) => {
    const m = [];
    for (let r = 0; r < gh; r++) m.push(w.slice(cls + r * n, cls + (r + 1) * n));
    const c = heatCanvas(m, 0, Math.max(...w.slice(cls)), Math.max(3, Math.floor(48 / Math.max(n, gh))),
                         {cls: 'offset-small' + (li === l && hi === h ? ' selected' : '')});
    c.addEventListener('click', () => select(li, hi));
    grid.append(tip(c, `${headName(li, hi)}: max ${fmt(Math.max(...w.slice(cls)))}` +
                       (hasCls ? `, to class token ${fmt(w[0])}` : '')));
  }));
  return grid;
}
