//! Metrics history end to end (DESIGN sections 4 and 9): a test MQTT client plays a
//! node and publishes known samples; `/nodes/{node}/metrics` gives their exact average
//! and peak, from samples (5m) and from one-minute rollups (6h); after `kill -9` past
//! `metrics_flush` the samples are still there; bad periods, unknown nodes and the CLI.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use metalbus_e2e::{bin, enroll_node, eventually, Api, Controller, Watcher};
use metalbus_protocol::units::round2;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);
/// The controller's `metrics_flush` (DESIGN section 4).
const METRICS_FLUSH: Duration = Duration::from_secs(10);
const NODE: &str = "mh-1";

/// One sample as the test sends it.
struct Sent {
    cpu: f64,
    mem: (u64, u64),
    /// (used, available) of two filesystems.
    fs: [(u64, u64); 2],
    rx: f64,
    tx: f64,
}

impl Sent {
    fn payload(&self) -> Vec<u8> {
        let fs: Vec<Value> = self
            .fs
            .iter()
            .enumerate()
            .map(|(i, (used, avail))| {
                json!({"mount": format!("/m{i}"), "fs_type": "ext4", "used_bytes": used,
                       "total_bytes": used + avail, "available_bytes": avail})
            })
            .collect();
        serde_json::to_vec(&json!({
            "ts": "2026-01-01T00:00:00Z", "cpu_percent": self.cpu,
            "load": {"one": 0.1, "five": 0.1, "fifteen": 0.1},
            "memory": {"used_bytes": self.mem.0, "total_bytes": self.mem.1},
            "swap": null, "filesystems": fs,
            "network": {"rx_bytes_per_s": self.rx, "tx_bytes_per_s": self.tx},
            "disk_io": null, "uptime_s": 100, "temperatures_c": null
        }))
        .unwrap()
    }

    fn memory(&self) -> f64 {
        self.mem.0 as f64 * 100.0 / self.mem.1 as f64
    }

    fn storage(&self) -> f64 {
        let used: u64 = self.fs.iter().map(|f| f.0).sum();
        let usable: u64 = self.fs.iter().map(|f| f.0 + f.1).sum();
        used as f64 * 100.0 / usable as f64
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::MIN, f64::max)
}

