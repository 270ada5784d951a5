// Images view: the stored images; clicking a patch overlays where it attends (selected head
// or rollout) and shows that patch's attention in every head, as multiples of uniform. Grids
// may be h × w; tokens before the patches (class token, registers) are skipped. For a model
// pooled by a MAP head (no class token), with no patch selected the overlay is where the
// model looks: the MAP head's attention (selected head) or the rollout started from it.

import {frame, heatCanvas, legend, ratio} from './charts.js';
import {array, arrayFlat, json, meta as analysisMeta, q, unpack} from './data.js';
import {dropdown, el, hideTooltip, svg, tip} from './dom.js';
import {fmt, gridShape, headName, prefixTokens, storeAllMaps, tokens} from './format.js';
import {changed, onFilter, onSelect, publish, select, state} from './state.js';

const STAGE_PX = 336;
const THUMBS = 24;

export {renderImages as render};

export async function renderImages(body, info) {
  const meta = await analysisMeta('strength');
  const indices = meta.map_image_index;
  if (!indices.length) {
    body.append(el('p', {class: 'help empty-view', id: 'images-note'}, 'No stored attention maps.' + storeAllMaps(meta, meta.images)));
    return;
  }
  const cfg = meta.config, [gh, n] = gridShape(cfg);
  if (!(state.image < indices.length)) state.image = 0;
  // n: patches per row, gh: rows; cls: the tokens before the patches (class token,
  // registers), so patch p is token p + cls.
  const im = {meta, indices, cfg, n, gh, hasCls: cfg.classifier === 'token', cls: prefixTokens(cfg),
              T: tokens(cfg), pool: cfg.classifier === 'map', poolResult: null,
              patch: STAGE_PX / Math.max(gh, n), result: null, key: null, thumbs: el('div', {class: 'thumbs'}),
              main: el('div', {class: 'panel'}), heads: el('div', {class: 'panel'}),
              qkBox: el('div', {class: 'panel', id: 'qk-panel'}), qk: {},
              qkAll: el('div', {class: 'panel', id: 'qk-matrix-panel'}),
              hasQK: 'strength/qk_embedding' in info.tags};
  const labels = meta.labels || [], classes = meta.class_names || [];
  // At most THUMBS thumbnails (the image overview lists and opens every stored image).
  indices.slice(0, THUMBS).forEach((idx, i) => {
    const label = labels[idx] >= 0 ? ` (${classes[labels[idx]] ?? labels[idx]})` : '';
    const img = el('img', {src: `./png?${q({tag: `strength/map_image/${i}`})}`, class: 'thumb',
                           title: meta.image_names[idx] + label, 'data-image': idx,
                           onclick: () => showImage(im, i)});
    im.thumbs.append(img);
  });
  if (indices.length > THUMBS) {
    im.thumbs.append(el('span', {class: 'help'}, `… and ${indices.length - THUMBS} more: open any from the image overview.`));
  }
  body.append(el('p', {class: 'help', id: 'images-note'}, `${indices.length === meta.images ? 'All' : indices.length} of ${meta.images} images have stored attention maps.` +
                 storeAllMaps(meta, meta.images) + ' Click a patch of the image to see where it attends.'),
              im.thumbs, el('div', {class: 'row'}, im.main, im.heads, im.qkBox, im.qkAll));
  if (im.hasQK) im.qkImages = await array('strength/qk_images');
  if (im.hasQK) drawQKMatrix(im, await arrayFlat('strength/qk_embedding'));
  publish('openImage', (i) => showImage(im, i));
  publish('storedImages', indices);
  const draw = () => { drawImage(im); drawQK(im); markQKMatrix(im); };
  if (state.query != null) await fetchQuery(im);
  draw();
  markFiltered(im);
  onSelect(draw);
  onFilter(() => markFiltered(im));
}

// The page's image filter on the strip: images outside it faded (still clickable).
function markFiltered(im) {
  const chosen = state.imageFilter ? new Set(state.imageFilter.indices) : null;
  for (const t of im.thumbs.querySelectorAll('.thumb')) t.classList.toggle('faded', !!chosen && !chosen.has(+t.dataset.image));
}

// A new image: no query patch, and none of the previous image's attention.
function showImage(im, i) {
  state.image = i; state.query = null; im.result = null; im.key = null;
  drawImage(im);
  drawQK(im);
  changed();
}

