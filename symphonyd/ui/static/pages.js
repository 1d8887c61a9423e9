// The dashboard's pages. Each page's mount() draws its forms once and returns refresh(),
// which re-reads what the page shows from the API and redraws only that part, so a live
// update never wipes what someone is typing. Change buttons are disabled for a reader
// token (the API would refuse the call anyway).
import { api, upload, session } from "./api.js";
import { h, table, bytes, badge, empty, field } from "./dom.js";
import { stateGraph } from "./graph.js";

function change(label, onclick, cls = "") {
  const reader = session.reader;
  return h("button", {
    type: "button", class: cls, disabled: reader,
    title: reader ? "a reader token cannot change anything" : null,
    onclick: async (event) => {
      const button = event.currentTarget;
      button.disabled = true;
      try { await onclick(); } catch (exc) { report(exc); } finally { button.disabled = session.reader; }
    },
  }, label);
}

let errorBox = null;
function report(exc) { if (errorBox) errorBox.textContent = exc.message || String(exc); }

function frame(container, title, forms = []) {
  errorBox = h("p", { class: "error", role: "alert" });
  const view = h("div", { class: "view" });
  container.append(h("h1", {}, title), errorBox, ...forms, view);
  return view;
}

function form(legend, fields, submitLabel, onsubmit) {
  const reader = session.reader;
  const el = h("form", { class: "inline", "aria-label": legend }, ...fields,
    h("button", { type: "submit", disabled: reader }, submitLabel));
  el.addEventListener("submit", async (event) => {
    event.preventDefault();
    errorBox.textContent = "";
    try { await onsubmit(new FormData(el), el); } catch (exc) { report(exc); }
  });
  return el;
}

// A form for one row's action in `panel` (one at a time), gone once the call is made.
const asker = (panel) => (title, fields, label, send) => {
  panel.replaceChildren(form(title, [h("strong", {}, title), ...fields], label, async (data) => { await send(data); panel.replaceChildren(); }));
};

const input = (name, attrs = {}) => h("input", { name, id: `f-${name}`, ...attrs });
const select = (name, options, attrs = {}) =>
  h("select", { name, ...attrs }, options.map(([value, label]) => h("option", { value }, label)));
const path = (s) => encodeURIComponent(s);
const status = (s) => badge(s, ["ready", "running", "done", "online", "active"].includes(s) ? true
  : ["failed", "unreachable", "unknown"].includes(s) ? false : undefined);

// -- cluster -------------------------------------------------------------------------------

const overview = {
  tables: ["nodes", "cluster"], poll: 2000,
  mount(container) {
    const view = frame(container, "Cluster");
    return {
      async refresh() {
        const c = await api("GET", "/v1/cluster");
        const cordoned = c.members.filter((m) => m.cordoned).map((m) => m.name);
        view.replaceChildren(
          h("dl", { class: "facts" },
            h("dt", {}, "cluster"), h("dd", { class: "mono" }, c.cluster_id),
            h("dt", {}, "leader"), h("dd", { id: "leader" }, c.leader || "none"),
            h("dt", {}, "quorum"), h("dd", { id: "quorum" }, c.has_quorum ? "yes" : "NO: writes are refused"),
            h("dt", {}, "Raft term"), h("dd", {}, c.term),
            h("dt", {}, "commit index"), h("dd", {}, c.commit_index),
            h("dt", {}, "revision"), h("dd", {}, c.revision),
            h("dt", {}, "answered by"), h("dd", {}, `${c.node} (version ${c.version})`),
            h("dt", {}, "cordoned"), h("dd", {}, cordoned.join(", ") || "none")),
          h("h2", {}, "Members"),
          table(["name", "role", "health", "status", "version", "API", "cordoned"],
            c.members.map((m) => h("tr", { "data-node": m.name },
              h("td", {}, m.name), h("td", {}, m.role), h("td", { class: "health" }, status(m.health)),
              h("td", {}, m.status), h("td", {}, m.version || ""), h("td", { class: "mono" }, m.api || ""),
              h("td", {}, m.cordoned ? "yes" : "")))));
      },
    };
  },
};

