// DOM helpers: elements are built with textContent, never from HTML text, so nothing the
// API returns can become markup.
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

export function table(headings, rows) {
  return h("div", { class: "table-wrap" },
    h("table", {}, h("thead", {}, h("tr", {}, headings.map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, rows)));
}

export function bytes(n) {
  if (n === null || n === undefined) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let value = Number(n);
  while (value >= 1024 && i < units.length - 1) { value /= 1024; i += 1; }
  return `${value.toFixed(i && value < 10 ? 1 : 0)} ${units[i]}`;
}

export function badge(text, good) {
  const cls = good === true ? "badge good" : good === false ? "badge bad" : "badge";
  return h("span", { class: cls }, text);
}

export function empty(text) { return h("p", { class: "empty" }, text); }

export function field(label, input) { return h("label", {}, label, input); }
