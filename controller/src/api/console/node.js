// The node page of the Metalbus console: the node's state and actions, its job, health,
// specs and inventory, metrics charts, history and events. It is kept current by the
// event stream that console.js reads (and by polling every 3 s while the stream is down).
// The actions follow seed 000 section 6.3: Retry only in the failed phases, everything
// disabled while an operation runs; a viewer gets no buttons at all.
"use strict";

const HISTORY_PER_PAGE = 20;
const SVG = "http://www.w3.org/2000/svg";
const page = {
  key: null, // what the address names: an id or a name
  id: null, // the node's id, once read
  node: null,
  period: "1h",
  historyOffset: 0,
  historyTotal: 0,
  watch: null, // an action whose outcome the page waits for
  gone: false,
  seq: 0, // goes up with each action and each node shown: older follow-ups stop
};

// Is `n` (a node, or a state message from the stream) in an operation?
function busy(n) { return n.phase === "Managing" || n.phase === "Unmanaging"; }

// Which actions the page shows, and which it enables, for node `n` and `role`
// (seed 000 section 6.3). Each: { show, enabled, why } (`why`: why it is disabled).
function buttonRules(n, role) {
  const retired = n.state === "retired";
  const r = {
    manage: {
      show: !retired && ["Unmanaged", "Managing", "ManagedFailed"].includes(n.phase),
      enabled: n.state === "discovered",
      why: n.state === "registered" ? "Its agent has not been seen yet" : "Use Retry",
    },
    unmanage: {
      show: ["Managed", "Unmanaging", "UnmanagedFailed", "Error"].includes(n.phase),
      enabled: n.phase === "Managed" || n.phase === "Error",
      why: "Use Retry",
    },
    retry: { show: n.phase === "ManagedFailed" || n.phase === "UnmanagedFailed", enabled: true },
    reboot: { show: !retired, enabled: !!n.online, why: "The agent is offline" },
    poweroff: { show: !retired, enabled: !!n.online, why: "The agent is offline" },
    wake: { show: !retired, enabled: !n.online, why: "The agent is online" },
    retire: {
      show: role === "admin" && !retired,
      enabled: ["registered", "discovered", "error", "installed", "active"].includes(n.state),
      why: "Only a settled node can be retired",
    },
  };
  const mayAct = role === "operator" || role === "admin";
  for (const rule of Object.values(r)) {
    if (!mayAct) rule.show = false;
    if (busy(n)) {
      rule.enabled = false;
      rule.why = "An operation is in progress";
    }
  }
  return r;
}

function node() { return encodeURIComponent(page.id || page.key); }

// What each action asks before it runs (null: nothing), how it calls the API, and
// whether the page then follows the node's phase to its outcome.
const ACTIONS = {
  manage: {
    ask: (n) => "Install " + n.name + "? Its disks are overwritten with a new operating system.",
    run: () => api("/api/v1/nodes/" + node() + "/manage", "POST", {}),
    follow: true,
  },
  unmanage: {
    ask: (n) => "Unmanage " + n.name + "? Its deprovision job runs and it returns to discovered.",
    run: () => api("/api/v1/nodes/" + node() + "/unmanage", "POST"),
    follow: true,
  },
  retry: {
    ask: () => "Are you sure you want to retry the manage/unmanage operation?",
    run: () => api("/api/v1/nodes/" + node() + "/retry", "POST"),
    follow: true,
  },
  reboot: {
    ask: (n) => "Reboot " + n.name + " now?",
    run: () => api("/api/v1/nodes/" + node() + "/reboot", "POST"),
  },
  poweroff: {
    ask: (n) => "Power off " + n.name + "? It stays off until it is woken.",
    run: () => api("/api/v1/nodes/" + node() + "/poweroff", "POST"),
  },
  wake: {
    ask: null,
    run: () => api("/api/v1/nodes/" + node() + "/wake", "POST"),
  },
  retire: {
    ask: (n) => "Retire " + n.name + "? A managed node is deprovisioned first. This cannot be undone.",
    run: () => api("/api/v1/nodes/" + node(), "DELETE"),
    follow: true,
  },
};

const OPERATION_DONE = ["succeeded", "failed", "rejected", "expired"];

