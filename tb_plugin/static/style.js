// The page's whole stylesheet, in one place.
//
// SVG marks drawn by the thousand (sample and query/key points, faint profile curves) are
// made translucent with fill-opacity / stroke-opacity, never `opacity`: `opacity` gives each
// element its own compositing effect, and with ~8,000 of them every frame of the page spent
// ~0.6 s deciding its layers (measured on the ViT-L/16 benchmark).

export const CSS = `
html { scroll-padding-top: 96px; }   /* scrollIntoView stops below the sticky header */
body { font: 13px/1.4 Roboto, system-ui, sans-serif; margin: 0; color: #212121; }
#vit-root { padding: 12px 16px; }
#sticky-header { position: sticky; top: 0; z-index: 5; background: #fff; border-bottom: 1px solid #ddd; padding: 6px 0; margin-bottom: 8px; }
.header-row { display: flex; gap: 16px; align-items: center; flex-wrap: nowrap; height: 26px; overflow: hidden; white-space: nowrap; }
.header-row > * { flex: none; }
.numbers { color: #37474f; font-variant-numeric: tabular-nums; flex: 0 1 auto !important; min-width: 0; overflow: hidden; text-overflow: ellipsis; }
.header-row .help { overflow: hidden; text-overflow: ellipsis; flex: 0 1 auto; min-width: 0; }
#run-note { color: #2e7d32; }
#content > section { min-width: 0; }
/* One layout: each view a full-width band whose panels sit side by side (flex rows that
   wrap), so at >= 1400 px a view's panels are side by side and below that they stack. */
@media (min-width: 2400px) {   /* room for two views' panel rows side by side */
  #content { display: grid; grid-template-columns: minmax(0, 1fr) minmax(0, 1fr); gap: 0 24px; align-items: start; }
  #content > #about-run, #content > section.wide { grid-column: 1 / -1; }
}
details#about-run { margin: 4px 0; }
details#about-run summary { cursor: pointer; color: #1565c0; }
table.kv th { text-align: left; font-weight: 500; padding-right: 12px; }
dl#definitions dt, .variant-definitions dt { font-weight: 500; }
dl#definitions dd, .variant-definitions dd { margin: 0 0 4px 16px; color: #424242; }
details.variant-definitions { font-size: 12px; max-width: 420px; margin: 4px 0; }
details.variant-definitions summary, details.fold summary { cursor: pointer; color: #1565c0; }
details.fold { max-width: 260px; }
#view-importance .panel { max-width: 440px; }
#view-importance .panel select { max-width: 150px; }
#view-importance .panel select#scatter-x, #view-importance .panel select#scatter-y { max-width: 125px; }
#view-importance .keys, #view-importance .note { max-width: 340px; } details.fold[open] summary { display: none; }
.whisker line { stroke: #212121; stroke-width: 1.2; }
.bar.whole { fill: #37474f; }
table.data.compact td { padding: 1px 6px; font-size: 11px; }
.controls { margin: 4px 0; display: flex; gap: 12px; align-items: center; flex-wrap: wrap; }
.row.tight { gap: 4px; }
.reference { stroke: #616161; stroke-dasharray: 5 3; stroke-width: 1.2; fill: none; }
.reference.self { stroke: #b0bec5; }
.reference-label { font-size: 10px; fill: #424242; }
.reference-key { color: #616161; } .reference-key.self { color: #90a4ae; }
.zero-line { stroke: #424242; stroke-width: 1; }
.gridline { stroke: #e0e0e0; }
.tick-label { font-size: 10px; color: #616161; align-self: center; text-align: center; }
.sample-point { fill-opacity: 0.55; }
.sample-selected { fill: none; stroke: #111; stroke-width: 1.2; }
.table-scroll { max-height: 320px; overflow: auto; }
.table-scroll.tall { max-height: 560px; }
table.data { border-collapse: collapse; font-size: 12px; font-variant-numeric: tabular-nums; }
table.data th, table.data td { padding: 2px 8px; border-bottom: 1px solid #eee; text-align: right; white-space: nowrap; }
table.data th { position: sticky; top: 0; background: #fafafa; }
table.data th.sortable { cursor: pointer; } table.data th.sorted { color: #c62828; }
table.data tbody tr { cursor: pointer; }
table.data tr.selected td { background: #fdecea; }
table.data tr.reference-row td { color: #616161; font-style: italic; }
table.data tr.stored td { font-weight: 600; } table.data tr.wrong td:nth-child(5) { color: #c62828; }
.pager { margin: 4px 0; display: flex; gap: 6px; align-items: center; flex-wrap: wrap; }
.filter { color: #c62828; }
table.rules { font-size: 11px; border-collapse: collapse; } table.rules td { padding: 0 6px; color: #757575; }
table.rules tr.fired td { color: #212121; font-weight: 600; }
.pattern-cell.empty-cell { background: rgba(255,255,255,0.82); }
.pattern-cell.selected { box-shadow: 0 0 0 2px #212121; }
.cell-panel { width: 360px; height: 460px; overflow: auto; box-sizing: border-box; }   /* hovering never moves the page */
.sample-gallery { display: grid; grid-template-columns: repeat(3, auto); gap: 6px; }
.sample .caption, .sample-slot .caption { font-size: 10px; color: #616161; height: 14px; line-height: 14px; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.sample-stage { position: relative; }
.sample-stage img.base, .sample-stage canvas.overlay { position: absolute; left: 0; top: 0; image-rendering: pixelated; }
.sample-stage canvas.translucent { opacity: 0.7; }
.bar.hist-bar { cursor: pointer; } .bar.hist-bar.selected { fill: #e15759; } .bar.hist-bar.dimmed { fill: #b8cbe0; }
.hist-chosen { fill: #1a3a5c; pointer-events: none; }
.empty-view { font-style: italic; }
.qk-point { cursor: pointer; } .qk-point.faded { fill-opacity: 0.25; }
.qk-selected { fill: none; stroke: #111; stroke-width: 2; }
h2 { font-size: 16px; margin: 18px 0 4px; border-bottom: 1px solid #ddd; }
h3 { font-size: 13px; margin: 4px 0; font-weight: 500; }
.help { color: #616161; margin: 2px 0 6px; }
p.help.definition, .panel > p.help.definition { max-width: 260px; }
.row { display: flex; flex-wrap: wrap; gap: 16px; }
.column { display: flex; flex-direction: column; gap: 16px; }
.panel > p.help, .panel > .keys { max-width: 380px; }
.panel { border: 1px solid #e0e0e0; border-radius: 4px; padding: 8px; background: #fff; }
.tick { font-size: 10px; fill: #616161; }
.axis-label { font-size: 11px; fill: #424242; }
.axis { stroke: #9e9e9e; }
.imp-cell { cursor: pointer; stroke: #fff; }
.imp-cell.selected, .point.selected { stroke: #e15759; stroke-width: 3; }
.point { cursor: pointer; stroke: #fff; }
.curve { fill: none; stroke-width: 2; }
.curve.faint { stroke-width: 1; stroke-opacity: 0.35; cursor: pointer; }
.curve.selected { stroke-width: 3; }
.curve.random { stroke: #9e9e9e; stroke-dasharray: 4 3; }
.band { fill: #bdbdbd; fill-opacity: 0.4; }
.random-key { color: #9e9e9e; }
.bar { fill: #4e79a7; } .bar.negative { fill: #f28e2b; }
.centre { fill: none; stroke: #fff; stroke-width: 1.5; }
.multiples { display: grid; gap: 3px; }
.offset-small, .pattern-cell { cursor: pointer; image-rendering: pixelated; border: 2px solid transparent; }
.pattern-cell { box-sizing: border-box; position: relative; }
.offset-small.selected { border-color: #e15759; }
.qk-small { cursor: pointer; border: 2px solid transparent; } .qk-small.selected { border-color: #e15759; }
.pattern-map { display: grid; gap: 4px; }
.pattern-stage { position: relative; }
.pattern-stage .map-layer { position: absolute; left: 0; top: 0; pointer-events: none; }
.pattern-stage .pattern-map { position: absolute; left: 0; top: 0; }
.cluster-label { font: bold 15px sans-serif; paint-order: stroke; stroke: #fff; stroke-width: 3px; }
.sample-filtered { fill: none; stroke: #1565c0; stroke-width: 1.2; }
.cluster { display: grid; grid-template-columns: 110px 340px auto; gap: 8px; align-items: start; padding: 4px; }
.rules-fold summary { cursor: pointer; color: #1565c0; font-size: 11px; }
.cluster.selected { background: #fdecea; }
.chips { display: flex; flex-wrap: wrap; gap: 4px; }
.chip { border: 1px solid #bdbdbd; border-radius: 10px; background: #fafafa; cursor: pointer; padding: 1px 8px; font-size: 11px; }
.chip.selected { border-color: #e15759; background: #fdecea; }
.layout-point.faded { fill-opacity: 0.15; } .brush { fill: rgba(21,101,192,0.1); stroke: #1565c0; }
#overview-layout { cursor: crosshair; }
.thumb-grid { display: flex; flex-wrap: wrap; gap: 6px; padding: 3px; max-height: 420px; overflow: auto; }
.overview-thumb { cursor: pointer; flex: none; } .overview-thumb.selected { box-shadow: 0 0 0 6px #212121; }
.thumbs { display: flex; gap: 6px; flex-wrap: wrap; }
.thumb { width: 56px; height: 56px; image-rendering: pixelated; cursor: pointer; border: 2px solid transparent; }
.thumb.selected { border-color: #e15759; } .thumb.faded { opacity: 0.25; }
.stage { position: relative; cursor: crosshair; }
.stage img.base, .stage canvas.overlay { position: absolute; left: 0; top: 0; image-rendering: pixelated; }
#vit-tooltip { position: fixed; display: none; background: rgba(33,33,33,.92); color: #fff; padding: 4px 8px; border-radius: 3px; pointer-events: none; z-index: 10; font-size: 12px; max-width: 420px; }
.empty { padding: 40px; color: #616161; font-size: 15px; }
`;
