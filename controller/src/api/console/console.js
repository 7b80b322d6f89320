// The Metalbus console: plain script, no build step, no third-party code. It signs in
// with an API token (kept in sessionStorage: this tab only), then calls /api/v1 like
// any client. The fleet table is paged, filtered and searched on the server, and kept
// current by the event stream (/api/v1/events/stream). The node page is in node.js, the
// campaign pages in campaigns.js.
"use strict";

const PER_PAGE = 50;
const KEY = "metalbus.token";
// The fleet table's page and filters (the API's own: state, phase, online, search,
// label, group).
const FILTERS = ["state", "phase", "online", "search", "label", "group"];
const view = { page: 1, pages: 1, state: "", phase: "", online: "", search: "", label: "", group: "" };
// Who signed in (`GET /api/v1/whoami`): the role decides which buttons exist.
const me = { name: "", role: "" };
// The event stream: whether it is up, and what it last said of each node
// ({state, online}): once its snapshot is read, the counts come from here, and a change
// that moves a node between counts or pages is noticed.
const stream = { up: false, ready: false, abort: null, known: new Map(), retry: 1000 };
// The fleet table's rows by node id.
const rows = new Map();

function $(id) { return document.getElementById(id); }

function token() { return sessionStorage.getItem(KEY); }

// A call to the API; an error carries the API's own message (seed 000's errorMessage).
async function api(path, method, body) {
  const init = { method: method || "GET", headers: { Authorization: "Bearer " + token() } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  let answer = null;
  try { answer = await res.json(); } catch (_) { answer = null; }
  if (!res.ok) {
    const msg = (answer && answer.errorMessage) || res.status + " " + res.statusText;
    const err = new Error(msg);
    err.status = res.status;
    throw err;
  }
  return answer;
}

// Runs `fn` at most once per `ms`; calls in between are folded into one later run.
function throttle(fn, ms) {
  let last = 0;
  let timer = null;
  return () => {
    if (timer) return;
    const wait = Math.max(0, last + ms - Date.now());
    timer = setTimeout(() => {
      timer = null;
      last = Date.now();
      fn();
    }, wait);
  };
}

function text(value) { return value === null || value === undefined ? "" : String(value); }

function cell(row, value, cls) {
  const td = document.createElement("td");
  if (value instanceof Node) td.appendChild(value); else td.textContent = text(value);
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

// What a state's icon says: settled, at work, failed, or not managed.
function stateClass(state) {
  if (state === "active") return "state ok";
  if (/failed|error/.test(state)) return "state failed";
  if (/^(pending|installing|installed|reprovision|migrating|deprovisioning)$/.test(state)) return "state busy";
  return "state idle";
}

function percent(v) { return typeof v === "number" ? v.toFixed(0) + " %" : ""; }

function since(ts) {
  if (!ts) return "never";
  const s = Math.max(0, Math.round((Date.now() - Date.parse(ts)) / 1000));
  if (s < 60) return s + " s ago";
  if (s < 3600) return Math.round(s / 60) + " min ago";
  if (s < 172800) return Math.round(s / 3600) + " h ago";
  return Math.round(s / 86400) + " days ago";
}

// A time as the operator reads it: local, with how long ago.
function when(ts) {
  if (!ts) return "";
  const d = new Date(ts);
  if (isNaN(d)) return String(ts);
  return d.toLocaleString() + " (" + since(ts) + ")";
}

function progressBar(progress, label) {
  if (!progress || typeof progress.percent !== "number") return "";
  const bar = document.createElement("progress");
  bar.max = 100;
  bar.value = progress.percent;
  bar.setAttribute("aria-label", label + " " + progress.percent + " %");
  return bar;
}

function nodeLink(n) {
  const a = document.createElement("a");
  a.href = "#/nodes/" + encodeURIComponent(n.id);
  a.textContent = n.name;
  return a;
}

function row(n) {
  const tr = document.createElement("tr");
  tr.dataset.node = n.id;
  tr.dataset.version = n.version;
  cell(tr, nodeLink(n));
  cell(tr, n.state, stateClass(n.state));
  cell(tr, n.phase);
  cell(tr, n.online ? "yes" : "no");
  cell(tr, percent(n.usage && n.usage.cpu_percentage));
  cell(tr, percent(n.usage && n.usage.memory_percentage));
  cell(tr, progressBar(n.progress, "install"));
  cell(tr, since(n.last_seen_at));
  cell(tr, Object.entries(n.labels || {}).map(([k, v]) => k + "=" + v).join(", "));
  cell(tr, n.group);
  return tr;
}

// A state message from the stream, applied to the node's row if it is on this page.
function updateRow(msg) {
  const tr = rows.get(msg.id);
  if (!tr || Number(tr.dataset.version) > msg.version) return;
  tr.dataset.version = msg.version;
  tr.cells[0].firstChild.textContent = msg.name;
  tr.cells[1].textContent = msg.state;
  tr.cells[1].className = stateClass(msg.state);
  tr.cells[2].textContent = msg.phase;
  tr.cells[3].textContent = msg.online ? "yes" : "no";
  tr.cells[6].replaceChildren(progressBar(msg.progress, "install"));
}

function showCounts(total, online, byState) {
  const items = [["total", total], ["online", online]];
  for (const [state, n] of Object.entries(byState).sort()) items.push([state, n]);
  $("counts").replaceChildren(...items.map(([label, n]) => {
    const li = document.createElement("li");
    li.textContent = label + ": " + n;
    return li;
  }));
}

// The counts from /api/v1/usage: at first, and while the stream is down.
async function loadCounts() {
  const s = (await api("/api/v1/usage")).data.summary;
  showCounts(s.total_nodes, s.online_nodes, s.by_state);
}

// The counts from what the stream said of every node, counted as /api/v1/usage counts
// them (retired nodes left out): no request, however large the fleet.
function tallyCounts() {
  let total = 0;
  let online = 0;
  const byState = {};
  for (const n of stream.known.values()) {
    if (n.state === "retired") continue;
    total++;
    if (n.online) online++;
    byState[n.state] = (byState[n.state] || 0) + 1;
  }
  showCounts(total, online, byState);
}

async function loadNodes() {
  const q = new URLSearchParams({ page: view.page, per_page: PER_PAGE });
  for (const f of FILTERS) if (view[f]) q.set(f, view[f]);
  const list = await api("/api/v1/nodes?" + q);
  const body = $("nodes").tBodies[0];
  rows.clear();
  body.replaceChildren(...list.data.map((n) => {
    const tr = row(n);
    rows.set(n.id, tr);
    return tr;
  }));
  view.pages = Math.max(1, list.pagination.pages);
  $("page").textContent = "page " + list.pagination.page + " of " + view.pages +
    " (" + list.pagination.total + " nodes)";
  $("prev").disabled = view.page <= 1;
  $("next").disabled = view.page >= view.pages;
  $("nodes").setAttribute("aria-busy", "false");
  if (!window.firstFleetRender) {
    window.firstFleetRender = performance.now();
    performance.mark("metalbus-fleet-rendered");
  }
}

// The table first (what the operator waits for), then the counts.
async function refresh() {
  if ($("fleet").hidden) return;
  try {
    await loadNodes();
    if (stream.up && stream.ready) tallyCounts(); else await loadCounts();
    $("fleet-error").textContent = "";
  } catch (e) {
    if (e.status === 401) return signOut("Signed out: " + e.message);
    $("fleet-error").textContent = e.message;
  }
}

// A node moved between states (or came or went): counts and the page may change.
const refreshSoon = throttle(refresh, 1000);
const countsSoon = throttle(() => { if (!$("fleet").hidden) tallyCounts(); }, 500);

// Fills a <select> with an enum of the OpenAPI document.
function fillSelect(select, values) {
  for (const v of values) {
    const o = document.createElement("option");
    o.value = v;
    o.textContent = v;
    select.appendChild(o);
  }
}

async function fillEnums() {
  const doc = await (await fetch("/api/v1/openapi.json")).json();
  const schemas = doc.components.schemas;
  fillSelect($("state"), schemas.NodeState.enum);
  fillSelect($("phase"), schemas.Phase.enum);
  fillSelect($("event-type"), schemas.EventType.enum);
  fillSelect($("event-source"), schemas.EventSource.enum);
}

// --- The event stream: fetch() reads it, because EventSource cannot send a token. ---

function onStreamEvent(name, data) {
  if (name === "ready") {
    stream.ready = true;
    if (!window.streamReady) window.streamReady = performance.now();
    // Whatever changed before the stream was open shows now.
    refreshSoon();
    campaignReload();
    return;
  }
  let msg;
  try { msg = JSON.parse(data); } catch (_) { return; }
  if (name === "state") {
    const before = stream.known.get(msg.id);
    stream.known.set(msg.id, { state: msg.state, online: msg.online });
    updateRow(msg);
    if (stream.ready && (!before || before.state !== msg.state || before.online !== msg.online)) {
      countsSoon();
      // The page's own rows are updated in place; a new node, or a filter on what
      // changed, may change which rows belong on it.
      if (!before || view.state || view.phase || view.online) refreshSoon();
    }
    nodeStateChanged(msg);
  } else if (name === "transition") {
    nodeTransition(msg);
  } else if (name === "event") {
    nodeEvent(msg.node_id, msg.event);
  } else if (name === "campaign") {
    campaignChanged(msg);
  } else if (name === "removed") {
    stream.known.delete(msg.node_id);
    countsSoon();
    refreshSoon();
    nodeRemoved(msg.node_id);
  } else if (name === "lagged") {
    // Changes were missed: open the stream again for a fresh snapshot.
    if (stream.abort) stream.abort.abort();
    follow();
    nodeReload();
    campaignReload();
  }
}

// One SSE block: `event:` and `data:` lines (comments start with ':').
function onBlock(block) {
  let name = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) name = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
  }
  if (data.length) onStreamEvent(name, data.join("\n"));
}

