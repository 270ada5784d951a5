// Images view: the stored images; clicking a patch overlays where it attends (selected head
// or rollout) and shows that patch's attention in every head.

import {colour, heatCanvas} from './charts.js';
import {getJSON, q, unpack} from './data.js';
import {dropdown, el, tip} from './dom.js';
import {fmt, headName} from './format.js';
import {onSelect, select, state} from './state.js';

const STAGE_PX = 336;

export async function renderImages(body) {
  const meta = await getJSON(`./meta?${q({analysis: 'strength'})}`);
  const indices = meta.map_image_index;
  if (!indices.length) { body.append(el('p', {class: 'help'}, 'No stored attention maps (run strength with --map-images).')); return; }
  const cfg = meta.config, n = cfg.image_size / cfg.patch_size;
  // cls: 1 when token 0 is the class token, so patch p is token p + cls.
  const im = {meta, indices, cfg, n, cls: cfg.classifier === 'token' ? 1 : 0,
              patch: STAGE_PX / n, result: null, thumbs: el('div', {class: 'thumbs'}),
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
  if (state.query == null) { im.result = null; return; }
  const r = await getJSON(`./attention?${q({image: state.image, query: state.query + im.cls})}`);
  im.result = {attention: unpack(r.attention), rollout: unpack(r.rollout)};
}

function overlayCanvas(im, weights, alpha = 0.65) {
  const {n, cls, patch} = im;
  const c = el('canvas', {width: STAGE_PX, height: STAGE_PX, class: 'overlay'});
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
  const weights = result ? (state.overlay === 'rollout' ? result.rollout[l] : result.attention[l][h]) : null;
  const label = state.query == null ? 'no patch selected' :
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
  const {n, patch} = im;
  const stage = el('div', {class: 'stage', style: `width:${STAGE_PX}px;height:${STAGE_PX}px`},
      el('img', {src: `./png?${q({tag: `strength/map_image/${state.image}`})}`, width: STAGE_PX,
                 height: STAGE_PX, class: 'base'}),
      overlayCanvas(im, weights));
  stage.id = 'image-stage';
  stage.addEventListener('click', async (e) => {
    const rect = stage.getBoundingClientRect();
    const k = Math.min(n - 1, Math.floor((e.clientX - rect.left) / patch));
    const r = Math.min(n - 1, Math.floor((e.clientY - rect.top) / patch));
    state.query = r * n + k;
    await fetchQuery(im);
    drawImage(im);
  });
  return tip(stage, () => weights ? 'attention overlay: brighter = stronger' : 'click a patch');
}

// The query patch's attention as a small map per head; a click selects that head.
function headMultiples(im) {
  const {cfg, n, cls, result} = im;
  const {layer: l, head: h} = state;
  const grid = el('div', {class: 'multiples', id: 'head-multiples',
                          style: `grid-template-columns: repeat(${cfg.num_heads}, auto)`});
  result.attention.forEach((layer, li) => layer.forEach((w, hi) => {
    const m = [];
    for (let r = 0; r < n; r++) m.push(w.slice(cls + r * n, cls + (r + 1) * n));
    const c = heatCanvas(m, 0, Math.max(...w.slice(cls)), Math.max(3, Math.floor(48 / n)),
                         {cls: 'offset-small' + (li === l && hi === h ? ' selected' : '')});
    c.addEventListener('click', () => select(li, hi));
    grid.append(tip(c, `${headName(li, hi)}: max ${fmt(Math.max(...w.slice(cls)))}` +
                       (cls ? `, to class token ${fmt(w[0])}` : '')));
  }));
  return grid;
}
