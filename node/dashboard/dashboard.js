// RaftMQ's dashboard: plain JavaScript over the management API (/api), no build step.
// Every name shown comes from clients and is put in the page as text, never as HTML.
"use strict";

const REFRESH_MS = 5000;
const RATE_AGE_S = 300;
let auth = sessionStorage.getItem("raftmq-auth");
let refreshTimer = null;
const sortState = {};  // table id -> [column, reverse]
let lastGot = null;  // the last "get messages" answer: {queue, msgs}, kept across redraws

// --- DOM and API helpers -------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (v !== false && v !== null && v !== undefined) el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c !== null && c !== undefined) el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

function toast(text) {
  const t = document.getElementById("toast");
  t.textContent = text;
  t.style.display = "block";
  setTimeout(() => { t.style.display = "none"; }, 3000);
}

class ApiError extends Error {
  constructor(status, body) {
    super((body && (body.reason || body.error)) || `HTTP ${status}`);
    this.status = status;
  }
}

async function api(method, path, body, headers) {
  const resp = await fetch(path, {
    method,
    headers: { "Authorization": "Basic " + auth, "Content-Type": "application/json",
               "X-Requested-With": "XMLHttpRequest", ...(headers || {}) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = text; }
  if (resp.status === 401 && path === "/api/whoami") throw new ApiError(401, data);
  if (!resp.ok) throw new ApiError(resp.status, data);
  return data;
}

const enc = (s) => encodeURIComponent(s);
const num = (n) => (n === undefined || n === null ? "" : Number(n).toLocaleString("en"));
const rate = (stats, key) => {
  const d = stats && stats[key + "_details"];
  return d ? d.rate.toFixed(1) + "/s" : "0.0/s";
};

async function act(what, fn) {
  try {
    await fn();
    toast(what);
    await render();
  } catch (e) {
    toast(`${what} failed: ${e.message}`);
  }
}

// A sortable table: columns are [title, value-of-row, optional "num"]; rows render as text.
function table(id, columns, rows, rowExtra) {
  const [col, rev] = sortState[id] || [null, false];
  if (col !== null) {
    const get = columns[col][1];
    rows = [...rows].sort((a, b) => {
      const x = get(a), y = get(b);
      const r = typeof x === "number" && typeof y === "number" ? x - y
        : String(x).localeCompare(String(y));
      return rev ? -r : r;
    });
  }
  const head = columns.map(([title, , kind], i) => h("th", {
    class: [kind === "num" ? "num" : "", i === col ? "sorted" : "", i === col && rev ? "rev" : ""]
      .join(" ").trim() || null,
    onclick: () => { sortState[id] = [i, i === col ? !rev : false]; render(); },
  }, title));
  if (rowExtra) head.push(h("th", {}, ""));
  const body = rows.map((r) => h("tr", {},
    columns.map(([, get, kind, link]) => {
      const v = get(r);
      const text = kind === "num" ? num(v) : (v === undefined || v === null ? "" : String(v));
      return h("td", { class: kind === "num" ? "num" : null },
        link ? h("a", { href: link(r) }, text) : text);
    }),
    rowExtra ? h("td", {}, rowExtra(r)) : null));
  return h("table", { id }, h("thead", {}, h("tr", {}, head)),
    h("tbody", {}, body.length ? body
      : h("tr", {}, h("td", { class: "muted", colspan: head.length }, "none"))));
}

function form(id, fields, submitText, onsubmit) {
  const f = h("form", { class: "inline", id },
    fields.map(([name, label, attrs]) => h("label", {}, label,
      attrs && attrs.options
        ? h("select", { name }, attrs.options.map((o) => h("option", { value: o }, o)))
        : h("input", { name, ...(attrs || {}) }))),
    h("button", { type: "submit" }, submitText));
  f.addEventListener("submit", (ev) => {
    ev.preventDefault();
    onsubmit(Object.fromEntries(new FormData(f).entries()), f);
  });
  return f;
}

// --- charts ----------------------------------------------------------------------------

const SERIES = [["publish", "#2f6fdb"], ["deliver_get", "#067647"], ["ack", "#b54708"]];

function rateChart(stats) {
  const w = 640, hgt = 160, pad = 28;
  const lines = [];
  let max = 1;
  const points = {};
  for (const [name] of SERIES) {
    const samples = ((stats[name + "_details"] || {}).samples || []).slice().reverse();
    const pts = [];
    for (let i = 1; i < samples.length; i++) {
      const dt = (samples[i].timestamp - samples[i - 1].timestamp) / 1000;
      if (dt > 0) pts.push([samples[i].timestamp, Math.max(0, samples[i].sample - samples[i - 1].sample) / dt]);
    }
    points[name] = pts;
    for (const [, v] of pts) max = Math.max(max, v);
  }
  const now = Date.now(), t0 = now - RATE_AGE_S * 1000;
  const x = (t) => pad + ((t - t0) / (now - t0)) * (w - 2 * pad);
  const y = (v) => hgt - pad + 6 - (v / max) * (hgt - pad - 10);
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", "chart");
  svg.setAttribute("width", w);
  svg.setAttribute("height", hgt);
  svg.setAttribute("id", "rate-chart");
  const add = (tag, attrs, text) => {
    const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    if (text !== undefined) el.textContent = text;
    svg.append(el);
  };
  add("line", { x1: pad, y1: y(0), x2: w - pad, y2: y(0), stroke: "#c9ced6" });
  add("text", { x: 2, y: y(max) + 4, "font-size": 10, fill: "#667085" }, max.toFixed(0));
  add("text", { x: 2, y: y(0), "font-size": 10, fill: "#667085" }, "0");
  add("text", { x: pad, y: hgt - 4, "font-size": 10, fill: "#667085" }, `-${RATE_AGE_S / 60} min`);
  add("text", { x: w - pad - 20, y: hgt - 4, "font-size": 10, fill: "#667085" }, "now");
  for (const [name, color] of SERIES) {
    if (points[name].length) {
      add("polyline", { fill: "none", stroke: color, "stroke-width": 2,
                        points: points[name].map(([t, v]) => `${x(t)},${y(v)}`).join(" ") });
    }
  }
  lines.push(svg);
  lines.push(h("div", { class: "legend" }, SERIES.map(([name, color]) =>
    h("span", {}, h("i", { style: `background:${color}` }), `${name} ${rate(stats, name)}`))));
  return lines;
}

// --- pages -------------------------------------------------------------------------------

async function overview() {
  const [ov, nodes] = await Promise.all([
    api("GET", `/api/overview?msg_rates_age=${RATE_AGE_S}&msg_rates_incr=5`),
    api("GET", "/api/nodes").catch(() => []),
  ]);
  const leader = nodes.find((n) => n.raft && n.raft.role === "leader");
  const term = nodes.reduce((t, n) => Math.max(t, (n.raft && n.raft.term) || 0), 0);
  const tiles = [
    ["Nodes", `${nodes.filter((n) => n.running).length}/${nodes.length}`],
    ["Leader", leader ? leader.name : "none"], ["Term", term],
    ["Queues", ov.object_totals.queues], ["Connections", ov.object_totals.connections],
    ["Consumers", ov.object_totals.consumers], ["Ready", ov.queue_totals.messages_ready],
    ["Unacked", ov.queue_totals.messages_unacknowledged],
  ];
  return [
    h("h2", {}, "Overview"),
    h("div", { class: "tiles", id: "totals" }, tiles.map(([k, v]) =>
      h("div", { class: "tile" }, h("b", {}, typeof v === "number" ? num(v) : v), h("span", {}, k)))),
    h("h2", {}, "Message rates"), rateChart(ov.message_stats || {}),
    h("h2", {}, "Nodes"), nodesTable(nodes),
  ];
}

function nodesTable(nodes) {
  return table("nodes", [
    ["Node", (n) => n.name], ["Running", (n) => (n.running ? "yes" : "NO")],
    ["Role", (n) => (n.raft ? n.raft.role : "")], ["Term", (n) => (n.raft ? n.raft.term : ""), "num"],
    ["Commit index", (n) => (n.raft ? n.raft.commit_index : ""), "num"],
    ["Applied", (n) => (n.raft ? n.raft.last_applied : ""), "num"],
    ["Memory", (n) => (n.mem_used ? `${(n.mem_used / 2 ** 20).toFixed(0)} MiB` : "")],
    ["Alarms", (n) => [n.mem_alarm ? "memory" : "", n.disk_free_alarm ? "disk" : ""].filter(Boolean).join(", ")],
  ], nodes);
}

async function queues() {
  const list = await api("GET", "/api/queues");
  return [
    h("h2", {}, "Queues"),
    table("queues", [
      ["Name", (q) => q.name, null, (q) => `#/queue/${enc(q.vhost)}/${enc(q.name)}`],
      ["Vhost", (q) => q.vhost], ["Type", (q) => q.type],
      ["Ready", (q) => q.messages_ready, "num"], ["Unacked", (q) => q.messages_unacknowledged, "num"],
      ["Total", (q) => q.messages, "num"], ["Consumers", (q) => q.consumers, "num"],
      ["Policy", (q) => [q.policy, q.operator_policy].filter((p) => p).join(" / ")],
      ["Incoming", (q) => rate(q.message_stats, "publish")],
      ["Delivered", (q) => rate(q.message_stats, "deliver_get")],
    ], list),
    h("h2", {}, "Add a queue"),
    form("add-queue", [["vhost", "Vhost", { value: "/" }], ["name", "Name", { required: true }],
      ["durable", "Durable", { options: ["true", "false"] }]], "Add queue",
    (v) => act(`queue ${v.name} added`, () =>
      api("PUT", `/api/queues/${enc(v.vhost)}/${enc(v.name)}`, { durable: v.durable === "true" }))),
  ];
}

async function queuePage(vhost, name) {
  const base = `/api/queues/${enc(vhost)}/${enc(name)}`;
  const [q, bindings] = await Promise.all([api("GET", base), api("GET", base + "/bindings")]);
  const got = h("div", { id: "got" });
  const showGot = (msgs) => got.replaceChildren(msgs.length ? table("messages", [
    ["Payload", (m) => m.payload], ["Routing key", (m) => m.routing_key],
    ["Redelivered", (m) => m.redelivered], ["Properties", (m) => JSON.stringify(m.properties)],
  ], msgs) : h("p", { class: "muted" }, "Queue is empty"));
  if (lastGot && lastGot.queue === base) showGot(lastGot.msgs);
  return [
    h("h2", {}, `Queue ${q.name}`, h("span", { class: "muted" }, ` in ${q.vhost}`)),
    h("div", { class: "tiles", id: "queue-totals" }, [
      ["Ready", q.messages_ready], ["Unacked", q.messages_unacknowledged],
      ["Total", q.messages], ["Consumers", q.consumers],
    ].map(([k, v]) => h("div", { class: "tile" }, h("b", {}, num(v)), h("span", {}, k)))),
    h("p", { class: "muted" }, `type ${q.type}, durable ${q.durable}, auto-delete ${q.auto_delete}, `
      + `arguments ${JSON.stringify(q.arguments)}`),
    h("h2", {}, "Consumers"),
    table("consumers", [
      ["Tag", (c) => c.consumer_tag], ["Channel", (c) => c.channel_details.name],
      ["Ack required", (c) => c.ack_required], ["Prefetch", (c) => c.prefetch_count, "num"],
    ], q.consumer_details || []),
    h("h2", {}, "Bindings"),
    table("bindings", [["From", (b) => b.source || "(default exchange)"],
      ["Routing key", (b) => b.routing_key], ["Arguments", (b) => JSON.stringify(b.arguments)]],
    bindings),
    h("h2", {}, "Publish a message"),
    form("publish", [["payload", "Payload", { required: true }],
      ["delivery_mode", "Delivery mode", { options: ["2", "1"] }]], "Publish",
    (v) => act("message published", () => api("POST",
      `/api/exchanges/${enc(vhost)}/amq.default/publish`, {
        routing_key: name, payload: v.payload, payload_encoding: "string",
        properties: { delivery_mode: Number(v.delivery_mode) } }))),
    h("h2", {}, "Get messages"),
    form("get", [["count", "Count", { value: "1", type: "number", min: "1" }],
      ["ackmode", "Ack mode", { options: ["ack_requeue_true", "ack_requeue_false",
        "reject_requeue_true", "reject_requeue_false"] }]], "Get messages",
    async (v) => {
      try {
        const msgs = await api("POST", base + "/get",
          { count: Number(v.count), ackmode: v.ackmode, encoding: "auto", truncate: 50000 });
        lastGot = { queue: base, msgs };
        showGot(msgs);
      } catch (e) { toast(`get failed: ${e.message}`); }
    }),
    got,
    h("h2", {}, "Purge or delete"),
    h("p", {},
      h("button", { class: "danger", id: "purge", onclick: () => act("queue purged",
        () => api("DELETE", base + "/contents")) }, "Purge"), " ",
      h("button", { class: "danger", id: "delete", onclick: () => {
        if (confirm(`Delete queue ${name}?`)) {
          act("queue deleted", async () => { await api("DELETE", base); location.hash = "#/queues"; });
        }
      } }, "Delete")),
  ];
}

async function exchanges() {
  const list = await api("GET", "/api/exchanges");
  return [
    h("h2", {}, "Exchanges"),
    table("exchanges", [["Name", (x) => x.name || "(AMQP default)"], ["Vhost", (x) => x.vhost],
      ["Type", (x) => x.type], ["Durable", (x) => x.durable], ["Internal", (x) => x.internal]], list),
    h("h2", {}, "Add an exchange"),
    form("add-exchange", [["vhost", "Vhost", { value: "/" }], ["name", "Name", { required: true }],
      ["type", "Type", { options: ["direct", "fanout", "topic", "headers"] }]], "Add exchange",
    (v) => act(`exchange ${v.name} added`, () =>
      api("PUT", `/api/exchanges/${enc(v.vhost)}/${enc(v.name)}`, { type: v.type, durable: true }))),
  ];
}

async function connections() {
  const list = await api("GET", "/api/connections");
  return [
    h("h2", {}, "Connections"),
    table("connections", [["Name", (c) => c.name], ["Node", (c) => c.node], ["User", (c) => c.user],
      ["Vhost", (c) => c.vhost], ["Client", (c) => (c.peer_host ? `${c.peer_host}:${c.peer_port}` : "")],
      ["Channels", (c) => c.channels, "num"]], list,
    (c) => h("button", { class: "danger", onclick: () => act(`connection ${c.name} closed`,
      () => api("DELETE", `/api/connections/${enc(c.name)}`, undefined,
        { "X-Reason": "Closed from the RaftMQ dashboard" })) }, "Close")),
  ];
}

async function channels() {
  const list = await api("GET", "/api/channels");
  return [h("h2", {}, "Channels"),
    table("channels", [["Channel", (c) => c.name], ["User", (c) => c.user], ["Vhost", (c) => c.vhost],
      ["Consumers", (c) => c.consumer_count, "num"],
      ["Unacked", (c) => c.messages_unacknowledged, "num"], ["Prefetch", (c) => c.prefetch_count, "num"]],
    list)];
}

async function admin() {
  const [users, vhosts, perms] = await Promise.all([api("GET", "/api/users"),
    api("GET", "/api/vhosts"), api("GET", "/api/permissions")]);
  return [
    h("h2", {}, "Users"),
    table("users", [["Name", (u) => u.name], ["Tags", (u) => u.tags.join(", ")]], users,
      (u) => h("button", { class: "danger", onclick: () => {
        if (confirm(`Delete user ${u.name}? Its connections are closed.`)) {
          act(`user ${u.name} deleted`, () => api("DELETE", `/api/users/${enc(u.name)}`));
        }
      } }, "Delete")),
    form("add-user", [["name", "Name", { required: true }],
      ["password", "Password", { type: "password", required: true }],
      ["tags", "Tags", { placeholder: "administrator,monitoring" }]], "Add user",
    (v) => act(`user ${v.name} added`, () => api("PUT", `/api/users/${enc(v.name)}`,
      { password: v.password, tags: v.tags }))),
    h("h2", {}, "Virtual hosts"),
    table("vhosts", [["Name", (v) => v.name], ["Description", (v) => v.description],
      ["Messages", (v) => v.messages, "num"]], vhosts),
    form("add-vhost", [["name", "Name", { required: true }], ["description", "Description"]],
      "Add vhost", (v) => act(`vhost ${v.name} added`, () =>
        api("PUT", `/api/vhosts/${enc(v.name)}`, { description: v.description }))),
    h("h2", {}, "Permissions"),
    table("permissions", [["User", (p) => p.user], ["Vhost", (p) => p.vhost],
      ["Configure", (p) => p.configure], ["Write", (p) => p.write], ["Read", (p) => p.read]], perms),
    form("set-permission", [["user", "User", { required: true }], ["vhost", "Vhost", { value: "/" }],
      ["configure", "Configure", { value: ".*" }], ["write", "Write", { value: ".*" }],
      ["read", "Read", { value: ".*" }]], "Set permission",
    (v) => act(`permissions of ${v.user} set`, () => api("PUT",
      `/api/permissions/${enc(v.vhost)}/${enc(v.user)}`,
      { configure: v.configure, write: v.write, read: v.read }))),
  ];
}

// Policies and operator policies (cluster/machine/policies.py): the highest-priority match
// applies; the operator policy's limits cap the policy's and the clients'.
async function policies() {
  const [list, ops] = await Promise.all([api("GET", "/api/policies"),
    api("GET", "/api/operator-policies")]);
  const columns = [["Name", (p) => p.name], ["Vhost", (p) => p.vhost], ["Pattern", (p) => p.pattern],
    ["Apply to", (p) => p["apply-to"]], ["Priority", (p) => p.priority, "num"],
    ["Definition", (p) => JSON.stringify(p.definition)]];
  const del = (path, what) => (p) => h("button", { class: "danger", onclick: () =>
    act(`${what} ${p.name} deleted`, () => api("DELETE", `${path}/${enc(p.vhost)}/${enc(p.name)}`)) },
  "Delete");
  const setForm = (id, path, what) => form(id, [["name", "Name", { required: true }],
    ["vhost", "Vhost", { value: "/" }], ["pattern", "Pattern", { required: true, placeholder: "^orders\\." }],
    ["apply", "Apply to", { options: ["queues", "exchanges", "all"] }],
    ["priority", "Priority", { value: "0", type: "number" }],
    ["definition", "Definition (JSON)", { required: true, placeholder: '{"max-length": 1000}' }]],
  `Set ${what}`, (v) => act(`${what} ${v.name} set`, () => api("PUT",
    `${path}/${enc(v.vhost)}/${enc(v.name)}`, { pattern: v.pattern, "apply-to": v.apply,
      priority: Number(v.priority || 0), definition: JSON.parse(v.definition) })));
  return [
    h("h2", {}, "Policies"),
    table("policies", columns, list, del("/api/policies", "policy")),
    setForm("set-policy", "/api/policies", "policy"),
    h("h2", {}, "Operator policies"),
    table("operator-policies", columns, ops, del("/api/operator-policies", "operator policy")),
    setForm("set-operator-policy", "/api/operator-policies", "operator policy"),
  ];
}

async function cluster() {
  const nodes = await api("GET", "/api/nodes");
  const me = nodes.find((n) => n.raft) || {};
  const lag = (me.raft && me.raft.follower_lag) || {};
  return [
    h("h2", {}, "Cluster members"), nodesTable(nodes),
    h("p", { class: "muted" }, "Follower lag (entries behind the leader's commit index, as this node sees it): "
      + (Object.keys(lag).length ? Object.entries(lag).map(([a, l]) => `${a}: ${l}`).join(", ") : "n/a")),
    h("h2", {}, "Add or remove a member"),
    form("members", [["address", "Raft address (host:port)", { required: true }],
      ["op", "Change", { options: ["add", "remove"] }]], "Apply",
    (v) => act(`member ${v.address} ${v.op === "add" ? "added" : "removed"}`, async () => {
      const r = await api(v.op === "add" ? "POST" : "DELETE", `/api/members?address=${enc(v.address)}`);
      if (r && r.ok === false) throw new Error(r.error);
    })),
  ];
}

// --- routing, login, refresh -------------------------------------------------------------

const ROUTES = [
  [/^#?\/?$/, overview], [/^#\/queues$/, queues], [/^#\/queue\/([^/]*)\/(.*)$/, queuePage],
  [/^#\/exchanges$/, exchanges], [/^#\/connections$/, connections], [/^#\/channels$/, channels],
  [/^#\/policies$/, policies], [/^#\/admin$/, admin], [/^#\/cluster$/, cluster],
];

// ``refresh``: a timed redraw, skipped while someone is typing in one of the page's forms.
async function render(refresh) {
  clearTimeout(refreshTimer);
  if (!auth) return showLogin();
  const hash = location.hash || "#/";
  for (const a of document.querySelectorAll("#nav a")) {
    a.classList.toggle("active", hash === a.getAttribute("href")
      || (hash.startsWith("#/queue/") && a.getAttribute("href") === "#/queues"));
  }
  const page = document.getElementById("page");
  const typing = ["INPUT", "SELECT", "TEXTAREA"].includes(document.activeElement.tagName);
  const busy = refresh === true && typing && page.contains(document.activeElement);
  for (const [re, fn] of ROUTES) {
    const m = hash.match(re);
    if (!m) continue;
    if (!busy) {  // never redraw under someone typing in a form
      try {
        const content = await fn(...m.slice(1).map(decodeURIComponent));
        page.replaceChildren(...[content].flat(Infinity));
      } catch (e) {
        if (e.status === 401) return showLogin("Not authorised: log in again.");
        page.replaceChildren(h("p", { class: "error" }, e.message));
      }
    }
    break;
  }
  refreshTimer = setTimeout(() => render(true), REFRESH_MS);
}

function showLogin(message) {
  document.getElementById("nav").hidden = true;
  document.getElementById("page").replaceChildren();
  document.getElementById("who").replaceChildren();
  const f = document.getElementById("login");
  f.hidden = false;
  document.getElementById("login-error").textContent = message || "";
}

async function login(user, password) {
  auth = btoa(unescape(encodeURIComponent(`${user}:${password}`)));
  try {
    const me = await api("GET", "/api/whoami");
    sessionStorage.setItem("raftmq-auth", auth);
    document.getElementById("login").hidden = true;
    document.getElementById("nav").hidden = false;
    document.getElementById("who").replaceChildren(`${me.name} (${me.tags.join(", ") || "no tags"})`,
      h("button", { class: "plain", id: "logout", onclick: () => {
        sessionStorage.removeItem("raftmq-auth"); auth = null; showLogin();
      } }, "Log out"));
    await render();
  } catch (e) {
    auth = null;
    showLogin("Login failed");
  }
}

document.getElementById("login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const data = new FormData(ev.target);
  login(data.get("user"), data.get("password"));
});
window.addEventListener("hashchange", () => render(false));
if (auth) {
  const [user, ...rest] = decodeURIComponent(escape(atob(auth))).split(":");
  login(user, rest.join(":"));
} else {
  showLogin();
}
