// The campaign pages of the Metalbus console: #/campaigns lists the campaigns, newest
// first; #/campaigns/ID shows one, its progress and counts, its Pause, Resume and Cancel
// (operators and admins only), and its nodes' outcomes, 50 at a time. Both follow the
// event stream's `campaign` events that console.js reads, and poll every 3 s while the
// stream is down. Everything from the API is inserted as text.
"use strict";

const CAMPAIGNS_PER_PAGE = 50;
const CAMPAIGN_NODES_PER_PAGE = 50;
const camp = {
  listPage: 1,
  listPages: 1,
  listRows: new Map(), // the list's rows by campaign id
  key: null, // the id the address names
  view: null, // the campaign shown (a CampaignView)
  nodesPage: 1,
  nodesPages: 1,
  outcome: "",
  seq: 0, // goes up with each campaign shown: older answers are dropped
};

// What each button asks before it runs (null: nothing) and what the status line says
// once the API took it.
const CAMPAIGN_ACTIONS = {
  pause: { ask: null, done: "Paused: no node starts; the nodes in flight finish." },
  resume: { ask: null, done: "Resumed." },
  cancel: {
    ask: (v) => "Cancel campaign " + v.id + "? Its pending nodes are skipped; the nodes in flight finish. " +
      "This cannot be undone.",
    done: "Cancelled: the nodes in flight finish.",
  },
};

function campaignDone(c) { return c.succeeded + c.failed + c.skipped; }

// Whether view `v` is not older than `cur` (the same campaign): a page read and the
// stream's events may arrive in either order. Within one instant, nodes only move on.
function campaignNotOlder(v, cur) {
  if (!cur || cur.id !== v.id) return true;
  const t = Date.parse(v.updated_at) - Date.parse(cur.updated_at);
  if (t !== 0) return t > 0;
  return v.counts.pending <= cur.counts.pending && campaignDone(v.counts) >= campaignDone(cur.counts);
}

// What a campaign state's icon says: at work, settled, stopped by hand or by a rule.
function campaignStateClass(state) {
  if (state === "running") return "state busy";
  if (state === "completed") return "state ok";
  if (state === "aborted") return "state failed";
  return "state idle";
}

function outcomeClass(outcome) {
  if (outcome === "succeeded") return "state ok";
  if (outcome === "failed") return "state failed";
  if (outcome === "in_flight") return "state busy";
  return "state idle";
}

function campaignBar(counts) {
  const bar = document.createElement("progress");
  bar.max = Math.max(1, counts.total);
  bar.value = campaignDone(counts);
  bar.setAttribute("aria-label", campaignDone(counts) + " of " + counts.total + " nodes done");
  return bar;
}

function campaignProgress(counts) {
  const span = document.createElement("span");
  span.className = "progress";
  const label = document.createElement("span");
  label.textContent = " " + campaignDone(counts) + "/" + counts.total;
  span.append(campaignBar(counts), label);
  return span;
}

function campaignLink(v) {
  const a = document.createElement("a");
  a.href = "#/campaigns/" + encodeURIComponent(v.id);
  a.textContent = v.id;
  return a;
}

function campaignAction(v) { return v.plan ? v.action + " (plan " + v.plan + ")" : v.action; }

// --- #/campaigns: the list. ---

function campaignRow(v) {
  const tr = document.createElement("tr");
  tr.dataset.campaign = v.id;
  cell(tr, campaignLink(v));
  cell(tr, campaignAction(v));
  cell(tr, "");
  cell(tr, "");
  cell(tr, "");
  cell(tr, "");
  cell(tr, since(v.created_at));
  fillCampaignRow(tr, v);
  return tr;
}

function fillCampaignRow(tr, v) {
  tr.dataset.updated = v.updated_at;
  tr.campaign = v;
  tr.cells[2].textContent = v.state;
  tr.cells[2].className = campaignStateClass(v.state);
  tr.cells[3].replaceChildren(campaignProgress(v.counts));
  tr.cells[4].textContent = text(v.counts.failed);
  tr.cells[5].textContent = text(v.counts.in_flight);
}