// What a service of a node can hold, as its node reports it.
const capacity = (x) => x.type === "block" ? `${bytes(x.capacity?.free)} free of ${bytes(x.capacity?.total)}`
  : x.type === "compute" ? `${x.capacity?.cpus ?? "?"} CPUs, ${bytes(x.capacity?.memory)}` : "";

const nodesPage = {
  tables: ["nodes", "services", "instances", "volumes"], poll: 3000,
  mount(container) {
    const view = frame(container, "Nodes");
    return {
      async refresh() {
        const [c, s, i, v] = await Promise.all([api("GET", "/v1/cluster"), api("GET", "/v1/services"),
          api("GET", "/v1/instances"), api("GET", "/v1/volumes")]);
        view.replaceChildren(...c.members.map((m) => {
          const mine = (list) => list.filter((x) => x.node === m.name);
          return h("section", { "data-node": m.name },
            h("h2", {}, `${m.name} `, status(m.health), m.cordoned ? badge("cordoned") : ""),
            h("p", { class: "services" }, "services: ", mine(s.services).map((x) => `${x.type} (${x.driver}${capacity(x) ? `: ${capacity(x)}` : ""})`).join(", ") || "none",
              " · instances: ", mine(i.instances).map((x) => x.name).join(", ") || "none",
              " · volumes: ", mine(v.volumes).map((x) => x.name).join(", ") || "none"),
            m.cordoned
              ? change("Restore", () => api("POST", `/v1/nodes/${path(m.name)}/restore`))
              : change("Evacuate", async () => {
                const r = await api("POST", `/v1/nodes/${path(m.name)}/evacuate`, {});
                if (r.cannot && r.cannot.length) report(new Error(r.cannot.map((x) => `${x.name}: ${x.reason}`).join("; ")));
              }, "danger"));
        }));
      },
    };
  },
};

const servicesPage = {
  tables: ["services"], poll: 5000,
  mount(container) {
    const view = frame(container, "Services");
    return {
      async refresh() {
        const { services } = await api("GET", "/v1/services");
        if (!services.length) { view.replaceChildren(empty("no services yet: enable one on a node with `symphonyd service new`")); return; }
        view.replaceChildren(table(["node", "type", "driver", "pool", "health", "capacity"],
          services.map((x) => h("tr", {},
            h("td", {}, x.node), h("td", {}, x.type), h("td", {}, x.driver), h("td", {}, x.pool),
            h("td", {}, status(x.health?.ok ? "ok" : "unhealthy"), " ", x.health?.message || ""),
            h("td", {}, capacity(x))))));
      },
    };
  },
};

// -- images, volumes, instances ------------------------------------------------------------

