//! The operator's read surface end to end (DESIGN section 9, issue 6): a 150-node
//! simulated fleet in several states, online and offline, with labels and groups.
//! Pagination returns every node exactly once, and each list filter returns exactly the
//! set a plain predicate over the whole fleet computes. Status, inventory and usage agree
//! with the nodes. `metalbus nodes watch` shows a transition within a second of its
//! commit.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use metalbus_e2e::{bin, eventually, run_tool, Api, Controller, SimProc};
use metalbus_protocol::Timestamp;
use serde_json::{json, Value};

/// Every node across pages of `per_page`, checking the pagination block on each page.
async fn paged(api: &Api, query: &str, per_page: u64) -> Vec<Value> {
    let mut all = Vec::new();
    let mut page = 1;
    loop {
        let (status, body) = api
            .get(&format!(
                "/api/v1/nodes?page={page}&per_page={per_page}{query}"
            ))
            .await
            .unwrap();
        assert_eq!(status, 200, "{query}: {body}");
        let p = &body["pagination"];
        let total = p["total"].as_u64().unwrap();
        assert_eq!(p["page"], page);
        assert_eq!(p["per_page"], per_page);
        assert_eq!(p["pages"], total.div_ceil(per_page).max(1), "{p}");
        let data = body["data"].as_array().unwrap();
        let expected_len = total.saturating_sub((page - 1) * per_page).min(per_page);
        assert_eq!(data.len() as u64, expected_len, "page {page} of {query}");
        all.extend(data.iter().cloned());
        if page >= p["pages"].as_u64().unwrap() {
            assert_eq!(all.len() as u64, total, "{query}");
            return all;
        }
        page += 1;
    }
}

fn ids(nodes: &[Value]) -> Vec<String> {
    nodes
        .iter()
        .map(|n| n["id"].as_str().unwrap().to_string())
        .collect()
}