// The attention of the selected query patch, every layer and head (null without a query).
// A response for an image or patch that is no longer selected is dropped.
async function fetchQuery(im) {
  if (state.query == null) { im.result = null; im.key = null; return; }
  const key = `${state.image}:${state.query}`;
  const r = await json('attention', {image: state.image, query: state.query + im.cls});
  if (key !== `${state.image}:${state.query}`) return;
  im.result = {attention: unpack(r.attention), rollout: unpack(r.rollout)};
  im.key = key;
}

// The MAP pooling head's attention [H, T] and the rollout from it [T] of the shown image.
async function fetchPool(im) {
  const image = state.image;
  const [attention, rollout] = await Promise.all([
      array(`strength/map_pool_attention/${image}`), array(`strength/map_pool_rollout/${image}`)]);
  im.poolResult = {image, attention, rollout};
}

// The result, only if it belongs to the selected image and patch.
const current = (im) => im.result && im.key === `${state.image}:${state.query}` ? im.result : null;

// Without a selected patch, a MAP-pooled model's own view of the shown image (null if none
// or not fetched yet: then it is fetched and the image redrawn).
function currentPool(im) {
  if (!im.pool || state.query != null) return null;
  if ((im.poolResult || {}).image === state.image) return im.poolResult;
  fetchPool(im).then(() => drawImage(im));
  return null;
}