const imagesPage = {
  tables: ["images"],
  mount(container) {
    const bar = h("progress", { max: 100, value: 0, hidden: true, id: "upload-progress" });
    const add = form("Upload an image", [
      field("file", input("file", { type: "file", required: true })),
      field("name", input("name", { required: true })),
      field("description", input("description")),
      bar,
    ], "Upload", async (data, el) => {
      const file = data.get("file");
      const query = new URLSearchParams({ name: data.get("name"), description: data.get("description") || "" });
      bar.hidden = false; bar.value = 0;
      await upload(`/v1/images?${query}`, file, (done, total) => { bar.value = Math.round((100 * done) / total); });
      bar.value = 100; el.reset();
    });
    const checked = h("p", { id: "image-result", role: "status" });
    const view = frame(container, "Images", [add, checked]);
    const here = async (x, verb) => {
      if (verb === "fetch") {
        const held = await api("POST", `/v1/images/${x.id}/fetch`);
        checked.textContent = `${x.name}: a verified copy is held on ${(held.holders || []).join(", ")}`;
        return;
      }
      const { node, checked: found } = await api("POST", `/v1/images/${x.id}/verify`);
      checked.textContent = !found.length ? `${x.name}: ${node} holds no copy to check`
        : found.every((c) => c.intact) ? `${x.name}: the copy on ${node} is intact`
          : `${x.name}: the copy on ${node} was corrupted and is removed; it is fetched again from another holder`;
    };
    return {
      async refresh() {
        const { images } = await api("GET", "/v1/images");
        if (!images.length) { view.replaceChildren(empty("no images yet: upload one")); return; }
        view.replaceChildren(table(["name", "status", "format", "size", "fingerprint", "holders", ""],
          images.map((x) => h("tr", { "data-image": x.name },
            h("td", {}, x.name, h("br"), h("small", {}, x.description)), h("td", { class: "status" }, status(x.status), " ", x.status_message),
            h("td", {}, x.format), h("td", {}, bytes(x.size)), h("td", { class: "mono" }, (x.fingerprint || "").slice(0, 16)),
            h("td", {}, (x.holders || []).join(", ")),
            h("td", {},
              change("Fetch here", () => here(x, "fetch")), change("Verify", () => here(x, "verify")),
              change("Remove", () => api("DELETE", `/v1/images/${x.id}`), "danger"))))));
      },
    };
  },
};

const volumesPage = {
  tables: ["volumes", "instances"],
  mount(container) {
    const add = form("Create a volume", [
      field("name", input("name", { required: true })),
      field("size", input("size", { required: true, placeholder: "1G" })),
      field("image (optional)", input("image")),
    ], "Create", async (data, el) => {
      const body = { name: data.get("name"), size: data.get("size") };
      if (data.get("image")) body.image = data.get("image");
      await api("POST", "/v1/volumes", body); el.reset();
    });
    const panel = h("div");
    const view = frame(container, "Volumes", [add, panel]);
    const ask = asker(panel);
    return {
      async refresh() {
        const [{ volumes }, { instances }] = await Promise.all([api("GET", "/v1/volumes"), api("GET", "/v1/instances")]);
        if (!volumes.length) { view.replaceChildren(empty("no volumes yet: create one")); return; }
        const users = (volume) => instances.filter((i) => (i.volumes || []).includes(volume.id)).map((i) => i.name);
        const rootOf = (volume) => instances.filter((i) => i.root_volume_id === volume.id).map((i) => `${i.name} (root disk)`);
        view.replaceChildren(table(["name", "status", "node", "size", "snapshots", "attached to", ""],
          volumes.map((x) => h("tr", { "data-volume": x.name },
            h("td", {}, x.name), h("td", { class: "status" }, status(x.status), " ", x.status_message),
            h("td", {}, x.node || ""), h("td", { class: "size" }, bytes(x.size)), h("td", { class: "snapshots" }, (x.snapshots || []).join(", ")),
            h("td", { class: "attached" }, [...rootOf(x), ...users(x)].join(", ")),
            h("td", {},
              change("Resize", () => ask(`Resize ${x.name}`, [field("new size", input("size", { required: true }))], "Resize",
                (d) => api("POST", `/v1/volumes/${x.id}/resize`, { size: d.get("size") }))),
              change("Snapshot", () => ask(`Snapshot ${x.name}`, [field("snapshot name", input("snap", { required: true }))], "Snapshot",
                (d) => api("POST", `/v1/volumes/${x.id}/snapshot`, { name: d.get("snap") }))),
              change("Attach", () => ask(`Attach ${x.name}`, [field("instance", input("instance", { required: true }))], "Attach",
                (d) => api("POST", `/v1/volumes/${x.id}/attach`, { instance: d.get("instance") }))),
              users(x).length ? change("Detach", () => api("POST", `/v1/volumes/${x.id}/detach`, { instance: users(x)[0] })) : "",
              change("Remove", () => api("DELETE", `/v1/volumes/${x.id}`), "danger"))))));
      },
    };
  },
};