function showLive(up, note) {
  stream.up = up;
  const el = $("live");
  el.hidden = false;
  el.textContent = up ? "live" : note;
  el.className = up ? "live up" : "live down";
}

async function follow() {
  const abort = new AbortController();
  stream.abort = abort;
  stream.ready = false;
  stream.known = new Map();
  try {
    const res = await fetch("/api/v1/events/stream", {
      headers: { Authorization: "Bearer " + token() },
      signal: abort.signal,
    });
    if (res.status === 401) return signOut("Signed out: the token is no longer valid.");
    if (!res.ok || !res.body) throw new Error("stream answered " + res.status);
    showLive(true);
    stream.retry = 1000;
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += value.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buf.indexOf("\n\n")) >= 0) {
        onBlock(buf.slice(0, end));
        buf = buf.slice(end + 2);
      }
    }
  } catch (e) {
    if (abort.signal.aborted) return;
  }
  if (abort.signal.aborted || !token()) return;
  // Gone (controller restart, network): poll meanwhile, and try again, backing off.
  showLive(false, "not live: updating every 3 s");
  setTimeout(() => { if (token() && stream.abort === abort) follow(); }, stream.retry);
  stream.retry = Math.min(stream.retry * 2, 10000);
  refreshSoon();
}

function stopStream() {
  if (stream.abort) stream.abort.abort();
  stream.abort = null;
  stream.up = false;
  stream.known.clear();
}