function setStatus(message) { $("action-status").textContent = message; }

function setError(message) { $("action-error").textContent = message; }

// Asks `question` in a modal dialog; resolves true on Confirm. Escape cancels.
function confirmed(question) {
  const dialog = $("confirm");
  $("confirm-text").textContent = question;
  return new Promise((resolve) => {
    const done = (yes) => {
      dialog.removeEventListener("close", onClose);
      $("confirm-ok").onclick = null;
      $("confirm-cancel").onclick = null;
      if (dialog.open) dialog.close();
      resolve(yes);
    };
    const onClose = () => done(false);
    dialog.addEventListener("close", onClose);
    $("confirm-ok").onclick = () => done(true);
    $("confirm-cancel").onclick = () => done(false);
    dialog.showModal();
    $("confirm-cancel").focus();
  });
}

// Runs action `name` on this page's node: confirm, call, then follow the outcome.
// Returns the API's error message, if it refused.
async function act(name) {
  const action = ACTIONS[name];
  if (!action || !page.node) return "no such action";
  if (action.ask && !(await confirmed(action.ask(page.node)))) return null;
  const seq = ++page.seq;
  page.watch = null;
  setError("");
  setStatus("");
  $("actions").setAttribute("aria-busy", "true");
  for (const b of $("actions").querySelectorAll("button")) b.disabled = true;
  try {
    const answer = await action.run();
    if (action.follow) {
      page.watch = name;
      setStatus("In progress...");
      if (answer && answer.data && answer.data.id === page.id && answer.data.state) {
        applyNode(answer.data);
      } else {
        await loadNode();
      }
    } else {
      followOperation(name, answer.data.operation_id, seq);
    }
    return null;
  } catch (e) {
    if (e.status === 401) signOut("Signed out: " + e.message);
    setError(e.message);
    return e.message;
  } finally {
    $("actions").setAttribute("aria-busy", "false");
    if (page.node) renderButtons(page.node);
  }
}

// Shows what became of a command (reboot, power off, wake) until it settles, for two
// minutes at most, or until another action or another node takes the status line.
async function followOperation(name, id, seq) {
  const label = { reboot: "Reboot", poweroff: "Power off", wake: "Wake" }[name];
  const say = (what) => setStatus(label + " (operation " + id + "): " + what);
  say("sent");
  for (let i = 0; i < 60; i++) {
    let op;
    try {
      op = (await api("/api/v1/operations/" + encodeURIComponent(id))).data;
    } catch (e) {
      if (seq === page.seq) say(e.message);
      return;
    }
    if (seq !== page.seq) return;
    say(op.status + (op.reason ? ": " + op.reason : ""));
    if (OPERATION_DONE.includes(op.status)) return;
    await new Promise((r) => setTimeout(r, 2000));
  }
}

// After Manage, Unmanage, Retry or Retire: the outcome, from the node's phase.
function checkWatch(n) {
  if (!page.watch) return;
  if (busy(n)) {
    setStatus("In progress...");
  } else if (n.phase === "Managed" || n.phase === "Unmanaged") {
    page.watch = null;
    setStatus("Operation successful");
  } else {
    page.watch = null;
    setStatus("Operation failed, please retry");
  }
}

function renderButtons(n) {
  const rules = buttonRules(n, me.role);
  const bar = $("actions");
  let shown = 0;
  for (const b of bar.querySelectorAll("button")) {
    const rule = rules[b.dataset.action];
    b.hidden = !rule.show;
    b.disabled = !rule.enabled;
    b.title = rule.enabled ? "" : rule.why || "";
    if (rule.show) shown++;
  }
  bar.hidden = shown === 0;
}

function fact(list, term, value) {
  if (value === null || value === undefined || value === "") return;
  const dt = document.createElement("dt");
  dt.textContent = term;
  const dd = document.createElement("dd");
  if (value instanceof Node) dd.appendChild(value); else dd.textContent = text(value);
  list.append(dt, dd);
}

function facts(id, rows) {
  const list = $(id);
  list.replaceChildren();
  for (const [term, value] of rows) fact(list, term, value);
  if (!list.children.length) fact(list, "—", "nothing known yet");
}

