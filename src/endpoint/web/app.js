// The ofe console: the mesh from /console/graph, figures from /metrics and /status every
// second, and a node's events live from /tail. No dependencies: plain ES module and SVG.

const token = new URLSearchParams(location.search).get("token");
const auth = token ? { Authorization: `Bearer ${token}` } : {};
const svgNS = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);

const state = {
  graph: { nodes: [], edges: [] },
  // Per series key, the last value and when it was read, to turn counters into rates.
  last: new Map(),
  rates: new Map(),
  gauges: new Map(),
  ready: new Map(),
  selected: null,
  tail: null,
};

async function get(path) {
  const response = await fetch(path, { headers: auth, cache: "no-store" });
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response;
}

// OpenMetrics text: each sample as [name, labels, value].
function samples(text) {
  const out = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = line.match(/^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/);
    if (!m) continue;
    const labels = {};
    for (const pair of (m[2] || "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[pair[1]] = pair[2];
    out.push([m[1], labels, Number(m[3])]);
  }
  return out;
}

const seriesKey = (name, labels) => `${name}|${Object.keys(labels).sort().map((k) => `${k}=${labels[k]}`).join(",")}`;

// The labels a node's series carry, as a key: every label the node names must match.
function nodeKey(name, node) {
  const keys = Object.keys(node.metrics || {});
  if (!keys.length) return null;
  return seriesKey(name, node.metrics);
}

function readMetrics(text, now) {
  const counters = new Map();
  for (const [name, labels, value] of samples(text)) {
    const wanted = {};
    for (const k of ["namespace", "eventsource", "event", "kind", "trigger", "subscriber"]) {
      if (k in labels) wanted[k] = labels[k];
    }
    const key = seriesKey(name, wanted);
    counters.set(key, (counters.get(key) || 0) + value);
  }
  for (const [key, value] of counters) {
    if (key.includes("_total|")) {
      const before = state.last.get(key);
      if (before && now > before.at) {
        const rate = Math.max(0, (value - before.value) / ((now - before.at) / 1000));
        // A little smoothing, so one slow scrape does not make the graph flicker.
        const previous = state.rates.get(key);
        state.rates.set(key, previous === undefined ? rate : previous * 0.3 + rate * 0.7);
      }
      state.last.set(key, { value, at: now });
    } else {
      state.gauges.set(key, value);
    }
  }
}

function figures(node) {
  const rate = (name) => state.rates.get(nodeKey(name, node)) || 0;
  const gauge = (name) => state.gauges.get(nodeKey(name, node)) || 0;
  if (node.kind === "event") {
    return { rate: rate("ofe_eventsource_events_published_total"), errors: rate("ofe_eventsource_publish_errors_total") };
  }
  if (node.kind === "subscriber") {
    return {
      rate: rate("ofe_trigger_events_delivered_total"),
      fired: rate("ofe_trigger_events_received_total"),
      errors: rate("ofe_trigger_delivery_retries_total") + rate("ofe_trigger_events_dead_lettered_total") + rate("ofe_trigger_events_dropped_total"),
      lag: gauge("ofe_trigger_bus_lag"),
      deadLetters: gauge("ofe_trigger_dead_letters"),
    };
  }
  return null;
}

function readStatus(json) {
  state.ready.clear();
  for (const r of json.resources || []) {
    const ready = (r.conditions || []).find((c) => c.type === "Ready");
    state.ready.set(`${r.kind}|${r.namespace}|${r.name}`, ready || null);
  }
}

function readiness(node) {
  if (!node.resource) return { status: "unknown", reason: "" };
  const c = state.ready.get(`${node.resource[0]}|${node.namespace}|${node.resource[1]}`);
  if (!c) return { status: "unknown", reason: "no status yet" };
  return { status: c.status === "True" ? "true" : "false", reason: `${c.reason || ""}${c.message ? `: ${c.message}` : ""}` };
}

// Columns by depth along the edges: events first, then what reads them, and so on.
function layout(nodes, edges) {
  const layer = new Map(nodes.map((n) => [n.id, 0]));
  for (let round = 0; round < nodes.length; round++) {
    let moved = false;
    for (const e of edges) {
      const next = (layer.get(e.from) ?? 0) + 1;
      if (layer.has(e.to) && next > layer.get(e.to) && next < 32) {
        layer.set(e.to, next);
        moved = true;
      }
    }
    if (!moved) break;
  }
  const columns = new Map();
  for (const n of nodes) {
    const l = layer.get(n.id);
    if (!columns.has(l)) columns.set(l, []);
    columns.get(l).push(n);
  }
  const at = new Map();
  const labels = [];
  // Each node beside what feeds it (the mean height of its predecessors), so edges cross
  // as little as they can; the first column in name order.
  const feeds = new Map();
  for (const e of edges) {
    if (!feeds.has(e.to)) feeds.set(e.to, []);
    feeds.get(e.to).push(e.from);
  }
  const centre = (n) => {
    const ys = (feeds.get(n.id) || []).map((id) => at.get(id)?.y).filter((y) => y !== undefined);
    return ys.length ? ys.reduce((a, b) => a + b, 0) / ys.length : Infinity;
  };
  for (const [l, column] of [...columns].sort((a, b) => a[0] - b[0])) {
    const centres = new Map(column.map((n) => [n.id, centre(n)]));
    column.sort((a, b) => a.namespace.localeCompare(b.namespace)
      || (centres.get(a.id) - centres.get(b.id)) || a.label.localeCompare(b.label));
    let y = 40;
    let namespace = null;
    for (const n of column) {
      if (n.namespace !== namespace) {
        namespace = n.namespace;
        y += 18;
        labels.push({ x: 20 + l * 300, y: y - 6, text: namespace });
      }
      at.set(n.id, { x: 20 + l * 300, y });
      y += 66;
    }
  }
  return { at, labels };
}

const fmt = (x) => (x >= 100 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x.toFixed(2));

function el(name, attrs = {}, text) {
  const e = document.createElementNS(svgNS, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function render() {
  const svg = $("mesh");
  const namespace = $("namespace").value;
  const query = $("search").value.trim().toLowerCase();
  const nodes = state.graph.nodes.filter((n) => !namespace || n.namespace === namespace);
  const ids = new Set(nodes.map((n) => n.id));
  const edges = state.graph.edges.filter((e) => ids.has(e.from) && ids.has(e.to));
  const { at, labels } = layout(nodes, edges);
  svg.replaceChildren();
  let width = 0;
  let height = 0;
  const byId = new Map(nodes.map((n) => [n.id, n]));
  for (const e of edges) {
    const a = at.get(e.from);
    const b = at.get(e.to);
    const x1 = a.x + 240, y1 = a.y + 24, x2 = b.x, y2 = b.y + 24;
    const sub = byId.get(e.kind === "input" ? e.to : e.from);
    const f = sub && sub.kind === "subscriber" ? figures(sub) : null;
    const failing = f && e.kind === "sink" && f.errors > 0;
    const cls = `edge ${failing ? "failing" : ""} ${e.kind === "reply" ? "reply" : ""}`;
    svg.append(el("path", { class: cls, d: `M${x1},${y1} C${x1 + 40},${y1} ${x2 - 40},${y2} ${x2},${y2}`, "data-from": e.from, "data-to": e.to }));
    if (f) {
      const value = e.kind === "input" ? f.fired : f.rate;
      const text = failing ? `${fmt(f.errors)} err/s` : `${fmt(value)}/s`;
      // Near the edge's start, where edges from one node have not yet met others.
      svg.append(el("text", { class: `edge-label ${failing ? "failing" : ""}`, x: x1 + 6, y: y1 - 4, "data-edge": `${e.from}>${e.to}` }, text));
    }
  }
  for (const l of labels) svg.append(el("text", { class: "namespace-label", x: l.x, y: l.y }, l.text));
  for (const n of nodes) {
    const { x, y } = at.get(n.id);
    const dim = query && !n.label.toLowerCase().includes(query) && !n.id.toLowerCase().includes(query);
    const g = el("g", { class: `node ${n.kind} ${dim ? "dim" : ""} ${state.selected === n.id ? "selected" : ""}`, transform: `translate(${x},${y})`, "data-id": n.id, tabindex: 0 });
    g.append(el("rect", { width: 240, height: 48 }));
    const r = readiness(n);
    const dot = el("circle", { class: `ready-${r.status}`, cx: 12, cy: 14, r: 5 });
    dot.append(el("title", {}, r.status === "true" ? "Ready" : `not ready ${r.reason}`));
    g.append(dot);
    g.append(el("text", { x: 22, y: 18 }, n.label.length > 34 ? `${n.label.slice(0, 33)}…` : n.label));
    const f = figures(n);
    if (f) {
      let line = `${fmt(f.rate)}/s`;
      if (f.lag !== undefined) line += `  lag ${f.lag}`;
      if (f.deadLetters) line += `  dead letters ${f.deadLetters}`;
      g.append(el("text", { class: "figures", x: 12, y: 38, "data-figure": "rate" }, line));
      if (f.errors > 0) g.append(el("text", { class: "errors", x: 236, y: 38, "text-anchor": "end" }, `${fmt(f.errors)} err/s`));
    } else {
      g.append(el("text", { class: "figures", x: 12, y: 38 }, n.kind));
    }
    g.addEventListener("click", () => select(n.id));
    svg.append(g);
    width = Math.max(width, x + 260);
    height = Math.max(height, y + 70);
  }
  svg.setAttribute("viewBox", `0 0 ${Math.max(width, 600)} ${Math.max(height, 400)}`);
  svg.setAttribute("preserveAspectRatio", "xMinYMin meet");
  svg.setAttribute("width", Math.max(width, 600));
  svg.setAttribute("height", Math.max(height, 400));
  const subscribers = state.graph.nodes.filter((n) => n.kind === "subscriber");
  const total = subscribers.reduce((s, n) => s + (figures(n)?.rate || 0), 0);
  $("summary").textContent = `${state.graph.nodes.filter((n) => n.kind === "event").length} inputs · ${subscribers.length} subscribers · ${fmt(total)} deliveries/s`;
  if (state.selected) panelFigures();
}

function panelFigures() {
  const n = state.graph.nodes.find((x) => x.id === state.selected);
  if (!n) return;
  const dl = $("panel-figures");
  dl.replaceChildren();
  const add = (k, v) => {
    dl.append(Object.assign(document.createElement("dt"), { textContent: k }));
    dl.append(Object.assign(document.createElement("dd"), { textContent: v }));
  };
  const r = readiness(n);
  add("ready", r.status === "true" ? "yes" : `no ${r.reason}`);
  const f = figures(n);
  if (f) for (const [k, v] of Object.entries(f)) add(k, typeof v === "number" ? fmt(v) : v);
}

function select(id) {
  state.selected = id;
  const n = state.graph.nodes.find((x) => x.id === id);
  $("panel").hidden = false;
  $("panel-title").textContent = n ? n.label : id;
  $("steps").replaceChildren();
  $("action-result").textContent = "";
  panelFigures();
  actions(n);
  render();
  follow(n);
}

// Every action goes through the endpoint the CLI uses, after a confirmation, and says how it
// went.
async function act(what, method, path, body) {
  if (!confirm(`${what}?`)) return null;
  $("action-result").textContent = `${what}…`;
  try {
    const response = await fetch(path, { method, headers: { ...auth, "content-type": "application/json" }, body });
    const text = await response.text();
    $("action-result").textContent = response.ok ? `${what}: done` : `${what}: ${response.status} ${text}`;
    return response.ok ? text : null;
  } catch (e) {
    $("action-result").textContent = `${what}: ${e.message}`;
    return null;
  }
}

const button = (label, onClick, cls = "") => Object.assign(document.createElement("button"), { textContent: label, className: cls, onclick: onClick });
const row = (...children) => {
  const div = document.createElement("div");
  div.className = "row";
  div.append(...children);
  return div;
};

function actions(node) {
  const box = $("actions");
  box.replaceChildren();
  if (!node) return;
  if (node.kind === "subscriber" && node.resource && node.resource[0] === "Trigger") {
    const m = node.metrics;
    const q = `namespace=${encodeURIComponent(m.namespace)}&trigger=${encodeURIComponent(m.trigger)}&subscriber=${encodeURIComponent(m.subscriber)}`;
    box.append(row(
      button("Pause", () => act(`Pause ${node.label}`, "POST", `/pause?${q}`)),
      button("Resume", () => act(`Resume ${node.label}`, "POST", `/resume?${q}`)),
    ));
    const from = Object.assign(document.createElement("input"), { type: "datetime-local", id: "replay-from" });
    box.append(row(
      document.createTextNode("replay from"), from,
      button("Replay", () => {
        if (!from.value) { $("action-result").textContent = "choose when the replay starts"; return; }
        const at = new Date(from.value).toISOString();
        act(`Replay ${node.label} from ${at}`, "POST", `/replay?${q}&from=${encodeURIComponent(at)}`);
      }),
    ));
    const letters = document.createElement("div");
    letters.id = "letters";
    box.append(letters);
    deadLetters(node, q);
  }
  if (node.kind === "event" && node.resource) {
    const m = node.metrics;
    const data = Object.assign(document.createElement("textarea"), { id: "send-data", rows: 3, value: "{}" });
    box.append(data, row(button("Send a test event", () => {
      let parsed;
      try { parsed = JSON.parse(data.value); } catch (e) { $("action-result").textContent = `the data is not JSON: ${e.message}`; return; }
      const event = { specversion: "1.0", id: crypto.randomUUID(), source: "/ofe/console", type: "io.openfunction.events.test", datacontenttype: "application/json", data: parsed };
      const q = `namespace=${encodeURIComponent(m.namespace)}&eventsource=${encodeURIComponent(m.eventsource)}&event=${encodeURIComponent(m.event)}`;
      act(`Send a test event to ${node.label}`, "POST", `/send?${q}`, JSON.stringify(event));
    })));
  }
}

async function deadLetters(node, q) {
  const box = $("letters");
  if (!box) return;
  let list = [];
  try {
    const answer = await (await get(`/deadletters/list?${q}`)).json();
    list = answer.subscribers.flatMap((s) => (Array.isArray(s.result) ? s.result : s.result?.letters || []));
  } catch (e) {
    box.textContent = `dead letters: ${e.message}`;
    return;
  }
  if (state.selected !== node.id) return;
  const head = document.createElement("h3");
  head.textContent = `Dead letters (${list.length})`;
  const refresh = () => deadLetters(node, q);
  const table = document.createElement("table");
  table.id = "letters-table";
  for (const l of list.slice(0, 50)) {
    const tr = table.insertRow();
    tr.insertCell().textContent = l.id;
    tr.insertCell().textContent = l.reason;
    const cell = tr.insertCell();
    cell.append(
      button("redrive", async () => { if (await act(`Redrive ${l.id}`, "POST", `/deadletters/redrive?${q}&id=${encodeURIComponent(l.id)}`)) refresh(); }),
      button("purge", async () => { if (await act(`Purge ${l.id}`, "POST", `/deadletters/purge?${q}&id=${encodeURIComponent(l.id)}`)) refresh(); }, "danger"),
    );
  }
  const all = list.length ? row(
    button("Redrive all", async () => { if (await act(`Redrive every dead letter of ${node.label}`, "POST", `/deadletters/redrive?${q}&all=true`)) refresh(); }),
    button("Purge all", async () => { if (await act(`Purge every dead letter of ${node.label}`, "POST", `/deadletters/purge?${q}&all=true`)) refresh(); }, "danger"),
  ) : document.createTextNode("");
  box.replaceChildren(head, all, table);
  // Kept current while the node is shown: letters come, and a store just opened is still
  // reading them back from the bus.
  clearTimeout(state.lettersTimer);
  state.lettersTimer = setTimeout(() => {
    if (state.selected === node.id) refresh();
  }, 2000);
}

// The node's events, live, through the tap.
async function follow(node) {
  if (state.tail) state.tail.abort();
  if (!node || !node.resource) return;
  const controller = new AbortController();
  state.tail = controller;
  const which = node.resource[0] === "Trigger" ? "trigger" : "source";
  const url = `/tail?namespace=${encodeURIComponent(node.namespace)}&${which}=${encodeURIComponent(node.resource[1])}`;
  try {
    const response = await fetch(url, { headers: auth, signal: controller.signal });
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, cut).trim();
        buffer = buffer.slice(cut + 1);
        if (!line) continue;
        const step = JSON.parse(line);
        if (!step.stage) continue;
        const part = node.metrics && node.metrics.subscriber;
        if (node.kind === "subscriber" && part !== undefined && step.part !== part && step.part !== "sink") continue;
        const li = document.createElement("li");
        li.className = `stage-${step.stage}`;
        li.textContent = `${step.at.slice(11, 23)} ${step.stage} ${step.event.id}${step.detail ? ` — ${step.detail}` : ""}`;
        $("steps").prepend(li);
        while ($("steps").children.length > 100) $("steps").lastChild.remove();
      }
    }
  } catch (e) {
    if (e.name !== "AbortError") console.warn(e);
  }
}

async function refresh(withGraph) {
  const now = Date.now();
  try {
    if (withGraph) {
      state.graph = await (await get("/console/graph")).json();
      const select = $("namespace");
      const chosen = select.value;
      const namespaces = [...new Set(state.graph.nodes.map((n) => n.namespace))].sort();
      select.replaceChildren(new Option("all", ""), ...namespaces.map((ns) => new Option(ns, ns)));
      select.value = namespaces.includes(chosen) ? chosen : "";
    }
    const [metrics, status] = await Promise.all([get("/metrics"), get("/status")]);
    readMetrics(await metrics.text(), now);
    readStatus(await status.json());
    $("updated").textContent = `updated ${new Date(now).toLocaleTimeString()}`;
    render();
  } catch (e) {
    $("updated").textContent = `cannot reach ofe: ${e.message}`;
  }
}

$("search").addEventListener("input", render);
$("namespace").addEventListener("change", render);
$("close").addEventListener("click", () => {
  state.selected = null;
  if (state.tail) state.tail.abort();
  $("panel").hidden = true;
  render();
});

let tick = 0;
refresh(true);
setInterval(() => refresh(++tick % 5 === 0), 1000);