// --- Pages: #/ is the fleet, #/nodes/ID a node, #/campaigns the campaigns and
// #/campaigns/ID one. ---

// A part of the address, decoded (as typed, if it is not valid percent-encoding).
function decoded(part) {
  try { return decodeURIComponent(part); } catch (_) { return part; }
}

// Shows the page the address names; resolves when it has rendered.
function route() {
  if (!token()) return Promise.resolve();
  const m = /^#\/nodes\/(.+)$/.exec(location.hash);
  const c = /^#\/campaigns(?:\/(.*))?$/.exec(location.hash);
  $("sign-in").hidden = true;
  $("sign-out").hidden = false;
  $("crumbs").hidden = false;
  for (const [id, here] of [["nav-fleet", !c && !m], ["nav-campaigns", !!c]]) {
    if (here) $(id).setAttribute("aria-current", "page"); else $(id).removeAttribute("aria-current");
  }
  if (!c) hideCampaigns();
  if (m) {
    $("fleet").hidden = true;
    return showNode(decoded(m[1]));
  }
  hideNode();
  if (c) {
    $("fleet").hidden = true;
    return c[1] ? showCampaign(decoded(c[1])) : showCampaigns();
  }
  $("fleet").hidden = false;
  document.title = "Metalbus: fleet";
  return refresh();
}

function signOut(message) {
  sessionStorage.removeItem(KEY);
  stopStream();
  hideNode();
  hideCampaigns();
  $("fleet").hidden = true;
  $("sign-out").hidden = true;
  $("crumbs").hidden = true;
  $("live").hidden = true;
  $("sign-in").hidden = false;
  $("who").textContent = "";
  me.name = "";
  me.role = "";
  $("sign-in-error").textContent = message || "";
  $("token").focus();
}

async function signIn(event) {
  event.preventDefault();
  sessionStorage.setItem(KEY, $("token").value.trim());
  $("token").value = "";
  await start();
}

async function start() {
  try {
    const who = await api("/api/v1/whoami");
    me.name = who.data.name;
    me.role = who.data.role;
  } catch (e) {
    return signOut(e.status === 401 ? "That token is not valid." : e.message);
  }
  $("who").textContent = me.name + " (" + me.role + ")";
  $("sign-in-error").textContent = "";
  // The page first; then the stream, whose snapshot of every node would compete with it.
  await route();
  follow();
}

let searchTimer = null;

document.addEventListener("DOMContentLoaded", () => {
  $("sign-in-form").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", () => signOut());
  // Choices apply at once; typed filters 250 ms after the last key.
  for (const f of FILTERS) {
    const typed = $(f).tagName === "INPUT";
    $(f).addEventListener(typed ? "input" : "change", () => {
      clearTimeout(searchTimer);
      searchTimer = setTimeout(() => {
        for (const g of FILTERS) view[g] = $(g).value.trim();
        view.page = 1;
        refresh();
      }, typed ? 250 : 0);
    });
  }
  $("filters").addEventListener("submit", (e) => e.preventDefault());
  $("prev").addEventListener("click", () => { view.page -= 1; refresh(); });
  $("next").addEventListener("click", () => { view.page += 1; refresh(); });
  window.addEventListener("hashchange", route);
  // While the stream is down, poll: the fleet, node and campaign pages every 3 s.
  setInterval(() => {
    if (token() && !stream.up) {
      refresh();
      nodePoll();
      campaignPoll();
    }
  }, 3000);
  // The stream carries states, not samples: CPU, memory and "last seen" are read
  // again with the page every 15 s.
  setInterval(() => { if (token() && stream.up) refresh(); }, 15000);
  nodeSetup();
  campaignSetup();
  fillEnums().catch((e) => { $("fleet-error").textContent = e.message; });
  if (token()) start(); else $("token").focus();
});
