//! Injected duplicates and stale messages, from a raw MQTT client holding the node's
//! key (replays of genuine messages): an old report, a duplicate `seq` and a stale Will
//! change nothing; a command delivered three times runs once and is acked each time.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use metalbus_e2e::{eventually, steps_dir, AgentProc, Controller, Mosquitto, Watcher};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_duplicates_and_stale_wills_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    // Through a Mosquitto without ACLs: the replays come from a broker that kept
    // copies (the embedded broker lets no client publish commands at all).
    let broker = Mosquitto::start(tmp.path(), "");
    let ctl = Controller::with_config(
        tmp.path(),
        &Controller::quick_plan("0.3"),
        &["--broker", &broker.url()],
    )
    .await;
    let api = ctl.api();
    let counter = tmp.path().join("runs.txt");
    let count_step = format!(
        "#!/bin/sh\necho run >> {}\necho PROGRESS 100 counted\n",
        counter.display()
    );
    let steps = steps_dir(tmp.path(), &[("count-step", &count_step)]);
    let args = ["--steps-dir", steps.to_str().unwrap()];
    let mut agent = AgentProc::start_with(tmp.path(), &ctl.broker_url(), "dup-1", &args);
    api.wait_state("dup-1", "discovered", Duration::from_secs(30))
        .await;
    api.post("/api/v1/nodes/dup-1/manage", None).await.unwrap();
    api.wait_state("dup-1", "active", Duration::from_secs(30))
        .await;
    // A second connection, so that conn 1's Will is stale.
    assert!(agent.terminate().success());
    let _agent = AgentProc::start_with(tmp.path(), &ctl.broker_url(), "dup-1", &args);
    // The replays below are made with the node's own key: what a broker that kept
    // copies of real messages could send again (forgeries fail earlier, see
    // tests/zero_trust.rs).
    let key = agent.key();
    eventually(Duration::from_secs(30), "dup-1 back online", || {
        let api = api.clone();
        async move {
            let n = api.node("dup-1").await?;
            if n["online"] == true {
                Ok(())
            } else {
                Err(n.to_string())
            }
        }
    })
    .await;
    let before = api.node("dup-1").await.unwrap();
    let session = before["report_session"].as_str().unwrap().to_string();
    let last = before["last_applied_seq"].as_u64().unwrap();
    let job = before["job"].clone();
    let history_before = api.transitions("dup-1").await.unwrap();

    let raw = Watcher::start(broker.port, "metalbus/v1/nodes/dup-1/reports").await;
    let reports = "metalbus/v1/nodes/dup-1/reports";
    // An old report: seq 2 again, now claiming the install failed.
    let old = json!({"session": session, "seq": 2, "ts": "2026-01-01T00:00:00Z", "kind": "job",
        "command_id": "c-whatever", "job": "install", "status": "failed", "error": "replayed"});
    raw.publish_as(&key, reports, serde_json::to_vec(&old).unwrap())
        .await;
    // A duplicate of the newest seq with other content.
    let dup = json!({"session": session, "seq": last, "ts": "2026-01-01T00:00:00Z", "kind": "job",
        "command_id": "c-whatever", "job": "deprovision", "status": "complete"});
    raw.publish_as(&key, reports, serde_json::to_vec(&dup).unwrap())
        .await;
    // A stale Will: connection 1's, while connection 2+ is up.
    let will = json!({"online": false, "reason": "lost", "conn": 1, "session": session});
    raw.publish_as(
        &key,
        "metalbus/v1/nodes/dup-1/status",
        serde_json::to_vec(&will).unwrap(),
    )
    .await;

    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = api.node("dup-1").await.unwrap();
    for key in [
        "state",
        "online",
        "version",
        "last_applied_seq",
        "install_attempts",
        "job",
    ] {
        assert_eq!(after[key], before[key], "{key} changed");
    }
    assert_eq!(after["job"], job);
    assert_eq!(api.transitions("dup-1").await.unwrap(), history_before);
    let metrics = api.get_text("/metrics").await.unwrap();
    assert!(
        metrics.contains("metalbus_ingest_stale_total 1"),
        "the stale Will was counted:\n{metrics}"
    );

    // One command, delivered three times: run once, acked three times.
    let now = chrono_free_now();
    let cmd = json!({"command_id": "c-dup-0001", "kind": "install", "issued_at": now,
        "expires_at": "2999-01-01T00:00:00Z",
        "plan": {"name": "count", "steps": [{"name": "count", "script": "count-step", "timeout_s": 30}]}});
    for _ in 0..3 {
        raw.publish_as(
            &key,
            "metalbus/v1/nodes/dup-1/commands",
            serde_json::to_vec(&cmd).unwrap(),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let acks = eventually(Duration::from_secs(20), "three acks", || {
        let msgs = raw.messages();
        async move {
            let acks: Vec<serde_json::Value> = msgs
                .iter()
                .map(|m| m.json())
                .filter(|r| r["kind"] == "ack" && r["command_id"] == "c-dup-0001")
                .collect();
            let seqs: std::collections::BTreeSet<u64> =
                acks.iter().filter_map(|a| a["seq"].as_u64()).collect();
            if seqs.len() >= 3 {
                Ok(acks)
            } else {
                Err(format!("{} acks", seqs.len()))
            }
        }
    })
    .await;
    assert!(acks.iter().all(|a| a["accepted"] == true));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let runs = std::fs::read_to_string(&counter).unwrap_or_default();
    assert_eq!(runs.lines().count(), 1, "the command ran once");
}

/// RFC 3339 for now, without a date crate.
fn chrono_free_now() -> String {
    metalbus_protocol::Timestamp::from(std::time::SystemTime::now()).to_string()
}
