// The page's whole stylesheet, in one place.

export const CSS = `
body { font: 13px/1.4 Roboto, system-ui, sans-serif; margin: 0; color: #212121; }
#vit-root { padding: 12px 16px; }
header { display: flex; gap: 16px; align-items: center; margin-bottom: 8px; flex-wrap: wrap; }
h2 { font-size: 16px; margin: 18px 0 4px; border-bottom: 1px solid #ddd; }
h3 { font-size: 13px; margin: 4px 0; font-weight: 500; }
.help { color: #616161; margin: 2px 0 6px; }
.row { display: flex; flex-wrap: wrap; gap: 16px; }
.panel { border: 1px solid #e0e0e0; border-radius: 4px; padding: 8px; background: #fff; }
.tick { font-size: 10px; fill: #616161; }
.axis-label { font-size: 11px; fill: #424242; }
.axis { stroke: #9e9e9e; }
.imp-cell { cursor: pointer; stroke: #fff; }
.imp-cell.selected, .point.selected { stroke: #e15759; stroke-width: 3; }
.point { cursor: pointer; stroke: #fff; }
.curve { fill: none; stroke-width: 2; }
.curve.faint { stroke-width: 1; opacity: 0.35; cursor: pointer; }
.curve.selected { stroke-width: 3; }
.curve.random { stroke: #9e9e9e; stroke-dasharray: 4 3; }
.band { fill: #bdbdbd; opacity: 0.4; }
.random-key { color: #9e9e9e; }
.bar { fill: #4e79a7; } .bar.negative { fill: #f28e2b; }
.centre { fill: none; stroke: #fff; stroke-width: 1.5; }
.multiples { display: grid; gap: 3px; }
.offset-small, .pattern-cell { cursor: pointer; image-rendering: pixelated; border: 2px solid transparent; }
.offset-small.selected { border-color: #e15759; }
.pattern-map { display: grid; gap: 4px; }
.cluster { display: flex; gap: 8px; align-items: center; padding: 4px; }
.cluster.selected { background: #fdecea; }
.chips { display: flex; flex-wrap: wrap; gap: 4px; }
.chip { border: 1px solid #bdbdbd; border-radius: 10px; background: #fafafa; cursor: pointer; padding: 1px 8px; font-size: 11px; }
.chip.selected { border-color: #e15759; background: #fdecea; }
.thumbs { display: flex; gap: 6px; flex-wrap: wrap; }
.thumb { width: 56px; height: 56px; image-rendering: pixelated; cursor: pointer; border: 2px solid transparent; }
.thumb.selected { border-color: #e15759; }
.stage { position: relative; cursor: crosshair; }
.stage img.base, .stage canvas.overlay { position: absolute; left: 0; top: 0; image-rendering: pixelated; }
#vit-tooltip { position: fixed; display: none; background: rgba(33,33,33,.92); color: #fff; padding: 4px 8px; border-radius: 3px; pointer-events: none; z-index: 10; font-size: 12px; max-width: 420px; }
.empty { padding: 40px; color: #616161; font-size: 15px; }
`;