async fn metrics(api: &Api, query: &str) -> Value {
    let (status, body) = api
        .get(&format!("/api/v1/nodes/{NODE}/metrics{query}"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{query}: {body}");
    body["data"].clone()
}

fn series(m: &Value, resource: &str) -> Vec<f64> {
    m[resource]["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["value"].as_f64().unwrap())
        .collect()
}

/// Average and peak of every resource match what was sent.
fn check_totals(m: &Value, sent: &[Sent], what: &str) {
    let pick = |f: &dyn Fn(&Sent) -> f64| -> Vec<f64> { sent.iter().map(f).collect() };
    let cpu = pick(&|s| s.cpu);
    let mem = pick(&|s| s.memory());
    let disk = pick(&|s| s.storage());
    let rx = pick(&|s| s.rx * 8.0 / 1e6);
    let tx = pick(&|s| s.tx * 8.0 / 1e6);
    for (resource, values) in [("cpu", &cpu), ("memory", &mem), ("storage", &disk)] {
        let r = &m[resource];
        assert_eq!(
            r["average_percentage"].as_f64(),
            Some(round2(mean(values))),
            "{what} {resource}: {r}"
        );
        assert_eq!(
            r["peak_percentage"].as_f64(),
            Some(round2(max(values))),
            "{what} {resource}: {r}"
        );
        assert_eq!(
            r["current_percentage"].as_f64(),
            Some(round2(*values.last().unwrap())),
            "{what} {resource}: {r}"
        );
    }
    let n = &m["network"];
    let expect = [
        ("average_in_mbps", round2(mean(&rx))),
        ("peak_in_mbps", round2(max(&rx))),
        ("average_out_mbps", round2(mean(&tx))),
        ("peak_out_mbps", round2(max(&tx))),
        ("in_mbps", round2(*rx.last().unwrap())),
        ("out_mbps", round2(*tx.last().unwrap())),
    ];
    for (field, want) in expect {
        assert_eq!(n[field].as_f64(), Some(want), "{what} network {field}: {n}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_samples_give_exact_averages_and_peaks_and_survive_kill_9() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let mut ctl = Controller::start(tmp.path(), &[]).await;
    let api = ctl.api();
    let key = enroll_node(&ctl, NODE).await;
    let client = Watcher::node(ctl.mqtt_port, NODE, &key, None).await;
    let birth = json!({"online": true, "conn": 1, "session": "mh-session",
        "agent_version": "test", "hostname": "mh-host", "boot_id": null,
        "metrics_interval_s": 60, "ts": "2026-01-01T00:00:00Z"});
    client
        .publish_as(
            &key,
            &format!("metalbus/v1/nodes/{NODE}/status"),
            serde_json::to_vec(&birth).unwrap(),
        )
        .await;
    // A birth without `protocol`, as agents before the field send it: such an agent
    // speaks protocol 1 and keeps working with this controller (docs/PROTOCOL.md).
    let node = eventually(WAIT, "the node from the birth", || {
        let api = api.clone();
        async move { api.node(NODE).await }
    })
    .await;
    assert_eq!(node["agent_protocol"], 1, "{node}");

    const GIB: u64 = 1 << 30;
    let sent = [
        Sent {
            cpu: 10.0,
            mem: (GIB, 4 * GIB),
            fs: [(10, 90), (0, 100)],
            rx: 125_000.0,
            tx: 250_000.0,
        },
        Sent {
            cpu: 20.0,
            mem: (2 * GIB, 4 * GIB),
            fs: [(20, 80), (20, 80)],
            rx: 250_000.0,
            tx: 250_000.0,
        },
        Sent {
            cpu: 30.0,
            mem: (3 * GIB, 4 * GIB),
            fs: [(50, 50), (10, 90)],
            rx: 1_250_000.0,
            tx: 0.0,
        },
        Sent {
            cpu: 40.0,
            mem: (GIB, 8 * GIB),
            fs: [(30, 70), (30, 70)],
            rx: 375_000.0,
            tx: 125_000.0,
        },
    ];
    // One second apart: the controller keeps at most one sample per 500 ms and node.
    for s in &sent {
        client
            .publish_as(
                &key,
                &format!("metalbus/v1/nodes/{NODE}/metrics"),
                s.payload(),
            )
            .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let last_sent = Instant::now();

    // Written by the next heartbeat flush (every second).
    let count = sent.len();
    let five = eventually(WAIT, "four samples in the 5m series", || {
        let api = api.clone();
        async move {
            let m = metrics(&api, "?period=5m").await;
            if series(&m, "cpu").len() == count {
                Ok(m)
            } else {
                Err(m.to_string())
            }
        }
    })
    .await;
    check_totals(&five, &sent, "5m");
    assert_eq!(series(&five, "cpu"), vec![10.0, 20.0, 30.0, 40.0]);
    assert_eq!(
        series(&five, "memory"),
        sent.iter().map(|s| round2(s.memory())).collect::<Vec<_>>()
    );
    assert_eq!(five["period"], "5m");
    assert!(five["step_s"].is_null(), "one point per sample: {five}");
    assert_eq!(five["memory"]["used_gb"].as_f64(), Some(1.0), "{five}");
    assert_eq!(five["memory"]["total_gb"].as_f64(), Some(8.0), "{five}");
    let net = five["network"]["series"].as_array().unwrap();
    assert_eq!(net.len(), 4, "{five}");
    assert_eq!(net[2]["in_mbps"].as_f64(), Some(10.0), "{five}");

    // The rollup path (minutes, plus the samples of the open minute) agrees.
    let six = metrics(&api, "?period=6h").await;
    check_totals(&six, &sent, "6h");
    assert_eq!(six["step_s"], 60, "{six}");
    // `metric` narrows the answer to one resource.
    let only = metrics(&api, "?period=1h&metric=network").await;
    assert!(
        only.get("cpu").is_none() && only["network"].is_object(),
        "{only}"
    );

    // Bad requests and unknown nodes.
    api.expect_bad_requests(
        &["?period=2h", "?period=", "?metric=gpu", "?colour=red"]
            .map(|q| format!("/api/v1/nodes/{NODE}/metrics{q}")),
    )
    .await;
    let (_, body) = api
        .get(&format!("/api/v1/nodes/{NODE}/metrics?period=2h"))
        .await
        .unwrap();
    assert!(
        body["errorMessage"]
            .as_str()
            .unwrap()
            .contains("5m, 1h, 6h, 24h, 7d"),
        "{body}"
    );
    let (status, body) = api.get("/api/v1/nodes/nope/metrics").await.unwrap();
    assert_eq!(
        (status, body["errorCode"].as_str()),
        (404, Some("Primus.00005"))
    );

    // The CLI, through the real binary: JSON, then the table with sparklines.
    let cli = |args: &[&str]| {
        let out = ctl.cli(&[&["nodes", "metrics", NODE], args].concat());
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let json_out: Value = serde_json::from_str(&cli(&["--period", "5m", "-o", "json"])).unwrap();
    check_totals(&json_out["data"], &sent, "CLI json");
    let table = cli(&["--period", "5m"]);
    let cpu_row = table.lines().find(|l| l.starts_with("cpu")).unwrap();
    assert!(
        cpu_row.contains("40.0%") && cpu_row.contains("25.0%"),
        "{table}"
    );
    let bars: String = cpu_row
        .chars()
        .filter(|c| ('▁'..='█').contains(c))
        .collect();
    assert_eq!(bars.chars().count(), 40, "{table}");
    assert!(bars.starts_with('▂') && bars.ends_with('▄'), "{table}");
    assert!(table.lines().any(|l| l.starts_with("net in")), "{table}");
    let bad = Command::new(bin("metalbus"))
        .args([
            "nodes",
            "metrics",
            NODE,
            "--period",
            "2h",
            "--api",
            &ctl.api_base(),
        ])
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert!(!bad.status.success());

    // kill -9 once `metrics_flush` has passed since the last sample: nothing is lost.
    let waited = last_sent.elapsed();
    if waited < METRICS_FLUSH + Duration::from_secs(1) {
        tokio::time::sleep(METRICS_FLUSH + Duration::from_secs(1) - waited).await;
    }
    ctl.kill9();
    ctl.restart().await;
    let api = ctl.api();
    let hour = metrics(&api, "?period=1h").await;
    assert_eq!(series(&hour, "cpu"), vec![10.0, 20.0, 30.0, 40.0], "{hour}");
    check_totals(&hour, &sent, "1h after kill -9");
    // The open minute was summed again from the samples at start.
    let six = metrics(&api, "?period=6h").await;
    check_totals(&six, &sent, "6h after kill -9");
    println!("metrics_history took {:?}", started.elapsed());
}