const instancesPage = {
  tables: ["instances", "images"],
  mount(container, [name]) {
    if (name) return instanceDetail(container, name);
    const images = select("image", [], { required: true });
    const add = form("Create an instance", [
      field("name", input("name", { required: true })),
      field("image", images),
      field("cpus", input("cpus", { type: "number", min: 1, value: 1 })),
      field("memory", input("memory", { value: "256M" })),
      field("disk", input("disk", { value: "1G" })),
      field("user-data", h("textarea", { name: "user_data", rows: 2 })),
    ], "Create", async (data, el) => {
      const body = { name: data.get("name"), image: data.get("image"), cpus: Number(data.get("cpus")),
        memory: data.get("memory"), disk: data.get("disk") };
      if (data.get("user_data")) body.user_data = data.get("user_data");
      await api("POST", "/v1/instances", body); el.reset();
    });
    const panel = h("div");
    const view = frame(container, "Instances", [add, panel]);
    const ask = asker(panel);
    return {
      async refresh() {
        const [{ instances }, { images: known }] = await Promise.all([api("GET", "/v1/instances"), api("GET", "/v1/images")]);
        const chosen = images.value;
        images.replaceChildren(...known.filter((x) => x.status === "ready").map((x) => h("option", { value: x.name }, x.name)));
        if (chosen) images.value = chosen;
        if (!instances.length) { view.replaceChildren(empty(known.length ? "no instances yet: create one" : "no instances yet: upload an image first")); return; }
        view.replaceChildren(table(["name", "status", "node", "cpus", "memory", ""],
          instances.map((x) => h("tr", { "data-instance": x.name },
            h("td", {}, h("a", { href: `#/instances/${path(x.name)}` }, x.name)),
            h("td", { class: "status" }, status(x.status), " ", x.status_message),
            h("td", {}, x.node || ""), h("td", {}, x.cpus), h("td", {}, bytes(x.memory)),
            h("td", {},
              change("Start", () => api("POST", `/v1/instances/${x.id}/start`, {})),
              change("Stop", () => api("POST", `/v1/instances/${x.id}/stop`, {})),
              change("Restart", () => api("POST", `/v1/instances/${x.id}/restart`, {})),
              change("Resize", () => ask(`Resize ${x.name}`, [
                field("new cpus", input("cpus", { type: "number", min: 1, value: x.cpus })),
                field("new memory", input("memory", { value: `${Math.round(x.memory / 1048576)}M` })),
              ], "Resize", (d) => api("POST", `/v1/instances/${x.id}/resize`, { cpus: Number(d.get("cpus")), memory: d.get("memory") }))),
              change("Move", () => ask(`Move ${x.name}`, [
                field("to node (empty: the best)", input("node")),
              ], "Move", (d) => api("POST", `/v1/instances/${x.id}/move`, d.get("node") ? { node: d.get("node") } : {}))),
              change("Remove", () => api("DELETE", `/v1/instances/${x.id}`), "danger"))))));
      },
    };
  },
};

function instanceDetail(container, name) {
  const facts = h("dl", { class: "facts" });
  const log = h("pre", { id: "console" }, "");
  const view = frame(container, `Instance ${name}`, [facts, h("h2", {}, "Console log (following)"), log]);
  let offset = 0;
  let timer = null;
  const follow = async () => {
    try {
      const part = await api("GET", `/v1/instances/${path(name)}/console?offset=${offset}`);
      if (part.text) { if (log.dataset.empty) { log.textContent = ""; delete log.dataset.empty; } log.append(part.text); }
      if (!log.textContent) { log.textContent = "(no console output yet)"; log.dataset.empty = "1"; }
      offset = part.offset; // where to ask from next
    } catch (exc) { /* the node may be away: tried again */ }
  };
  timer = setInterval(follow, 1000);
  return {
    leave() { clearInterval(timer); },
    async refresh() {
      const x = await api("GET", `/v1/instances/${path(name)}`);
      facts.replaceChildren(...[["status", x.status], ["node", x.node], ["cpus", x.cpus], ["memory", bytes(x.memory)],
        ["disk", bytes(x.disk)], ["network", x.network], ["message", x.status_message]]
        .flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v ?? "")]));
      view.replaceChildren();
      await follow();
    },
  };
}

