// Number formats and names shared by every view (tooltips, ticks, titles).

export const METRIC_LABELS = {
  taylor: 'Taylor |dL/dξ|', taylor_normalized: 'Taylor (layer-normalised)',
  ablation_loss: 'ablation: loss increase', ablation_top1: 'ablation: top-1 drop',
  ablation_top5: 'ablation: top-5 drop', ablation_kl: 'ablation: KL (nats)',
};

export const fmt = (v) => v == null || Number.isNaN(v) ? '–' : Math.abs(v) >= 1000 || (Math.abs(v) < 1e-3 && v !== 0)
    ? v.toExponential(3) : (+v).toFixed(4);
export const headName = (l, h) => `L${l} H${h}`;
export const tickFmt = (v) => Math.abs(v) >= 1e4 || (Math.abs(v) < 1e-3 && v !== 0)
    ? v.toExponential(1) : `${+v.toPrecision(3)}`;
// [h, w]: the patch grid of a model config as stored in meta (image_size S or [height, width]).
export const gridShape = (cfg) => (Array.isArray(cfg.image_size) ? cfg.image_size : [cfg.image_size, cfg.image_size])
    .map((s) => s / cfg.patch_size);
// The tokens before the patches: the class token (if any) and the registers.
export const prefixTokens = (cfg) => (['token', 'token_gap', 'token_dist'].includes(cfg.classifier) ? 1 : 0) +
    (cfg.num_registers || 0);
// T: the tokens of a model config (patches, plus the class token and registers).
export const tokens = (cfg) => gridShape(cfg)[0] * gridShape(cfg)[1] + prefixTokens(cfg);