async function loadCampaignList() {
  const q = new URLSearchParams({ page: camp.listPage, per_page: CAMPAIGNS_PER_PAGE });
  try {
    const list = await api("/api/v1/campaigns?" + q);
    if ($("campaigns").hidden) return;
    camp.listRows.clear();
    $("campaign-list").tBodies[0].replaceChildren(...list.data.map((v) => {
      const tr = campaignRow(v);
      camp.listRows.set(v.id, tr);
      return tr;
    }));
    camp.listPages = Math.max(1, list.pagination.pages);
    $("campaigns-page").textContent = "page " + list.pagination.page + " of " + camp.listPages +
      " (" + list.pagination.total + " campaigns)";
    $("campaigns-prev").disabled = camp.listPage <= 1;
    $("campaigns-next").disabled = camp.listPage >= camp.listPages;
    $("campaigns-empty").hidden = list.pagination.total > 0;
    $("campaigns-error").textContent = "";
  } catch (e) {
    if (e.status === 401) return signOut("Signed out: " + e.message);
    $("campaigns-error").textContent = e.message;
  }
}

const campaignListSoon = throttle(() => { if (!$("campaigns").hidden) loadCampaignList(); }, 1000);

// --- #/campaigns/ID: one campaign. ---

function campaignId() { return encodeURIComponent(camp.view ? camp.view.id : camp.key); }

function describeSelector(s) {
  const parts = [];
  if (s.label && s.label.length) parts.push("labels " + s.label.join(", "));
  if (s.state && s.state.length) parts.push("state " + s.state.join(" or "));
  if (s.group) parts.push("group " + s.group);
  if (s.search) parts.push("search \"" + s.search + "\"");
  if (typeof s.online === "boolean") parts.push(s.online ? "online" : "offline");
  if (s.nodes && s.nodes.length) {
    const shown = s.nodes.slice(0, 5).join(", ");
    parts.push(s.nodes.length > 5 ? s.nodes.length + " nodes: " + shown + ", ..." : "nodes " + shown);
  }
  return parts.join("; ");
}

function describeAbort(a) {
  const parts = [];
  if (typeof a.failure_ratio === "number") {
    parts.push("pause when " + Math.round(a.failure_ratio * 100) + " % failed, after " +
      (a.min_executed || 1) + " finished");
  }
  if (typeof a.max_failures === "number") parts.push("pause at " + a.max_failures + " failures");
  return parts.length ? parts.join("; ") : "none";
}

function renderCampaignButtons(v) {
  const mayAct = me.role === "operator" || me.role === "admin";
  const show = {
    pause: v.state === "running",
    resume: v.state === "paused",
    cancel: v.state === "running" || v.state === "paused",
  };
  const bar = $("campaign-actions");
  let shown = 0;
  for (const b of bar.querySelectorAll("button")) {
    b.hidden = !mayAct || !show[b.dataset.campaignAction];
    b.disabled = bar.getAttribute("aria-busy") === "true";
    if (!b.hidden) shown++;
  }
  bar.hidden = shown === 0;
}

// Sets an element's text only when it changes: a live region announces every write.
function setText(id, value) {
  if ($(id).textContent !== value) $(id).textContent = value;
}

