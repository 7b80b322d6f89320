//! TLS on the embedded broker and the HTTP API with the controller's own CA: an agent with
//! nothing but the enrollment token trusts the broker (the token pins the CA), the CLI
//! trusts the API through `DATA_DIR/tls/ca.pem`, a broker of another controller is
//! refused, and a plain listener on a non-loopback address does not start.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use metalbus_e2e::{
    bin, eventually, fleet_token_file, steps_dir, AgentProc, Controller, TestPki, Watcher,
};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_and_the_cli_trust_the_controller_through_its_token_and_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let ctl = Controller::with_config(
        tmp.path(),
        &Controller::quick_plan("0.2"),
        &["--mqtt-tls", "--http-tls"],
    )
    .await;
    assert!(
        ctl.broker_url().starts_with("mqtts://"),
        "{}",
        ctl.broker_url()
    );
    assert!(ctl.api_base().starts_with("https://"), "{}", ctl.api_base());
    assert!(ctl.data_dir.join("tls/ca.pem").exists());
    let api = ctl.api();

    // The agent has the broker URL and the token, no CA file.
    let steps = steps_dir(tmp.path(), &[]);
    let mut agent = AgentProc::start_with(
        tmp.path(),
        &ctl.broker_url(),
        "tls-1",
        &["--steps-dir", steps.to_str().unwrap()],
    );
    api.wait_state("tls-1", "discovered", WAIT).await;
    api.post("/api/v1/nodes/tls-1/manage", None).await.unwrap();
    api.wait_state("tls-1", "active", WAIT).await;
    // A restart needs no token: the credential names the controller to trust.
    assert!(agent.terminate().success());
    let fresh_args = [
        "run",
        "--config",
        "/dev/null",
        "--broker",
        &ctl.broker_url(),
        "--node-id",
        "tls-1",
        "--state-dir",
        &tmp.path().join("agent-tls-1").display().to_string(),
        "--metrics-interval",
        "1s",
    ];
    let log = tmp.path().join("agent-tls-1-again.log");
    let mut again = Command::new(bin("metalbus-agent"))
        .args(fresh_args)
        .env_remove("METALBUS_ENROLL_TOKEN")
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(tmp.path().join("agent-tls-1-again.err")).unwrap())
        .spawn()
        .unwrap();
    api.wait_online("tls-1", true, WAIT).await;
    let _ = again.kill();
    let _ = again.wait();

    // The CLI finds ./metalbus-data/tls/ca.pem by itself; another CA is refused.
    let out = ctl.cli(&["nodes", "list", "-o", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let other = TestPki::generate(tmp.path(), "other");
    let out = ctl.cli(&["nodes", "list", "--ca", other.ca_cert.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(
        err.contains("certificate") || err.contains("cannot reach"),
        "{err}"
    );

    // Plain MQTT to the TLS port gets nowhere.
    let token = ctl.token();
    let plain = Watcher::connect(ctl.mqtt_port, Some(("monitor", token.as_str())), Some("#")).await;
    assert!(plain.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_refuses_the_broker_of_another_controller() {
    let ours = tempfile::tempdir().unwrap();
    let theirs = tempfile::tempdir().unwrap();
    let a = Controller::start(ours.path(), &["--mqtt-tls"]).await;
    let b = Controller::start(theirs.path(), &["--mqtt-tls"]).await;
    // Controller A's token, controller B's broker (a rogue broker on the network).
    let token = fleet_token_file(ours.path());
    let rogue = AgentProc::start_with(
        ours.path(),
        &b.broker_url(),
        "tls-rogue",
        &["--enroll-token-file", token.to_str().unwrap()],
    );
    eventually(WAIT, "the agent to refuse B's certificate", || {
        let log = rogue.log_text();
        async move {
            log.contains("not from the controller this agent enrolled with")
                .then_some(())
                .ok_or(log)
        }
    })
    .await;
    for ctl in [&a, &b] {
        let (status, _) = ctl.api().get("/api/v1/nodes/tls-rogue").await.unwrap();
        assert_eq!(status, 404);
    }
}

#[test]
fn a_plain_listener_off_loopback_needs_an_explicit_flag() {
    let tmp = tempfile::tempdir().unwrap();
    for (flag, addr, what) in [
        ("--mqtt-listen", "0.0.0.0:0", "plain MQTT"),
        ("--http-listen", "0.0.0.0:0", "plain HTTP"),
    ] {
        let out = Command::new(bin("metalbus"))
            .args([
                "serve",
                "--data-dir",
                tmp.path().join("d").to_str().unwrap(),
                flag,
                addr,
            ])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!("refusing to serve {what}")), "{err}");
        assert!(err.contains("--insecure-plain"), "{err}");
    }
}

/// A TLS handshake with `addr` (`host:port`) by a client that trusts only `ca`.
fn handshake(addr: &str, ca: &std::path::Path) -> Result<(), String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let mut sock = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// `[tls] cert_file` and `key_file` replaced while the controller runs (a rotation):
/// the next handshake on the broker presents the new certificate, with no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_certificate_files_are_served_without_a_restart() {
    metalbus_e2e::install_crypto_provider();
    let tmp = tempfile::tempdir().unwrap();
    let old = TestPki::generate(tmp.path(), "old");
    let new = TestPki::generate(tmp.path(), "new");
    let (cert, key) = (tmp.path().join("server.pem"), tmp.path().join("server.key"));
    let install = |pki: &TestPki| {
        // Written beside, then renamed: a reader never sees half a file.
        for (from, to) in [(&pki.server_cert, &cert), (&pki.server_key, &key)] {
            let part = to.with_extension("new");
            std::fs::copy(from, &part).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&part, std::fs::Permissions::from_mode(0o600)).unwrap();
            std::fs::rename(&part, to).unwrap();
        }
    };
    install(&old);
    let config = format!(
        "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        cert.display(),
        key.display()
    );
    let ctl = Controller::with_config(tmp.path(), &config, &["--mqtt-tls"]).await;
    let url = ctl.broker_url();
    let broker = url.trim_start_matches("mqtts://").to_string();
    assert!(handshake(&broker, &old.ca_cert).is_ok());
    assert!(handshake(&broker, &new.ca_cert).is_err());

    // A second later (the files' times must move), the new pair goes in.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    install(&new);
    let answer = handshake(&broker, &new.ca_cert);
    assert!(answer.is_ok(), "the new certificate is served: {answer:?}");
    assert!(handshake(&broker, &old.ca_cert).is_err());
    assert!(
        ctl.log_text().contains("the TLS certificate files changed"),
        "{}",
        ctl.log_text()
    );
}