fn contains_ci(hay: &Value, needle: &str) -> bool {
    hay.as_str()
        .is_some_and(|h| h.to_lowercase().contains(&needle.to_lowercase()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_150_node_fleet_pages_and_filters_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let ctl = Controller::start(tmp.path(), &[]).await;
    let api = ctl.api();
    every_series_exists_at_zero_before_any_event(&api).await;
    let _a = SimProc::start(tmp.path(), &ctl.broker_url(), 120, "fa", &[]);
    let mut b = SimProc::start(tmp.path(), &ctl.broker_url(), 30, "fb", &[]);
    eventually(Duration::from_secs(60), "150 nodes with inventory", || {
        let api = api.clone();
        async move {
            let nodes = api.nodes().await?;
            let with_mac = nodes
                .iter()
                .filter(|n| !n["mac_addresses"].as_array().unwrap().is_empty())
                .count();
            (nodes.len() == 150 && with_mac == 150)
                .then_some(())
                .ok_or(format!("{} nodes, {with_mac} with a MAC", nodes.len()))
        }
    })
    .await;

    // Labels and groups on some nodes; 10 installs; the second simulation stops.
    for i in (3..=120).step_by(3) {
        let id = format!("fa-{i:04}");
        let mut labels = json!({ "rack": format!("r{}", i % 2) });
        if i % 9 == 0 {
            labels["role"] = json!("db");
        }
        let mut body = json!({ "labels": labels });
        if i % 4 == 0 {
            body["group"] = json!("edge");
        }
        let (status, resp) = api
            .patch(&format!("/api/v1/nodes/{id}"), body)
            .await
            .unwrap();
        assert_eq!(status, 200, "{resp}");
    }
    for i in 1..=10 {
        let (status, resp) = api
            .post(&format!("/api/v1/nodes/fa-{i:04}/manage"), None)
            .await
            .unwrap();
        assert_eq!(status, 200, "{resp}");
    }
    b.terminate();
    eventually(Duration::from_secs(60), "10 active, 30 offline", || {
        let api = api.clone();
        async move {
            let nodes = api.nodes().await?;
            let active = nodes.iter().filter(|n| n["state"] == "active").count();
            let offline = nodes.iter().filter(|n| n["online"] == false).count();
            (active == 10 && offline == 30)
                .then_some(())
                .ok_or(format!("{active} active, {offline} offline"))
        }
    })
    .await;

    // Pagination: every node exactly once, in the stable order (name, then id).
    let all = paged(&api, "", 7).await;
    assert_eq!(all.len(), 150);
    let unique: BTreeSet<String> = ids(&all).into_iter().collect();
    assert_eq!(unique.len(), 150, "a node twice across pages");
    let names: Vec<&str> = all.iter().map(|n| n["name"].as_str().unwrap()).collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(names, sorted, "not in name order");
    assert_eq!(
        ids(&paged(&api, "", 100).await),
        ids(&all),
        "order changes with page size"
    );

    // Each filter against a predicate over the whole fleet.
    let mac = all[42]["mac_addresses"][0].as_str().unwrap().to_uppercase();
    let ip_prefix = all.iter().find(|n| n["id"] == "fb-0001").unwrap()["ip_addresses"][0]
        .as_str()
        .unwrap()
        .rsplitn(3, '.')
        .last()
        .unwrap()
        .to_string();
    type Pred = Box<dyn Fn(&Value) -> bool>;
    let label = |k: &'static str, v: Option<&'static str>| -> Pred {
        Box::new(move |n: &Value| match v {
            Some(v) => n["labels"][k] == v,
            None => !n["labels"][k].is_null(),
        })
    };
    let mac_needle = mac.clone();
    let ip_needle = ip_prefix.clone();
    let cases: Vec<(String, Pred, usize)> = vec![
        (
            "&state=active".into(),
            Box::new(|n: &Value| n["state"] == "active"),
            10,
        ),
        (
            "&state=discovered".into(),
            Box::new(|n: &Value| n["state"] == "discovered"),
            140,
        ),
        (
            "&state=active,discovered".into(),
            Box::new(|n: &Value| n["state"] == "active" || n["state"] == "discovered"),
            150,
        ),
        (
            "&phase=Managed".into(),
            Box::new(|n: &Value| n["phase"] == "Managed"),
            10,
        ),
        (
            "&phase=Unmanaged".into(),
            Box::new(|n: &Value| n["phase"] == "Unmanaged"),
            140,
        ),
        (
            "&online=false".into(),
            Box::new(|n: &Value| n["online"] == false),
            30,
        ),
        (
            "&online=true".into(),
            Box::new(|n: &Value| n["online"] == true),
            120,
        ),
        ("&label=rack=r1".into(), label("rack", Some("r1")), 20),
        ("&label=rack".into(), label("rack", None), 40),
        (
            "&label=rack=r0,role=db".into(),
            Box::new(|n: &Value| n["labels"]["rack"] == "r0" && n["labels"]["role"] == "db"),
            6,
        ),
        (
            "&group=edge".into(),
            Box::new(|n: &Value| n["group"] == "edge"),
            10,
        ),
        (
            format!("&search={mac}"),
            Box::new(move |n: &Value| {
                n["mac_addresses"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|m| contains_ci(m, &mac_needle))
            }),
            1,
        ),
        (
            format!("&search={ip_prefix}."),
            Box::new(move |n: &Value| {
                n["ip_addresses"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|a| contains_ci(a, &format!("{ip_needle}.")))
            }),
            30,
        ),
        (
            "&search=FA-000".into(),
            Box::new(|n: &Value| contains_ci(&n["name"], "fa-000")),
            9,
        ),
        (
            "&state=discovered&online=true&label=rack=r1".into(),
            Box::new(|n: &Value| {
                n["state"] == "discovered" && n["online"] == true && n["labels"]["rack"] == "r1"
            }),
            18,
        ),
    ];
    for (query, pred, count) in &cases {
        let expected: Vec<String> =
            ids(&all.iter().filter(|n| pred(n)).cloned().collect::<Vec<_>>());
        // The expectation itself is checked against what the fleet was built to be.
        assert_eq!(expected.len(), *count, "expectation for {query}");
        let got = ids(&paged(&api, query, 6).await);
        assert_eq!(got, expected, "{query}");
    }

    // Bad filters are refused with the reason.
    api.expect_bad_requests(
        &[
            "?state=bogus",
            "?phase=bogus",
            "?online=maybe",
            "?label==x",
            "?colour=red",
        ]
        .map(|q| format!("/api/v1/nodes{q}")),
    )
    .await;

    // Status, inventory and usage agree with the nodes.
    let (status, s) = api.get("/api/v1/nodes/fa-0001/status").await.unwrap();
    assert_eq!(status, 200, "{s}");
    assert_eq!(s["data"]["health"], "healthy", "{s}");
    assert_eq!(s["data"]["system"]["kernel_version"], "6.1.0-sim", "{s}");
    assert_eq!(s["data"]["system"]["os_image"], "Simulated OS", "{s}");
    assert!(s["data"]["uptime"].is_string(), "{s}");
    assert!(s["data"]["last_heartbeat"].is_string(), "{s}");
    let (_, s) = api.get("/api/v1/nodes/fb-0001/status").await.unwrap();
    assert_eq!(s["data"]["health"], "offline", "{s}");
    assert_eq!(s["data"]["offline_reason"], "shutdown", "{s}");
    let (status, inv) = api.get("/api/v1/nodes/fa-0043/inventory").await.unwrap();
    assert_eq!(status, 200, "{inv}");
    let node = all.iter().find(|n| n["id"] == "fa-0043").unwrap();
    assert_eq!(
        inv["data"]["inventory"]["nics"][0]["mac"],
        node["mac_addresses"][0]
    );
    let (status, _) = api.get("/api/v1/nodes/nope/status").await.unwrap();
    assert_eq!(status, 404);

    let (status, u) = api.get("/api/v1/usage").await.unwrap();
    assert_eq!(status, 200, "{u}");
    let summary = &u["data"]["summary"];
    assert_eq!(summary["total_nodes"], 150, "{summary}");
    assert_eq!(summary["online_nodes"], 120, "{summary}");
    assert_eq!(summary["offline_nodes"], 30, "{summary}");
    assert_eq!(summary["by_state"]["active"], 10, "{summary}");
    assert_eq!(summary["by_state"]["discovered"], 140, "{summary}");
    let cores: u64 = all
        .iter()
        .map(|n| n["specs"]["cpu_cores"].as_u64().unwrap())
        .sum();
    assert_eq!(summary["total_cpu_cores"], cores, "{summary}");
    let by_node = u["data"]["by_node"].as_array().unwrap();
    assert_eq!(by_node.len(), 150);
    assert!(by_node
        .iter()
        .filter(|n| n["online"] == false)
        .all(|n| n["cpu_percentage"].is_null()));

    prometheus_agrees_with_the_history(&api).await;
}

/// The families of DESIGN section 10.
const DESIGN_FAMILIES: [&str; 10] = [
    "metalbus_state_transitions",
    "metalbus_stuck_states",
    "metalbus_recovery_attempts",
    "metalbus_state_duration_seconds",
    "metalbus_nodes",
    "metalbus_nodes_online",
    "metalbus_ingest_messages",
    "metalbus_ingest_rejected",
    "metalbus_commands",
    "metalbus_store_commit_seconds",
];

/// Right after a start, before any node: each family of DESIGN section 10 has samples
/// (a `rate()` or an alert sees 0, not "no data"), and so does every row of the
/// lifecycle table in `metalbus_state_transitions_total`.
async fn every_series_exists_at_zero_before_any_event(api: &Api) {
    let text = api.get_text("/metrics").await.unwrap();
    let parsed = run_tool("openmetrics_to_json.py", text.as_bytes()).unwrap();
    let families: Value = serde_json::from_str(&parsed).unwrap();
    for name in DESIGN_FAMILIES {
        let samples = families[name]["samples"].as_array();
        assert!(
            samples.is_some_and(|s| !s.is_empty()),
            "{name} has no sample at start:\n{text}"
        );
    }
    let transitions = families["metalbus_state_transitions"]["samples"]
        .as_array()
        .unwrap();
    for rule in metalbus_protocol::machine::TRANSITIONS {
        for from in rule.from {
            let found = transitions.iter().find(|s| {
                s[0] == "metalbus_state_transitions_total"
                    && s[1]["from"] == from.as_str()
                    && s[1]["to"] == rule.to.as_str()
                    && s[1]["triggered_by"] == rule.trigger.as_str()
            });
            assert_eq!(
                found.map(|s| s[2].as_f64().unwrap()),
                Some(0.0),
                "{from} -> {} by {}",
                rule.to,
                rule.trigger
            );
        }
    }
}

/// A scrape of `/metrics`, parsed by the Prometheus project's own OpenMetrics parser,
/// has every series of DESIGN section 10, and its transition counter equals the number
/// of audit entries.
async fn prometheus_agrees_with_the_history(api: &Api) {
    let mut history_entries = 0;
    let mut from_discovered = 0;
    for n in api.nodes().await.unwrap() {
        let id = n["id"].as_str().unwrap();
        let (status, h) = api
            .get(&format!("/api/v1/nodes/{id}/history?limit=200"))
            .await
            .unwrap();
        assert_eq!(status, 200, "{h}");
        history_entries += h["total"].as_u64().unwrap();
        from_discovered += h["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["from_state"] == "discovered")
            .count() as u64;
    }
    assert!(history_entries >= 30, "{history_entries} entries");
    let text = api.get_text("/metrics").await.unwrap();
    let parsed = run_tool("openmetrics_to_json.py", text.as_bytes()).unwrap();
    let families: Value = serde_json::from_str(&parsed).unwrap();
    for name in DESIGN_FAMILIES {
        assert!(families.get(name).is_some(), "{name} missing from:\n{text}");
    }
    let sum = |family: &str, sample: &str, labels: &[(&str, &str)]| -> f64 {
        families[family]["samples"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s[0] == sample && labels.iter().all(|(k, v)| s[1][k] == *v))
            .map(|s| s[2].as_f64().unwrap())
            .sum()
    };
    assert_eq!(
        sum(
            "metalbus_state_transitions",
            "metalbus_state_transitions_total",
            &[]
        ),
        history_entries as f64,
        "transitions counted vs audit entries"
    );
    assert_eq!(
        families["metalbus_state_duration_seconds"]["type"],
        "histogram"
    );
    assert_eq!(
        sum(
            "metalbus_state_duration_seconds",
            "metalbus_state_duration_seconds_count",
            &[("state", "discovered")]
        ),
        from_discovered as f64,
        "one observation per state left"
    );
    assert_eq!(sum("metalbus_nodes", "metalbus_nodes", &[]), 150.0);
    assert_eq!(
        sum("metalbus_nodes_online", "metalbus_nodes_online", &[]),
        120.0
    );
    for result in ["sent", "accepted", "succeeded"] {
        assert_eq!(
            sum(
                "metalbus_commands",
                "metalbus_commands_total",
                &[("kind", "install"), ("result", result)]
            ),
            10.0,
            "install commands {result}"
        );
    }
    assert_eq!(
        sum(
            "metalbus_stuck_states",
            "metalbus_stuck_states_total",
            &[("state", "installing")]
        ),
        0.0
    );
    assert!(
        sum(
            "metalbus_store_commit_seconds",
            "metalbus_store_commit_seconds_count",
            &[]
        ) > 0.0
    );
}

/// Reads a child's stdout lines on a thread, each with the wall-clock time it came.
fn lines_of(child: &mut std::process::Child) -> mpsc::Receiver<(SystemTime, String)> {
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            if tx.send((SystemTime::now(), line)).is_err() {
                return;
            }
        }
    });
    rx
}

