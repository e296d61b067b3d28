// The ofe console: the mesh from /console/graph, every node's figures and readiness live from
// /console/live (Server-Sent Events, a frame a second), a node's last 15 minutes from
// /console/history, an event's path from /console/path, and a node's events live from /tail.
// No dependencies: a plain ES module and SVG.

const token = new URLSearchParams(location.search).get("token");
const auth = token ? { Authorization: `Bearer ${token}` } : {};
const withToken = (path) => (token ? `${path}${path.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}` : path);
const svgNS = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);
// Seconds of history the charts show.
const SPAN = 900;
// A node's width, and the distance between columns.
const WIDE = 190;
const PITCH = 250;

const state = {
  graph: { nodes: [], edges: [] },
  // The newest /console/live frame: figures by node id, and each resource's Ready.
  frame: { nodes: {}, ready: [] },
  ready: new Map(),
  selected: null,
  // The selected node's points, oldest first, for its charts.
  series: [],
  // The nodes and edges of the event last looked up by id.
  path: new Set(),
  tail: null,
};

async function get(path) {
  const response = await fetch(path, { headers: auth, cache: "no-store" });
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response;
}

// A node's figures in the newest frame: rate, and for a subscriber fired, errors, lag, dead
// letters and latency.
function figures(node) {
  if (node && node.kind === "bus") {
    // What its events publish onto it.
    const events = state.graph.edges.filter((e) => e.to === node.id && e.kind === "publish");
    const each = events.map((e) => state.frame.nodes[e.from] || { rate: 0, errors: 0 });
    return { rate: each.reduce((n, f) => n + f.rate, 0), errors: each.reduce((n, f) => n + f.errors, 0) };
  }
  if (!node || (node.kind !== "event" && node.kind !== "subscriber")) return null;
  const f = state.frame.nodes[node.id];
  if (!f) return { rate: 0, errors: 0 };
  return f;
}

function readStatus(ready) {
  state.ready.clear();
  for (const r of ready || []) state.ready.set(`${r.kind}|${r.namespace}|${r.name}`, r);
}

function readiness(node) {
  if (node.kind === "bus") {
    // A bus has no status of its own: it is down when an EventSource on it says so.
    const on = state.graph.edges.filter((e) => e.to === node.id && e.kind === "publish")
      .map((e) => state.graph.nodes.find((n) => n.id === e.from)).filter((n) => n && n.resource)
      .map(readiness);
    const down = on.find((r) => r.status === "false" && /^Bus/.test(r.reason));
    if (down) return down;
    return on.length && on.every((r) => r.status === "true") ? { status: "true", reason: "" } : { status: "unknown", reason: "" };
  }
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
  const groups = [];
  for (const [l, column] of [...columns].sort((a, b) => a[0] - b[0])) {
    const centres = new Map(column.map((n) => [n.id, centre(n)]));
    // A Trigger's subscribers stay together, at the mean height of what feeds them.
    const sum = new Map();
    for (const n of column) {
      const g = group(n) || n.id;
      const [total, count] = sum.get(g) || [0, 0];
      const c = centres.get(n.id);
      sum.set(g, Number.isFinite(c) ? [total + c, count + 1] : [total, count]);
    }
    const at_ = (n) => {
      const [total, count] = sum.get(group(n) || n.id);
      return count ? total / count : Number.MAX_VALUE;
    };
    const natural = (a, b) => a.localeCompare(b, undefined, { numeric: true });
    column.sort((a, b) => a.namespace.localeCompare(b.namespace)
      || (at_(a) - at_(b)) || natural(group(a) || a.id, group(b) || b.id) || natural(a.label, b.label));
    let y = 40;
    let namespace = null;
    let open = null;
    for (const n of column) {
      if (n.namespace !== namespace) {
        namespace = n.namespace;
        y += 18;
        labels.push({ x: 20 + l * PITCH, y: y - 6, text: namespace });
      }
      const g = group(n);
      if (g !== (open && open.id)) {
        if (g) {
          // Room for the Trigger's name above its subscribers.
          y += 20;
          open = { id: g, label: `Trigger ${n.metrics.trigger}`, x: 20 + l * PITCH, top: y - 22, bottom: y };
          groups.push(open);
        } else {
          open = null;
        }
      }
      at.set(n.id, { x: 20 + l * PITCH, y });
      if (open) open.bottom = y + 66;
      y += 74;
    }
  }
  return { at, labels, groups };
}

