// Small DOM / SVG helpers and the one tooltip of the page.

const SVGNS = 'http://www.w3.org/2000/svg';
let tooltip;

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k === 'style') node.style.cssText = v;
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children.flat(Infinity)) if (c != null && c !== false) node.append(c);
  return node;
}

export function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children.flat(Infinity)) if (c != null && c !== false) node.append(c);
  return node;
}

// Made once by render(); tip() shows it over any node.
export function createTooltip() {
  tooltip = el('div', {id: 'vit-tooltip'});
  return tooltip;
}

// Hides the tooltip: called on every redraw, since a node removed under the pointer never
// gets its mouseleave (the tooltip would stay, stale).
export function hideTooltip() {
  if (tooltip) tooltip.style.display = 'none';
}

// text may be a function, so the tooltip shows the value at hover time.
export function tip(node, text) {
  node.addEventListener('mousemove', (e) => {
    if (!node.isConnected) { hideTooltip(); return; }
    const shown = typeof text === 'function' ? text() : text;
    if (!shown) { hideTooltip(); return; }   // (a chart's own tip: nothing under the pointer)
    tooltip.textContent = shown;
    tooltip.style.display = 'block';
    tooltip.style.left = `${e.clientX + 12}px`;
    tooltip.style.top = `${e.clientY + 12}px`;
  });
  node.addEventListener('mouseleave', () => { tooltip.style.display = 'none'; });
  return node;
}

// A checkbox with its label; onchange(checked).
export function checkbox(label, checked, onchange, id) {
  const box = el('input', {type: 'checkbox', id, onchange: (e) => onchange(e.target.checked)});
  box.checked = checked;
  return el('label', {class: 'toggle'}, box, ` ${label}`);
}

export function dropdown(options, value, onchange, id) {
  const s = el('select', {id, onchange: (e) => onchange(e.target.value)},
               options.map(([v, label]) => el('option', {value: v}, label)));
  s.value = value;
  return s;
}

// The next frame has been painted (or, in a hidden frame that gets no animation frames,
// 100 ms have passed).
export const nextPaint = () => new Promise((resolve) => {
  const timer = setTimeout(resolve, 100);
  requestAnimationFrame(() => setTimeout(() => { clearTimeout(timer); resolve(); }, 0));
});

export function section(id, title, help) {
  return el('section', {id}, el('h2', {}, title), help ? el('p', {class: 'help'}, help) : null,
            el('div', {class: 'body'}));
}

// A long definition folded: its first sentence (or 110 characters) shown, the rest on a
// click, so that one paragraph does not stretch its panel. Short ones stay a paragraph.
export function fold(text, id) {
  const cut = text.search(/[.:;](\s|$)/);
  const head = cut > 0 && cut < 110 ? text.slice(0, cut + 1) : text.slice(0, 110);
  if (text.length <= 120 || head.length >= text.length - 1) {
    return el('p', {class: 'help definition', id, 'data-text': text}, text);
  }
  const node = el('details', {class: 'help definition fold', id},
                  el('summary', {}, `${head.trim()} …`), el('span', {class: 'full'}, text));
  node.dataset.text = text;
  return node;
}