// -- deployments -----------------------------------------------------------------------------

const deploymentsPage = {
  tables: ["deployments"],
  mount(container, [id]) {
    if (id) return deploymentDetail(container, id);
    const questions = h("div", { id: "questions" });
    let plan = null;
    // A secret left empty is not sent: the plan keeps its suggested value, which the API
    // shows masked and the page never puts in a field.
    const answers = () => Object.fromEntries([...questions.querySelectorAll("input, select")]
      .filter((el) => !(el.type === "password" && el.value === "")).map((el) => [el.name, el.value]));
    const start = form("Start a deployment", [
      field("xpath", input("xpath", { required: true, placeholder: "WebSite//start" })),
      field("node (optional)", input("node")),
    ], "Plan", async (data) => {
      plan = await api("POST", "/v1/deployments", { xpath: data.get("xpath"), node: data.get("node") || null, plan: true });
      drawQuestions(data);
    });
    const drawQuestions = (data, errors = {}) => {
      const asked = plan.questions.filter((q) => !q.derived);
      const given = (q) => q.answered && q.value !== null ? q.value : q.suggestion ?? "";
      const control = (q) => {
        if (q.secret) {
          const kept = q.suggestion !== null || (q.answered && q.value !== null);
          return h("input", { name: q.id, type: "password", autocomplete: "new-password", "aria-label": q.id,
            placeholder: kept ? "(leave empty to keep the suggested value)" : "" });
        }
        if (q.choices && q.choices.length) {
          const el = select(q.id, q.choices.map((c) => [String(c), String(c)]), { "aria-label": q.id });
          el.value = String(given(q));
          return el;
        }
        return h("input", { name: q.id, value: given(q), "aria-label": q.id });
      };
      const ask = (q) => h("label", {}, `${q.label} `, h("small", {}, q.id), control(q),
        h("span", { class: "field-error", "data-for": q.id }, errors[q.id] || ""),
        q.help ? h("small", {}, q.help) : "");
      const expert = asked.filter((q) => q.expert);
      const fields = asked.filter((q) => !q.expert).map(ask);
      if (expert.length) {
        fields.push(h("details", { open: expert.some((q) => errors[q.id]) },
          h("summary", {}, `expert questions (${expert.length})`), ...expert.map(ask)));
      }
      questions.replaceChildren(form(`Answer ${plan.target}`, [
        h("p", {}, `${plan.steps.length} steps on ${[...new Set(plan.steps.map((s) => s.node))].join(", ")}`),
        ...fields,
        plan.problems.length ? h("p", { class: "error" }, plan.problems.join("; ")) : "",
      ], "Deploy", async () => {
        const given = answers();
        const checked = await api("POST", "/v1/deployments", { xpath: data.get("xpath"), node: data.get("node") || null, answers: given, plan: true });
        const wrong = Object.fromEntries(checked.questions.filter((q) => q.error && !q.derived).map((q) => [q.id, q.error]));
        if (Object.keys(wrong).length || checked.problems.length) { plan = checked; drawQuestions(data, wrong); return; }
        const record = await api("POST", "/v1/deployments", { xpath: data.get("xpath"), node: data.get("node") || null, answers: given, yes: true });
        location.hash = `#/deployments/${record.id}`;
      }));
    };
    const view = frame(container, "Deployments", [start, questions]);
    return {
      async refresh() {
        const { deployments } = await api("GET", "/v1/deployments");
        if (!deployments.length) { view.replaceChildren(empty("no deployments yet: start one from an xpath such as WebSite//start")); return; }
        view.replaceChildren(table(["deployment", "kind", "target", "node", "status", "created"],
          deployments.slice().reverse().map((d) => h("tr", {},
            h("td", { class: "mono" }, h("a", { href: `#/deployments/${d.id}` }, d.id.slice(0, 8))),
            h("td", {}, d.kind), h("td", {}, d.target), h("td", {}, d.node), h("td", {}, status(d.status)), h("td", {}, d.created_at)))));
      },
    };
  },
};