function renderSummary(n) {
  $("node-title").textContent = n.name;
  $("node-state").textContent = n.state;
  $("node-state").className = stateClass(n.state);
  $("node-phase").textContent = n.phase;
  $("node-online").textContent = n.online ? "online" : "offline";
  $("node-version").textContent = n.version;
  document.title = "Metalbus: " + n.name;
  const p = n.progress;
  facts("job", [
    ["Plan", n.plan],
    ["Job", n.job ? n.job.kind + " (" + n.job.command_id + ")" : "none"],
    ["Progress", progressBar(p, "job")],
    ["Percent", p && typeof p.percent === "number" ? p.percent + " %" : null],
    ["Step", p && p.step],
    ["Message", p && p.message],
    ["Install attempts", n.install_attempts],
    ["Last error", n.last_install_error],
    ["State since", when(n.state_changed_at)],
  ]);
  renderButtons(n);
}

function applyNode(n) {
  page.node = n;
  page.id = n.id;
  renderSummary(n);
  checkWatch(n);
}

function gb(v) { return typeof v === "number" ? v.toFixed(1) + " GB" : null; }

function renderSpecs(n) {
  const s = n.specs || {};
  facts("specs", [
    ["Hostname", n.hostname],
    ["CPU", [s.cpu_model, s.cpu_cores && s.cpu_cores + " cores", s.cpu_threads && s.cpu_threads + " threads"]
      .filter(Boolean).join(", ")],
    ["Architecture", s.architecture],
    ["Memory", gb(s.memory_gb)],
    ["Storage", gb(s.storage_gb)],
    ["Vendor", s.vendor],
    ["Model", s.model],
    ["Serial number", s.serial_number],
    ["System UUID", s.system_uuid],
    ["MAC addresses", (n.mac_addresses || []).join(", ")],
    ["IP addresses", (n.ip_addresses || []).join(", ")],
    ["Labels", Object.entries(n.labels || {}).map(([k, v]) => k + "=" + v).join(", ")],
    ["Group", n.group],
    ["Control plane", n.control_plane ? "yes" : "no"],
    ["Agent version", n.agent_version],
    ["Agent protocol", n.agent_protocol],
    ["Registered", when(n.created_at)],
  ]);
}

function tableRows(id, rows) {
  $(id).tBodies[0].replaceChildren(...rows.map((values) => {
    const tr = document.createElement("tr");
    for (const v of values) cell(tr, v);
    return tr;
  }));
}

async function loadInventory() {
  try {
    const inv = (await api("/api/v1/nodes/" + node() + "/inventory")).data.inventory;
    tableRows("disks", (inv.disks || []).map((d) => [d.name, gb(d.size_bytes / 1e9), d.model, d.serial, d.transport]));
    tableRows("nics", (inv.nics || []).map((c) => [c.name, c.mac, [...(c.ipv4 || []), ...(c.ipv6 || [])].join(", "),
      c.speed_mbps ? c.speed_mbps + " Mb/s" : "", c.carrier ? "up" : "down"]));
  } catch (e) {
    tableRows("disks", []);
    tableRows("nics", []);
  }
}

async function loadHealth() {
  try {
    const st = (await api("/api/v1/nodes/" + node() + "/status")).data;
    const sys = st.system || {};
    facts("health", [
      ["Health", st.health],
      ["Last heartbeat", st.last_heartbeat ? when(st.last_heartbeat) : "never"],
      ["Offline reason", st.offline_reason],
      ["Uptime", st.uptime],
      ["Operating system", sys.os_image],
      ["Kernel", sys.kernel_version],
      ["Boot mode", sys.boot_mode],
    ]);
  } catch (e) {
    facts("health", [["Health", e.message]]);
  }
}

// Reads the node; false when there is none (or no answer).
async function loadNode() {
  if (!page.key) return false;
  try {
    const n = (await api("/api/v1/nodes/" + node())).data;
    if (page.node && page.node.id === n.id && page.node.version > n.version) return true;
    applyNode(n);
    renderSpecs(n);
    $("node-error").textContent = "";
    return true;
  } catch (e) {
    if (e.status === 401) {
      signOut("Signed out: " + e.message);
      return false;
    }
    $("node-error").textContent = e.message;
    if (e.status === 404) $("actions").hidden = true;
    return false;
  }
}