// The attention over the photograph: only patches above uniform are painted, red, more
// opaque the stronger (below-uniform ones leave the photograph as it is); `opacity` is the
// strongest patch's (the canvas' own opacity, so the slider needs no redraw).
function overlayCanvas(im, weights, sc) {
  const {n, gh, cls, patch, T} = im;
  const c = el('canvas', {width: n * patch, height: gh * patch, class: 'overlay',
                          style: `opacity:${state.overlayOpacity}`});
  if (!weights) return c;
  const ctx = c.getContext('2d');
  weights.slice(cls).forEach((w, p) => {
    const t = sc.t(w * T);
    if (!(t > 0)) return;
    const r = Math.floor(p / n), k = p % n;
    ctx.globalAlpha = Math.min(1, 0.25 + 0.75 * t);
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
  const result = current(im), pool = currentPool(im);
  for (const [i, t] of [...im.thumbs.querySelectorAll('.thumb')].entries()) t.classList.toggle('selected', i === state.image);
  let weights = result ? (state.overlay === 'rollout' ? result.rollout[l] : result.attention[l][h]) : null;
  const poolHead = pool ? Math.min(h, pool.attention.length - 1) : 0;
  if (pool) weights = state.overlay === 'rollout' ? pool.rollout : pool.attention[poolHead];
  const sc = weights ? ratio(weights.slice(im.cls).map((w) => w * im.T)) : null;
  const label = pool ? (state.overlay === 'rollout' ? 'where the model looks: rollout from the MAP pooling head' :
                        `where the model looks: MAP pooling head ${poolHead} (click a patch for its attention)`) :
      state.query == null ? 'no patch selected' :
      `query patch (row ${Math.floor(state.query / n)}, col ${state.query % n}) · ` +
      (state.overlay === 'rollout' ? `rollout to layer ${l}` : `${headName(l, h)}`);
  const idx = indices[state.image];
  const truth = meta.labels && meta.labels[idx] >= 0
      ? ` · label ${(meta.class_names || [])[meta.labels[idx]] ?? meta.labels[idx]}` : '';
  im.main.replaceChildren(el('h3', {}, `${meta.image_names[idx]}${truth}`),
      el('div', {class: 'controls'},
         dropdown([['head', 'selected head'], ['rollout', 'attention rollout']], state.overlay,
                  (v) => { state.overlay = v; drawImage(im); }, 'overlay-select'),
         el('label', {}, 'opacity ', el('input', {type: 'range', min: 0, max: 1, step: 0.05, value: state.overlayOpacity,
                                                   id: 'overlay-opacity',
                                                   oninput: (e) => {
                                                     state.overlayOpacity = +e.target.value;
                                                     const c = document.querySelector('#image-stage canvas.overlay');
                                                     if (c) c.style.opacity = state.overlayOpacity;
                                                   }}))),
      el('p', {class: 'help', id: 'query-label'}, label), imageStage(im, weights),
      sc ? legend(sc, 220, 'overlay-legend') : el('p', {class: 'help legend-placeholder'}, 'Overlay: × uniform attention (1/T).'),
      el('p', {class: 'help'}, 'Only patches above uniform attention are painted (red, more opaque the stronger); the others show the photograph.'));
  im.heads.replaceChildren(el('h3', {}, 'This patch\'s attention in every head (× uniform)'), result ? headMultiples(im, result) :
                           el('p', {class: 'help', id: 'head-multiples-empty'}, 'Click a patch of the image.'));
}

// The image with the attention overlay; a click picks the query patch.
function imageStage(im, weights) {
  const {n, gh, patch} = im;
  const [width, height] = [n * patch, gh * patch];
  const stage = el('div', {class: 'stage', style: `width:${width}px;height:${height}px`},
      el('img', {src: `./png?${q({tag: `strength/map_image/${state.image}`})}`, width,
                 height, class: 'base'}),
      overlayCanvas(im, weights, weights ? ratio(weights.slice(im.cls).map((w) => w * im.T)) : null));
  stage.id = 'image-stage';
  stage.addEventListener('click', async (e) => {
    const rect = stage.getBoundingClientRect();
    const k = Math.min(n - 1, Math.floor((e.clientX - rect.left) / patch));
    const r = Math.min(gh - 1, Math.floor((e.clientY - rect.top) / patch));
    state.query = r * n + k;
    await fetchQuery(im);
    drawImage(im);
    drawQK(im);
    changed();
  });
  return tip(stage, () => weights ? 'attention overlay: red = above uniform (the rest left clear)' : 'click a patch');
}

// The query patch's attention as a small map per head (× uniform); a click selects that head.
function headMultiples(im, result) {
  const {cfg, n, gh, cls, hasCls, T} = im;
  const {layer: l, head: h} = state;
  const maps = result.attention.map((layer) => layer.map((w) => {
    const m = [];
    for (let r = 0; r < gh; r++) m.push(w.slice(cls + r * n, cls + (r + 1) * n).map((v) => v * T));
    return m;
  }));
  const shared = ratio(maps, undefined, {robust: 0.95});   // as the offset multiples: ends at the 95th percentiles
  // Rows = layers, columns = heads, labelled, as every other matrix of the page.
  const grid = el('div', {class: 'multiples', id: 'head-multiples',
                          style: `grid-template-columns: 22px repeat(${cfg.num_heads}, auto)`});
  grid.append(el('span', {}), ...Array.from({length: cfg.num_heads}, (_, hi) => el('span', {class: 'tick-label'}, `H${hi}`)));
  maps.forEach((layer, li) => layer.forEach((m, hi) => {
    if (hi === 0) grid.append(el('span', {class: 'tick-label'}, `L${li}`));
    const sc = state.scaleMode === 'shared' ? shared : ratio(m);
    const c = heatCanvas(m, sc, Math.max(3, Math.floor(48 / Math.max(n, gh))),
                         {cls: 'offset-small' + (li === l && hi === h ? ' selected' : '')});
    c.addEventListener('click', () => select(li, hi));
    const w = result.attention[li][hi];
    grid.append(tip(c, `${headName(li, hi)}: max ${fmt(Math.max(...w.slice(cls)))} (${fmt(Math.max(...m.flat()))}× uniform)` +
                       (hasCls ? `, to class token ${fmt(w[0])}` : '')));
  }));
  return el('div', {}, grid, state.scaleMode === 'shared' ? legend(shared, 220, 'multiples-image-legend')
      : el('p', {class: 'help', id: 'multiples-image-legend'}, 'Each map on its own log scale centred at 1× uniform.'));
}

// The selected head's queries and keys of the embedded images' tokens, projected together
// (AttentionViz): a query near keys attends to them. Coloured by role or by patch position;
// the selected image's tokens drawn strong, its selected query ringed; a click on a point
// opens that image with that token as the query.
async function drawQK(im) {
  const box = im.qkBox;
  if (!im.hasQK) {
    box.replaceChildren(el('h3', {}, 'Queries and keys'), el('p', {class: 'help empty-view'},
        'No query/key embedding stored. Run: vit-analytics strength ... --qk-images N'));
    return;
  }
  const {layer: l, head: h} = state;
  const key = `${l},${h}`;
  im.qk[key] = im.qk[key] || array('strength/qk_embedding', {index: l, index2: h});
  const e = await im.qk[key];
  if (key !== `${state.layer},${state.head}`) return;
  const {n, gh, cls, T} = im;
  const size = 300;
  const xs = e.flat().map((p) => p[0]), ys = e.flat().map((p) => p[1]);
  const pad = (a) => { const lo = Math.min(...a), hi = Math.max(...a), d = (hi - lo) * 0.05 || 1; return [lo - d, hi + d]; };
  const f = frame(size, size, pad(xs), pad(ys), 'principal axis 1', 'principal axis 2', {xTicks: [], yTicks: [], margin: {l: 24}});
  const s = svg('svg', {width: size, height: size, id: 'qk-scatter', 'data-colour': state.qkColour || 'role'}, f.g);
  const shown = im.qkImages.indexOf(state.image);   // embedded index of the selected image
  const colourOf = (role, t) => {
    if ((state.qkColour || 'role') === 'role') return role ? '#f28e2b' : '#4e79a7';
    if (t < cls) return '#212121';
    const p = t - cls, r = Math.floor(p / n), c = p % n;
    return `hsl(${Math.round(300 * c / Math.max(1, n - 1))}, 70%, ${Math.round(30 + 45 * r / Math.max(1, gh - 1))}%)`;
  };
  // The points as one string of markup (parsed at once), the selected image's drawn last
  // (on top); one listener on the chart for all of them (a head click redraws ~1,000).
  const faint = [], strong = [];
  for (let role = 0; role < 2; role++) {
    e[role].forEach(([x, y], j) => {
      const m = Math.floor(j / T), t = j % T;
      const mine = m === shown;
      (mine ? strong : faint).push(`<circle cx="${f.x(x).toFixed(1)}" cy="${f.y(y).toFixed(1)}" r="${mine ? 3 : 2}" ` +
          `fill="${colourOf(role, t)}" class="qk-point${mine ? ' mine' : ' faded'}" data-role="${role}" ` +
          `data-image="${im.qkImages[m]}" data-token="${t}"/>`);
      if (mine && role === 0 && state.query != null && t === state.query + cls) {
        strong.push(`<circle cx="${f.x(x).toFixed(1)}" cy="${f.y(y).toFixed(1)}" r="7" class="qk-selected" id="qk-selected"/>`);
      }
    });
  }
  const points = svg('g', {class: 'points'});
  points.innerHTML = faint.join('') + strong.join('');
  s.append(points);
  const pointAt = (ev) => (ev.target.classList && ev.target.classList.contains('qk-point') ? ev.target : null);
  s.addEventListener('click', (ev) => {
    const dot = pointAt(ev);
    if (dot) openToken(im, +dot.dataset.image, +dot.dataset.token);
  });
  let hovered = null;
  s.addEventListener('mouseover', (ev) => { hovered = pointAt(ev); }, true);
  tip(s, () => {
    const dot = hovered;
    if (!dot) return '';
    return `${dot.dataset.role === '1' ? 'key' : 'query'} of ${tokenName(im, +dot.dataset.token)}` +
           `, image ${im.meta.image_names[im.indices[+dot.dataset.image]]}; click to make it the query`;
  });
  box.replaceChildren(el('h3', {}, `${headName(l, h)}: queries and keys together`),
      el('label', {}, 'colour by ', dropdown([['role', 'query / key'], ['position', 'patch position']], state.qkColour || 'role',
                                             (v) => { state.qkColour = v; drawQK(im); }, 'qk-colour')),
      el('div', {}, s),
      (state.qkColour || 'role') === 'role'
          ? el('div', {class: 'keys'}, el('span', {style: 'color:#4e79a7'}, '● query '), el('span', {style: 'color:#f28e2b'}, '● key'))
          : el('div', {class: 'keys help'}, 'hue = column (left → right), lightness = row (top dark → bottom light); black = class token, registers'),
      el('p', {class: 'help'}, shown >= 0 ? `Strong: this image's ${T} tokens; faint: the other ${im.qkImages.length - 1} embedded images. Ringed: the selected query.`
          : `This image is not among the ${im.qkImages.length} embedded images; all are drawn faint.`));
}

// AttentionViz's overview: every head's joint query/key embedding as a small multiple (rows =
// layers, columns = heads; blue queries, orange keys, every embedded image), so heads whose
// queries sit among their keys and heads that split them apart are seen at once; a click
// selects the head. Drawn once (canvas: ~70 heads × thousands of points).
function drawQKMatrix(im, all) {
  const [L, H, , N] = all.shape, px = 54, d = all.data;
  const grid = el('div', {class: 'multiples', id: 'qk-matrix',
                          style: `grid-template-columns: 22px repeat(${H}, auto)`});
  grid.append(el('span', {}), ...Array.from({length: H}, (_, h) => el('span', {class: 'tick-label'}, `H${h}`)));
  // Each point a 2 x 2 square at half opacity, written into the pixels directly (one
  // putImageData a head, not ~2,000 fillRects: a run switch drew this matrix for 85 ms).
  const ROLE = [[78, 121, 167], [242, 142, 43]];
  for (let l = 0; l < L; l++) {
    grid.append(el('span', {class: 'tick-label'}, `L${l}`));
    for (let h = 0; h < H; h++) {
      const base = (l * H + h) * 2 * N * 2;   // [role][token][x, y]
      let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
      for (let i = base; i < base + 4 * N; i += 2) {
        const x = d[i], y = d[i + 1];
        if (x < x0) x0 = x; if (x > x1) x1 = x; if (y < y0) y0 = y; if (y > y1) y1 = y;
      }
      const c = el('canvas', {width: px, height: px, class: 'qk-small', 'data-layer': l, 'data-head': h});
      const ctx = c.getContext('2d');
      const image = ctx.createImageData(px, px);
      const p = image.data;
      p.fill(255);
      const sx = (x) => 2 + (x - x0) / ((x1 - x0) || 1) * (px - 4), sy = (y) => px - 2 - (y - y0) / ((y1 - y0) || 1) * (px - 4);
      for (let role = 0; role < 2; role++) {
        const [R, G, B] = ROLE[role];
        for (let t = 0; t < N; t++) {
          const i = base + (role * N + t) * 2;
          const cx = Math.round(sx(d[i]) - 0.75), cy = Math.round(sy(d[i + 1]) - 0.75);
          for (let yy = cy; yy < cy + 2; yy++) {
            for (let xx = cx; xx < cx + 2; xx++) {
              if (xx < 0 || yy < 0 || xx >= px || yy >= px) continue;
              const o = 4 * (yy * px + xx);
              p[o] = (p[o] + R) >> 1; p[o + 1] = (p[o + 1] + G) >> 1; p[o + 2] = (p[o + 2] + B) >> 1;
            }
          }
        }
      }
      ctx.putImageData(image, 0, 0);
      c.addEventListener('click', () => select(l, h));
      grid.append(tip(c, `${headName(l, h)}: queries (blue) and keys (orange) of ${im.qkImages.length} images; click to select`));
    }
  }
  im.qkAll.replaceChildren(el('h3', {}, 'Queries and keys of every head'), grid,
      el('div', {class: 'keys'}, el('span', {style: 'color:#4e79a7'}, '● query '), el('span', {style: 'color:#f28e2b'}, '● key')));
  markQKMatrix(im);
}

function markQKMatrix(im) {
  for (const c of im.qkAll.querySelectorAll('canvas.qk-small')) {
    c.classList.toggle('selected', +c.dataset.layer === state.layer && +c.dataset.head === state.head);
  }
}

// Token t in words: the class token, a register or a patch.
function tokenName(im, t) {
  const {n, cls, hasCls} = im;
  if (t >= cls) return `patch (row ${Math.floor((t - cls) / n)}, col ${(t - cls) % n})`;
  return hasCls && t === 0 ? 'the class token' : `register ${t - (hasCls ? 1 : 0)}`;
}

async function openToken(im, k, t) {
  if (t < im.cls) return;     // the class token and registers are not patches of the image
  if (state.image !== k) { state.image = k; im.result = null; im.key = null; }
  state.query = t - im.cls;
  await fetchQuery(im);
  drawImage(im);
  drawQK(im);
  changed();
}
