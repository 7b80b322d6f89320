//! A broker outage in the middle of a job, against a real Mosquitto: the broker dies for
//! 15 s and comes back. The agents keep working, buffer their reports in their outboxes,
//! and deliver every one in order afterwards; the installs complete with the same history
//! as without the outage.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use metalbus_e2e::{eventually, Controller, Mosquitto, SimProc, TestPki};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_15_second_broker_outage_mid_job_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    // Over TLS, with enrolled agents: the delivery guarantees hold with security on.
    let pki = TestPki::generate(tmp.path(), "outage");
    let mut broker = Mosquitto::start_tls(tmp.path(), &pki);
    let ca = pki.ca_cert.to_str().unwrap();
    let ctl = Controller::with_config(
        tmp.path(),
        "[lifecycle]\nresend_after = \"1s\"\n",
        &["--broker", &broker.tls_url(), "--broker-ca", ca],
    )
    .await;
    assert_eq!(ctl.broker_url(), broker.tls_url());
    let api = ctl.api();
    // 50 progress events, 500 ms apart: a 25 s job.
    let mut sim = SimProc::start(
        tmp.path(),
        &broker.tls_url(),
        3,
        "outage",
        &[
            "--broker-ca",
            ca,
            "--progress-events",
            "50",
            "--progress-every",
            "500ms",
            "--resend-after",
            "1s",
        ],
    );
    let ids = ["outage-0001", "outage-0002", "outage-0003"];
    for id in ids {
        api.wait_state(id, "discovered", Duration::from_secs(30))
            .await;
        let (status, _) = api
            .post(&format!("/api/v1/nodes/{id}/manage"), None)
            .await
            .unwrap();
        assert_eq!(status, 200);
    }
    for id in ids {
        api.wait_state(id, "installing", Duration::from_secs(30))
            .await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before: Vec<u64> = {
        let s = sim.stats();
        ids.iter()
            .map(|id| s[*id]["last_seq"].as_u64().unwrap())
            .collect()
    };

    // The broker dies for 15 s.
    broker.stop();
    let down = Instant::now();
    tokio::time::sleep(Duration::from_secs(15)).await;
    let during: Vec<u64> = {
        let s = sim.stats();
        ids.iter()
            .map(|id| s[*id]["pending"].as_u64().unwrap())
            .collect()
    };
    broker.restart();
    println!(
        "broker down for {:?}; reports waiting in the outboxes: {during:?}",
        down.elapsed()
    );
    assert!(
        during.iter().all(|p| *p > 0),
        "the agents kept working and buffered: {during:?}"
    );

    for id in ids {
        let n = api.wait_state(id, "active", Duration::from_secs(90)).await;
        assert_eq!(n["install_attempts"], 0);
        assert_eq!(
            api.transitions(id).await.unwrap(),
            [
                ("discovered", "pending", "admin"),
                ("pending", "installing", "node_report"),
                ("installing", "installed", "node_report"),
                ("installed", "active", "system"),
            ]
            .iter()
            .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
            .collect::<Vec<_>>(),
            "{id}: the same history as without the outage"
        );
    }
    // Snapshots taken after the installs completed, until every report is receipted.
    let stats = eventually(Duration::from_secs(30), "every report receipted", || {
        let sim = &sim;
        async move {
            let s = sim.fresh_stats().await;
            if ids.iter().all(|id| s[*id]["pending"] == 0) {
                Ok(s)
            } else {
                Err(s.to_string())
            }
        }
    })
    .await;
    for (i, id) in ids.iter().enumerate() {
        let n = api.node(id).await.unwrap();
        let last = stats[*id]["last_seq"].as_u64().unwrap();
        assert!(
            last > before[i],
            "{id}: reports were made during the outage"
        );
        assert_eq!(
            n["last_applied_seq"].as_u64(),
            Some(last),
            "{id}: all applied, in order"
        );
    }
    assert!(sim.terminate().success());
}
