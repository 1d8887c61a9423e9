// A lifecycle's state graph drawn as inline SVG from its states and transitions (what
// GET /v1/nodes/{node}/lifecycles/{lifecycle} answers), not from its `dot` text. States are
// laid out in columns by their distance from the initial state; a transition to an
// earlier or the same column is drawn as an arc below. The current state carries
// class "current" and aria-current="true", the other states of the applied stack
// class "applied". Only the layout is computed here; nothing is fetched.
const NS = "http://www.w3.org/2000/svg";
const BOX = { width: 150, height: 44, gapX: 70, gapY: 26, margin: 16 };

function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS(NS, tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value !== null && value !== undefined && value !== false) el.setAttribute(key, String(value));
  }
  for (const child of children.flat()) if (child) el.append(child);
  return el;
}

function text(content, attrs) {
  const el = svg("text", attrs);
  el.textContent = content;
  return el;
}

// State name -> { column, row }: breadth first from the initial state along the
// transitions; a state it cannot reach gets a column after the others.
export function layout(states, transitions, initial) {
  const next = new Map(states.map((s) => [s, []]));
  for (const [from, to] of transitions) if (next.has(from) && next.has(to)) next.get(from).push(to);
  const column = new Map();
  const queue = next.has(initial) ? [initial] : [];
  if (queue.length) column.set(initial, 0);
  while (queue.length) {
    const state = queue.shift();
    for (const to of next.get(state)) {
      if (!column.has(to)) { column.set(to, column.get(state) + 1); queue.push(to); }
    }
  }
  const last = Math.max(-1, ...column.values());
  for (const state of states) if (!column.has(state)) column.set(state, last + 1);
  const rows = new Map();
  const placed = new Map();
  for (const state of states) {
    const c = column.get(state);
    const row = rows.get(c) || 0;
    rows.set(c, row + 1);
    placed.set(state, { column: c, row });
  }
  return placed;
}

export function stateGraph({ name, states, transitions, initial, applied, current }) {
  const names = states.map((s) => s.name);
  const labels = new Map(states.map((s) => [s.name, s.label || s.name]));
  const placed = layout(names, transitions, initial);
  const columns = Math.max(1, ...[...placed.values()].map((p) => p.column + 1));
  const rows = Math.max(1, ...[...placed.values()].map((p) => p.row + 1));
  const hasBackArcs = transitions.some(([a, b]) => placed.get(b)?.column <= placed.get(a)?.column);
  const width = 2 * BOX.margin + columns * BOX.width + (columns - 1) * BOX.gapX;
  const height = 2 * BOX.margin + rows * BOX.height + (rows - 1) * BOX.gapY + (hasBackArcs ? 40 : 0);
  const at = (state) => {
    const { column, row } = placed.get(state);
    return { x: BOX.margin + column * (BOX.width + BOX.gapX), y: BOX.margin + row * (BOX.height + BOX.gapY) };
  };
  const arrows = transitions.filter(([a, b]) => placed.has(a) && placed.has(b)).map(([a, b]) => {
    const from = at(a); const to = at(b);
    const forward = placed.get(b).column > placed.get(a).column;
    const d = forward
      ? `M ${from.x + BOX.width} ${from.y + BOX.height / 2} L ${to.x - 4} ${to.y + BOX.height / 2}`
      : `M ${from.x + BOX.width / 2} ${from.y + BOX.height} C ${from.x + BOX.width / 2} ${height - 4}, `
        + `${to.x + BOX.width / 2} ${height - 4}, ${to.x + BOX.width / 2} ${to.y + BOX.height + 4}`;
    return svg("path", { d, class: "transition", "data-from": a, "data-to": b, "marker-end": "url(#arrow)" });
  });
  const boxes = names.map((state) => {
    const { x, y } = at(state);
    const isCurrent = state === current;
    const cls = ["state", isCurrent ? "current" : "", applied.includes(state) ? "applied" : "",
      state === initial ? "initial" : ""].filter(Boolean).join(" ");
    const title = svg("title");
    title.textContent = `${state}${isCurrent ? " (current)" : applied.includes(state) ? " (applied)" : ""}`;
    return svg("g", { class: cls, "data-state": state, "aria-current": isCurrent ? "true" : null },
      title,
      svg("rect", { x, y, width: BOX.width, height: BOX.height, rx: 8 }),
      text(labels.get(state), { x: x + BOX.width / 2, y: y + BOX.height / 2 + 5, "text-anchor": "middle" }));
  });
  return svg("svg", {
    class: "state-graph", role: "img", viewBox: `0 0 ${width} ${height}`, width, height,
    "aria-label": `${name}: states and transitions, current state ${current ?? "none"}`,
  },
  svg("defs", {}, svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 8, markerHeight: 8, orient: "auto-start-reverse" },
    svg("path", { d: "M 0 0 L 10 5 L 0 10 z" }))),
  ...arrows, ...boxes);
}