function deploymentDetail(container, id) {
  const view = frame(container, `Deployment ${id.slice(0, 8)}`);
  return {
    async refresh() {
      const d = await api("GET", `/v1/deployments/${path(id)}`);
      view.replaceChildren(
        h("p", {}, `${d.kind} ${d.target} on ${d.node}: `, h("span", { id: "deployment-status" }, status(d.status)),
          d.result ? h("span", { class: "mono" }, ` ${JSON.stringify(d.result)}`) : ""),
        h("p", {},
          d.status === "failed" ? change("Resume", () => api("POST", `/v1/deployments/${d.id}/resume`)) : "",
          d.status === "done" ? change("Undo", async () => { const u = await api("POST", `/v1/deployments/${d.id}/undo`); location.hash = `#/deployments/${u.id}`; }) : ""),
        table(["#", "node", "step", "status", "log"], d.steps.map((s) => h("tr", { "data-step": s.index },
          h("td", {}, s.index), h("td", {}, s.node), h("td", {}, `${s.lifecycle}/${s.state}/${s.provide || s.action}`),
          h("td", {}, status(s.status), s.error ? h("span", { class: "error" }, ` ${s.error}`) : ""),
          h("td", {}, h("pre", {}, (s.log || []).join("\n")))))));
    },
  };
}

// -- lifecycles ------------------------------------------------------------------------------

// #/lifecycles[/NODE[/LIFECYCLE]]: a node chosen from the members (the answering node at
// first), its lifecycles, and one lifecycle's state graph with a "go to" form per state.
const lifecyclesPage = {
  tables: ["lifecycles", "deployments", "nodes"],
  mount(container, [node, name]) {
    if (node && name) return lifecycleDetail(container, node, name);
    const nodes = select("node", [], { "aria-label": "node", onchange: (e) => { location.hash = `#/lifecycles/${path(e.target.value)}`; } });
    const view = frame(container, node ? `Lifecycles on ${node}` : "Lifecycles", [h("p", { class: "inline" }, field("node", nodes))]);
    return {
      async refresh() {
        const c = await api("GET", "/v1/cluster");
        const chosen = node || c.node;
        nodes.replaceChildren(...c.members.map((m) => h("option", { value: m.name }, m.name)));
        nodes.value = chosen;
        const { lifecycles, broken, published } = await api("GET", `/v1/nodes/${path(chosen)}/lifecycles`);
        const problems = Object.entries(broken || {}).map(([module, why]) => h("p", { class: "error" }, `${module}: ${why}`));
        if (!lifecycles.length) {
          view.replaceChildren(empty(published ? `no lifecycles loaded on ${chosen}` : `${chosen} has not published its lifecycles yet`), ...problems);
          return;
        }
        view.replaceChildren(table(["lifecycle", "state", "applied", "origin"],
          lifecycles.map((x) => h("tr", { "data-lifecycle": x.name },
            h("td", {}, h("a", { href: `#/lifecycles/${path(chosen)}/${path(x.name)}` }, x.name)),
            h("td", { class: "state" }, x.state ?? ""), h("td", {}, x.applied.join(" → ")), h("td", { class: "mono" }, x.origin)))),
        ...problems);
      },
    };
  },
};

