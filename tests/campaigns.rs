//! Campaigns end to end (issue 16): one action over many nodes, run by the real
//! controller against simulated agents (and real agents where a plan must fail), over
//! real MQTT on loopback.
//!
//! - A `manage` campaign over a label installs exactly the labelled nodes, never more
//!   than `max_concurrent` at once (sampled from the SSE stream in commit order), and
//!   touches no other node; its final view is retained on `metalbus/v1/campaigns/{id}`.
//! - A plan that always fails pauses the campaign by its abort rule after about
//!   `min_executed` nodes, and then no node starts; cancelled while so paused, it is
//!   `aborted`.
//! - `kill -9` of the controller three times during a campaign: it completes, and each
//!   node was installed exactly once.
//! - Nodes that cannot take the action are `skipped` with the seed's message; `cancel`
//!   lets the nodes in flight finish and starts no other.
//! - The API refuses what it must, with the seed's codes.
//!
//! The three tests that run a fleet take one lock, so they do not share the machine's
//! cores with each other (their concurrency and timing checks would measure the
//! neighbour, not the controller).

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use metalbus_e2e::{eventually, steps_dir, AgentProc, Api, Controller, SimProc, Watcher};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(120);
/// How long a campaign may take to finish in these tests.
const RUN: Duration = Duration::from_secs(300);

/// One fleet at a time (see the file's comment).
static FLEET: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Simulated node ids `prefix-0001`..`prefix-{n}`.
fn ids(prefix: &str, range: std::ops::RangeInclusive<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}-{i:04}")).collect()
}

async fn set_labels(api: &Api, node: &str, labels: Value) {
    let (status, body) = api
        .patch(
            &format!("/api/v1/nodes/{node}"),
            json!({ "labels": labels }),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "labelling {node}: {body}");
}

