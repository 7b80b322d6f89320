//! An external Mosquitto over TLS (`mqtts://`): the controller and a real agent trust
//! the broker through `--broker-ca` and a node is installed across it; an agent that
//! trusts another CA is refused at the handshake; bad TLS settings stop start-up with a
//! clear error.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use metalbus_e2e::{bin, eventually, steps_dir, AgentProc, Controller, Mosquitto, TestPki};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_and_agent_work_through_an_mqtts_broker() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(tmp.path(), "good");
    let broker = Mosquitto::start_tls(tmp.path(), &pki);
    let ca = pki.ca_cert.to_str().unwrap();
    let ctl = Controller::with_config(
        tmp.path(),
        &format!(
            "[broker]\nurl = \"{}\"\nca_file = \"{ca}\"\n\n{}",
            broker.tls_url(),
            Controller::quick_plan("0.5")
        ),
        &[],
    )
    .await;
    assert_eq!(
        ctl.broker,
        broker.tls_url(),
        "listen.json names the TLS broker"
    );
    let api = ctl.api();
    let steps = steps_dir(tmp.path(), &[]);
    let _agent = AgentProc::start_with(
        tmp.path(),
        &broker.tls_url(),
        "tls-a",
        &["--broker-ca", ca, "--steps-dir", steps.to_str().unwrap()],
    );
    api.wait_state("tls-a", "discovered", Duration::from_secs(30))
        .await;
    api.post("/api/v1/nodes/tls-a/manage", None).await.unwrap();
    let n = api
        .wait_state("tls-a", "active", Duration::from_secs(30))
        .await;
    assert!(n["specs"]["cpu_threads"].is_u64(), "{n}");

    // An agent that trusts a different CA never gets past the handshake.
    let other = TestPki::generate(tmp.path(), "other");
    let rogue = AgentProc::start_with(
        tmp.path(),
        &broker.tls_url(),
        "tls-rogue",
        &["--broker-ca", other.ca_cert.to_str().unwrap()],
    );
    eventually(
        Duration::from_secs(20),
        "the rogue agent to log a refused certificate",
        || {
            let log = rogue.log_text();
            async move {
                // It never gets far enough to enroll.
                if log.contains("enrollment attempt failed") && log.contains("UnknownIssuer") {
                    Ok(())
                } else {
                    Err(log)
                }
            }
        },
    )
    .await;
    let (status, _) = api.get("/api/v1/nodes/tls-rogue").await.unwrap();
    assert_eq!(status, 404, "the rogue agent's reports never arrived");
}

#[test]
fn bad_tls_settings_stop_start_up_with_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(tmp.path(), "p");
    let garbage = tmp.path().join("garbage.pem");
    std::fs::write(&garbage, "this is not a certificate\n").unwrap();
    let state = tmp.path().join("state");
    let agent = |broker: &str, ca: &std::path::Path| {
        Command::new(bin("metalbus-agent"))
            .args([
                "run",
                "--config",
                "/dev/null",
                "--node-id",
                "n1",
                "--broker",
                broker,
            ])
            .arg("--broker-ca")
            .arg(ca)
            .arg("--state-dir")
            .arg(&state)
            .output()
            .unwrap()
    };
    let cases = [
        (
            agent("mqtt://127.0.0.1:1", &pki.ca_cert),
            "is plain mqtt://; use mqtts://",
        ),
        (
            agent("mqtts://127.0.0.1:1", &garbage),
            "holds no usable PEM certificate",
        ),
        (
            agent("mqtts://127.0.0.1:1", &tmp.path().join("missing.pem")),
            "cannot read the broker CA file",
        ),
        (
            Command::new(bin("metalbus"))
                .args(["serve", "--http-listen", "127.0.0.1:0", "--mqtt-listen"])
                .arg("127.0.0.1:0")
                .arg("--data-dir")
                .arg(tmp.path().join("data"))
                .arg("--broker-ca")
                .arg(&pki.ca_cert)
                .output()
                .unwrap(),
            "set broker.url (--broker) too",
        ),
    ];
    for (out, expected) in cases {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "must not start: {stderr}");
        assert!(
            stderr.contains(expected),
            "expected {expected:?} in: {stderr}"
        );
    }
}
