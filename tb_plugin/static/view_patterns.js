// Patterns view: what heads have learned. The autoencoder's decoded pattern map with where
// the selected head's samples fall, the heads behind one pattern, and the head clusters.

import {extent, frame, heatCanvas} from './charts.js';
import {arrays, getJSON, q} from './data.js';
import {el, svg, tip} from './dom.js';
import {fmt, headName} from './format.js';
import {onSelect, select, state} from './state.js';

export async function renderPatterns(body) {
  const [meta, a] = await Promise.all([
      getJSON(`./meta?${q({analysis: 'patterns'})}`),
      arrays('patterns', ['map', 'head_density', 'head_cluster', 'cluster_pattern',
                          'train_loss', 'val_loss'])]);
  const {map, head_density: density} = a;
  // g: pattern map side (cells); c: side of one decoded pattern.
  const pt = {...a, meta, g: map.length, c: map[0][0].length, L: density.length,
              H: density[0].length};
  const mapBox = el('div', {class: 'panel'});
  const clusterBox = el('div', {class: 'panel'});
  body.append(el('p', {class: 'help'}, `${meta.samples} sampled query maps, re-centred on the ` +
                 `query (centre cell = the query patch). Autoencoder reconstruction error ` +
                 `${fmt(meta.reconstruction_error)} (data variance ${fmt(meta.data_variance)}).`),
              el('div', {class: 'row'}, mapBox, clusterBox));
  const drawMap = () => drawPatternMap(mapBox, pt);
  const drawClusters = () => drawClusterList(clusterBox, pt);
  drawMap(); drawClusters();
  onSelect(drawMap, drawClusters);
}

// The decoded latent grid; each cell outlined in red by the share of the selected head's
// samples that fall there. Clicking a cell lists the heads producing that pattern.
function drawPatternMap(mapBox, pt) {
  const {map, head_density: density, g, c} = pt;
  const cellPx = Math.max(3, Math.floor(40 / c));
  const {layer: l, head: h} = state;
  const d = density[l][h];
  const dmax = Math.max(1e-12, ...d.flat());
  const wrap = el('div', {class: 'pattern-map', id: 'pattern-map',
                          style: `grid-template-columns: repeat(${g}, auto)`});
  const drawHeads = () => drawCellHeads(mapBox.querySelector('#cell-heads'), pt);
  for (let r = 0; r < g; r++) {
    for (let k = 0; k < g; k++) {
      const canvas = heatCanvas(map[r][k], 0, 1, cellPx, {cls: 'pattern-cell'});
      canvas.style.outline = d[r][k] > 0 ? `3px solid rgba(225,87,89,${0.25 + 0.75 * d[r][k] / dmax})` : '';
      canvas.dataset.row = r; canvas.dataset.col = k;
      canvas.addEventListener('click', () => { state.cell = [r, k]; drawHeads(); });
      wrap.append(tip(canvas, `cell (${r}, ${k}): ${fmt(100 * d[r][k])}% of ${headName(l, h)}'s samples`));
    }
  }
  mapBox.replaceChildren(el('h3', {}, `Pattern map (decoded latent grid); red: where ${headName(l, h)}'s samples fall`),
                         wrap, el('div', {id: 'cell-heads'}));
  drawHeads();
}

function drawCellHeads(box, {head_density: density, L, H}) {
  if (!state.cell) { box.replaceChildren(el('p', {class: 'help'}, 'Click a pattern to list the heads that produce it.')); return; }
  const [r, k] = state.cell;
  const heads = [];
  for (let l = 0; l < L; l++) for (let h = 0; h < H; h++) if (density[l][h][r][k] > 0) heads.push([density[l][h][r][k], l, h]);
  heads.sort((a, b) => b[0] - a[0]);
  box.replaceChildren(el('p', {}, `Heads producing pattern (${r}, ${k}):`),
      el('div', {class: 'chips'}, heads.length ? heads.map(([v, l, h]) =>
          el('button', {class: 'chip', onclick: () => select(l, h)}, `${headName(l, h)} ${fmt(100 * v)}%`))
          : 'none'));
}

function drawClusterList(clusterBox, pt) {
  const {head_cluster: clusters, cluster_pattern: reps, meta, L, H} = pt;
  const rows = reps.map((rep, j) => {
    const members = [];
    for (let l = 0; l < L; l++) for (let h = 0; h < H; h++) if (clusters[l][h] === j) members.push([l, h]);
    const [lo, hi] = extent(rep);
    return el('div', {class: 'cluster' + (clusters[state.layer][state.head] === j ? ' selected' : '')},
        heatCanvas(rep, lo, hi, Math.max(3, Math.floor(60 / rep.length))),
        el('div', {}, el('b', {}, `cluster ${j}: ${meta.cluster_names[j]}`),
           el('div', {class: 'chips'}, members.map(([l, h]) =>
               el('button', {class: 'chip' + (l === state.layer && h === state.head ? ' selected' : ''),
                             onclick: () => select(l, h)}, headName(l, h))))));
  });
  clusterBox.replaceChildren(el('h3', {}, 'Head clusters (mean re-centred attention of members)'),
                             ...rows, el('h3', {}, 'Autoencoder training (blue train, red validation)'),
                             trainingChart(pt.train_loss, pt.val_loss));
}

function trainingChart(trainLoss, valLoss) {
  const f = frame(260, 130, [1, Math.max(2, trainLoss.length)], extent([trainLoss, valLoss]), 'epoch', 'loss');
  return svg('svg', {width: 260, height: 130}, f.g,
      svg('polyline', {points: trainLoss.map((v, i) => `${f.x(i + 1)},${f.y(v)}`).join(' '), class: 'curve', stroke: '#4e79a7'}),
      svg('polyline', {points: valLoss.map((v, i) => `${f.x(i + 1)},${f.y(v)}`).join(' '), class: 'curve', stroke: '#e15759'}));
}