function lifecycleDetail(container, node, name) {
  const graph = h("div", { class: "graph", id: "state-graph" });
  const made = h("p", { id: "goto-result", role: "status" });
  const view = frame(container, `${name} on ${node}`, [
    h("p", {}, h("a", { href: `#/lifecycles/${path(node)}` }, `← lifecycles on ${node}`)), graph, made]);
  const goTo = (state) => form(`Go to ${state}`, [], `Go to ${state}`, async () => {
    const record = await api("POST", `/v1/nodes/${path(node)}/lifecycles/${path(name)}/goto`, { state });
    made.replaceChildren(`going to ${state}: `, h("a", { href: `#/deployments/${record.id}` }, `deployment ${record.id.slice(0, 8)}`),
      " ", status(record.status));
  });
  return {
    async refresh() {
      const x = await api("GET", `/v1/nodes/${path(node)}/lifecycles/${path(name)}`);
      graph.replaceChildren(stateGraph({ name, states: x.states, transitions: x.transitions,
        initial: x.initial_state, applied: x.applied, current: x.state }));
      view.replaceChildren(
        h("p", {}, x.help),
        table(["state", "", "provides", ""], x.states.map((s) => h("tr", { "data-state": s.name, class: s.name === x.state ? "current" : "" },
          h("td", {}, s.label !== s.name ? `${s.label} (${s.name})` : s.name),
          h("td", {}, s.name === x.state ? badge("current", true) : x.applied.includes(s.name) ? badge("applied") : ""),
          h("td", {}, s.provides.map((p) => p.name).join(", ")),
          h("td", {}, s.name === x.state ? "" : goTo(s.name))))));
    },
  };
}

// -- KV --------------------------------------------------------------------------------------

const kvPage = {
  tables: ["kv"],
  mount(container, parts) {
    const prefix = parts.length ? `${parts.join("/")}/` : "";
    const editor = h("div");
    const add = form("Put a key", [field("key", input("key", { required: true, value: prefix })), field("value", h("textarea", { name: "value", rows: 1 }))],
      "Put", async (data, el) => { await api("PUT", `/v1/kv/${data.get("key")}`, data.get("value"), { raw: true }); el.reset(); });
    const view = frame(container, `KV /${prefix}`, [add, editor]);
    const open = async (key) => {
      const [entry] = await api("GET", `/v1/kv/${key}`);
      const text = new TextDecoder().decode(Uint8Array.from(atob(entry.Value || ""), (c) => c.charCodeAt(0)));
      const area = h("textarea", { name: "value", rows: 4, "aria-label": `value of ${key}` });
      area.value = text;
      editor.replaceChildren(form(`Edit ${key}`, [h("strong", {}, `${key} (modify index ${entry.ModifyIndex})`), area], "Save", async () => {
        const ok = await api("PUT", `/v1/kv/${key}?cas=${entry.ModifyIndex}`, area.value, { raw: true });
        if (ok === true || ok === "true") editor.replaceChildren();
        else throw new Error(`conflict: ${key} was changed since you opened it; open it again to see the new value`);
      }), change("Delete", async () => { await api("DELETE", `/v1/kv/${key}?cas=${entry.ModifyIndex}`); editor.replaceChildren(); }, "danger"));
    };
    return {
      async refresh() {
        let keys = [];
        try { keys = await api("GET", `/v1/kv/${prefix}?keys&separator=/`); } catch (exc) { if (exc.status !== 404) throw exc; }
        const up = parts.length ? h("li", {}, h("a", { href: `#/kv/${parts.slice(0, -1).join("/")}` }, "..")) : "";
        if (!keys.length) { view.replaceChildren(up ? h("ul", {}, up) : "", empty("no keys here yet: put one")); return; }
        view.replaceChildren(h("ul", { class: "kv" }, up, keys.map((k) => k.endsWith("/")
          ? h("li", {}, h("a", { href: `#/kv/${k.slice(0, -1)}` }, `${k.slice(prefix.length)}`))
          : h("li", {}, h("button", { type: "button", onclick: () => open(k).catch(report) }, k.slice(prefix.length))))));
      },
    };
  },
};

export const PAGES = {
  "": overview, nodes: nodesPage, services: servicesPage, images: imagesPage, volumes: volumesPage,
  instances: instancesPage, lifecycles: lifecyclesPage, deployments: deploymentsPage, kv: kvPage,
};
