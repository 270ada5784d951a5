// Images view: the stored images; clicking a patch overlays where it attends (selected head
// or rollout) and shows that patch's attention in every head, as multiples of uniform.

import {heatCanvas, legend, ratio} from './charts.js';
import {getJSON, q, unpack} from './data.js';
import {dropdown, el, hideTooltip, tip} from './dom.js';
import {fmt, headName, tokens} from './format.js';
import {changed, onSelect, select, state} from './state.js';

const STAGE_PX = 336;

export async function renderImages(body) {
  const meta = await getJSON(`./meta?${q({analysis: 'strength'})}`);
  const indices = meta.map_image_index;
  if (!indices.length) {
    body.append(el('p', {class: 'help empty-view'}, 'No stored attention maps. Run: vit-analytics strength ... --map-images N'));
    return;
  }
  const cfg = meta.config, n = cfg.image_size / cfg.patch_size;
  if (!(state.image < indices.length)) state.image = 0;
  // cls: 1 when token 0 is the class token, so patch p is token p + cls.
  const im = {meta, indices, cfg, n, cls: cfg.classifier === 'token' ? 1 : 0, T: tokens(cfg),
              patch: STAGE_PX / n, result: null, key: null, thumbs: el('div', {class: 'thumbs'}),
              main: el('div', {class: 'panel'}), heads: el('div', {class: 'panel'})};
  const labels = meta.labels || [], classes = meta.class_names || [];
  indices.forEach((idx, i) => {
    const label = labels[idx] >= 0 ? ` (${classes[labels[idx]] ?? labels[idx]})` : '';
    const img = el('img', {src: `./png?${q({tag: `strength/map_image/${i}`})}`, class: 'thumb',
                           title: meta.image_names[idx] + label, 'data-image': idx,
                           onclick: () => showImage(im, i)});
    im.thumbs.append(img);
  });
  body.append(el('p', {class: 'help'}, `${indices.length} of ${meta.images} images have stored attention maps. ` +
                 'Click a patch of the image to see where it attends.'),
              im.thumbs, el('div', {class: 'row'}, im.main, im.heads));
  state.showImage = (i) => showImage(im, i);
  state.storedImages = indices;
  const draw = () => drawImage(im);
  if (state.query != null) await fetchQuery(im);
  draw();
  onSelect(draw);
}

// A new image: no query patch, and none of the previous image's attention.
function showImage(im, i) {
  state.image = i; state.query = null; im.result = null; im.key = null;
  drawImage(im);
  changed();
}

// The attention of the selected query patch, every layer and head (null without a query).
// A response for an image or patch that is no longer selected is dropped.
async function fetchQuery(im) {
  if (state.query == null) { im.result = null; im.key = null; return; }
  const key = `${state.image}:${state.query}`;
  const r = await getJSON(`./attention?${q({image: state.image, query: state.query + im.cls})}`);
  if (key !== `${state.image}:${state.query}`) return;
  im.result = {attention: unpack(r.attention), rollout: unpack(r.rollout)};
  im.key = key;
}

// The result, only if it belongs to the selected image and patch.
const current = (im) => im.result && im.key === `${state.image}:${state.query}` ? im.result : null;

function overlayCanvas(im, weights, sc, alpha = 0.7) {
  const {n, cls, patch, T} = im;
  const c = el('canvas', {width: STAGE_PX, height: STAGE_PX, class: 'overlay'});
  if (!weights) return c;
  const ctx = c.getContext('2d');
  weights.slice(cls).forEach((w, p) => {
    const r = Math.floor(p / n), k = p % n;
    ctx.globalAlpha = alpha;
    ctx.fillStyle = sc.colour(w * T);
    ctx.fillRect(k * patch, r * patch, patch, patch);
  });
  ctx.globalAlpha = 1;
  if (state.query != null) {
    ctx.strokeStyle = '#111'; ctx.lineWidth = 3;
    ctx.strokeRect((state.query % n) * patch, Math.floor(state.query / n) * patch, patch, patch);
  }
  return c;
}