function renderCampaign(v) {
  const c = v.counts;
  setText("campaign-title", "Campaign " + v.id);
  document.title = "Metalbus: campaign " + v.id;
  setText("campaign-state", v.state);
  $("campaign-state").className = campaignStateClass(v.state);
  setText("campaign-action", campaignAction(v));
  setText("campaign-reason", v.reason || "");
  const bar = $("campaign-progress");
  bar.max = Math.max(1, c.total);
  bar.value = campaignDone(c);
  const pct = c.total ? Math.floor((campaignDone(c) * 100) / c.total) : 100;
  const done = campaignDone(c) + " of " + c.total + " nodes done (" + pct + " %)";
  bar.setAttribute("aria-valuetext", done);
  setText("campaign-done", done);
  $("campaign-counts").replaceChildren(...[
    ["total", c.total], ["pending", c.pending], ["in flight", c.in_flight],
    ["succeeded", c.succeeded], ["failed", c.failed], ["skipped", c.skipped],
  ].map(([label, n]) => {
    const li = document.createElement("li");
    li.dataset.count = label.replace(" ", "_");
    li.textContent = label + ": " + n;
    return li;
  }));
  facts("campaign-facts", [
    ["Selector", describeSelector(v.selector || {})],
    ["Rollout", v.max_concurrent + " at a time" + (v.max_per_minute ? ", " + v.max_per_minute + " a minute" : "")],
    ["Abort rules", describeAbort(v.abort || {})],
    ["Force", v.force ? "yes" : null],
    ["Created by", v.created_by],
    ["Created", when(v.created_at)],
    ["Updated", when(v.updated_at)],
    ["Finished", v.finished_at ? when(v.finished_at) : null],
  ]);
  renderCampaignButtons(v);
}

// Shows `v` if it is not older than what the page shows.
function applyCampaign(v) {
  if (!campaignNotOlder(v, camp.view)) return;
  camp.view = v;
  renderCampaign(v);
}

function campaignNodeRow(n) {
  const tr = document.createElement("tr");
  tr.dataset.node = n.node;
  const a = document.createElement("a");
  a.href = "#/nodes/" + encodeURIComponent(n.node);
  a.textContent = n.name;
  cell(tr, a);
  cell(tr, n.outcome.replace("_", " "), outcomeClass(n.outcome));
  cell(tr, n.message);
  cell(tr, when(n.started_at));
  cell(tr, when(n.finished_at));
  cell(tr, n.operation_id);
  return tr;
}

// Reads the campaign and one page of its nodes.
async function loadCampaign() {
  if (!campaignOpen()) return;
  const seq = camp.seq;
  const q = new URLSearchParams({ page: camp.nodesPage, per_page: CAMPAIGN_NODES_PER_PAGE });
  if (camp.outcome) q.set("outcome", camp.outcome);
  let answer;
  try {
    answer = await api("/api/v1/campaigns/" + campaignId() + "?" + q);
  } catch (e) {
    if (seq !== camp.seq) return;
    if (e.status === 401) return signOut("Signed out: " + e.message);
    $("campaign-error").textContent = e.message;
    if (e.status === 404) $("campaign-actions").hidden = true;
    return;
  }
  if (seq !== camp.seq) return;
  const { nodes, ...view } = answer.data;
  applyCampaign(view);
  $("campaign-error").textContent = "";
  $("campaign-nodes").tBodies[0].replaceChildren(...nodes.map(campaignNodeRow));
  const p = answer.pagination;
  camp.nodesPages = Math.max(1, p.pages);
  $("campaign-nodes-page").textContent = "page " + p.page + " of " + camp.nodesPages +
    " (" + p.total + " nodes)";
  $("campaign-nodes-prev").disabled = camp.nodesPage <= 1;
  $("campaign-nodes-next").disabled = camp.nodesPage >= camp.nodesPages;
  $("campaign-nodes").setAttribute("aria-busy", "false");
}

// The stream carries the campaign, not its nodes: their page is read again, once a
// second at most.
const campaignNodesSoon = throttle(() => { if (campaignOpen()) loadCampaign(); }, 1000);

// Runs Pause, Resume or Cancel on the campaign shown.
async function campaignAct(name) {
  const action = CAMPAIGN_ACTIONS[name];
  const v = camp.view;
  if (!action || !v) return;
  if (action.ask && !(await confirmed(action.ask(v)))) return;
  const bar = $("campaign-actions");
  $("campaign-status").textContent = "";
  $("campaign-action-error").textContent = "";
  bar.setAttribute("aria-busy", "true");
  renderCampaignButtons(v);
  try {
    const answer = await api("/api/v1/campaigns/" + encodeURIComponent(v.id) + "/" + name, "POST");
    if (camp.view && camp.view.id === answer.data.id) applyCampaign(answer.data);
    $("campaign-status").textContent = action.done;
    campaignNodesSoon();
  } catch (e) {
    if (e.status === 401) return signOut("Signed out: " + e.message);
    $("campaign-action-error").textContent = e.message;
  } finally {
    bar.setAttribute("aria-busy", "false");
    if (camp.view) renderCampaignButtons(camp.view);
  }
}

