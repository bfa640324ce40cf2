// Building the page: every string from the API becomes a text node (textContent); nothing is
// ever parsed as markup (no innerHTML anywhere in the console).
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "text") node.textContent = String(value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  append(node, children);
  return node;
}

// Like Element.append, but arrays are flattened and null/undefined/false skipped (a plain
// append would print "null"); strings still become text nodes only.
export function append(node, ...children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function clear(node) {
  node.replaceChildren();
  return node;
}

export function table(headers, rows, attrs = {}) {
  return el("table", attrs,
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", { text: h })))),
    el("tbody", {}, rows));
}

export function cell(value, attrs = {}) {
  return el("td", { ...attrs, text: value === null || value === undefined ? "—" : value });
}

export function message(node, text, kind = "info") {
  clear(node);
  node.className = `msg ${kind}`;
  node.textContent = text;
}

export function problemText(error) {
  const p = error.problem || {};
  const parts = [`${error.status || ""} ${p.title || "error"}`.trim()];
  if (p.detail) parts.push(p.detail);
  if (p.incident) parts.push(`incident ${p.incident}`);
  if (Array.isArray(p.known)) parts.push(`known: ${p.known.join(", ")}`);
  return parts.join(" — ");
}

// An SVG sparkline of numbers, built node by node.
export function sparkline(values, { width = 160, height = 28, label = "" } = {}) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.setAttribute("class", "spark");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", label);
  const max = Math.max(1e-9, ...values);
  const step = values.length > 1 ? width / (values.length - 1) : 0;
  const points = values.map((v, i) => `${(i * step).toFixed(1)},${(height - 2 - (v / max) * (height - 4)).toFixed(1)}`);
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", points.join(" "));
  svg.append(line);
  return svg;
}

// A poller that never overlaps itself: a slow admin API must not pile up requests.
export function single(fn) {
  let running = false;
  return async (...args) => {
    if (running) return;
    running = true;
    try {
      await fn(...args);
    } finally {
      running = false;
    }
  };
}