// The Trigger a subscriber belongs to (an EventSource's own sink belongs to none).
function group(n) {
  if (n.kind !== "subscriber" || !n.metrics || n.metrics.trigger.startsWith("eventsource/")) return null;
  return `trigger:${n.metrics.namespace}/${n.metrics.trigger}`;
}

const fmt = (value) => {
  const x = Number(value) || 0;
  return x >= 100 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x.toFixed(2);
};
const ms = (seconds) => `${fmt(seconds * 1000)} ms`;

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
  const { at, labels, groups } = layout(nodes, edges);
  svg.replaceChildren();
  for (const g of groups) {
    svg.append(el("rect", { class: "trigger-box", x: g.x - 8, y: g.top, width: WIDE + 16, height: g.bottom - g.top, "data-trigger": g.id }));
    svg.append(el("text", { class: "trigger-label", x: g.x - 2, y: g.top + 14 }, g.label));
  }
  let width = 0;
  let height = 0;
  const byId = new Map(nodes.map((n) => [n.id, n]));
  for (const e of edges) {
    const a = at.get(e.from);
    const b = at.get(e.to);
    const x1 = a.x + WIDE, y1 = a.y + 30, x2 = b.x, y2 = b.y + 30;
    // An edge's figure: what its event publishes, or what its subscriber takes or delivers.
    const sub = byId.get(e.kind === "input" || e.kind === "publish" ? e.to : e.from);
    const f = e.kind === "publish" ? figures(byId.get(e.from)) : sub && sub.kind === "subscriber" ? figures(sub) : null;
    const failing = f && e.kind === "sink" && f.errors > 0;
    const onPath = state.path.has(e.from) && state.path.has(e.to);
    const cls = `edge ${failing ? "failing" : ""} ${e.kind === "reply" ? "reply" : ""} ${onPath ? "onpath" : ""}`;
    svg.append(el("path", { class: cls, d: `M${x1},${y1} C${x1 + 40},${y1} ${x2 - 40},${y2} ${x2},${y2}`, "data-from": e.from, "data-to": e.to }));
    if (f) {
      const value = e.kind === "input" ? f.fired ?? 0 : f.rate;
      const text = failing ? `${fmt(f.errors)} err/s` : `${fmt(value)}/s`;
      // An input edge's figure near its subscriber (edges from one event fan out from one
      // point), any other's near its subscriber too: its start.
      const [lx, anchor] = e.kind === "input" ? [x2 - 6, "end"] : [x1 + 6, "start"];
      const ly = e.kind === "input" ? y2 - 4 : y1 - 4;
      svg.append(el("text", { class: `edge-label ${failing ? "failing" : ""}`, x: lx, y: ly, "text-anchor": anchor, "data-edge": `${e.from}>${e.to}` }, text));
    }
  }
  for (const l of labels) svg.append(el("text", { class: "namespace-label", x: l.x, y: l.y }, l.text));
  for (const n of nodes) {
    const { x, y } = at.get(n.id);
    const dim = query && !n.label.toLowerCase().includes(query) && !n.id.toLowerCase().includes(query);
    const g = el("g", { class: `node ${n.kind} ${dim ? "dim" : ""} ${state.selected === n.id ? "selected" : ""} ${state.path.has(n.id) ? "onpath" : ""}`, transform: `translate(${x},${y})`, "data-id": n.id, tabindex: 0 });
    g.append(el("rect", { width: WIDE, height: 60 }));
    const r = readiness(n);
    const dot = el("circle", { class: `ready-${r.status}`, cx: 12, cy: 14, r: 5 });
    dot.append(el("title", {}, r.status === "true" ? "Ready" : `not ready ${r.reason}`));
    g.append(dot);
    g.append(el("text", { x: 22, y: 18 }, n.label.length > 30 ? `${n.label.slice(0, 29)}…` : n.label));
    const f = figures(n);
    if (f) {
      let line = `${fmt(f.rate)}/s`;
      if (f.lag !== undefined) line += `  lag ${f.lag}`;
      if (f.p99 !== undefined) line += `  p99 ${ms(f.p99)}`;
      g.append(el("text", { class: "figures", x: 12, y: 36, "data-figure": "rate" }, line));
      const trouble = [];
      if (f.errors > 0) trouble.push(`${fmt(f.errors)} err/s`);
      if (f.deadLetters) trouble.push(`dead letters ${f.deadLetters}`);
      if (trouble.length) g.append(el("text", { class: "errors", x: 12, y: 52, "data-figure": "errors" }, trouble.join("  ")));
    } else {
      g.append(el("text", { class: "figures", x: 12, y: 36 }, n.kind));
    }
    g.addEventListener("click", () => select(n.id));
    svg.append(g);
    width = Math.max(width, x + WIDE + 20);
    height = Math.max(height, y + 80);
  }
  // Drawn at its natural size, the box scrolling: scaled down to fit, a large mesh would be
  // unreadable.
  svg.setAttribute("viewBox", `0 0 ${Math.max(width, 600)} ${Math.max(height, 400)}`);
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
  if (f) {
    add(n.kind === "subscriber" ? "delivered" : "published", `${fmt(f.rate)}/s`);
    if (f.fired !== undefined) add("fired", `${fmt(f.fired)}/s`);
    add("errors", `${fmt(f.errors)}/s`);
    if (f.lag !== undefined) add("lag", String(f.lag));
    if (f.deadLetters !== undefined) add("dead letters", String(f.deadLetters));
    if (f.p50 !== undefined) add("latency", `p50 ${ms(f.p50)} · p99 ${ms(f.p99)}`);
  }
  charts();
}