function drawImage(im) {
  hideTooltip();
  const {layer: l, head: h} = state;
  const {meta, indices, n} = im;
  const result = current(im);
  for (const [i, t] of [...im.thumbs.children].entries()) t.classList.toggle('selected', i === state.image);
  const weights = result ? (state.overlay === 'rollout' ? result.rollout[l] : result.attention[l][h]) : null;
  const sc = weights ? ratio(weights.slice(im.cls).map((w) => w * im.T)) : null;
  const label = state.query == null ? 'no patch selected' :
      `query patch (row ${Math.floor(state.query / n)}, col ${state.query % n}) · ` +
      (state.overlay === 'rollout' ? `rollout to layer ${l}` : `${headName(l, h)}`);
  const idx = indices[state.image];
  const truth = meta.labels && meta.labels[idx] >= 0
      ? ` · label ${(meta.class_names || [])[meta.labels[idx]] ?? meta.labels[idx]}` : '';
  im.main.replaceChildren(el('h3', {}, `${meta.image_names[idx]}${truth}`),
      dropdown([['head', 'selected head'], ['rollout', 'attention rollout']], state.overlay,
               (v) => { state.overlay = v; drawImage(im); }, 'overlay-select'),
      el('p', {class: 'help', id: 'query-label'}, label), imageStage(im, weights),
      sc ? legend(sc, 220, 'overlay-legend') : el('p', {class: 'help legend-placeholder'}, 'Overlay: × uniform attention (1/T).'));
  im.heads.replaceChildren(el('h3', {}, 'This patch\'s attention in every head (× uniform)'), result ? headMultiples(im, result) :
                           el('p', {class: 'help', id: 'head-multiples-empty'}, 'Click a patch of the image.'));
}

// The image with the attention overlay; a click picks the query patch.
function imageStage(im, weights) {
  const {n, patch} = im;
  const stage = el('div', {class: 'stage', style: `width:${STAGE_PX}px;height:${STAGE_PX}px`},
      el('img', {src: `./png?${q({tag: `strength/map_image/${state.image}`})}`, width: STAGE_PX,
                 height: STAGE_PX, class: 'base'}),
      overlayCanvas(im, weights, weights ? ratio(weights.slice(im.cls).map((w) => w * im.T)) : null));
  stage.id = 'image-stage';
  stage.addEventListener('click', async (e) => {
    const rect = stage.getBoundingClientRect();
    const k = Math.min(n - 1, Math.floor((e.clientX - rect.left) / patch));
    const r = Math.min(n - 1, Math.floor((e.clientY - rect.top) / patch));
    state.query = r * n + k;
    await fetchQuery(im);
    drawImage(im);
    changed();
  });
  return tip(stage, () => weights ? 'attention overlay: red = above uniform, blue = below' : 'click a patch');
}

// The query patch's attention as a small map per head (× uniform); a click selects that head.
function headMultiples(im, result) {
  const {cfg, n, cls, T} = im;
  const {layer: l, head: h} = state;
  const maps = result.attention.map((layer) => layer.map((w) => {
    const m = [];
    for (let r = 0; r < n; r++) m.push(w.slice(cls + r * n, cls + (r + 1) * n).map((v) => v * T));
    return m;
  }));
  const shared = ratio(maps);
  const grid = el('div', {class: 'multiples', id: 'head-multiples',
                          style: `grid-template-columns: repeat(${cfg.num_heads}, auto)`});
  maps.forEach((layer, li) => layer.forEach((m, hi) => {
    const sc = state.scaleMode === 'shared' ? shared : ratio(m);
    const c = heatCanvas(m, sc, Math.max(3, Math.floor(48 / n)),
                         {cls: 'offset-small' + (li === l && hi === h ? ' selected' : '')});
    c.addEventListener('click', () => select(li, hi));
    const w = result.attention[li][hi];
    grid.append(tip(c, `${headName(li, hi)}: max ${fmt(Math.max(...w.slice(cls)))} (${fmt(Math.max(...m.flat()))}× uniform)` +
                       (cls ? `, to class token ${fmt(w[0])}` : '')));
  }));
  return el('div', {}, grid, state.scaleMode === 'shared' ? legend(shared, 220, 'multiples-image-legend')
      : el('p', {class: 'help', id: 'multiples-image-legend'}, 'Each map on its own log scale centred at 1× uniform.'));
}
