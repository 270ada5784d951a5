// Number formats and names shared by every view (tooltips, ticks, titles).

export const METRIC_LABELS = {
  taylor: 'Taylor |dL/dξ|', taylor_normalized: 'Taylor (layer-normalised)',
  ablation_loss: 'ablation: loss increase', ablation_top1: 'ablation: top-1 drop',
  ablation_top5: 'ablation: top-5 drop', ablation_kl: 'ablation: KL (nats)',
};

// Under the embedding objective (no classifier) the metric slots keep their names but measure
// the distortion of the pooled embedding (importance/meta 'definitions' says so in full).
const EMBEDDING_LABELS = {
  taylor: 'Taylor (embedding distortion)', taylor_normalized: 'Taylor (embedding, layer-normalised)',
  ablation_loss: 'ablation: cosine distortion', ablation_kl: 'ablation: relative L2 distortion',
  ablation_top1: 'ablation: top-1 (undefined)', ablation_top5: 'ablation: top-5 (undefined)',
};
export const isEmbeddingMeta = (meta) => !!meta && !!meta.objective && meta.objective.kind === 'embedding';
// A metric's name for a run (its importance meta): what it measures under its objective.
export const metricLabel = (meta, m) => (isEmbeddingMeta(meta) && EMBEDDING_LABELS[m]) || METRIC_LABELS[m] || m;

// One number format everywhere: 3 significant digits, exact zeros as 0, powers of ten
// beyond 1e4 or below 1e-3, and the unit (if any) after a space: 51.7 px, 7.02e-4, 0.
export function fmt(v, unit = '') {
  if (v == null || Number.isNaN(+v)) return '–';
  v = +v;
  let text;
  if (v === 0) text = '0';
  else if (!Number.isFinite(v)) text = v > 0 ? '∞' : '−∞';
  else if (Math.abs(v) >= 1e4 || Math.abs(v) < 1e-3) text = v.toExponential(2).replace(/\.?0+e/, 'e').replace('e+', 'e');
  else text = `${+v.toPrecision(3)}`;
  text = text.replace(/^-/, '−');
  return unit ? `${text} ${unit}` : text;
}
// A change: with its sign (+0.122, −7.02e-4, 0).
export const fmtSigned = (v, unit = '') => (v > 0 ? '+' : '') + fmt(v, unit);
export const headName = (l, h) => `L${l} H${h}`;
export const tickFmt = (v) => fmt(v);
// [h, w]: the patch grid of a model config as stored in meta (image_size S or [height, width]).
export const gridShape = (cfg) => (Array.isArray(cfg.image_size) ? cfg.image_size : [cfg.image_size, cfg.image_size])
    .map((s) => s / cfg.patch_size);
// The tokens before the patches: the class token (if any) and the registers.
export const prefixTokens = (cfg) => (['token', 'token_gap', 'token_dist'].includes(cfg.classifier) ? 1 : 0) +
    (cfg.num_registers || 0);
// T: the tokens of a model config (patches, plus the class token and registers).
export const tokens = (cfg) => gridShape(cfg)[0] * gridShape(cfg)[1] + prefixTokens(cfg);

// The words for a head kind (kinds.js), as `vit-analytics kinds` prints them.
export const kindLabel = (k) => k || '–';

// Bytes of one image's stored maps (strength.map_bytes): float16 attention [L, H, T, T] and
// rollout [L, T, T], with a MAP head also its attention [H, T] and its rollout [T].
export function mapBytes(cfg) {
  const t = tokens(cfg), H = cfg.num_heads;
  return 2 * (cfg.num_layers * (H + 1) * t * t + (cfg.classifier === 'map' ? (H + 1) * t : 0));
}

// ' Store all N with --map-budget-mib B when running strength (X MiB an image), …': the
// exact flag and value that store every one of N images' maps; '' when all are stored.
export function storeAllMaps(strengthMeta, N) {
  if ((strengthMeta.map_image_index || []).length >= N) return '';
  const each = mapBytes(strengthMeta.config) / 2 ** 20;
  const mib = Math.ceil(N * each * 10 + 1) / 10;
  return ` Store all ${N} with --map-budget-mib ${mib} when running strength (${fmt(each)} MiB an image), ` +
         'or a chosen number with --map-images N.';
}