// A line chart of `lines` (each [label, class, value of a point]) over the last SPAN seconds.
function chart(title, lines, unit) {
  const width = 380, height = 90, now = Date.now();
  const x = (at) => width - ((now - at) / 1000 / SPAN) * width;
  let top = 0;
  for (const [, , value] of lines) for (const p of state.series) top = Math.max(top, value(p) ?? 0);
  top = top > 0 ? top * 1.1 : 1;
  const y = (v) => height - (v / top) * height;
  const svg = el("svg", { class: "chart", viewBox: `0 0 ${width} ${height + 14}`, width, height: height + 14 });
  svg.append(el("rect", { class: "frame", width, height }));
  for (const [label, cls, value, zeroes] of lines) {
    // A gap where a second has no value (no deliveries, so no latency). ofe keeps no idle
    // second, so where seconds are missing a rate line goes down to zero.
    let d = "";
    let pen = false;
    let last = null;
    for (const p of state.series) {
      const v = value(p);
      if (v === undefined || v === null) { pen = false; continue; }
      if (zeroes && pen && last !== null && p.at - last > 1500) {
        d += `L${x(last + 1000).toFixed(1)},${y(0).toFixed(1)}L${x(p.at - 1000).toFixed(1)},${y(0).toFixed(1)}`;
      }
      d += `${pen ? "L" : "M"}${x(p.at).toFixed(1)},${y(v).toFixed(1)}`;
      pen = true;
      last = p.at;
    }
    svg.append(el("path", { class: `line ${cls}`, d, "data-line": label }));
  }
  svg.append(el("text", { class: "axis", x: 2, y: 11 }, `${fmt(unit(top))}`));
  svg.append(el("text", { class: "axis", x: 2, y: height + 12 }, "15 min ago"));
  svg.append(el("text", { class: "axis", x: width - 2, y: height + 12, "text-anchor": "end" }, "now"));
  const box = document.createElement("figure");
  const caption = document.createElement("figcaption");
  caption.textContent = `${title}: ${lines.map(([label, cls]) => label).join(", ")}`;
  box.append(caption, svg);
  return box;
}

function charts() {
  const box = $("charts");
  const n = state.graph.nodes.find((x) => x.id === state.selected);
  if (!n || (n.kind !== "event" && n.kind !== "subscriber")) { box.replaceChildren(); return; }
  const parts = [chart("throughput /s", [["events", "rate", (p) => p.rate, true], ["errors", "errors", (p) => p.errors, true]], (v) => v)];
  if (n.kind === "subscriber") {
    parts.push(chart("latency ms", [["p50", "p50", (p) => p.p50], ["p99", "p99", (p) => p.p99]], (v) => v * 1000));
  }
  box.replaceChildren(...parts);
}

async function history(id) {
  try {
    const answer = await (await get(`/console/history?node=${encodeURIComponent(id)}`)).json();
    if (state.selected === id) {
      state.series = answer.points;
      charts();
    }
  } catch (e) {
    $("charts").textContent = `history: ${e.message}`;
  }
}

