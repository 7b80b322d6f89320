// The Metalbus console: plain script, no build step, no third-party code. It signs in
// with an API token (kept in sessionStorage: this tab only), then calls /api/v1 like
// any client. The fleet table is paged, filtered and searched on the server.
"use strict";

const PER_PAGE = 50;
const KEY = "metalbus.token";
const view = { page: 1, pages: 1, state: "", search: "" };

function $(id) { return document.getElementById(id); }

function token() { return sessionStorage.getItem(KEY); }

// A call to the API; an error carries the API's own message (seed 000's errorMessage).
async function api(path) {
  const res = await fetch(path, { headers: { Authorization: "Bearer " + token() } });
  let body = null;
  try { body = await res.json(); } catch (_) { body = null; }
  if (!res.ok) {
    const msg = (body && body.errorMessage) || res.status + " " + res.statusText;
    const err = new Error(msg);
    err.status = res.status;
    throw err;
  }
  return body;
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
  if (/failed/.test(state)) return "state failed";
  if (/^(pending|installing|installed|deprovisioning|rebooting)$/.test(state)) return "state busy";
  return "state idle";
}

function percent(v) { return typeof v === "number" ? v.toFixed(0) + " %" : ""; }

function since(ts) {
  if (!ts) return "never";
  const s = Math.max(0, Math.round((Date.now() - Date.parse(ts)) / 1000));
  if (s < 60) return s + " s ago";
  if (s < 3600) return Math.round(s / 60) + " min ago";
  return Math.round(s / 3600) + " h ago";
}

function progressOf(n) {
  if (!n.progress || typeof n.progress.percent !== "number") return "";
  const bar = document.createElement("progress");
  bar.max = 100;
  bar.value = n.progress.percent;
  bar.setAttribute("aria-label", "install " + n.progress.percent + " %");
  return bar;
}

function row(n) {
  const tr = document.createElement("tr");
  tr.dataset.node = n.id;
  cell(tr, n.name);
  cell(tr, n.state, stateClass(n.state));
  cell(tr, n.phase);
  cell(tr, n.online ? "yes" : "no");
  cell(tr, percent(n.usage && n.usage.cpu_percentage));
  cell(tr, percent(n.usage && n.usage.memory_percentage));
  cell(tr, progressOf(n));
  cell(tr, since(n.last_seen_at));
  cell(tr, Object.entries(n.labels || {}).map(([k, v]) => k + "=" + v).join(", "));
  cell(tr, n.group);
  return tr;
}

async function loadCounts() {
  const usage = await api("/api/v1/usage");
  const s = usage.data.summary;
  const list = $("counts");
  list.replaceChildren();
  const add = (label, n) => {
    const li = document.createElement("li");
    li.textContent = label + ": " + n;
    list.appendChild(li);
  };
  add("total", s.total_nodes);
  add("online", s.online_nodes);
  for (const [state, n] of Object.entries(s.by_state).sort()) add(state, n);
}

async function loadNodes() {
  const q = new URLSearchParams({ page: view.page, per_page: PER_PAGE });
  if (view.state) q.set("state", view.state);
  if (view.search) q.set("search", view.search);
  const list = await api("/api/v1/nodes?" + q);
  const body = $("nodes").tBodies[0];
  body.replaceChildren(...list.data.map(row));
  view.pages = Math.max(1, list.pagination.pages);
  $("page").textContent = "page " + list.pagination.page + " of " + view.pages +
    " (" + list.pagination.total + " nodes)";
  $("prev").disabled = view.page <= 1;
  $("next").disabled = view.page >= view.pages;
  $("nodes").setAttribute("aria-busy", "false");
}

async function refresh() {
  $("fleet-error").textContent = "";
  try {
    await Promise.all([loadCounts(), loadNodes()]);
  } catch (e) {
    if (e.status === 401) return signOut("Signed out: " + e.message);
    $("fleet-error").textContent = e.message;
  }
}

async function fillStates() {
  const doc = await (await fetch("/api/v1/openapi.json")).json();
  const states = doc.components.schemas.NodeState.enum;
  const select = $("state");
  for (const s of states) {
    const o = document.createElement("option");
    o.value = s;
    o.textContent = s;
    select.appendChild(o);
  }
}

function showFleet() {
  $("sign-in").hidden = true;
  $("fleet").hidden = false;
  $("sign-out").hidden = false;
  $("who").textContent = "signed in";
}

function signOut(message) {
  sessionStorage.removeItem(KEY);
  $("fleet").hidden = true;
  $("sign-out").hidden = true;
  $("sign-in").hidden = false;
  $("who").textContent = "";
  $("sign-in-error").textContent = message || "";
  $("token").focus();
}

async function signIn(event) {
  event.preventDefault();
  sessionStorage.setItem(KEY, $("token").value.trim());
  $("token").value = "";
  try {
    await api("/api/v1/usage");
  } catch (e) {
    return signOut(e.status === 401 ? "That token is not valid." : e.message);
  }
  start();
}

function start() {
  showFleet();
  refresh();
}

let searchTimer = null;

document.addEventListener("DOMContentLoaded", () => {
  $("sign-in-form").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", () => signOut());
  $("state").addEventListener("change", () => {
    view.state = $("state").value;
    view.page = 1;
    refresh();
  });
  $("search").addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => {
      view.search = $("search").value.trim();
      view.page = 1;
      refresh();
    }, 250);
  });
  $("filters").addEventListener("submit", (e) => e.preventDefault());
  $("prev").addEventListener("click", () => { view.page -= 1; refresh(); });
  $("next").addEventListener("click", () => { view.page += 1; refresh(); });
  fillStates().catch((e) => { $("fleet-error").textContent = e.message; });
  if (token()) start(); else $("token").focus();
});
