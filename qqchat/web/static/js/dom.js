// Small DOM helpers. Text always goes in as text nodes, never as HTML, so whatever
// people type is shown as typed.

/**
 * Make an element. `props`: `class`, `text` (textContent), `on` ({event: handler}),
 * `attrs` ({name: value}, null skips), anything else is set as a property.
 * Children: nodes or strings (as text), null/false skipped, arrays flattened.
 * @returns {HTMLElement}
 */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v === undefined || v === null) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k === "on") for (const [ev, fn] of Object.entries(v)) el.addEventListener(ev, fn);
    else if (k === "attrs") {
      for (const [a, av] of Object.entries(v)) if (av !== null && av !== undefined) el.setAttribute(a, av);
    } else el[k] = v;
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/**
 * Make `container`'s children exactly `nodes`, in order, moving only what is out of
 * place: a node that stays where it was is not touched, so it keeps focus.
 * @param {Element} container
 * @param {Node[]} nodes
 */
export function reconcile(container, nodes) {
  const keep = new Set(nodes);
  for (const child of [...container.childNodes]) if (!keep.has(child)) child.remove();
  let at = container.firstChild;
  for (const node of nodes) {
    if (node === at) {
      at = at.nextSibling;
    } else {
      container.insertBefore(node, at);
    }
  }
}

/** Set text only when it changed (keeps screen readers from re-announcing it). */
export function setText(el, text) {
  if (el.textContent !== text) el.textContent = text;
}

/** Toggle the `hidden` attribute. */
export function show(el, visible) {
  if (el.hidden === visible) el.hidden = !visible;
}

/** A per-key cache of elements, so re-renders reuse (and keep focus in) what exists. */
export class Keyed {
  constructor(create) {
    this.create = create;
    /** @type {Map<string, any>} */
    this.map = new Map();
    this.used = new Set();
  }

  get(key, ...args) {
    this.used.add(key);
    let v = this.map.get(key);
    if (!v) {
      v = this.create(key, ...args);
      this.map.set(key, v);
    }
    return v;
  }

  /** Drop what the last render did not ask for. */
  sweep() {
    for (const k of this.map.keys()) if (!this.used.has(k)) this.map.delete(k);
    this.used.clear();
  }

  clear() {
    this.map.clear();
    this.used.clear();
  }
}