// --- What console.js calls. ---

function campaignOpen() { return camp.key !== null && !$("campaign").hidden; }

function showCampaigns() {
  $("campaign").hidden = true;
  camp.key = null;
  camp.view = null;
  $("campaigns").hidden = false;
  document.title = "Metalbus: campaigns";
  return loadCampaignList();
}

function showCampaign(key) {
  $("campaigns").hidden = true;
  if (camp.key !== key) {
    camp.seq++;
    camp.key = key;
    camp.view = null;
    camp.nodesPage = 1;
    camp.outcome = "";
    $("campaign-outcome").value = "";
    for (const id of ["campaign-state", "campaign-action", "campaign-reason", "campaign-done",
      "campaign-status", "campaign-action-error", "campaign-error", "campaign-nodes-page"]) {
      $(id).textContent = "";
    }
    $("campaign-title").textContent = "Campaign " + key;
    $("campaign-counts").replaceChildren();
    $("campaign-facts").replaceChildren();
    $("campaign-nodes").tBodies[0].replaceChildren();
    $("campaign-progress").value = 0;
    $("campaign-actions").hidden = true;
  }
  $("campaign").hidden = false;
  document.title = "Metalbus: campaign " + key;
  return loadCampaign();
}

function hideCampaigns() {
  camp.seq++;
  $("campaigns").hidden = true;
  $("campaign").hidden = true;
  camp.key = null;
  camp.view = null;
}

// A `campaign` event from the stream.
function campaignChanged(v) {
  if (!$("campaigns").hidden) {
    const tr = camp.listRows.get(v.id);
    if (tr) {
      if (campaignNotOlder(v, tr.campaign)) fillCampaignRow(tr, v);
    } else if (camp.listPage === 1) {
      // A new campaign (the newest come first), or one of an earlier page.
      const first = $("campaign-list").tBodies[0].rows[0];
      if (!first || Date.parse(v.created_at) >= Date.parse(first.campaign.created_at)) campaignListSoon();
    }
  }
  if (campaignOpen() && (v.id === camp.key || (camp.view && v.id === camp.view.id))) {
    applyCampaign(v);
    campaignNodesSoon();
  }
}

// After the stream missed changes or came back: read the page again.
function campaignReload() {
  if (!$("campaigns").hidden) campaignListSoon();
  if (campaignOpen()) campaignNodesSoon();
}

// Called every 3 s while the event stream is down.
function campaignPoll() {
  if (!$("campaigns").hidden) loadCampaignList();
  if (campaignOpen()) loadCampaign();
}

function campaignSetup() {
  for (const b of $("campaign-actions").querySelectorAll("button")) {
    b.addEventListener("click", () => campaignAct(b.dataset.campaignAction));
  }
  $("campaign-outcome").addEventListener("change", () => {
    camp.outcome = $("campaign-outcome").value;
    camp.nodesPage = 1;
    loadCampaign();
  });
  $("campaign-filters").addEventListener("submit", (e) => e.preventDefault());
  $("campaigns-prev").addEventListener("click", () => { camp.listPage -= 1; loadCampaignList(); });
  $("campaigns-next").addEventListener("click", () => { camp.listPage += 1; loadCampaignList(); });
  $("campaign-nodes-prev").addEventListener("click", () => { camp.nodesPage -= 1; loadCampaign(); });
  $("campaign-nodes-next").addEventListener("click", () => { camp.nodesPage += 1; loadCampaign(); });
  // "Created ... ago" moves: the list is read again every 15 s while the stream is up.
  setInterval(() => { if (token() && stream.up && !$("campaigns").hidden) loadCampaignList(); }, 15000);
}