async function loadHistory() {
  const q = new URLSearchParams({ limit: HISTORY_PER_PAGE, offset: page.historyOffset });
  try {
    const h = await api("/api/v1/nodes/" + node() + "/history?" + q);
    page.historyTotal = h.total;
    tableRows("history", h.data.map((e) => [when(e.created_at), e.from_state, e.to_state, e.triggered_by, e.user, e.comment]));
    const pages = Math.max(1, Math.ceil(h.total / HISTORY_PER_PAGE));
    const at = Math.floor(page.historyOffset / HISTORY_PER_PAGE) + 1;
    $("history-page").textContent = "page " + at + " of " + pages + " (" + h.total + " changes)";
    $("history-prev").disabled = page.historyOffset === 0;
    $("history-next").disabled = page.historyOffset + HISTORY_PER_PAGE >= h.total;
  } catch (e) {
    $("history-page").textContent = e.message;
  }
}

async function loadEvents() {
  const q = new URLSearchParams({ limit: 100 });
  if ($("event-type").value) q.set("type", $("event-type").value);
  if ($("event-source").value) q.set("source", $("event-source").value);
  try {
    const ev = await api("/api/v1/nodes/" + node() + "/events?" + q);
    tableRows("events", ev.data.map((e) => [when(e.last_timestamp), e.type, e.reason, e.message, e.source, e.count]));
    $("events").tBodies[0].querySelectorAll("tr").forEach((tr) => {
      if (tr.cells[1].textContent === "Warning") tr.className = "warning";
    });
  } catch (e) {
    tableRows("events", [["", "", "", e.message, "", ""]]);
  }
}

// --- Metrics charts: SVG drawn here, no chart library. ---

function svg(name, attrs) {
  const el = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  return el;
}

function num(v, unit) { return typeof v === "number" ? v.toFixed(1) + unit : "—"; }

// One chart: lines over [from, to], values from 0 to `top`.
function chart(title, summary, lines, from, to, top, unit) {
  const W = 320;
  const H = 120;
  const figure = document.createElement("figure");
  figure.className = "chart";
  const caption = document.createElement("figcaption");
  caption.textContent = title + ": " + summary;
  const pic = svg("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": title + ": " + summary });
  pic.appendChild(svg("rect", { x: 0, y: 0, width: W, height: H, class: "frame" }));
  for (const f of [0.25, 0.5, 0.75]) {
    pic.appendChild(svg("line", { x1: 0, x2: W, y1: H * f, y2: H * f, class: "grid" }));
  }
  const t0 = Date.parse(from);
  const span = Math.max(1, Date.parse(to) - t0);
  for (const line of lines) {
    const pts = line.points
      .filter((p) => typeof p.value === "number")
      .map((p) => {
        const x = ((Date.parse(p.timestamp) - t0) / span) * W;
        const y = H - (Math.min(p.value, top) / top) * H;
        return x.toFixed(1) + "," + y.toFixed(1);
      });
    if (pts.length === 1) pts.push((W).toFixed(1) + "," + pts[0].split(",")[1]);
    pic.appendChild(svg("polyline", { points: pts.join(" "), class: "line " + line.cls }));
  }
  const scale = svg("text", { x: 4, y: 12, class: "scale" });
  scale.textContent = top.toFixed(top < 10 ? 1 : 0) + unit;
  pic.appendChild(scale);
  figure.append(caption, pic);
  return figure;
}