/// Every node of the campaign, across all pages, in its order.
async fn campaign_nodes(api: &Api, id: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut page = 1;
    loop {
        let (status, body) = api
            .get(&format!("/api/v1/campaigns/{id}?page={page}&per_page=100"))
            .await
            .unwrap();
        assert_eq!(status, 200, "{body}");
        all.extend(
            body["data"]["nodes"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
        );
        if page >= body["pagination"]["pages"].as_u64().unwrap_or(0) {
            return all;
        }
        page += 1;
    }
}

/// Waits until the campaign satisfies `done`; the campaign.
async fn wait_campaign(
    api: &Api,
    id: &str,
    what: &str,
    timeout: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let done = &done;
    eventually(timeout, &format!("campaign {id}: {what}"), || {
        let api = api.clone();
        async move {
            let c = api.campaign(id).await?;
            if done(&c) {
                Ok(c)
            } else {
                Err(format!(
                    "state {} counts {} reason {}",
                    c["state"], c["counts"], c["reason"]
                ))
            }
        }
    })
    .await
}

async fn wait_state(api: &Api, id: &str, state: &str, timeout: Duration) -> Value {
    wait_campaign(api, id, &format!("state {state}"), timeout, |c| {
        c["state"] == state
    })
    .await
}

fn count(c: &Value, outcome: &str) -> u64 {
    c["counts"][outcome]
        .as_u64()
        .unwrap_or_else(|| panic!("no counts.{outcome} in {c}"))
}

fn counts(total: u64, pending: u64, in_flight: u64, ok: u64, failed: u64, skipped: u64) -> Value {
    json!({"total": total, "pending": pending, "in_flight": in_flight,
           "succeeded": ok, "failed": failed, "skipped": skipped})
}

/// A node's events as (reason, message, count), newest first.
async fn events(api: &Api, node: &str) -> Vec<(String, String, u64)> {
    let (status, body) = api
        .get(&format!("/api/v1/nodes/{node}/events"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["reason"].as_str().unwrap_or_default().to_string(),
                e["message"].as_str().unwrap_or_default().to_string(),
                e["count"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// How often `reason` happened on `node` (events of one reason collapse into a count).
async fn times(api: &Api, node: &str, reason: &str) -> u64 {
    events(api, node)
        .await
        .iter()
        .filter(|(r, _, _)| r == reason)
        .map(|(_, _, n)| n)
        .sum()
}

/// Whether `node` ever left `discovered`: any transition to another state.
async fn left_discovered(api: &Api, node: &str) -> bool {
    api.transitions(node)
        .await
        .unwrap()
        .iter()
        .any(|(_, to, _)| to != "discovered")
}

/// What the SSE stream has shown so far.
#[derive(Default)]
struct Seen {
    ready: bool,
    /// Messages the stream said this reader missed.
    lagged: u64,
    /// Each node's last state, and every state it was seen in.
    states: HashMap<String, String>,
    visited: HashMap<String, BTreeSet<String>>,
    /// Watched nodes in `pending` or `installing` now, and the most at once.
    busy: usize,
    max_busy: usize,
    /// `event: campaign` messages.
    campaigns: Vec<Value>,
}

fn is_busy(state: &str) -> bool {
    state == "pending" || state == "installing"
}

impl Seen {
    fn take(&mut self, name: &str, data: &str, watched: &HashSet<String>) {
        let v: Value = serde_json::from_str(data).unwrap_or(Value::Null);
        match name {
            "ready" => self.ready = true,
            "lagged" => self.lagged += v["missed"].as_u64().unwrap_or(1),
            "campaign" => self.campaigns.push(v),
            "state" => {
                let (Some(id), Some(state)) = (v["id"].as_str(), v["state"].as_str()) else {
                    return;
                };
                self.visited
                    .entry(id.to_string())
                    .or_default()
                    .insert(state.to_string());
                let was = self.states.insert(id.to_string(), state.to_string());
                if watched.contains(id) {
                    if was.as_deref().is_some_and(is_busy) {
                        self.busy -= 1;
                    }
                    if is_busy(state) {
                        self.busy += 1;
                    }
                    self.max_busy = self.max_busy.max(self.busy);
                }
            }
            _ => {}
        }
    }
}

/// A reader of `GET /api/v1/events/stream`, in commit order.
struct Stream {
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl Stream {
    /// Opens the stream and waits for its `ready` (after the snapshot of every node).
    async fn open(ctl: &Controller, watched: HashSet<String>) -> Stream {
        let mut resp = reqwest::Client::new()
            .get(format!("{}/api/v1/events/stream", ctl.api_base()))
            .bearer_auth(ctl.token())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let seen = Arc::new(Mutex::new(Seen::default()));
        let sink = seen.clone();
        let task = tokio::spawn(async move {
            let mut buf: Vec<u8> = Vec::new();
            while let Ok(Some(chunk)) = resp.chunk().await {
                buf.extend_from_slice(&chunk);
                while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
                    let block: Vec<u8> = buf.drain(..end + 2).collect();
                    let text = String::from_utf8_lossy(&block);
                    let mut name = "message";
                    let mut data = String::new();
                    for line in text.lines() {
                        if let Some(n) = line.strip_prefix("event:") {
                            name = n.trim();
                        } else if let Some(d) = line.strip_prefix("data:") {
                            data.push_str(d.strip_prefix(' ').unwrap_or(d));
                        }
                    }
                    sink.lock().unwrap().take(name, &data, &watched);
                }
            }
        });
        let stream = Stream { seen, task };
        eventually(WAIT, "the event stream's ready", || async {
            if stream.seen.lock().unwrap().ready {
                Ok(())
            } else {
                Err("not yet".to_string())
            }
        })
        .await;
        stream
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The last message on `topic` a watcher got.
fn last_on(watcher: &Watcher, topic: &str) -> Option<metalbus_e2e::Message> {
    watcher
        .messages()
        .into_iter()
        .rev()
        .find(|m| m.topic == topic)
}

/// 200 simulated nodes, 150 labelled `rack=r1` (25 more `rack=r2`): a manage campaign
/// over `rack=r1` and `discovered` installs exactly the 150, at most 20 in
/// `pending`/`installing` at any commit; the other 50 are never touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manage_campaign_over_a_label_installs_exactly_those_nodes_at_most_20_at_a_time() {
    let _fleet = FLEET.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let ctl = Controller::with_config(tmp.path(), &Controller::quick_plan("1"), &[]).await;
    let api = ctl.api();
    let (_sim, _) = SimProc::discovered(
        &ctl,
        200,
        "cm",
        &["--progress-events", "5", "--progress-every", "300ms"],
    )
    .await;
    let rack = ids("cm", 1..=150);
    let others = ids("cm", 151..=200);
    for node in &rack {
        set_labels(&api, node, json!({"rack": "r1"})).await;
    }
    for node in &others[..25] {
        set_labels(&api, node, json!({"rack": "r2"})).await;
    }
    let stream = Stream::open(&ctl, rack.iter().cloned().collect()).await;
    let mqtt = Watcher::monitor(&ctl, "metalbus/v1/campaigns/#").await;

    let started = Instant::now();
    let created = api
        .create_campaign(json!({"action": "manage", "plan": "quick",
               "selector": {"label": ["rack=r1"], "state": ["discovered"]},
               "max_concurrent": 20, "abort": {"failure_ratio": 0.2, "min_executed": 10}}))
        .await;
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(created["action"], "manage", "{created}");
    assert_eq!(created["plan"], "quick", "{created}");
    assert_eq!(created["max_concurrent"], 20, "{created}");
    assert_eq!(
        created["selector"],
        json!({"label": ["rack=r1"], "state": ["discovered"]}),
        "the selector as given: {created}"
    );
    assert_eq!(count(&created, "total"), 150, "{created}");
    assert_eq!(
        count(&created, "pending") + count(&created, "in_flight"),
        150,
        "{created}"
    );

    let done = wait_state(&api, &id, "completed", RUN).await;
    let took = started.elapsed();
    assert_eq!(done["counts"], counts(150, 0, 0, 150, 0, 0), "{done}");
    assert!(done["finished_at"].is_string(), "{done}");
    assert!(done["reason"].is_null(), "{done}");

    // Concurrency, in commit order.
    let (max_busy, lagged, campaigns) = {
        let seen = stream.seen.lock().unwrap();
        (seen.max_busy, seen.lagged, seen.campaigns.clone())
    };
    println!("manage campaign over 150 of 200 nodes: completed in {took:?}, at most {max_busy} of them pending/installing at once");
    assert_eq!(lagged, 0, "the stream lagged: the sample is incomplete");
    assert!(
        max_busy <= 20,
        "{max_busy} nodes of the campaign were pending/installing at once (max_concurrent 20)"
    );
    assert!(
        max_busy > 1,
        "at most {max_busy} at once: the campaign ran one node at a time"
    );

    // Exactly the 150, each succeeded, installed once, with its events.
    let nodes = campaign_nodes(&api, &id).await;
    let names: BTreeSet<&str> = nodes.iter().map(|n| n["node"].as_str().unwrap()).collect();
    let want: BTreeSet<&str> = rack.iter().map(String::as_str).collect();
    assert_eq!(names, want, "the campaign's nodes");
    assert_eq!(nodes.len(), 150, "a node listed twice");
    for n in &nodes {
        assert_eq!(n["outcome"], "succeeded", "{n}");
        assert!(
            n["started_at"].is_string() && n["finished_at"].is_string(),
            "{n}"
        );
    }
    let listed = api.nodes().await.unwrap();
    let state: HashMap<&str, &str> = listed
        .iter()
        .map(|n| (n["id"].as_str().unwrap(), n["state"].as_str().unwrap()))
        .collect();
    for node in &rack {
        assert!(
            ["active", "installed"].contains(&state[node.as_str()]),
            "{node} is {}",
            state[node.as_str()]
        );
        let installs = api
            .transitions(node)
            .await
            .unwrap()
            .iter()
            .filter(|(from, to, _)| from == "discovered" && to == "pending")
            .count();
        assert_eq!(installs, 1, "{node}: installs started");
        assert_eq!(times(&api, node, "CampaignStarted").await, 1, "{node}");
        assert_eq!(times(&api, node, "CampaignSucceeded").await, 1, "{node}");
    }
    // The other 50: never out of `discovered`, nothing from the campaign.
    let seen = stream.seen.lock().unwrap().visited.clone();
    for node in &others {
        assert_eq!(state[node.as_str()], "discovered", "{node}");
        assert!(!left_discovered(&api, node).await, "{node}'s history");
        let visited = seen.get(node.as_str()).cloned().unwrap_or_default();
        assert!(
            visited.iter().all(|s| s == "discovered"),
            "{node} was seen {visited:?}"
        );
        let from_campaign: Vec<_> = events(&api, node)
            .await
            .into_iter()
            .filter(|(r, _, _)| r.starts_with("Campaign"))
            .collect();
        assert!(from_campaign.is_empty(), "{node}: {from_campaign:?}");
    }

    // The stream told the campaign's progress, ending with the final view.
    let ours: Vec<&Value> = campaigns
        .iter()
        .filter(|c| c["id"] == id.as_str())
        .collect();
    assert!(!ours.is_empty(), "no `event: campaign` on the stream");
    let last = ours.last().unwrap();
    assert_eq!(
        (&last["state"], &last["counts"]),
        (&done["state"], &done["counts"]),
        "{last}"
    );

    // MQTT: the retained topic ends with the final view, for a late subscriber too.
    let topic = format!("metalbus/v1/campaigns/{id}");
    // (It was published when the campaign completed: a few seconds is plenty.)
    let last = eventually(
        Duration::from_secs(20),
        "the final view on MQTT",
        || async {
            match last_on(&mqtt, &topic) {
                Some(m) if m.json()["state"] == "completed" => Ok(m.json()),
                other => Err(format!(
                    "{} messages under metalbus/v1/campaigns/#, the last on {topic}: {:?}",
                    mqtt.messages().len(),
                    other.map(|m| m.json())
                )),
            }
        },
    )
    .await;
    assert_eq!(last["counts"], done["counts"], "{last}");
    let late = Watcher::monitor(&ctl, &topic).await;
    let retained = eventually(Duration::from_secs(20), "the retained view", || async {
        last_on(&late, &topic).ok_or_else(|| "nothing yet".to_string())
    })
    .await;
    assert!(retained.retain, "not retained");
    let view = retained.json();
    for key in [
        "id",
        "action",
        "plan",
        "selector",
        "max_concurrent",
        "state",
        "counts",
        "finished_at",
    ] {
        assert_eq!(view[key], done[key], "{key}: {view}");
    }

    // The list shows it.
    let (status, list) = api.get("/api/v1/campaigns").await.unwrap();
    assert_eq!(status, 200, "{list}");
    assert!(
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["id"] == id.as_str() && c["state"] == "completed"),
        "{list}"
    );
    assert_eq!(list["pagination"]["total"], 1, "{list}");
}

/// Real agents (the simulator cannot fail an install) and a plan whose second step
/// always fails: with `failure_ratio 0.5, min_executed 10` the campaign pauses itself
/// after 10 to 15 nodes (10, plus those in flight then), and starts no node while
/// paused. Resumed, it is judged on what comes after and pauses again; cancelled then,
/// it is `aborted` and its pending nodes are skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_always_failing_plan_pauses_the_campaign_after_about_min_executed_nodes() {
    const NODES: usize = 40;
    const CONCURRENT: u64 = 5;
    let _fleet = FLEET.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let ctl = Controller::with_config(
        tmp.path(),
        r#"
[lifecycle]
max_install_attempts = 1
retry_backoff = "200ms"

[plans.quick]
default = true
steps = [ { name = "q", script = "demo-step", args = { seconds = "0.2" }, timeout_s = 30 } ]

[plans.doomed]
steps = [
  { name = "warm", script = "demo-step", args = { seconds = "0.5" }, timeout_s = 30 },
  { name = "doomed", script = "demo-step", args = { fail = "always" }, timeout_s = 30 },
]
"#,
        &[],
    )
    .await;
    let api = ctl.api();
    let steps = steps_dir(tmp.path(), &[]);
    let names: Vec<String> = (1..=NODES).map(|i| format!("ab-{i:02}")).collect();
    let _agents: Vec<AgentProc> = names
        .iter()
        .map(|id| {
            AgentProc::start_with(
                tmp.path(),
                &ctl.broker_url(),
                id,
                &["--steps-dir", steps.to_str().unwrap()],
            )
        })
        .collect();
    api.wait_discovered(&names, WAIT).await;

    let created = api
        .create_campaign(
            json!({"action": "manage", "plan": "doomed", "selector": {"nodes": names},
               "max_concurrent": CONCURRENT,
               "abort": {"failure_ratio": 0.5, "min_executed": 10}}),
        )
        .await;
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(count(&created, "total"), NODES as u64, "{created}");

    let paused = wait_state(&api, &id, "paused", RUN).await;
    let reason = paused["reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("abort rule"), "{paused}");
    let executed = count(&paused, "succeeded") + count(&paused, "failed");
    assert!(
        (10..=10 + CONCURRENT).contains(&executed),
        "paused after {executed} nodes: {paused}"
    );
    assert_eq!(count(&paused, "succeeded"), 0, "{paused}");

    // Those in flight finish (they fail too); then nothing moves.
    let settled = wait_campaign(&api, &id, "nothing in flight", WAIT, |c| {
        c["counts"]["in_flight"] == 0
    })
    .await;
    assert_eq!(settled["state"], "paused", "{settled}");
    let executed = count(&settled, "failed");
    assert!(
        (10..=10 + CONCURRENT).contains(&executed),
        "{executed} nodes ran: {settled}"
    );
    let pending = count(&settled, "pending");
    assert_eq!(executed + pending, NODES as u64, "{settled}");
    println!("paused by its abort rule after {executed} nodes: {reason}");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let later = api.campaign(&id).await.unwrap();
    assert_eq!(
        later["counts"], settled["counts"],
        "a node moved while paused"
    );
    assert_eq!(later["state"], "paused", "{later}");
    let mut started = 0;
    for node in &names {
        let began = times(&api, node, "CampaignStarted").await;
        assert!(began <= 1, "{node} started {began} times");
        let left = left_discovered(&api, node).await;
        assert_eq!(left, began == 1, "{node}: history and events disagree");
        if began == 1 {
            started += 1;
            assert_eq!(api.node(node).await.unwrap()["state"], "install_failed");
            assert_eq!(times(&api, node, "CampaignFailed").await, 1, "{node}");
        }
    }
    assert_eq!(started, executed, "nodes started, as the nodes tell it");
    for n in campaign_nodes(&api, &id).await {
        match n["outcome"].as_str().unwrap() {
            "failed" => assert!(n["message"].is_string(), "{n}"),
            "pending" => assert!(n["started_at"].is_null(), "{n}"),
            _ => panic!("{n}"),
        }
    }

    // Resumed: judged on what comes after, so it runs about 10 more and pauses again.
    let (status, body) = api
        .post(&format!("/api/v1/campaigns/{id}/resume"), None)
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["state"], "running", "{body}");
    assert!(body["data"]["reason"].is_null(), "{body}");
    let again = wait_campaign(&api, &id, "paused again, nothing in flight", RUN, |c| {
        c["state"] == "paused" && c["counts"]["in_flight"] == 0
    })
    .await;
    let more = count(&again, "failed") - executed;
    assert!(
        (10..=10 + CONCURRENT).contains(&more),
        "{more} more after the resume: {again}"
    );
    assert!(again["reason"]
        .as_str()
        .unwrap_or_default()
        .starts_with("abort rule"));

    // Cancelled while an abort rule holds it: aborted, the rest skipped.
    let left = count(&again, "pending");
    assert!(left > 0, "{again}");
    let (status, body) = api
        .post(&format!("/api/v1/campaigns/{id}/cancel"), None)
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let fin = wait_campaign(&api, &id, "aborted, nothing pending", WAIT, |c| {
        c["state"] == "aborted" && c["counts"]["pending"] == 0
    })
    .await;
    assert_eq!(
        fin["counts"],
        counts(NODES as u64, 0, 0, 0, executed + more, left),
        "{fin}"
    );
    for n in campaign_nodes(&api, &id).await {
        if n["outcome"] == "skipped" {
            let node = n["node"].as_str().unwrap();
            assert!(!left_discovered(&api, node).await, "{node} started: {n}");
        }
    }
}

/// 100 simulated installs of about 4 s, 25 at a time; the controller is `kill -9`ed
/// three times while the campaign runs. It completes, each node was installed exactly
/// once (one `discovered -> pending`, one `pending -> installing`), and the counts are
/// the nodes' final states.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_three_times_during_a_100_node_campaign_loses_nothing_and_installs_each_node_once() {
    let _fleet = FLEET.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let mut ctl = Controller::with_config(
        tmp.path(),
        &format!(
            "{}[lifecycle]\nresend_after = \"1s\"\n",
            Controller::quick_plan("4")
        ),
        &[],
    )
    .await;
    let api = ctl.api();
    let (_sim, nodes) = SimProc::discovered(
        &ctl,
        100,
        "k9",
        &[
            "--progress-events",
            "10",
            "--progress-every",
            "400ms",
            "--resend-after",
            "1s",
        ],
    )
    .await;
    let created = api
        .create_campaign(
            json!({"action": "manage", "selector": {"search": "k9-", "state": ["discovered"]},
               "max_concurrent": 25}),
        )
        .await;
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(count(&created, "total"), 100, "{created}");

    let started = Instant::now();
    for (k, after) in [(1, 2_000), (2, 4_500), (3, 4_500)] {
        tokio::time::sleep(Duration::from_millis(after)).await;
        let before = ctl.api().campaign(&id).await.unwrap();
        assert_eq!(
            before["state"], "running",
            "kill {k} would not be during the campaign: {before}"
        );
        ctl.kill9();
        tokio::time::sleep(Duration::from_millis(300)).await;
        ctl.restart().await;
        println!(
            "kill -9 {k} at {:?}, with {} succeeded, {} in flight",
            started.elapsed(),
            before["counts"]["succeeded"],
            before["counts"]["in_flight"]
        );
    }

    let api = ctl.api();
    let done = wait_state(&api, &id, "completed", RUN).await;
    println!(
        "completed {:?} after the campaign started",
        started.elapsed()
    );
    assert_eq!(done["counts"], counts(100, 0, 0, 100, 0, 0), "{done}");
    let outcomes: Vec<Value> = campaign_nodes(&api, &id).await;
    assert_eq!(outcomes.len(), 100);
    let mut finals: HashMap<String, u64> = HashMap::new();
    for node in &nodes {
        let n = api.node(node).await.unwrap();
        *finals
            .entry(n["state"].as_str().unwrap().to_string())
            .or_default() += 1;
        let h = api.transitions(node).await.unwrap();
        let once = |from: &str, to: &str| h.iter().filter(|(f, t, _)| f == from && t == to).count();
        assert_eq!(once("discovered", "pending"), 1, "{node}: {h:?}");
        assert_eq!(once("pending", "installing"), 1, "{node}: {h:?}");
        assert!(
            !h.iter().any(|(_, t, _)| t == "install_failed"),
            "{node}: {h:?}"
        );
        let last = h.last().map(|(_, t, _)| t.as_str()).unwrap_or_default();
        assert!(["active", "installed"].contains(&last), "{node}: {h:?}");
        assert_eq!(times(&api, node, "CampaignStarted").await, 1, "{node}");
        assert_eq!(times(&api, node, "CampaignSucceeded").await, 1, "{node}");
    }
    let reached =
        finals.get("active").copied().unwrap_or(0) + finals.get("installed").copied().unwrap_or(0);
    assert_eq!(
        reached,
        count(&done, "succeeded"),
        "final states {finals:?}"
    );
    assert_eq!(
        finals.get("install_failed").copied().unwrap_or(0),
        count(&done, "failed"),
        "final states {finals:?}"
    );
    for o in &outcomes {
        assert_eq!(o["outcome"], "succeeded", "{o}");
    }
}

/// A `retry` over nodes that have not failed: each is skipped with the message the
/// node's own retry refusal gives, and the campaign completes. A `manage` over 20 nodes,
/// two at a time, cancelled once it has started: the two in flight finish, no other
/// starts, the rest are skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_nodes_are_skipped_with_the_seed_message_and_cancel_starts_no_new_node() {
    let tmp = tempfile::tempdir().unwrap();
    let ctl = Controller::with_config(tmp.path(), &Controller::quick_plan("1"), &[]).await;
    let api = ctl.api();
    let (_sim, _) = SimProc::discovered(
        &ctl,
        23,
        "rf",
        &["--progress-events", "10", "--progress-every", "300ms"],
    )
    .await;

    // The seed's refusal, as the node's own retry gives it.
    let (status, refusal) = api.post("/api/v1/nodes/rf-0001/retry", None).await.unwrap();
    assert_eq!(status, 400, "{refusal}");
    let seed = refusal["errorMessage"].as_str().unwrap().to_string();
    assert!(
        seed.starts_with("node is not in a failed state, current phase: ")
            && seed.ends_with("Only ManagedFailed or UnmanagedFailed nodes can be retried"),
        "{seed}"
    );
    let retried = ids("rf", 1..=3);
    let created = api
        .create_campaign(json!({"action": "retry", "selector": {"nodes": retried}}))
        .await;
    let id = created["id"].as_str().unwrap().to_string();
    let done = wait_state(&api, &id, "completed", WAIT).await;
    assert_eq!(done["counts"], counts(3, 0, 0, 0, 0, 3), "{done}");
    for n in campaign_nodes(&api, &id).await {
        assert_eq!(
            (&n["outcome"], n["message"].as_str()),
            (&json!("skipped"), Some(seed.as_str())),
            "{n}"
        );
        assert!(
            n["started_at"].is_null(),
            "a skipped node did not start: {n}"
        );
    }
    for node in &retried {
        assert!(!left_discovered(&api, node).await, "{node}");
        let skipped: Vec<_> = events(&api, node)
            .await
            .into_iter()
            .filter(|(r, _, _)| r.starts_with("Campaign"))
            .collect();
        assert_eq!(skipped.len(), 1, "{node}: {skipped:?}");
        assert_eq!(skipped[0].0, "CampaignSkipped", "{node}: {skipped:?}");
        assert!(
            skipped[0].1.contains(&seed) || skipped[0].1.contains(&id),
            "{skipped:?}"
        );
    }
    // Done: no pause, resume or cancel.
    for verb in ["pause", "resume", "cancel"] {
        let (status, body) = api
            .post(&format!("/api/v1/campaigns/{id}/{verb}"), None)
            .await
            .unwrap();
        assert_eq!(
            (status, body["errorCode"].as_str()),
            (409, Some("Primus.00006")),
            "{verb} of a completed campaign: {body}"
        );
    }

    // Cancel once the first node is under way.
    let batch = ids("rf", 4..=23);
    let created = api
        .create_campaign(
            json!({"action": "manage", "selector": {"nodes": batch}, "max_concurrent": 2}),
        )
        .await;
    let id = created["id"].as_str().unwrap().to_string();
    wait_campaign(&api, &id, "a node in flight", WAIT, |c| {
        c["counts"]["in_flight"].as_u64().unwrap_or(0) >= 1
    })
    .await;
    let (status, body) = api
        .post(&format!("/api/v1/campaigns/{id}/cancel"), None)
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let at_cancel = body["data"].clone();
    assert_eq!(at_cancel["state"], "cancelled", "{at_cancel}");
    let running = count(&at_cancel, "in_flight");
    let ran = running + count(&at_cancel, "succeeded");
    assert!(
        (1..=2).contains(&running),
        "{running} in flight when cancelled: {at_cancel}"
    );
    let fin = wait_campaign(&api, &id, "nothing in flight", WAIT, |c| {
        c["counts"]["in_flight"] == 0
    })
    .await;
    assert_eq!(fin["state"], "cancelled", "{fin}");
    assert_eq!(fin["counts"], counts(20, 0, 0, ran, 0, 20 - ran), "{fin}");
    // Give a wrongly started node time to show.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut left = 0;
    for o in campaign_nodes(&api, &id).await {
        let node = o["node"].as_str().unwrap();
        let moved = left_discovered(&api, node).await;
        match o["outcome"].as_str().unwrap() {
            "succeeded" => {
                left += 1;
                assert_eq!(api.node(node).await.unwrap()["state"], "active", "{o}");
            }
            "skipped" => {
                assert!(!moved, "{node} started after the cancel: {o}");
                assert_eq!(times(&api, node, "CampaignStarted").await, 0, "{node}");
            }
            _ => panic!("{o}"),
        }
    }
    assert_eq!(left, ran);
    let later = api.campaign(&id).await.unwrap();
    assert_eq!(later["counts"], fin["counts"], "{later}");
    println!(
        "cancelled with {running} in flight; {ran} ran, {} skipped",
        20 - ran
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_campaign_api_refuses_bad_requests_roles_and_states_with_the_seed_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let ctl = Controller::start(tmp.path(), &[]).await;
    let api = ctl.api();
    let (_sim, _) = SimProc::discovered(&ctl, 2, "hx", &[]).await;
    let viewer = api.with_token(Some(&api.create_token("glass", "viewer").await));
    let operator = api.with_token(Some(&api.create_token("ops", "operator").await));

    // Bad requests: 400 with the seed's code and a message naming the problem.
    let one = json!({"nodes": ["hx-0001"]});
    let too_many: Vec<String> = (0..100_001).map(|i| format!("n{i}")).collect();
    for (body, says) in [
        (
            json!({"action": "manage", "selector": one, "extra": 1}),
            "extra",
        ),
        (json!({"action": "explode", "selector": one}), "explode"),
        (
            json!({"action": "manage", "selector": one, "max_concurrent": 0}),
            "max_concurrent",
        ),
        (
            json!({"action": "manage", "selector": one, "max_per_minute": 0}),
            "max_per_minute",
        ),
        (json!({"action": "manage", "selector": {}}), "selector"),
        (
            json!({"action": "manage", "selector": {"rack": "r1"}}),
            "rack",
        ),
        (
            json!({"action": "manage", "selector": {"state": ["nirvana"]}}),
            "nirvana",
        ),
        (
            json!({"action": "reboot", "plan": "demo", "selector": one}),
            "plan is for manage",
        ),
        (
            json!({"action": "manage", "selector": {"nodes": ["hx-0001"], "group": "g"}}),
            "not both",
        ),
        (
            json!({"action": "manage", "selector": one, "abort": {"failure_ratio": 1.5}}),
            "failure_ratio",
        ),
        (
            json!({"action": "manage", "selector": one, "abort": {"min_executed": 3}}),
            "min_executed",
        ),
        (
            json!({"action": "manage", "selector": one, "force": true}),
            "force",
        ),
        (
            json!({"action": "manage", "selector": {"nodes": too_many}}),
            "at most",
        ),
        (
            json!({"action": "manage", "selector": {"nodes": ["hx-0001", "ghost"]}}),
            "ghost",
        ),
        (json!({"selector": one}), "action"),
        (json!([1, 2]), ""),
    ] {
        let (status, answer) = api
            .post("/api/v1/campaigns", Some(body.clone()))
            .await
            .unwrap();
        let text = body.to_string();
        let shown = &text[..text.len().min(120)];
        assert_eq!(
            (status, answer["errorCode"].as_str()),
            (400, Some("Primus.00002")),
            "{shown}: {answer}"
        );
        let message = answer["errorMessage"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{shown}: {message}");
        assert!(message.len() < 1_000, "{shown}: an unbounded message");
    }
    for body in [
        "{oops",
        "",
        "null",
        "{\"action\":\"manage\",\"selector\":{\"nodes\":[\"\u{0}\"]}",
    ] {
        let status = ctl
            .raw_status(&ctl.raw_post("/api/v1/campaigns", body))
            .await;
        assert!(status.starts_with("HTTP/1.1 4"), "{body:?}: {status}");
    }
    // A body over the API's limit.
    let huge = format!(
        "{{\"action\":\"manage\",\"selector\":{{\"search\":\"{}\"}}}}",
        "n".repeat(3 * 1024 * 1024)
    );
    assert_eq!(
        ctl.raw_status(&ctl.raw_post("/api/v1/campaigns", &huge))
            .await,
        "HTTP/1.1 413 Payload Too Large"
    );

    // Roles: a viewer reads but may not create or control; force is an admin's.
    let retry = json!({"action": "retry", "selector": {"nodes": ["hx-0001"]}});
    let (status, body) = viewer
        .post("/api/v1/campaigns", Some(retry.clone()))
        .await
        .unwrap();
    assert_eq!(
        (status, body["errorCode"].as_str()),
        (403, Some("Primus.00004")),
        "{body}"
    );
    let (status, body) = viewer.get("/api/v1/campaigns").await.unwrap();
    assert_eq!(status, 200, "{body}");
    let forced =
        json!({"action": "reprovision", "force": true, "selector": {"nodes": ["hx-0001"]}});
    let (status, body) = operator
        .post("/api/v1/campaigns", Some(forced.clone()))
        .await
        .unwrap();
    assert_eq!(
        (status, body["errorCode"].as_str()),
        (403, Some("Primus.00004")),
        "{body}"
    );
    let by_admin = api.create_campaign(forced).await;
    assert_eq!(by_admin["force"], true, "{by_admin}");
    let by_operator = operator.create_campaign(retry).await;
    let id = by_operator["id"].as_str().unwrap().to_string();
    wait_state(&api, &id, "completed", WAIT).await;
    let (status, body) = viewer
        .get(&format!("/api/v1/campaigns/{id}"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    for verb in ["pause", "resume", "cancel"] {
        let (status, body) = viewer
            .post(&format!("/api/v1/campaigns/{id}/{verb}"), None)
            .await
            .unwrap();
        assert_eq!(
            (status, body["errorCode"].as_str()),
            (403, Some("Primus.00004")),
            "{verb}: {body}"
        );
        // Completed: nothing to pause, resume or cancel.
        let (status, body) = operator
            .post(&format!("/api/v1/campaigns/{id}/{verb}"), None)
            .await
            .unwrap();
        assert_eq!(
            (status, body["errorCode"].as_str()),
            (409, Some("Primus.00006")),
            "{verb}: {body}"
        );
    }

    // Unknown campaigns: 404 (or 400 for what cannot be an id), never more.
    for path in [
        "/api/v1/campaigns/cmp-000000000000".to_string(),
        "/api/v1/campaigns/cmp-000000000000/pause".to_string(),
        "/api/v1/campaigns/%3Cscript%3E%E2%82%AC".to_string(),
        format!("/api/v1/campaigns/{}", "x".repeat(5_000)),
    ] {
        let (status, body) = if path.ends_with("/pause") {
            api.post(&path, None).await.unwrap()
        } else {
            api.get(&path).await.unwrap()
        };
        assert!(
            status == 404 || status == 400,
            "{}: {status} {body}",
            &path[..path.len().min(80)]
        );
        if path.contains("cmp-000000000000") {
            assert_eq!(
                (status, body["errorCode"].as_str()),
                (404, Some("Primus.00005")),
                "{body}"
            );
        }
    }

    // Paging and filters.
    for query in ["?per_page=0", "?page=0", "?per_page=100000", "?bogus=1"] {
        let (status, body) = api.get(&format!("/api/v1/campaigns{query}")).await.unwrap();
        assert_eq!(status, 400, "{query}: {body}");
    }
    let (status, body) = api
        .get(&format!("/api/v1/campaigns/{id}?outcome=bogus"))
        .await
        .unwrap();
    assert_eq!(status, 400, "{body}");
    let (status, body) = api
        .get(&format!("/api/v1/campaigns/{id}?outcome=succeeded"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["nodes"], json!([]), "{body}");
    let (status, body) = api
        .get(&format!("/api/v1/campaigns/{id}?outcome=skipped"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["nodes"][0]["node"], "hx-0001", "{body}");
    let (status, body) = api
        .get("/api/v1/campaigns?page=1&per_page=1")
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"].as_array().map(Vec::len), Some(1), "{body}");
    assert_eq!(
        (&body["pagination"]["total"], &body["pagination"]["pages"]),
        (&json!(2), &json!(2)),
        "{body}"
    );

    // Markup and multibyte text are text: a label value holding them selects its node,
    // and a search for them is kept as given.
    let hostile = "<img src=x onerror=\"window.pwned=1\"><script>x()</script>Ωé€🔑";
    set_labels(&api, "hx-0002", json!({"rack": hostile})).await;
    let by_label = api
        .create_campaign(
            json!({"action": "retry", "selector": {"label": [format!("rack={hostile}")]}}),
        )
        .await;
    assert_eq!(
        by_label["selector"]["label"][0],
        format!("rack={hostile}"),
        "{by_label}"
    );
    let id = by_label["id"].as_str().unwrap().to_string();
    let done = wait_state(&api, &id, "completed", WAIT).await;
    assert_eq!(done["counts"], counts(1, 0, 0, 0, 0, 1), "{done}");
    let listed = campaign_nodes(&api, &id).await;
    assert_eq!(listed[0]["node"], "hx-0002", "{listed:?}");
    let (status, body) = api
        .post(
            "/api/v1/campaigns",
            Some(json!({"action": "retry", "selector": {"search": hostile}})),
        )
        .await
        .unwrap();
    match status {
        201 => {
            assert_eq!(body["data"]["selector"]["search"], hostile, "{body}");
            assert_eq!(body["data"]["counts"]["total"], 0, "{body}");
        }
        400 => assert!(body["errorMessage"].is_string(), "{body}"),
        _ => panic!("a search no node matches: {status} {body}"),
    }
    println!("a campaign over no node: {status} {body}");

    // The OpenAPI document has the endpoints.
    let (status, doc) = api.get("/api/v1/openapi.json").await.unwrap();
    assert_eq!(status, 200);
    for path in [
        "/api/v1/campaigns",
        "/api/v1/campaigns/{id}",
        "/api/v1/campaigns/{id}/pause",
        "/api/v1/campaigns/{id}/resume",
        "/api/v1/campaigns/{id}/cancel",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} is not in the OpenAPI document"
        );
    }
}

/// `metalbus campaigns create ... --wait` as the operator runs it: exit 0 when the
/// campaign completes, 6 when it is cancelled under it; `list` and `show` name it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_waits_for_the_end_and_exits_with_its_outcome() {
    let _fleet = FLEET.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let ctl = Controller::with_config(tmp.path(), &Controller::quick_plan("1"), &[]).await;
    let api = ctl.api();
    let (_sim, nodes) = SimProc::discovered(
        &ctl,
        12,
        "cl",
        &["--progress-events", "4", "--progress-every", "250ms"],
    )
    .await;

    let mut create = vec![
        "campaigns",
        "create",
        "--action",
        "manage",
        "--max-concurrent",
        "3",
    ];
    for n in &nodes[..6] {
        create.extend(["--node", n.as_str()]);
    }
    create.extend(["--wait", "--timeout", "2m"]);
    let done = ctl.cli(&create);
    let said = String::from_utf8_lossy(&done.stdout).to_string();
    assert_eq!(
        done.status.code(),
        Some(0),
        "{said}{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert!(said.contains("completed"), "{said}");
    let list = String::from_utf8_lossy(&ctl.cli(&["campaigns", "list"]).stdout).to_string();
    let id = list
        .split_whitespace()
        .find(|w| w.starts_with("cmp-"))
        .unwrap_or_else(|| panic!("no campaign in {list}"))
        .to_string();
    let show = ctl.cli(&["campaigns", "show", &id, "-o", "json"]);
    let shown: Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(shown["state"], "completed", "{shown}");
    assert_eq!(shown["nodes"].as_array().map(Vec::len), Some(6), "{shown}");

    // Cancelled while the CLI waits: exit 6, and the reason says who cancelled.
    let mut args: Vec<String> = [
        "campaigns",
        "create",
        "--action",
        "manage",
        "--max-concurrent",
        "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for n in &nodes[6..] {
        args.extend(["--node".to_string(), n.clone()]);
    }
    args.extend(["--wait", "--api", &ctl.api_base()].map(String::from));
    let waiting = std::process::Command::new(metalbus_e2e::bin("metalbus"))
        .args(&args)
        .current_dir(&ctl.dir)
        .env_remove("METALBUS_TOKEN")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let running = eventually(WAIT, "a second campaign running", || async {
        let (_, list) = api.get("/api/v1/campaigns").await?;
        list["data"]
            .as_array()
            .and_then(|all| all.iter().find(|c| c["state"] == "running"))
            .map(|c| c["id"].as_str().unwrap().to_string())
            .ok_or_else(|| "none running yet".to_string())
    })
    .await;
    let (status, body) = api
        .post(&format!("/api/v1/campaigns/{running}/cancel"), None)
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let out = tokio::task::spawn_blocking(move || waiting.wait_with_output().unwrap())
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert!(err.contains("cancelled"), "{err}");
}

/// A `reboot` campaign is judged by each node's operation: an agent whose reboot command
/// exits 0 succeeds, one whose command fails fails with the operation's status, and the
/// Prometheus counters agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reboot_campaign_is_judged_by_each_nodes_operation() {
    let _fleet = FLEET.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let ctl = Controller::start(tmp.path(), &[]).await;
    let api = ctl.api();
    let _ok = AgentProc::start_with(
        tmp.path(),
        &ctl.broker_url(),
        "rb-ok",
        &["--reboot-command", "true"],
    );
    let _bad = AgentProc::start_with(
        tmp.path(),
        &ctl.broker_url(),
        "rb-bad",
        &["--reboot-command", "false"],
    );
    let names = vec!["rb-ok".to_string(), "rb-bad".to_string()];
    api.wait_discovered(&names, WAIT).await;
    for n in &names {
        api.wait_online(n, true, WAIT).await;
    }
    let created = api
        .create_campaign(json!({"action": "reboot", "selector": {"nodes": names}}))
        .await;
    let id = created["id"].as_str().unwrap().to_string();
    let done = eventually(WAIT, "the reboot campaign completed", || async {
        let c = api.campaign(&id).await?;
        if c["state"] == "completed" {
            Ok(c)
        } else {
            Err(format!("{}: {}", c["state"], c["counts"]))
        }
    })
    .await;
    assert_eq!(done["counts"]["succeeded"], 1, "{done}");
    assert_eq!(done["counts"]["failed"], 1, "{done}");
    let by_id: HashMap<String, Value> = done["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["node"].as_str().unwrap().to_string(), n.clone()))
        .collect();
    assert_eq!(by_id["rb-ok"]["outcome"], "succeeded", "{done}");
    let bad = &by_id["rb-bad"];
    assert_eq!(bad["outcome"], "failed", "{done}");
    let op = bad["operation_id"].as_str().unwrap();
    let why = bad["message"].as_str().unwrap();
    assert!(why.contains(op) && why.contains("failed"), "{why}");
    let (_, operation) = api.get(&format!("/api/v1/operations/{op}")).await.unwrap();
    assert_eq!(operation["data"]["status"], "failed", "{operation}");
    // Neither node changed state: a reboot is an operation, not a transition.
    for n in &names {
        assert_eq!(api.node(n).await.unwrap()["state"], "discovered");
    }
    let succeeded = ctl
        .metric("metalbus_campaign_nodes_total{outcome=\"succeeded\"}")
        .await
        .unwrap();
    let failed = ctl
        .metric("metalbus_campaign_nodes_total{outcome=\"failed\"}")
        .await
        .unwrap();
    let completed = ctl
        .metric("metalbus_campaigns{state=\"completed\"}")
        .await
        .unwrap();
    assert_eq!((succeeded, failed, completed), (1, 1, 1));
}