/// Waits for a line that `want` accepts; returns it with its arrival time.
fn wait_line(
    rx: &mpsc::Receiver<(SystemTime, String)>,
    seen: &mut Vec<String>,
    want: impl Fn(&str) -> bool,
) -> (SystemTime, String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok((at, line)) => {
                seen.push(line.clone());
                if want(&line) {
                    return (at, line);
                }
            }
            Err(_) => break,
        }
    }
    panic!("no such line; saw:\n{}", seen.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_watch_shows_a_transition_within_a_second_of_its_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let ctl = Controller::start(tmp.path(), &[]).await;
    let api = ctl.api();
    let _sim = SimProc::start(tmp.path(), &ctl.broker_url(), 3, "w", &[]);
    api.wait_state("w-0002", "discovered", Duration::from_secs(30))
        .await;
    let watch = |args: &[&str]| {
        Command::new(bin("metalbus"))
            .args(["nodes", "watch", "--api", &ctl.api_base()])
            .args(args)
            .current_dir(tmp.path())
            .env_remove("METALBUS_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut json_watch = watch(&["-o", "json"]);
    let mut table_watch = watch(&["w-0002"]);
    let json_lines = lines_of(&mut json_watch);
    let table_lines = lines_of(&mut table_watch);
    let (mut seen_json, mut seen_table) = (Vec::new(), Vec::new());
    wait_line(&json_lines, &mut seen_json, |l| {
        l.contains(r#""type":"ready""#)
    });
    wait_line(&table_lines, &mut seen_table, |l| {
        l.starts_with("watching 1 node")
    });
    // The snapshot came first: one state per node, then ready.
    let states = seen_json
        .iter()
        .filter(|l| l.contains(r#""type":"state""#))
        .count();
    assert_eq!(states, 3, "{seen_json:?}");
    assert!(
        seen_table.iter().any(|l| l.starts_with("w-0002")),
        "{seen_table:?}"
    );

    let (status, body) = api.post("/api/v1/nodes/w-0002/manage", None).await.unwrap();
    assert_eq!(status, 200, "{body}");
    let (at, line) = wait_line(&json_lines, &mut seen_json, |l| {
        l.contains(r#""type":"transition""#) && l.contains(r#""to_state":"pending""#)
    });
    let msg: Value = serde_json::from_str(&line).unwrap();
    let committed = Timestamp::parse(msg["data"]["created_at"].as_str().unwrap()).unwrap();
    let shown = Timestamp::from(at);
    let late = shown.unix_millis() - committed.unix_millis();
    println!("nodes watch: transition shown {late} ms after its commit");
    assert!(
        (0..1000).contains(&late),
        "shown {late} ms after the commit"
    );
    assert_eq!(msg["data"]["node_id"], "w-0002");
    assert_eq!(msg["data"]["from_state"], "discovered");

    // The table view: a line for the transition, and progress as the install runs.
    wait_line(&table_lines, &mut seen_table, |l| {
        l.contains("w-0002") && l.contains("discovered -> pending") && l.contains("by admin")
    });
    wait_line(&table_lines, &mut seen_table, |l| {
        l.contains("w-0002") && l.contains("installed -> active")
    });
    assert!(
        seen_table
            .iter()
            .all(|l| !l.contains("w-0001") && !l.contains("w-0003")),
        "other nodes shown: {seen_table:?}"
    );
    assert!(
        seen_table.iter().all(|l| !l.contains('\x1b')),
        "colour on a pipe: {seen_table:?}"
    );
    let _ = json_watch.kill();
    let _ = table_watch.kill();
    let _ = json_watch.wait();
    let _ = table_watch.wait();

    // A watch without a valid token fails at once with the API's error and exit 4.
    let out = Command::new(bin("metalbus"))
        .args([
            "nodes",
            "watch",
            "--api",
            &ctl.api_base(),
            "--token",
            "bogus",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Primus.00003"),
        "{out:?}"
    );
}

/// `GET /api/v1/openapi.json` is valid OpenAPI 3 by an independent validator, and every
/// operation it documents is routed by the real server (a request to it is never
/// "no route" or "method not allowed").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_is_valid_and_every_documented_route_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let ctl = Controller::start(tmp.path(), &[]).await;
    let (status, doc) = ctl
        .api()
        .with_token(None)
        .get("/api/v1/openapi.json")
        .await
        .unwrap();
    assert_eq!(status, 200, "the document needs no token");
    let verdict = run_tool("validate_openapi.py", doc.to_string().as_bytes()).unwrap();
    println!("{}", verdict.trim());
    assert!(verdict.starts_with("valid OpenAPI 3."), "{verdict}");

    let http = reqwest::Client::new();
    let mut probed = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let Ok(m) = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()) else {
                continue;
            };
            // Unknown ids: the handler answers 404 "node not found" (or its own error),
            // never the router's "no route for ...".
            let url = format!(
                "{}{}",
                ctl.api_base(),
                path.replace("{node}", "no-such-node")
                    .replace("{id}", "no-such-op")
            );
            let resp = http
                .request(m.clone(), &url)
                .bearer_auth(ctl.token())
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let streaming = resp
                .headers()
                .get("content-type")
                .is_some_and(|v| v.to_str().unwrap_or("").starts_with("text/event-stream"));
            let body = if streaming {
                String::new()
            } else {
                resp.text().await.unwrap()
            };
            assert_ne!(status, 405, "{method} {path}: {body}");
            assert!(!body.contains("no route for"), "{method} {path}: {body}");
            let documented: Vec<&String> = op["responses"].as_object().unwrap().keys().collect();
            assert!(
                documented.iter().any(|c| c.as_str() == status.to_string()),
                "{method} {path} answered {status}, documented {documented:?}: {body}"
            );
            probed += 1;
        }
    }
    assert_eq!(probed, 37, "operations probed");
}