function select(id) {
  state.selected = id;
  state.series = [];
  history(id);
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
    // The whole Trigger: every subscriber of it.
    const whole = `namespace=${encodeURIComponent(m.namespace)}&trigger=${encodeURIComponent(m.trigger)}`;
    box.append(row(
      button("Pause Trigger", () => act(`Pause every subscriber of Trigger ${m.namespace}/${m.trigger}`, "POST", `/pause?${whole}`)),
      button("Resume Trigger", () => act(`Resume every subscriber of Trigger ${m.namespace}/${m.trigger}`, "POST", `/resume?${whole}`)),
    ));
    const from = Object.assign(document.createElement("input"), { type: "datetime-local", id: "replay-from" });
    box.append(row(
      document.createTextNode("replay from"), from,
      button("Replay", () => {
        if (!from.value) { $("action-result").textContent = "choose when the replay starts"; return; }
        const at = new Date(from.value).toISOString();
        act(`Replay ${node.label} from ${at}`, "POST", `/replay?${q}&from=${encodeURIComponent(at)}`).then((text) => {
          if (text) replayProgress(node, JSON.parse(text).replays.map((r) => r.id));
        });
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

// A replay's progress from /replays, once a second until it ends.
async function replayProgress(node, ids) {
  for (;;) {
    let replays;
    try {
      replays = (await (await get("/replays")).json()).replays.filter((r) => ids.includes(r.id));
    } catch (e) {
      $("action-result").textContent = `replay: ${e.message}`;
      return;
    }
    if (state.selected !== node.id) return;
    $("action-result").textContent = replays
      .map((r) => `replay ${r.id}: ${r.state}, read ${r.read}, fired ${r.fired}, delivered ${r.delivered}, dead-lettered ${r.dead_lettered}${r.error ? ` (${r.error})` : ""}`)
      .join("; ");
    if (!replays.some((r) => r.state === "running")) return;
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

// A redrive's outcome, from its answer.
function redriven(text) {
  const answer = JSON.parse(text);
  const each = answer.subscribers.map((s) => s.result).filter((r) => r && r.delivered);
  const delivered = each.reduce((n, r) => n + r.delivered.length, 0);
  const failed = each.reduce((n, r) => n + r.failed.length, 0);
  const remaining = each.reduce((n, r) => n + r.remaining, 0);
  $("action-result").textContent = `redriven: ${delivered} delivered, ${failed} failed again, ${remaining} left`;
}

// One dead letter whole: the error, the response body, the attempts, and the event.
async function inspect(q, id) {
  const box = $("letter");
  try {
    const answer = await (await get(`/deadletters/show?${q}&id=${encodeURIComponent(id)}`)).json();
    const events = answer.subscribers.flatMap((s) => (Array.isArray(s.result) ? s.result : []));
    const e = events[0];
    if (!e) { box.textContent = `${id}: no longer held`; return; }
    let body = "";
    try { body = e.ofeerrordata ? atob(e.ofeerrordata) : ""; } catch { body = e.ofeerrordata; }
    box.replaceChildren();
    const dl = document.createElement("dl");
    const add = (k, v) => {
      dl.append(Object.assign(document.createElement("dt"), { textContent: k }));
      dl.append(Object.assign(document.createElement("dd"), { textContent: v ?? "" }));
    };
    add("event", `${e.id} (${e.type} from ${e.source})`);
    add("destination", e.ofeerrordest);
    add("status", e.ofeerrorcode);
    add("attempts", e.ofeerrorattempts);
    add("reason", e.ofeerrorreason);
    add("response body", body);
    add("data", typeof e.data === "string" ? e.data : JSON.stringify(e.data));
    box.append(dl);
  } catch (err) {
    box.textContent = `${id}: ${err.message}`;
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
    const idCell = tr.insertCell();
    idCell.append(button(l.id, () => inspect(q, l.id), "link"));
    tr.insertCell().textContent = l.reason;
    tr.insertCell().textContent = String(l.attempts);
    const cell = tr.insertCell();
    cell.append(
      button("redrive", async () => {
        const text = await act(`Redrive ${l.id}`, "POST", `/deadletters/redrive?${q}&id=${encodeURIComponent(l.id)}`);
        if (text) { redriven(text); refresh(); }
      }),
      button("purge", async () => { if (await act(`Purge ${l.id}`, "POST", `/deadletters/purge?${q}&id=${encodeURIComponent(l.id)}`)) refresh(); }, "danger"),
    );
  }
  const all = list.length ? row(
    button("Redrive all", async () => {
      const text = await act(`Redrive every dead letter of ${node.label}`, "POST", `/deadletters/redrive?${q}&all=true`);
      if (text) { redriven(text); refresh(); }
    }),
    button("Purge all", async () => { if (await act(`Purge every dead letter of ${node.label}`, "POST", `/deadletters/purge?${q}&all=true`)) refresh(); }, "danger"),
  ) : document.createTextNode("");
  const detail = document.createElement("div");
  detail.id = "letter";
  const kept = $("letter");
  if (kept) detail.replaceChildren(...kept.childNodes);
  box.replaceChildren(head, all, table, detail);
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

// The mesh changes only when manifests are applied: read every 5 s.
async function graph() {
  try {
    state.graph = await (await get("/console/graph")).json();
    const select = $("namespace");
    const chosen = select.value;
    const namespaces = [...new Set(state.graph.nodes.map((n) => n.namespace))].sort();
    select.replaceChildren(new Option("all", ""), ...namespaces.map((ns) => new Option(ns, ns)));
    select.value = namespaces.includes(chosen) ? chosen : "";
    render();
  } catch (e) {
    $("updated").textContent = `cannot reach ofe: ${e.message}`;
  }
}

// The figures, pushed by ofe once a second. EventSource reconnects by itself.
function live() {
  const source = new EventSource(withToken("/console/live"));
  source.onmessage = (message) => {
    state.frame = JSON.parse(message.data);
    readStatus(state.frame.ready);
    const point = state.selected && state.frame.nodes[state.selected];
    if (point && (!state.series.length || state.series[state.series.length - 1].at < point.at)) {
      state.series.push(point);
      if (state.series.length > SPAN) state.series.shift();
    }
    $("updated").textContent = `live ${new Date(state.frame.at).toLocaleTimeString()}`;
    // In the operator: whether this replica leads (fires cron and writes status) or follows.
    const role = state.frame.role || { mode: "standalone" };
    $("role").textContent = role.mode === "standalone" ? "" : `${role.mode} · ${role.identity}`;
    $("role").className = role.mode;
    render();
  };
  source.onerror = () => {
    $("updated").textContent = "cannot reach ofe; reconnecting…";
  };
}

// The node a step happened at.
function stepNode(step) {
  // An EventSource's part is `<kind>.<event>`.
  if (step.kind === "EventSource") return `event:${step.namespace}/${step.name}/${step.part.slice(step.part.indexOf(".") + 1)}`;
  if (/^\d+$/.test(step.part)) return `sub:${step.namespace}/${step.name}/${step.part}`;
  return null;
}

// Finds an event by id among the steps ofe recorded since the console opened, and shows its
// path: the nodes and edges it went through, and every step in order.
async function find(id) {
  id = id.trim();
  if (!id) return;
  let answer;
  try {
    answer = await (await get(`/console/path?id=${encodeURIComponent(id)}`)).json();
  } catch (e) {
    $("path-result").textContent = e.message;
    return;
  }
  state.path = new Set();
  for (const step of answer.steps) {
    const node = stepNode(step);
    if (node) state.path.add(node);
    // The bus an event was published on.
    if (node && step.stage === "published") {
      for (const e of state.graph.edges) if (e.from === node && e.kind === "publish") state.path.add(e.to);
    }
    // What a subscriber delivered to: its sink or topic nodes.
    if (node && step.stage === "delivered") {
      for (const e of state.graph.edges) if (e.from === node && e.kind !== "dead-letter") state.path.add(e.to);
    }
  }
  const box = $("path");
  box.hidden = false;
  $("path-title").textContent = `Event ${id}`;
  const since = answer.since ? new Date(answer.since).toLocaleTimeString() : "now";
  $("path-result").textContent = answer.steps.length
    ? `${answer.steps.length} steps${answer.lost ? ` (${answer.lost} steps of all events lost to bursts)` : ""}`
    : `not seen since the console opened (${since})`;
  const list = $("path-steps");
  list.replaceChildren(...answer.steps.map((step) => {
    const li = document.createElement("li");
    li.className = `stage-${step.stage}`;
    const where = step.kind === "EventSource" ? `${step.namespace}/${step.name} ${step.part}` : `${step.namespace}/${step.name}[${step.part}]`;
    li.textContent = `${step.at.slice(11, 23)} ${step.stage} at ${where}${step.detail ? ` — ${step.detail}` : ""}`;
    return li;
  }));
  render();
}

$("find").addEventListener("submit", (e) => {
  e.preventDefault();
  find($("find-id").value);
});
$("path-close").addEventListener("click", () => {
  state.path = new Set();
  $("path").hidden = true;
  render();
});
// Searching brings the first match into view: in a mesh of hundreds, it may be far down.
$("search").addEventListener("input", () => {
  render();
  if ($("search").value.trim()) {
    document.querySelector("g.node:not(.dim)")?.scrollIntoView({ block: "center", inline: "center" });
  }
});
$("namespace").addEventListener("change", render);
$("close").addEventListener("click", () => {
  state.selected = null;
  if (state.tail) state.tail.abort();
  $("panel").hidden = true;
  render();
});

graph();
live();
setInterval(graph, 5000);
