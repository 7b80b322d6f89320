//! Controller crashes during installs: simulated agents (real MQTT, real outboxes) install
//! while the controller is `kill -9`ed and restarted at random moments. Every node must
//! end `installed` with each transition in its history exactly once, and every report
//! applied exactly once: none lost, none twice.
//!
//! It runs with TLS on the embedded broker and the API, and enrolled agents.
//!
//! Sized for CI by default; `docs/TESTING.md` has the long soak (more nodes, restarts).

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use metalbus_e2e::{eventually, Controller, SimProc};
use rand::{Rng, SeedableRng};
use serde_json::Value;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_crashes_during_installs_lose_and_repeat_nothing() {
    let nodes = env("METALBUS_SOAK_NODES", 20) as usize;
    let restarts = env("METALBUS_SOAK_RESTARTS", 5);
    let progress = env("METALBUS_SOAK_PROGRESS", 50);
    let max_gap = env("METALBUS_SOAK_MAX_GAP_MS", 2000).max(301);
    let seed = env("METALBUS_SOAK_SEED", rand::random::<u16>().into());
    println!(
        "crash soak: {nodes} nodes, {restarts} restarts, {progress} progress events, seed {seed}"
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let tmp = tempfile::tempdir().unwrap();
    let mut ctl = Controller::with_config(
        tmp.path(),
        "[lifecycle]\nauto_activate = false\nresend_after = \"1s\"\nretry_backoff = \"500ms\"\n",
        // With security on: TLS on the broker and the API (the agents pin the
        // controller's CA through their enrollment token), enrolled agents.
        &["--mqtt-tls", "--http-tls"],
    )
    .await;
    let api = ctl.api();
    let mut sim = SimProc::start(
        tmp.path(),
        &ctl.broker_url(),
        nodes,
        "crash",
        &[
            "--progress-events",
            &progress.to_string(),
            "--progress-every",
            "120ms",
            "--resend-after",
            "1s",
        ],
    );
    let ids: Vec<String> = (1..=nodes).map(|i| format!("crash-{i:04}")).collect();
    eventually(
        Duration::from_secs(30),
        "all simulated nodes discovered",
        || {
            let api = api.clone();
            async move {
                let n = api.nodes().await?.len();
                if n == nodes {
                    Ok(())
                } else {
                    Err(format!("{n} nodes"))
                }
            }
        },
    )
    .await;
    for id in &ids {
        let (status, body) = api
            .post(&format!("/api/v1/nodes/{id}/manage"), None)
            .await
            .unwrap();
        assert_eq!(status, 200, "{body}");
    }

    // Crash the controller at random moments while the installs run.
    let started = Instant::now();
    for k in 1..=restarts {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(300..max_gap))).await;
        ctl.kill9();
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..500))).await;
        ctl.restart().await;
        println!("restart {k} at {:?}", started.elapsed());
    }

    // Every node ends installed (auto_activate is off), whatever was in flight.
    let budget = Duration::from_secs(120 + progress / 5 + nodes as u64 / 2);
    eventually(budget, "every node installed", || {
        let api = api.clone();
        async move {
            let all = api.nodes().await?;
            let left: Vec<String> = all
                .iter()
                .filter(|n| n["state"] != "installed")
                .map(|n| format!("{}={}", n["id"], n["state"]))
                .collect();
            if left.is_empty() {
                Ok(())
            } else {
                Err(left.join(" "))
            }
        }
    })
    .await;
    // ... and every report is receipted (in snapshots taken after that).
    let stats = eventually(Duration::from_secs(60), "every outbox empty", || {
        let sim = &sim;
        async move {
            let stats = sim.fresh_stats().await;
            let busy: Vec<String> = stats
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter(|(_, s)| s["pending"] != 0 || s["receipted"] != s["last_seq"])
                        .map(|(id, s)| format!("{id}: {s}"))
                        .collect()
                })
                .unwrap_or_else(|| vec!["no stats yet".into()]);
            if busy.is_empty() {
                Ok(stats)
            } else {
                Err(busy.join("; "))
            }
        }
    })
    .await;

    let (mut sent, mut resent, mut applied, mut lost) = (0u64, 0u64, 0u64, 0u64);
    for id in &ids {
        let n = api.node(id).await.unwrap();
        let s: &Value = &stats[id.as_str()];
        let last = s["last_seq"].as_u64().unwrap();
        let done = n["last_applied_seq"].as_u64().unwrap();
        assert!(last >= 3, "{id}: ack, started, complete at least ({last})");
        assert_eq!(done, last, "{id}: every report applied");
        sent += s["sent"].as_u64().unwrap();
        resent += s["resent"].as_u64().unwrap();
        applied += done;
        lost += last - done;
        // Each transition exactly once, in order.
        let h = api.transitions(id).await.unwrap();
        let want: Vec<(String, String, String)> = [
            ("discovered", "pending", "admin"),
            ("pending", "installing", "node_report"),
            ("installing", "installed", "node_report"),
        ]
        .iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect();
        assert_eq!(h, want, "{id}");
        assert_eq!(n["install_attempts"], 0, "{id}: no attempt failed");
    }
    let metrics = api.get_text("/metrics").await.unwrap();
    let duplicates = metric(&metrics, "metalbus_reports_duplicates_total");
    let held = metric(&metrics, "metalbus_reports_held_back_total");
    println!(
        "sent {sent}, applied {applied}, duplicates dropped {duplicates} (since the last restart), \
         held back {held} (since the last restart), resent {resent}, lost {lost}"
    );
    assert_eq!(lost, 0);
    assert!(sim.terminate().success());
}