async function loadMetrics() {
  for (const b of $("periods").querySelectorAll("button")) {
    b.setAttribute("aria-checked", String(b.dataset.period === page.period));
  }
  let m;
  try {
    m = (await api("/api/v1/nodes/" + node() + "/metrics?period=" + page.period)).data;
  } catch (e) {
    $("charts").textContent = e.message;
    return;
  }
  const pct = (name, r) => chart(name,
    "now " + num(r.current_percentage, " %") + ", average " + num(r.average_percentage, " %") +
      ", peak " + num(r.peak_percentage, " %"),
    [{ cls: "a", points: r.series || [] }], m.from, m.to, 100, " %");
  const net = m.network || { series: [] };
  const series = net.series || [];
  const peak = Math.max(1, ...series.map((p) => Math.max(p.in_mbps || 0, p.out_mbps || 0)));
  $("charts").replaceChildren(
    pct("CPU", m.cpu || {}),
    pct("Memory", m.memory || {}),
    pct("Storage", m.storage || {}),
    chart("Network",
      "in " + num(net.in_mbps, " Mb/s") + ", out " + num(net.out_mbps, " Mb/s") +
        ", peak in " + num(net.peak_in_mbps, " Mb/s") + ", peak out " + num(net.peak_out_mbps, " Mb/s"),
      [
        { cls: "a", points: series.map((p) => ({ timestamp: p.timestamp, value: p.in_mbps })) },
        { cls: "b", points: series.map((p) => ({ timestamp: p.timestamp, value: p.out_mbps })) },
      ], m.from, m.to, peak, " Mb/s"),
  );
}

// --- What console.js calls. ---

function showNode(key) {
  if (page.key !== key) {
    page.seq++;
    page.key = key;
    page.id = null;
    page.node = null;
    page.watch = null;
    page.historyOffset = 0;
    page.gone = false;
    for (const id of ["node-title", "node-state", "node-phase", "node-online", "node-version",
      "action-status", "action-error", "node-error"]) {
      $(id).textContent = "";
    }
    $("actions").hidden = true;
    $("charts").replaceChildren();
  }
  $("node").hidden = false;
  return nodeReload();
}

function hideNode() {
  page.seq++;
  $("node").hidden = true;
  page.key = null;
  page.id = null;
  page.node = null;
  page.watch = null;
}

function nodeOpen() { return page.key !== null && !$("node").hidden; }

async function nodeReload() {
  if (!nodeOpen()) return;
  if (!(await loadNode())) return;
  await Promise.all([loadHealth(), loadInventory(), loadHistory(), loadEvents(), loadMetrics()]);
}

const historySoon = throttle(() => { if (nodeOpen()) { loadHistory(); loadNode(); } }, 500);
const eventsSoon = throttle(() => { if (nodeOpen()) loadEvents(); }, 500);

function nodeStateChanged(msg) {
  if (!nodeOpen() || msg.id !== page.id || !page.node || msg.version < page.node.version) return;
  const n = page.node;
  n.name = msg.name;
  n.state = msg.state;
  n.phase = msg.phase;
  n.status = { clusterStatus: { phase: msg.phase } };
  n.version = msg.version;
  n.online = msg.online;
  n.install_attempts = msg.install_attempts;
  n.last_install_error = msg.last_error;
  n.progress = msg.progress;
  n.state_changed_at = msg.since;
  renderSummary(n);
  checkWatch(n);
}

function nodeTransition(entry) {
  if (nodeOpen() && entry.node_id === page.id) historySoon();
}

function nodeEvent(nodeId) {
  if (nodeOpen() && nodeId === page.id) eventsSoon();
}

function nodeRemoved(nodeId) {
  if (!nodeOpen() || nodeId !== page.id) return;
  page.gone = true;
  $("node-error").textContent = "This node was removed (its registration was claimed by a new agent).";
  $("actions").hidden = true;
}

// Called every 3 s while the event stream is down.
function nodePoll() {
  if (nodeOpen() && !page.gone) loadNode();
}

function nodeSetup() {
  for (const b of $("actions").querySelectorAll("button")) {
    b.addEventListener("click", () => act(b.dataset.action));
  }
  for (const b of $("periods").querySelectorAll("button")) {
    b.addEventListener("click", () => { page.period = b.dataset.period; loadMetrics(); });
  }
  $("history-prev").addEventListener("click", () => {
    page.historyOffset = Math.max(0, page.historyOffset - HISTORY_PER_PAGE);
    loadHistory();
  });
  $("history-next").addEventListener("click", () => {
    page.historyOffset += HISTORY_PER_PAGE;
    loadHistory();
  });
  $("event-type").addEventListener("change", loadEvents);
  $("event-source").addEventListener("change", loadEvents);
  $("event-filters").addEventListener("submit", (e) => e.preventDefault());
  // Charts and health move slowly: read them again every 30 s.
  setInterval(() => { if (nodeOpen()) { loadMetrics(); loadHealth(); } }, 30000);
}
